"""Shared caches built once, in the sweep's own process, before several workers would each build them."""

from __future__ import annotations

from bench.runs import Context, Job


def warm_caches(jobs: list[Job], ctx: Context) -> None:
    """Build the tiny models and metric backbones once, here, before several processes would each build them."""
    if any(job.profile == "tiny" for job in jobs):
        from bench.models.tiny import ensure_built

        ensure_built()
    from bench.metrics.suites import ensure_tiny, get_suite

    if get_suite(ctx.suite).builder == "tiny":
        ensure_tiny()
