"""`bench generate`: load any finished run's weights through its method and write one image.

The models come from the run's own record: a run trained with `--weights GROUP=PATH` stores those paths
(`record.models.components`), and they are used again without being repeated; a `--weights` given here still
overrides them, group by group.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.api import BenchError
from bench.record import RunRecord


def read_done_record(run_dir: Path) -> RunRecord:
    """The record of a finished run; one line for a folder that is not one."""
    from bench.store import read_run_record

    record = read_run_record(run_dir)
    if record is None:
        raise BenchError(f"{run_dir} holds no run record; pass a run folder such as "
                         f"results/tiny/custom_diffusion/default/dog/seed0")
    if not record.done:
        raise BenchError(f"run {run_dir} is '{record.status}', not done; it has no trained weights")
    return record


def recorded_weights(record: RunRecord) -> dict[str, str]:
    """`{group: source}` for every weights group whose recorded source is not the profile's own default: the
    `--weights` (or `BENCH_WEIGHTS`) the run was trained with, read back from `record.models.components`.

    The tiny profile's built models count as its default wherever their cache folder was (`$BENCH_CACHE`): only
    the path below the `tiny-v<N>` folder is compared.
    """
    from bench.models.profiles import get_profile

    components = (record.models or {}).get("components") or {}
    from bench.registry import method_names

    profile = get_profile(record.profile, record.backbone or "sd-turbo")
    default = (profile.for_method(record.method) if record.method in method_names() else profile).components
    out: dict[str, str] = {}
    for role, entry in sorted(components.items()):
        source = entry.get("source") if isinstance(entry, dict) else None
        if role not in default or not isinstance(source, str):
            continue  # a role this version no longer has, or a malformed entry: nothing to carry over
        comp = default[role]
        if comp.group not in out and not _is_default(source, comp.source, record.profile):
            out[comp.group] = source
    return out


def _is_default(recorded: str, current: str, profile: str) -> bool:
    """Whether a recorded source is the profile's own. A tiny stand-in counts as its own wherever its cache was:
    only the path below its built folder (`tiny-v<N>`, `tiny-tcd-v<N>`, `tiny-flux-v<N>`) is compared."""
    if recorded == current:
        return True
    if profile != "tiny":
        return False
    from bench.paths import cache_root

    try:
        folder, *below = Path(current).relative_to(cache_root()).parts
    except ValueError:
        return False
    kind = re.sub(r"\d+$", "", folder)  # "tiny-v3" -> "tiny-v": any version of the same stand-in folder
    parts = Path(recorded).parts
    for i, part in enumerate(parts):
        if re.fullmatch(re.escape(kind) + r"\d+", part) and list(parts[i + 1:]) == below:
            return True
    return False


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def load_trained(run_dir: Path, device: str | None = None, weights: list[str] | None = None,
                 record: RunRecord | None = None):
    """The trained model of a finished run, rebuilt from its record and saved weights.

    Each weights group comes from `weights` (`GROUP=PATH` items) if given there, else from the source the run
    was trained with (`recorded_weights`), else from the profile's default."""
    from bench.config import build
    from bench.models.loading import Models
    from bench.models.profiles import get_profile, parse_weights
    from bench.registry import get_method

    record = record if record is not None else read_done_record(run_dir)
    from bench.runs import check_weight_paths
    from bench.store import check_safetensors

    check_safetensors(Path(run_dir) / "weights", f"run {run_dir}")  # only safetensors are ever loaded
    cls = get_method(record.method)
    config = build(cls.Config, record.config)
    given = parse_weights(weights or [])
    backbone = record.backbone or "sd-turbo"
    get_profile(record.profile, backbone, given)  # a mistyped group is named before the record is read
    recorded = {g: s for g, s in recorded_weights(record).items() if g not in given}
    for group, source in recorded.items():
        if _looks_local(source) and not Path(source).expanduser().exists():
            raise BenchError(f"run {run_dir} was trained with --weights {group}={source}, which does not exist "
                             f"here; pass --weights {group}=/path/to/that/copy")
    weight_map = {**recorded, **given}
    profile = get_profile(record.profile, backbone, weight_map).for_method(cls)
    check_weight_paths(given)
    check_weight_paths({g: s for g, s in recorded.items() if _looks_local(s)})
    models = Models(profile, device)
    from safetensors import SafetensorError

    try:
        return cls(config).load(Path(run_dir) / "weights", models)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a file missing, truncated, or another model's
        raise BenchError(f"cannot load the weights of {run_dir}: {str(err).strip().splitlines()[0][:200]}") from None


def concept_class_noun(record: RunRecord, data: Path | None = None) -> str | None:
    """The class noun of the run's concept: DreamBench's (read from the dataset at `data`, else `$BENCH_DATA`,
    else ./data/dreambench), or None where it cannot be known (a user's own folder, `<folder>@<hash>`, whose
    noun the record does not keep; or no dataset at hand)."""
    from bench.data import load_concepts
    from bench.paths import data_root

    name = record.concept
    if not isinstance(name, str) or not name or "@" in name:
        return None
    try:
        concepts = load_concepts(data_root(data))  # DreamBench or CustomConcept101, by the folder's layout
    except BenchError:
        return None
    return next((c.class_noun for c in concepts if c.name == name), None)


def identifier_hint(identifier: str, noun: str | None) -> str:
    """An example prompt with the run's identifier and, when known, its class noun."""
    return f'"a {identifier} {noun} on the moon"' if noun else f'"a {identifier} on the moon"'


def generate_image(run_dir: Path, prompt: str, steps: int | None, seed: int, out: Path, device: str | None,
                   weights: list[str], data: Path | None = None) -> Path:
    record = read_done_record(run_dir)

    def check(identifier: str) -> None:
        if identifier not in prompt:
            raise BenchError(f"the prompt does not contain this run's identifier '{identifier}', e.g. "
                             f"{identifier_hint(identifier, concept_class_noun(record, data))}")

    if isinstance(record.identifier, str):
        check(record.identifier)  # before any model loads
    trained = load_trained(run_dir, device, weights, record)
    check(trained.identifier)
    image = trained.generate([prompt], [seed], steps)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
