"""CPU intra-op threads: how many torch uses in each process the harness starts.

torch's default is one thread per core. When several processes share the cores (the `gpus` executor's CPU
workers, a test runner's workers, or just another busy program), that oversubscribes them: each thread waits for
the others at every operation, and small models run tens of times slower (measured with `tools/threads_timing.py`;
the README's "CPU threads" section has the figures). Like torchrun and accelerate, which give each of their
processes `OMP_NUM_THREADS=1` unless told otherwise, the harness chooses:

1. `--threads N` (which sets `BENCH_THREADS`) or `BENCH_THREADS=N`: N, whatever else;
2. else an explicit `OMP_NUM_THREADS`: what torch itself would take;
3. else, for the `tiny` profile, 1 thread: its models are so small that a second thread costs more than it
   gives even on an idle machine;
4. else the cores this process may use (`os.sched_getaffinity`) divided by the processes the harness runs at
   once (at least 1).

`apply_threads` sets torch's count for this process (child processes choose their own by the same rules; the
`gpus` executor gives each CPU worker its share of the cores); the count is recorded with every run
(`timing.threads`).
"""

from __future__ import annotations

import os

ENV = "BENCH_THREADS"
SMALL_PROFILES = ("tiny",)
"""Profiles whose models are too small to gain from a second intra-op thread (measured; see the module doc)."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or taskset allocation), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_threads(value: str | int | None, where: str = ENV) -> int | None:
    """A thread count from a flag or the environment: a positive integer, or None when unset/empty."""
    from bench.api import BenchError

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        count = int(value)
    except ValueError:
        raise BenchError(f"{where} must be a positive integer (CPU threads per process), not '{value}'") from None
    if count < 1:
        raise BenchError(f"{where} must be a positive integer (CPU threads per process), not '{value}'")
    return count


def choose_threads(processes: int = 1, profile: str | None = None) -> int:
    """Intra-op threads for each of `processes` harness processes running `profile` (rules in the module doc)."""
    override = parse_threads(os.environ.get(ENV))
    if override is not None:
        return override
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    if profile in SMALL_PROFILES:
        return 1
    return max(1, usable_cores() // max(1, processes))


def set_override(threads: int | None) -> None:
    """`--threads N`: every later choice in this process and its children is N."""
    if threads is not None:
        os.environ[ENV] = str(parse_threads(threads, "--threads"))


def apply_threads(threads: int) -> int:
    """Use `threads` intra-op threads in this process from now on; returns it."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
