"""Executors: where jobs run. Every executor calls the same `bench.runs.execute_job`.

- `local`: in this process, one job after another, with a live progress display (sweep and iterations).
"""

from __future__ import annotations

from typing import Any

from bench.api import BenchError
from bench.runs import Context, Job, execute_job

EXECUTORS = ("local",)


def run_jobs(jobs: list[Job], ctx: Context, executor: str = "local", **options: Any) -> list[dict[str, Any]]:
    from bench.registry import unknown

    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    return run_local(jobs, ctx)


def run_local(jobs: list[Job], ctx: Context) -> list[dict[str, Any]]:
    """Run every job here, in order; a failed run is recorded and the sweep goes on."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.store import check_writable

    check_writable(ctx.results)
    console = Console(stderr=True)
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        sweep = progress.add_task("sweep", total=len(jobs))
        run_task = progress.add_task("", total=1, visible=False)

        def on_step(phase: str, done: int, total: int, scalars: dict) -> None:
            loss = next((f"{k}={v:.4f}" for k, v in scalars.items() if "loss" in k), "")
            progress.update(run_task, completed=done, total=max(total, 1), visible=True,
                            description=f"  {phase} {loss}")

        for job in jobs:
            progress.update(sweep, description=f"sweep {job.key.label()}")
            progress.update(run_task, completed=0, visible=False)
            outcome = execute_job(job, ctx, on_step)
            results.append(outcome)
            if outcome["status"] == "failed":
                progress.console.print(f"[red]failed[/red] {job.key.label()}: {outcome.get('reason')}")
            progress.advance(sweep)
        progress.update(run_task, visible=False)
    return results


def summarize(results: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    if not results:
        raise BenchError("nothing to run")
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
