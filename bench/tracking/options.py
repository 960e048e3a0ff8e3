"""The command-line options of `bench.tracking`, declared here so `bench/cli.py` only names them: `--report-to`
and `--sample-every` (`bench run`, `bench ablate`), `--watch` and `--interval` (`bench status`)."""

from __future__ import annotations

import typer

from bench.tracking import Tracking, parse_report_to

REPORT_TO = typer.Option(None, "--report-to", help="Send losses, sample grids and scores live to a tracker "
                                                   "(repeatable): tensorboard | wandb | mlflow.")
SAMPLE_EVERY = typer.Option(0, "--sample-every", help="Sample a fixed grid from the model being trained every N "
                                                      "iterations (saved in the run folder, sent to trackers).")
WATCH = typer.Option(False, "--watch", help="A live table until Ctrl-C: runs per method, each running run's "
                                            "iteration, loss and ETA; with --method, the sweep's ETA.")
INTERVAL = typer.Option(2.0, "--interval", help="--watch: seconds between refreshes.")


def tracking(report_to: list[str] | None, sample_every: int) -> Tracking:
    """The run request's `Tracking` from the two options (a bad value is one line, exit 2)."""
    return Tracking(parse_report_to(report_to), sample_every)
