"""The `local` executor: every job in this process, one after another."""

from __future__ import annotations

from bench.executors.progress import (
    erased_on_error,
    loss_text,
    progress_display,
    report_failure,
)
from bench.runs import Context, Outcome, PlannedRun, execute_job
from bench.threads import apply_threads, choose_threads


def run_local(runs: list[PlannedRun], ctx: Context) -> list[Outcome]:
    """Run every planned run here, in order; a failed run is recorded and the sweep goes on."""
    results = []
    with progress_display() as progress:
        sweep_task = progress.add_task("sweep", total=len(runs))
        run_task = progress.add_task("", total=1, visible=False)

        def on_step(phase: str, done: int, total: int, scalars: dict) -> None:
            progress.update(run_task, completed=done, total=max(total, 1), visible=True,
                            description=f"  {phase} {loss_text(scalars)}")

        with erased_on_error(progress):
            for run in runs:
                progress.update(sweep_task, description=f"sweep {run.key.label()}")
                progress.update(run_task, completed=0, visible=False)
                apply_threads(choose_threads(1, run.job.profile))  # one process: all usable cores (1 on tiny)
                outcome = execute_job(run, ctx, on_step)
                results.append(outcome)
                report_failure(progress, outcome)
                progress.advance(sweep_task)
        progress.update(run_task, visible=False)
    return results
