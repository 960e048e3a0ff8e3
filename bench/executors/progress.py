"""The sweep's rich progress display, shared by the executors: per run, its phase, iterations and loss."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.api import BenchError, infra_cause


def progress_display() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=False)


def loss_text(scalars: dict) -> str:
    return next((f"{k}={v:.4f}" for k, v in scalars.items() if "loss" in k), "")


def report_failure(progress: Any, outcome: Any) -> None:
    """One red line for a run that failed, crashed or lost its lock (`bench.runs.Outcome`)."""
    if outcome.status in ("failed", "crashed", "lost_lock"):
        progress.console.print(f"[red]{outcome.status}[/red] {outcome.job.key.label()}: {outcome.reason}")


@contextmanager
def erased_on_error(progress: Any) -> Iterator[None]:
    """A user mistake found mid-sweep (BenchError) or an environment failure (`infra_cause`) leaves only its one line:
    the progress display is erased instead of left above it."""
    try:
        yield
    except Exception as err:
        if isinstance(err, BenchError) or infra_cause(err) is not None:  # one line, like a user mistake
            erase(progress)
        raise


def erase(progress: Any) -> None:
    """Leave nothing of the progress display behind: cleared on a terminal, not printed into a log."""
    progress.live.transient = True
    progress.disable = True
