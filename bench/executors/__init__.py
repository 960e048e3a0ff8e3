"""Executors: where jobs run. Every executor calls the same `bench.runs.execute_job`, which skips finished
runs, locks the run, and records it; so any executor can be killed at any moment and simply started again.

- `local`: in this process, one job after another.
- `gpus`: one worker process per visible GPU (`CUDA_VISIBLE_DEVICES`, else `torch.cuda.device_count()`), each
  pinned to its GPU (its `CUDA_VISIBLE_DEVICES` is that one device). `--workers N` sets the number of workers:
  N CPU workers when there is no GPU (each pinned to its share of the cores), or N workers spread over the GPUs.
  Workers pull the next job when they finish one, so a slow run never holds up the rest; a worker that dies
  (OOM, segfault, kill) has its run reported as crashed and is replaced.
- `slurm`: through submitit, one SLURM job per run or one job array (`--slurm-array`), logs and submission files
  in `<results>/_slurm/`. Only runs with work to do are submitted. A job that hits its time limit or is
  preempted is requeued by submitit and continues from its last checkpoint. `--cluster local` runs the same
  submission on this machine (submitit's LocalExecutor), to try a setup before the queue.

Each shows a rich progress display: the sweep, and per worker the current run's iterations and loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.executors.caches import warm_caches
from bench.executors.options import (
    CLUSTERS,
    EXECUTORS,
    ExecOptions,
    sbatch_options,
    slurm_mem,
)
from bench.runs import Context, Outcome, PlannedRun, SweepRequest, prepare

__all__ = ["CLUSTERS", "EXECUTORS", "EXIT_RUNS_FAILED", "ExecOptions", "exit_code", "run_jobs", "sbatch_options",
           "slurm_mem", "summarize", "sweep", "warm_caches"]


def sweep(request: SweepRequest, options: ExecOptions, shard: tuple[int, int] | None = None) -> tuple[str, int]:
    """Validate everything, run the plan (or its shard K of N, `bench.shard`) on the chosen executor; (the summary
    lines, the exit code: 0, or EXIT_RUNS_FAILED when a run of the plan failed or is kept failed)."""
    options.validate()
    runs, ctx = prepare(request)
    note = ""
    if shard is not None:
        from bench.shard import shard_jobs

        planned, runs = len(runs), shard_jobs(runs, ctx, *shard)
        note = f"shard {shard[0]}/{shard[1]}: {len(runs)} of the plan's {planned} runs\n"
        if not runs:  # a part of a plan can be empty (few concepts, many shards): nothing to do is not a mistake
            return note + "nothing in this shard", 0
    with _sigterm_exits():
        outcome = run_jobs(runs, ctx, options)
    return note + summarize(outcome, ctx.results), exit_code(outcome)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (`kill`, `scancel`, a job manager) unwinds like Ctrl-C: locks are released, unfinished runs stay
    resumable. (SIGKILL cannot be caught; its locks are recognised as stale instead.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(runs: list[PlannedRun], ctx: Context, executor: str | ExecOptions = "local", **options: Any
             ) -> list[Outcome]:
    """Run planned `runs` on an executor (a name plus ExecOptions fields, or an ExecOptions); one outcome per run."""
    opts = executor if isinstance(executor, ExecOptions) else ExecOptions(executor=executor, **options)
    opts.validate()
    from bench.executors.gpus import gpu_slots, run_gpus
    from bench.executors.local import run_local
    from bench.executors.slurm import run_slurm
    from bench.store import check_writable

    if opts.executor == "gpus":
        gpu_slots(ctx, opts.workers)  # no GPU and no --workers: fail before anything is written
    if opts.executor == "slurm" and opts.cluster == "slurm":
        import shutil

        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise BenchError(f"--executor slurm needs SLURM, but {' and '.join(missing)} {verb} not on PATH; use "
                             f"--executor local or gpus here, or --cluster local to try the submission locally")
    check_writable(ctx.results)
    if opts.executor == "gpus":
        return run_gpus(runs, ctx, opts.workers)
    if opts.executor == "slurm":
        return run_slurm(runs, ctx, opts)
    return run_local(runs, ctx)


# --- the summary ---------------------------------------------------------------------------------------------------

LABELS = {"kept_failed": "kept failed", "lost_lock": "lost lock"}
EXIT_RUNS_FAILED = 3
"""`bench run` / `bench ablate` exit code when a run of the plan failed, crashed or is kept failed (2 is a user
mistake found before any work, 0 every run done or skipped as done)."""


def exit_code(results: list[Outcome]) -> int:
    """EXIT_RUNS_FAILED when any run failed, crashed or was kept failed, else 0."""
    return EXIT_RUNS_FAILED if any(r.status in ("failed", "crashed", "kept_failed") for r in results) else 0


ORDER = ("done", "skipped", "submitted", "locked", "kept_failed", "failed", "crashed", "lost_lock")


def summarize(results: list[Outcome], where: Path | None = None) -> str:
    """`2 done, 1 skipped` and, when there is something to act on, what to do about it."""
    if not results:
        raise BenchError("nothing to run")
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    ranked = sorted(counts, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    lines = [", ".join(f"{counts[s]} {LABELS.get(s, s)}" for s in ranked)]
    status = f"`bench status --results {where}`" if where is not None else "`bench status`"
    bad = counts.get("failed", 0) + counts.get("crashed", 0)
    if bad:
        lines.append(f"{bad} run(s) failed; see {status}")
    if counts.get("kept_failed"):
        lines.append(f"{counts['kept_failed']} run(s) failed before and were not retried; pass --retry-failed "
                     f"to re-run them")
    if counts.get("locked"):
        lines.append(f"{counts['locked']} run(s) are being run by another process; see {status}")
    return "\n".join(lines)
