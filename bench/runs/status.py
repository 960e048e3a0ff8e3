"""`bench status`: the state of every run under a results folder, or of a plan's runs, with what each needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError
from bench.runs.planned import PlannedRun, SweepRequest, prepare, triage
from bench.runs.planning import Context, outdated_reason, variants_for


def status_report(results: Path, profile: str | None = None, methods: list[str] | None = None,
                  variants: list[str] | None = None, overrides: dict[str, Any] | None = None,
                  concepts: str = "all", seeds: list[int] | None = None, backbone: str = "sd-turbo",
                  data: Path | None = None, suite: str | None = None) -> str:
    """`bench status`: without `methods`, every run found under `results`; with them, every run of that plan,
    each done, running, interrupted, failed, outdated or missing. One line per run, then the counts."""
    if not methods:
        if variants or overrides or seeds or concepts != "all":
            raise BenchError("--variant, --concepts, --seeds and --set select runs of a plan: pass --method too")
        counts, lines = store.run_status(results, profile)
    else:
        request = SweepRequest(methods=tuple(methods),
                               variants=tuple(variants_for(methods, variants or ["default"], overrides or {})),
                               concepts=concepts, seeds=tuple(seeds or [0]), profile=profile or "tiny",
                               backbone=backbone, data=data, results=results, suite=suite)
        runs, ctx = prepare(request, check_images=False)
        counts, lines = plan_status(runs, ctx)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    return "\n".join([*lines, summary])


def plan_status(runs: list[PlannedRun], ctx: Context) -> tuple[dict[str, int], list[str]]:
    """(counts by state, one line per run) for a plan; problems are listed last."""
    entries = []
    for run in runs:
        job, state = run.job, triage(run, ctx)
        run_dir, key = state.run_dir, f"{job.profile}/{job.key.label()}"
        lock = store.RunLock(run_dir)
        if lock.path.exists() and not lock.is_stale():
            entries.append(("running", key, lock.describe()))
        elif state.state == "done":
            entries.append(("done", key, store.failed_rerun_note(state.record)))
        elif state.record and state.record.config_hash == state.config_hash and state.record.status == "failed":
            entries.append(("failed", key, store.failure_note(state.record)))
        elif store.partial_dir(run_dir).exists():
            entries.append(("interrupted", key, store.interrupted_note(store.partial_dir(run_dir))))
        elif state.record is None and (problem := store.record_problem(run_dir)):
            entries.append(("corrupt", key, f"{problem}; `bench run` recomputes it"))
        elif state.state == "outdated":
            entries.append(("outdated", key, outdated_reason(state.record, run.typed_config(), run.models,
                                                             ctx.suite_description(), run.version)))
        else:
            entries.append(("missing", key, ""))
    order = {"done": 0, "running": 1, "interrupted": 2, "outdated": 3, "failed": 4, "corrupt": 5, "missing": 6}
    entries.sort(key=lambda e: (order[e[0]], e[1]))
    counts: dict[str, int] = {}
    for state_name, _, _ in entries:
        counts[state_name] = counts.get(state_name, 0) + 1
    return counts, [f"{s:11} {k}{': ' + n if n else ''}" for s, k, n in entries]
