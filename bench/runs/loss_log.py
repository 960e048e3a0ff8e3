"""The run's loss log: one JSON line per iteration, kept across `--resume` attempts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.tracking.live import ProgressFile


class JsonlLog:
    """The `Log` a method writes to: one JSON line per iteration, a callback for live progress, and an `observer`
    (`bench.tracking.observer.TrainingObserver`: trackers, sample grids) told of every row after it is written.

    A resumed attempt appends to the interrupted attempt's log and repeats the iterations after its checkpoint;
    `close` keeps the last row of each (phase, iteration), so the log reads as one uninterrupted run.
    """

    def __init__(self, path: Path, on_step: Callable[[str, int, int, dict], None] | None = None,
                 observer: Any = None) -> None:
        self.path, self.on_step, self.observer = path, on_step, observer
        self.progress = ProgressFile(path.parent)  # for `bench status --watch`; removed when training ends
        self.phase, self.total, self.iterations = "train", 0, 0
        self._appended = path.exists() and path.stat().st_size > 0
        self._file = open(path, "a", buffering=1)  # line-buffered: readable while the run goes

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.total = phase, total
        self.progress.begin(phase, total)
        if self.observer:
            self.observer.begin(phase, total)
        if self.on_step:
            self.on_step(phase, 0, total, {})

    def __call__(self, iteration: int, **scalars: float) -> None:
        self.iterations += 1
        row = {"phase": self.phase, "iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self.progress.step(iteration, scalars)
        if self.observer:
            self.observer.step(self.phase, iteration, scalars)
        if self.on_step:
            self.on_step(self.phase, iteration + 1, self.total, scalars)

    def sample_from(self, model: Any) -> None:
        """The model being trained, offered by the method (`bench.api.offer_samples`) for `--sample-every`."""
        if self.observer:
            self.observer.sample_from(model)

    def close(self) -> None:
        self._file.close()
        self.progress.close()
        if self._appended:
            compact_loss_log(self.path)


def compact_loss_log(path: Path) -> None:
    """Keep the last row of each (phase, iteration), in order; drop a torn last line from a kill."""
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            key = (row["phase"], int(row["iteration"]))
        except (ValueError, KeyError, TypeError):
            continue
        rows.pop(key, None)  # a repeat moves to where the resumed attempt wrote it
        rows[key] = row
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    os.replace(tmp, path)
