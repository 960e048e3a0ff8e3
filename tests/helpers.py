"""Test helpers: run the CLI in-process exactly as the console script does, and a Log that remembers."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

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
