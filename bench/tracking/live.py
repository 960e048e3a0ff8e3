"""`bench status --watch`: a live table of a sweep, refreshed in place (rich `Live`) until Ctrl-C.

Per method: runs done, running and failed (and, for a plan given with `--method`, the runs left). Per running run:
its stage, iteration, loss and the stage's ETA from the run's own pace so far. For a plan, the sweep's ETA: the
GPU-hours `bench plan` estimates for the runs not done (`bench.estimate`), spread over the runs running now.

A running run is one with a live lock. Its progress comes from `progress.json` in its unfinished folder, which the
run's loss log keeps up to date (`ProgressFile`, at most once a second) and removes when training ends (the run
then shows as evaluating). `snapshot_*` read the disk; `render` draws a `Snapshot` and reads nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS = "progress.json"
WRITE_EVERY_S = 1.0
LOSS_NAMES = ("loss", "loss_student", "loss_teacher")
"""The scalar shown as a running run's loss: the first of these it logs, else its first scalar."""


class ProgressFile:
    """A running run's stage, iteration and latest scalars, for `bench status --watch` in another process."""

    def __init__(self, folder: Path) -> None:
        self.path, self.state, self._written = Path(folder) / PROGRESS, {}, 0.0

    def begin(self, phase: str, total: int) -> None:
        self.state = {"phase": phase, "total": int(total), "started": time.time(), "first": None,
                      "iteration": None, "scalars": {}}
        self._write()

    def step(self, iteration: int, scalars: dict[str, float]) -> None:
        first = self.state.get("first") is None
        if first:
            self.state["first"] = iteration  # a resumed stage starts after its checkpoint
        self.state.update(iteration=iteration, scalars={k: float(v) for k, v in scalars.items()})
        if first or time.time() - self._written >= WRITE_EVERY_S or iteration + 1 >= self.state.get("total", 0):
            self._write()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        self.state["updated"] = self._written = time.time()
        tmp = self.path.with_name(f".{PROGRESS}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.path)
        except OSError:  # progress is a convenience: never a reason for a run to fail
            tmp.unlink(missing_ok=True)


@dataclass
class Running:
    label: str
    phase: str
    """The stage, or `starting` / `evaluating` outside training."""
    iteration: int | None = None
    """Iterations done in the stage."""
    total: int | None = None
    loss: tuple[str, float] | None = None
    eta_s: float | None = None
    """Seconds left in the stage at the run's own pace."""


@dataclass
class Snapshot:
    counts: dict[str, dict[str, int]]
    """Method -> state (done, running, failed, left) -> runs."""
    running: list[Running] = field(default_factory=list)
    sweep: str = ""
    """The sweep's ETA line (or why there is none)."""
    title: str = ""


def progress_of(label: str, partial: Path, now: float) -> Running:
    """A running run's line from its unfinished folder."""
    try:
        state = json.loads((partial / PROGRESS).read_text())
    except (OSError, ValueError):
        return Running(label, "evaluating" if (partial / "loss_log.jsonl").exists() else "starting")
    scalars, it = state.get("scalars") or {}, state.get("iteration")
    loss = next(((k, scalars[k]) for k in LOSS_NAMES if k in scalars), next(iter(scalars.items()), None))
    done = None if it is None else it + 1
    eta = None
    if done is not None and state.get("first") is not None and done > state["first"]:
        pace = (state["updated"] - state["started"]) / (done - state["first"])
        eta = max((state["total"] - done) * pace - (now - state["updated"]), 0.0)
    return Running(label, state.get("phase", "?"), done, state.get("total"), loss, eta)


def _live(run_dir: Path) -> bool:
    from bench.store import RunLock

    lock = RunLock(run_dir)
    return lock.path.exists() and not lock.is_stale()


def snapshot_results(results: Path, profile: str | None = None) -> Snapshot:
    """Every run found under `results` (no plan: no runs left and no sweep ETA)."""
    from bench.store import iter_run_records, partial_dir

    counts: dict[str, dict[str, int]] = {}
    root, now = Path(results) / profile if profile else Path(results), time.time()
    running_dirs = {p.with_name(p.name.removesuffix(".lock")) for p in root.rglob("seed*.lock")} if root.exists() \
        else set()
    running_dirs = {d for d in running_dirs if _live(d)}
    for record in iter_run_records(results, profile):
        if Path(record.run_dir) not in running_dirs and record.status in ("done", "failed"):
            _count(counts, record.method, record.status)
    running = []
    for run_dir in sorted(running_dirs):
        key = run_dir.relative_to(results).parts[-5:] if profile is None else run_dir.relative_to(root).parts
        _count(counts, key[-4], "running")
        running.append(progress_of("/".join(key[-4:]), partial_dir(run_dir), now))
    return Snapshot(counts, running, "sweep ETA: pass the plan (--method ...) to estimate it", str(results))


def snapshot_plan(jobs: list[Any], ctx: Any, perf_dirs: list[Path] | None = None) -> Snapshot:
    """The planned runs of a plan (`bench.runs.prepare`), with the runs left and the sweep's ETA from `bench plan`'s
    costs."""
    from bench.api import BenchError
    from bench.estimate import duration, estimate
    from bench.models.loading import default_device
    from bench.runs import triage
    from bench.store import partial_dir
    from bench.timing import device_name

    counts: dict[str, dict[str, int]] = {}
    running, now = [], time.time()
    for run in jobs:
        run_dir, method = run.run_dir, run.job.method
        if _live(run_dir):
            _count(counts, method, "running")
            running.append(progress_of(run.key.label(), partial_dir(run_dir), now))
            continue
        state = triage(run, ctx).state
        _count(counts, method, state if state in ("done", "failed") else "left")
    folders = perf_dirs or [Path("results") / "perf", Path(ctx.results) / "perf"]
    try:
        result = estimate(jobs, ctx, device_name(ctx.device or default_device()), folders)
        hours, parallel = result["total"]["hours_left"], max(len(running), 1)
        sweep = (f"sweep ETA: {duration(hours * 3600 / parallel)} ({result['total']['left']} runs not done, "
                 f"{hours:.2f} GPU-h by `bench plan`, over {parallel} running at once)")
    except BenchError as err:
        sweep = f"sweep ETA: unknown ({err})"
    return Snapshot(counts, running, sweep, str(ctx.results))


def _count(counts: dict[str, dict[str, int]], method: str, state: str) -> None:
    row = counts.setdefault(method, {})
    row[state] = row.get(state, 0) + 1


def render(snapshot: Snapshot) -> Any:
    """The snapshot as a rich renderable: the per-method table, the running runs' table, the sweep's ETA."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from bench.estimate import duration

    states = ["done", "running", "failed"] + (["left"] if any("left" in r for r in snapshot.counts.values()) else [])
    methods = Table(title=f"runs under {snapshot.title}" if snapshot.title else None, title_justify="left")
    methods.add_column("method")
    for state in states:
        methods.add_column(state, justify="right")
    for method, row in sorted(snapshot.counts.items()):
        methods.add_row(method, *(str(row.get(s, 0)) for s in states))
    if len(snapshot.counts) > 1:
        methods.add_row("total", *(str(sum(r.get(s, 0) for r in snapshot.counts.values())) for s in states),
                        style="bold")
    runs = Table(title="running", title_justify="left")
    for name, justify in (("run", "left"), ("stage", "left"), ("iteration", "right"), ("loss", "right"),
                          ("stage ETA", "right")):
        runs.add_column(name, justify=justify)
    for r in snapshot.running:
        it = f"{r.iteration}/{r.total}" if r.iteration is not None else "–"
        loss = f"{r.loss[0]} {r.loss[1]:.4g}" if r.loss else "–"
        runs.add_row(r.label, r.phase, it, loss, duration(r.eta_s) if r.eta_s is not None else "–")
    if not snapshot.running:
        runs.add_row("(none)", "", "", "", "")
    return Group(methods, runs, Text(snapshot.sweep))


def watch(snapshot: Callable[[], Snapshot], interval: float = 2.0, console: Any = None) -> None:
    """Redraw `render(snapshot())` every `interval` seconds until Ctrl-C."""
    from rich.live import Live

    with Live(render(snapshot()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(snapshot()), refresh=True)
        except KeyboardInterrupt:
            pass


def watch_status(results: Path, profile: str | None, methods: list[str] | None, variants: list[str] | None,
                 overrides: dict[str, Any], concepts: str, seeds: list[int] | None, backbone: str, data: Path | None,
                 suite: str | None, interval: float) -> None:
    """`bench status --watch`: the runs under `results`, or (with `methods`) the plan's runs and the sweep's ETA."""
    from bench.api import BenchError

    if interval <= 0:
        raise BenchError(f"--interval must be > 0 seconds, got {interval}")
    if not methods:
        if variants or overrides or seeds or concepts != "all":
            raise BenchError("--variant, --concepts, --seeds and --set select runs of a plan: pass --method too")
        watch(lambda: snapshot_results(results, profile), interval)
        return
    from bench.runs import SweepRequest, prepare, variants_for

    request = SweepRequest(methods=tuple(methods),
                           variants=tuple(variants_for(methods, variants or ["default"], overrides)),
                           concepts=concepts, seeds=tuple(seeds or [0]), profile=profile or "tiny",
                           backbone=backbone, data=data, results=results, suite=suite)
    jobs, ctx = prepare(request, check_images=False)
    watch(lambda: snapshot_plan(jobs, ctx), interval)
