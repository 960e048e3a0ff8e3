"""What the run's loss log calls while a method trains (`bench.runs.loss_log.JsonlLog`), and at the run's end.

`begin(stage, total)`, `step(stage, iteration, scalars)` after the loss log has written the row, `sample_from(model)`
when the method offers the model being trained, `close(record)` once the run's record is final (done or failed).
Every scalar goes to the trackers at the run's global step: the iterations done so far, every stage counted, the
earlier stages by their full length (so a resumed run logs each iteration at the step it had before).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.tracking import RunInfo, Tracking
from bench.tracking.fanout import Fanout

SAMPLES_DIR = "samples"
"""The run folder's sub-folder of sample grids (`bench.tracking.samples.save_grid`)."""


class TrainingObserver:
    def __init__(self, tracking: Tracking, run: RunInfo, fanout: Fanout, run_dir: Path, concept: Any,
                 eval_seeds: tuple[int, ...]) -> None:
        self.tracking, self.run, self.fanout = tracking, run, fanout
        self.run_dir, self.concept, self.eval_seeds = Path(run_dir), concept, tuple(eval_seeds)
        self.offsets: dict[str, int] = {}
        """Stage -> the global step its first iteration follows."""
        self._next_offset = 0
        self.model: Any = None
        self.last_step = 0
        self.sample_seconds = 0.0
        """Seconds spent sampling grids (the run's training time excludes them)."""
        self.grids = 0
        self._tick: float | None = None

    def global_step(self, phase: str, iteration: int) -> int:
        return self.offsets.get(phase, 0) + iteration + 1

    def begin(self, phase: str, total: int) -> None:
        if phase not in self.offsets:
            self.offsets[phase] = self._next_offset
            self._next_offset += int(total)
        rates = {f"lr/{k}": v for k, v in self.run.learning_rates().items()}
        if rates:
            self.fanout.call("scalars", rates, self.offsets[phase])
        self._tick = time.perf_counter()

    def step(self, phase: str, iteration: int, scalars: dict[str, float]) -> None:
        now = time.perf_counter()
        step = self.global_step(phase, iteration)
        values = {f"{phase}/{k}": float(v) for k, v in scalars.items()}
        if self._tick is not None:
            values["time/iteration_s"] = now - self._tick
        self.fanout.call("scalars", values, step)
        self.last_step = max(self.last_step, step)
        every = self.tracking.sample_every
        if every and self.model is not None and (iteration + 1) % every == 0:
            self._sample(phase, iteration + 1, step)
        self._tick = time.perf_counter()  # the grid and the trackers are not the next iteration's time

    def sample_from(self, model: Any) -> None:
        """The model being trained (a `bench.api.Trained` sampling its current weights)."""
        self.model = model

    def _sample(self, phase: str, iteration: int, step: int) -> None:
        from bench.tracking.samples import sample_grid, save_grid

        start = time.perf_counter()
        grid, cells = sample_grid(self.model, self.concept, self.eval_seeds)
        save_grid(grid, cells, self.run_dir / SAMPLES_DIR, phase, iteration, step)
        self.sample_seconds += time.perf_counter() - start
        self.grids += 1
        caption = " | ".join(dict.fromkeys(c["prompt"] for c in cells))
        self.fanout.call("image", f"samples/{phase}", grid, step, caption)

    def close(self, record: Any) -> None:
        """Send the run's final scores and status, then let every tracker finish."""
        status = getattr(record, "status", None) or "unknown"
        metrics = {k: float(v) for k, v in (getattr(record, "metrics", None) or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for view, evaluation in (getattr(record, "views", None) or {}).items():
            for k, v in (getattr(evaluation, "metrics", None) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics[f"{view}/{k}"] = float(v)
        if metrics:
            self.fanout.call("scalars", {f"metrics/{k}": v for k, v in metrics.items()}, self.last_step)
        self.fanout.call("finish", status, metrics)
