"""Test helpers: run the CLI in-process exactly as the console script does, and a Log that remembers."""

from __future__ import annotations

import sys
from typing import Any

import pytest


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


class ListLog:
    """A `bench.api.Log` that keeps every call, for assertions."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.rows: list[dict[str, Any]] = []

    def begin(self, phase: str, total: int) -> None:
        self.phases.append((phase, total))

    def __call__(self, iteration: int, **scalars: float) -> None:
        self.rows.append({"iteration": iteration, **scalars})
