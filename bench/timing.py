"""Timing the way nanoGPT's bench.py does: warm-up excluded, device synchronised at both ends; peak memory."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any


def synchronize(device: Any) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(device)


class Stopwatch:
    """`with Stopwatch(device) as sw: ...` then `sw.seconds`; synchronises the device at start and stop."""

    def __init__(self, device: Any = "cpu") -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def reset_peak_memory(device: Any) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> dict[str, Any]:
    """Peak device memory since the last reset (CUDA), else the process's peak resident set size."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_max_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def device_name(device: Any) -> str:
    import platform

    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- every attempt of a run ------------------------------------------------------------------------------------

TICK_S = 1.0
"""How often (seconds) a training attempt rewrites its progress: what a kill can lose at most."""
ATTEMPTS_FILE = "attempts.json"
"""In a run's `.partial/work` folder (kept by `--resume`, removed before the run is committed): the attempts so
far, the current one rewritten as it trains, so a killed attempt's training time and iterations are not lost."""


class AttemptClock:
    """Times one attempt of a run's training and keeps the earlier attempts' timings.

    `AttemptClock(work, resumed_from, loading)` starts the attempt (`loading()`: seconds spent loading models so far,
    which is not training); `steps(log, on_step)` is the loss log's callback that records the progress (at most
    once per `TICK_S` seconds, and at the first step); `finish(train_s, iterations)` closes the attempt and returns
    every attempt, oldest first. An attempt that was killed keeps what its last record said, marked `interrupted`.
    """

    def __init__(self, work: Any, resumed_from: dict[str, int] | None, loading: Any = None,
                 every: float | None = None) -> None:
        import json
        from pathlib import Path

        self.path = Path(work) / ATTEMPTS_FILE
        try:
            earlier = json.loads(self.path.read_text())
        except (OSError, ValueError):
            earlier = []
        self.earlier = [{**a, "interrupted": True} if a.get("finished_at") is None else a
                        for a in earlier if isinstance(a, dict)]
        self.loading, self.every = loading or (lambda: 0.0), TICK_S if every is None else every
        self._start, self._written = time.perf_counter(), 0.0
        self.current = {"started_at": _now(), "finished_at": None, "last_seen": _now(), "train_s": 0.0,
                        "iterations": 0, "resumed_from": resumed_from or None}
        self._write()

    def steps(self, log: Any, on_step: Any = None) -> Any:
        def step(phase: str, iteration: int, total: int, scalars: dict) -> None:
            now = time.perf_counter()
            if now - self._written >= self.every or log.iterations <= 1:
                self.current.update(train_s=max(now - self._start - self.loading(), 0.0),
                                    iterations=log.iterations, last_seen=_now())
                self._write()
            if on_step is not None:
                on_step(phase, iteration, total, scalars)
        return step

    def finish(self, train_s: float, iterations: int) -> list[dict[str, Any]]:
        self.current.update(train_s=train_s, iterations=iterations, finished_at=_now())
        self.current.pop("last_seen", None)
        self.path.unlink(missing_ok=True)
        return [*self.earlier, self.current]

    def _write(self) -> None:
        from bench.store import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, [*self.earlier, self.current])
        self._written = time.perf_counter()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def across_attempts(attempts: list[dict[str, Any]], loss_log: Any, this_attempt: int) -> tuple[float, int]:
    """(training seconds summed over every attempt, iterations of the whole run): one attempt counts its own
    iterations; several count the loss log's rows (a resumed attempt repeats the steps after its checkpoint, and
    the log keeps each step once)."""
    from pathlib import Path

    train_s = sum(float(a.get("train_s") or 0.0) for a in attempts)
    if len(attempts) < 2 or not Path(loss_log).is_file():
        return train_s, this_attempt
    return train_s, sum(1 for line in Path(loss_log).read_text().splitlines() if line.strip())
