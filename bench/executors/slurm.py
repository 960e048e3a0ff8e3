"""The `slurm` executor, through submitit: one SLURM job per run or one job array, logs and submission files in
`<results>/_slurm/`. Only runs with work to do are submitted; a job that hits its time limit or is preempted is
requeued by submitit and continues from its last checkpoint; `--cluster local` runs the same submission here."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.executors.options import ExecOptions, slurm_resources
from bench.executors.progress import progress_display, report_failure
from bench.runs import Context, Outcome, PlannedRun, execute_job, triage

SLURM_FOLDER = "_slurm"


class SlurmTask:
    """What a SLURM job runs: `execute_job` for one planned run. On a time limit or preemption submitit calls
    `checkpoint`, which requeues the same run with `resume=True`, so it continues from its last checkpoint.
    Plug-in methods are found in the job as in every process: through $BENCH_INCLUDE, which the job inherits
    (SLURM exports the submitter's environment; submitit's local cluster runs with it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __call__(self, run: PlannedRun) -> Outcome:
        return execute_job(run, self.ctx)

    def checkpoint(self, run: PlannedRun) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SlurmTask(dataclasses.replace(self.ctx, resume=True)), run)


def run_slurm(runs: list[PlannedRun], ctx: Context, opts: ExecOptions) -> list[Outcome]:
    """Submit the runs that have work to do through submitit; wait for them with a progress display."""
    import submitit

    from bench.store import RunLock

    ctx = dataclasses.replace(
        ctx, results=Path(ctx.results).resolve(), data=Path(ctx.data).resolve(),
        concept_dirs={k: (str(Path(f).resolve()), noun) for k, (f, noun) in ctx.concept_dirs.items()})
    runs = [dataclasses.replace(run, run_dir=run.run_dir.resolve()) for run in runs]  # a node may start elsewhere
    outcomes: list[Outcome] = []
    todo: list[PlannedRun] = []
    for run in runs:  # submit only what needs doing: a queued no-op still costs a slot
        state = triage(run, ctx)
        lock = RunLock(state.run_dir)
        if state.state in ("done", "failed"):
            status = "skipped" if state.state == "done" else "kept_failed"
            reason = state.record.reason if state.record and status == "kept_failed" else None
            outcomes.append(Outcome(run.job, status, state.run_dir, reason))
        elif lock.path.exists() and not lock.is_stale():
            outcomes.append(Outcome(run.job, "locked", state.run_dir, lock.describe()))
        else:
            todo.append(run)
    if not todo:
        return outcomes
    if opts.cluster != "slurm":
        from bench.executors.caches import warm_caches

        warm_caches(todo, ctx)  # a cluster's nodes may not share this machine's cache; local jobs do

    folder = ctx.results / SLURM_FOLDER
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.cluster)
    gpus = 1 if opts.gpus_per_job is None else opts.gpus_per_job
    params: dict[str, Any] = {"name": "bench", "timeout_min": opts.time or 120,
                              **slurm_resources(gpus=gpus, cpus=opts.cpus_per_job, partition=opts.partition,
                                                mem=opts.mem, sbatch=opts.sbatch)}
    extra = params.get("slurm_additional_parameters", {})
    executor.update_parameters(**params)
    task = SlurmTask(ctx)
    leaders, followers = split_shared_training(todo)
    todo = leaders + [job for job, _ in followers]
    try:
        if opts.array:
            submitted = executor.map_array(task, leaders)
        else:
            submitted = [executor.submit(task, job) for job in leaders]
        if followers:  # each starts after the run whose training it samples (afterany: it trains if that failed)
            by_job = dict(zip(leaders, submitted))
            after = {job: by_job[leader].job_id for job, leader in followers}
            if opts.array:
                master = submitted[0].job_id.split("_")[0]
                executor.update_parameters(slurm_additional_parameters={**extra, "dependency": f"afterany:{master}"})
                submitted += executor.map_array(task, [job for job, _ in followers])
            else:
                for job, _ in followers:
                    executor.update_parameters(
                        slurm_additional_parameters={**extra, "dependency": f"afterany:{after[job]}"})
                    submitted.append(executor.submit(task, job))
    except Exception as err:  # noqa: BLE001 - sbatch refused the submission: say why, in one line
        lines = [x for x in str(err).strip().splitlines() if x.strip()]
        raise BenchError(f"SLURM submission failed: {lines[-1] if lines else type(err).__name__}") from None
    ids = ", ".join(j.job_id for j in submitted)
    if not opts.wait:
        from rich.console import Console

        Console(stderr=True).print(f"submitted {len(submitted)} job(s) ({ids}); logs in {folder}; "
                                   f"follow with `bench status --results {ctx.results}`")
        return outcomes + [Outcome(run.job, "submitted", run.run_dir, sj.job_id) for run, sj in zip(todo, submitted)]
    return outcomes + _wait(todo, submitted, ctx, folder, opts.cluster)


def split_shared_training(runs: list[PlannedRun]) -> tuple[list[PlannedRun], list[tuple[PlannedRun, PlannedRun]]]:
    """(leaders, [(follower, its leader)]): the first run of each training hash trains; the others share it."""
    first: dict[str, PlannedRun] = {}
    leaders, followers = [], []
    for run in runs:
        key = run.training_key
        if key in first:
            followers.append((run, first[key]))
        else:
            first[key] = run
            leaders.append(run)
    return leaders, followers


def _wait(todo: list[PlannedRun], submitted: list[Any], ctx: Context, folder: Path, cluster: str) -> list[Outcome]:
    outcomes = []
    remaining = dict(enumerate(submitted))
    poll = 2.0 if cluster != "slurm" else 15.0
    with progress_display() as progress:
        sweep_task = progress.add_task("sweep (slurm)", total=len(submitted))
        while remaining:
            states: dict[str, int] = {}
            for i, sj in list(remaining.items()):
                if sj.done():
                    del remaining[i]
                    outcome = _result(todo[i], sj, ctx)
                    outcomes.append(outcome)
                    report_failure(progress, outcome)
                    progress.advance(sweep_task)
                else:
                    state = str(sj.state).lower()
                    states[state] = states.get(state, 0) + 1
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            progress.update(sweep_task, description=f"sweep (slurm{': ' + detail if detail else ''}) logs {folder}")
            if remaining:
                time.sleep(poll)
    return outcomes


def _result(run: PlannedRun, sj: Any, ctx: Context) -> Outcome:
    try:
        return sj.result()
    except Exception as err:  # noqa: BLE001 - the job died or raised outside the method
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        cause = next((x for x in reversed(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b", x)),
                     lines[-1] if lines else type(err).__name__)
        return Outcome(run.job, "crashed", run.run_dir,
                       f"SLURM job {sj.job_id}: {cause[:300]} (log: {sj.paths.stderr})")
