"""Shared caches built once, in the sweep's own process, before several workers would each build them."""

from __future__ import annotations

from bench.runs import Context, PlannedRun


def warm_caches(runs: list[PlannedRun], ctx: Context) -> None:
    """Build the tiny models and metric backbones once, here, before several processes would each build them."""
    if any(run.job.profile == "tiny" for run in runs):
        from bench.models.tiny import ensure_built

        ensure_built()
    from bench.metrics.suites import ensure_tiny, get_suite

    if get_suite(ctx.suite).builder == "tiny":
        ensure_tiny()
