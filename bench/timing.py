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
