"""Test helpers: run the CLI in-process exactly as the console script does, and a Log that remembers."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bench import data, store
from bench.contract_check import ListLog  # noqa: F401 (the tests' Log that keeps every call)


def bench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`bench ARGS...` through `bench.cli.main` (BenchError -> exit 2); returns (code, stdout, stderr)."""
    from bench.cli import main

    monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def mini_dreambench(root: Path) -> Path:
    """A DreamBench copy in DreamBench's layout with two subjects, `dog` (live) and `teapot` (object), two seeded
    photos each and two prompts per list: enough for a whole run on the tiny profile, without the real dataset."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for subject in ("dog", "teapot"):
        (root / "dataset" / subject).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "dataset" / subject / f"0{i}.jpg")
    fmt = ".format(unique_token, class_token)"
    (root / "dataset" / "prompts_and_classes.txt").write_text(
        "Classes\n\nsubject_name,class\ndog,dog\nteapot,teapot\n\nPrompts\n\nObject Prompts\n\nprompt_list = [\n"
        f"'a {{0}} {{1}} in the jungle'{fmt},\n'a red {{0}} {{1}}'{fmt}\n]\n\nLive Subject Prompts\n\n"
        f"prompt_list = [\n'a {{0}} {{1}} in the snow'{fmt},\n'a wet {{0}} {{1}}'{fmt}\n]\n")
    return root


def include_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test-only methods of tests/fake_method.py as a plug-in is registered (`--include`), in a fresh
    registry: worker processes (`--executor gpus`, SLURM jobs) find them through $BENCH_INCLUDE, as every process
    finds a plug-in."""
    from bench import plugins, registry

    monkeypatch.setenv(plugins.INCLUDE_ENV, "")
    monkeypatch.setattr(plugins, "_discovered", set())
    monkeypatch.setattr(registry, "METHODS", {})
    plugins.include([str(Path(__file__).with_name("fake_method.py"))], registry.METHODS)


@dataclasses.dataclass
class TrainedRun:
    """One method trained on the tiny profile for a test: the method, its models, the trained model, its saved
    weights and its loss log."""

    method: Any
    models: Any
    trained: Any
    weights: Path
    log: ListLog

    def prompt(self) -> str:
        return f"a photo of a {self.trained.identifier} dog"


def train_tiny(name: str, overrides: dict[str, Any], concept: Any, root: Path) -> TrainedRun:
    """Train registered method `name` with `overrides` on `concept` (tiny, CPU, seed 0), save it under `root`."""
    from bench.config import build
    from bench.models.loading import Models
    from bench.models.profiles import get_profile
    from bench.registry import get_method

    cls = get_method(name)
    method = cls(build(cls.Config, overrides))
    models = Models(get_profile("tiny"), "cpu")
    log = ListLog()
    trained = method.train(concept, models, root / "work", 0, log)
    trained.save(root / "weights")
    return TrainedRun(method, models, trained, root / "weights", log)


def pixels(image: Any) -> Any:
    """An image as int16 pixels, for differences in 0..255 units."""
    import numpy as np

    return np.asarray(image).astype(np.int16)


def plain_pipeline() -> Any:
    """The tiny profile's SD-Turbo as a plain diffusers pipeline (what the ecosystem would load), quiet."""
    from diffusers import StableDiffusionPipeline

    from bench.models.tiny import ensure_built

    pipe = StableDiffusionPipeline.from_pretrained(ensure_built() / "sd-turbo", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_image(pipe: Any, latent_size: int, seed: int, prompt: str | None = None, **kwargs: Any) -> Any:
    """One step, no guidance, from the harness's seeded noise for `seed` (the pipeline itself multiplies by
    `init_noise_sigma`, so the raw noise goes in), as int16 pixels; `kwargs` go to the pipeline (`prompt_embeds`)."""
    import numpy as np

    from bench.models import sampling

    noise = sampling.seeded_noise([seed], (pipe.unet.config.in_channels, latent_size, latent_size), "cpu")
    image = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, latents=noise, output_type="np",
                 **kwargs).images[0]
    return np.round(image * 255).astype(np.int16)


def assert_one_line_error(code: int, err: str, needle: str, results: Path) -> None:
    """A user mistake: exit 2, one `error: ` line holding `needle`, the last line (a mistake found once the run has
    started follows the sweep's progress line), no traceback, and no run recorded under `results`."""
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err and needle in errors[0]
    assert not list(results.rglob("record.json"))


def trained_run(name: str, overrides: dict[str, Any]) -> Any:
    """A module-scoped fixture `run`: method `name` trained once with `overrides` on the session's `concept`
    (`train_tiny`), shared by the module's tests. Use as `run = trained_run("cones2", OVERRIDES)`."""

    @pytest.fixture(scope="module")
    def run(concept: Any, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
        return train_tiny(name, overrides, concept, tmp_path_factory.mktemp(name))

    return run


# --- datasets, kills and scripts shared by several test modules ---------------------------------------------

PROMPTS = """Classes

subject_name,class
dog,dog
teapot,teapot
red_cartoon,cartoon

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a purple {0} {1}'.format(unique_token, class_token)
]
"""
"""A DreamBench prompts file with three subjects (`tiny_dataset`)."""


def jpeg(path: Path, size: tuple[int, int] = (24, 24), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def tiny_dataset(root: Path, prompts: str = PROMPTS) -> Path:
    """A repository-shaped DreamBench with the subjects of PROMPTS, one small image each."""
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / data.PROMPTS_FILE).write_text(prompts)
    for subject in ("dog", "teapot", "red_cartoon"):
        jpeg(root / "dataset" / subject / "00.jpg")
    return root


class Killed(BaseException):
    """Stands for SIGKILL in-process: not an Exception, so no handler records it; only `finally` blocks run."""


def kill_at(monkeypatch, iteration: int) -> None:
    """Make the run's loss log raise `Killed` right after logging `iteration` (before that step's checkpoint)."""
    from bench.runs import JsonlLog

    original = JsonlLog.__call__

    def logged_then_killed(self, it, **scalars):
        original(self, it, **scalars)
        if it == iteration:
            raise Killed(f"killed at iteration {it}")

    monkeypatch.setattr(JsonlLog, "__call__", logged_then_killed)


def tensors_of(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted((run_dir / "weights").rglob("*.safetensors")):
        out.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights, images, loss log and scores."""
    from PIL import Image

    wa, wb = tensors_of(a), tensors_of(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"weights differ: {key}"
    images = sorted(p.name for p in (a / "images").glob("*.png"))
    assert images == sorted(p.name for p in (b / "images").glob("*.png")) and images
    for name in images:
        assert np.array_equal(np.asarray(Image.open(a / "images" / name)), np.asarray(Image.open(b / "images" / name)))
    assert (a / "loss_log.jsonl").read_text() == (b / "loss_log.jsonl").read_text()
    ra, rb = store.read_record(a), store.read_record(b)
    assert ra["metrics"] == rb["metrics"] and ra["config_hash"] == rb["config_hash"]


SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "paper_tables.py"
"""The paper-tables script (`load_script`)."""


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_tables"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
