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
