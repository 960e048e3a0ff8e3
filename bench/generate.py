"""`bench generate`: load any finished run's weights through its method and write one image."""

from __future__ import annotations

from pathlib import Path

from bench.api import BenchError


def load_trained(run_dir: Path, device: str | None = None, weights: list[str] | None = None):
    """The trained model of a finished run, rebuilt from its record and saved weights."""
    from bench.config import build
    from bench.models.loading import Models
    from bench.models.profiles import get_profile, parse_weights
    from bench.registry import get_method
    from bench.store import read_record

    record = read_record(run_dir)
    if record is None:
        raise BenchError(f"{run_dir} holds no run record; pass a run folder such as "
                         f"results/tiny/custom_diffusion/default/dog/seed0")
    if record.get("status") != "done":
        raise BenchError(f"run {run_dir} is '{record.get('status')}', not done; it has no trained weights")
    from bench.runs import check_weight_paths
    from bench.store import check_safetensors

    check_safetensors(Path(run_dir) / "weights", f"run {run_dir}")  # only safetensors are ever loaded
    cls = get_method(record["method"])
    config = build(cls.Config, record["config"])
    weight_map = parse_weights(weights or [])
    profile = get_profile(record["profile"], record.get("backbone", "sd-turbo"), weight_map)
    check_weight_paths(weight_map)
    models = Models(profile, device)
    from safetensors import SafetensorError

    try:
        return cls(config).load(Path(run_dir) / "weights", models)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a file missing, truncated, or another model's
        raise BenchError(f"cannot load the weights of {run_dir}: {str(err).strip().splitlines()[0][:200]}") from None


def generate_image(run_dir: Path, prompt: str, steps: int | None, seed: int, out: Path, device: str | None,
                   weights: list[str]) -> Path:
    trained = load_trained(run_dir, device, weights)
    if trained.identifier not in prompt:
        raise BenchError(f"the prompt does not contain this run's identifier '{trained.identifier}', e.g. "
                         f"\"a {trained.identifier} dog on the moon\"")
    image = trained.generate([prompt], [seed], steps)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
