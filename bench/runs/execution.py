"""Execute one job: skip what is done, lock, train (or prepare), sample, score, time and record it.

A planned run (`bench.runs.planned`) is trained, sampled on the protocol's prompts x evaluation seeds, scored,
timed, and recorded. Its method is instantiated once, from the class the planned run holds; nothing here looks a
method up by name or resolves its config again. Executors (`bench.executors`) call `execute_job` in whatever
process runs it and collect its typed `Outcome`.
What a re-run does with each kind of existing run, and how runs share a training: the `bench.runs` docstring.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError, Concept, Diverged, InfraError, infra_cause
from bench.api import views as api_views
from bench.concept_sets import dataset_of
from bench.config import to_dict
from bench.record import Evaluation, RunRecord, Timing, TrainedFrom, set_fields
from bench.runs.evaluation import evaluate, same_view_sampling
from bench.runs.loss_log import JsonlLog
from bench.runs.planned import PlannedRun, triage
from bench.runs.planning import ATTEMPT, EVAL_VERSION, Context, Job, load_concept
from bench.tracking import open_observer

STATUSES = ("done", "failed", "skipped", "kept_failed", "locked", "lost_lock", "crashed", "submitted")


@dataclass(frozen=True)
class Outcome:
    """What became of one planned run in an executor."""

    job: Job
    status: str
    """done | failed (recorded) | skipped (done before) | kept_failed (failed before, not retried) | locked (another
    process runs it) | lost_lock | crashed (its process died) | submitted (queued, `--no-wait`)."""
    run_dir: Path
    reason: str | None = None
    """Why it failed, crashed or is locked (the SLURM job id when submitted)."""


def find_trained(run: PlannedRun, ctx: Context) -> Path | None:
    """A finished run (any variant of this method, concept and seed) whose weights this run may sample instead
    of training: same training hash, status done, weights present. None if there is none, or with `--force`."""
    if ctx.force or not run.trains:  # nothing trained to share: a method without training prepares anew
        return None
    job = run.job
    method_dir = run.run_dir.parents[2]  # <results>/<profile>/<method>
    found = []
    for candidate in sorted(method_dir.glob(f"*/{job.concept}/seed{job.seed}")):
        record = store.read_run_record(candidate)
        if (record and record.done and record.training_hash == run.training_hash
                and (candidate / "weights").is_dir()):
            found.append((record.trained_from is not None, candidate))  # prefer a run that trained itself
    return min(found)[1] if found else None


def execute_job(run: PlannedRun, ctx: Context, on_step: Callable | None = None) -> Outcome:
    """Run one planned run unless it is done: train, sample, score, record.

    Failures inside the method (exceptions, divergence) are recorded as failed runs; the sweep goes on.
    User mistakes (BenchError) propagate. A kill at any moment leaves the run redoable (see `bench.store`).
    """
    job, run_dir = run.job, run.run_dir
    state = triage(run, ctx)
    if state.state in ("done", "failed"):
        _tidy(run_dir)
        return _outcome(job, run_dir, "skipped" if state.state == "done" else "kept_failed", state.record)
    lock = store.RunLock(run_dir)
    if not lock.acquire():
        return Outcome(job, "locked", run_dir, lock.describe())
    try:
        store.recover(run_dir, keep_partial=True)  # finish or undo what a killed attempt left
        state = triage(run, ctx)
        if state.state in ("done", "failed"):  # finished while we waited for the lock, or just recovered
            store.recover(run_dir, keep_partial=False)
            return _outcome(job, run_dir, "skipped" if state.state == "done" else "kept_failed", state.record)
        concept = load_concept(job, ctx)
        partial, attempts, resumed_from = _stage(run_dir, run.config_hash, ctx.resume)
        if state.record and state.record.status == "failed" and state.record.config_hash == run.config_hash:
            attempts += int(state.record.attempts or 1)  # --retry-failed: the failed tries count too
        record = _base_record(run, ctx)
        set_fields(record, dataset=dataset_of(job.concept, ctx.data), attempts=attempts,
                   resumed_from=resumed_from or None, training_hash=run.training_hash)
        donor = find_trained(run, ctx)
        observer = open_observer(ctx.tracking, record, partial, ctx.results, concept, run.profile.eval_seeds)
        try:
            set_fields(record, **_train_and_evaluate(run, ctx, concept, partial, on_step, resumed=resumed_from,
                                                     donor=donor, observer=observer))
            set_fields(record, status="done")
        except BenchError:
            from bench.models.checkpoint import find_checkpoints

            if not find_checkpoints(partial / "work"):
                shutil.rmtree(partial, ignore_errors=True)  # nothing worth keeping: leave nothing behind
            raise
        except Exception as err:  # noqa: BLE001 - a failed run is a result, recorded with its reason
            cause = infra_cause(err)
            if cause is not None:  # the environment failed, not the method: stop, keep the attempt resumable
                raise InfraError(f"{job.key.label()}: {cause}; the run is left unfinished (`bench run ... --resume` "
                                 f"continues it from its last checkpoint)") from err
            (partial / "traceback.txt").write_text(traceback.format_exc())
            set_fields(record, status="failed", reason=f"{type(err).__name__}: {err}".strip()[:500],
                       diverged=isinstance(err, Diverged), traceback="traceback.txt")
        finally:
            if observer is not None:  # final scores and status to the trackers; never raises
                observer.close(record)
        shutil.rmtree(partial / "work", ignore_errors=True)  # checkpoints are for kills, not for results
        (partial / ATTEMPT).unlink(missing_ok=True)
        set_fields(record, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if not lock.still_held():  # frozen past the stale timeout and taken over: the new owner decides
            return Outcome(job, "lost_lock", run_dir,
                           "the run's lock was taken over by another process; nothing committed")
        previous = store.read_run_record(run_dir)
        if record.status == "failed" and previous and previous.done:
            # never replace a finished result with a failure: keep the failure beside it
            sidecar = {**record.to_json(), "traceback_text": (partial / "traceback.txt").read_text()}
            store.write_json_atomic(store.failed_rerun_path(run_dir), sidecar)
            shutil.rmtree(partial, ignore_errors=True)
        else:
            store.commit_run(partial, run_dir, record)  # the one place a run record is written
        return _outcome(job, run_dir, record.status, record)
    finally:
        lock.release()


def _outcome(job: Job, run_dir: Path, status: str, record: RunRecord | None) -> Outcome:
    reason = record.reason if record and status in ("failed", "kept_failed") else None
    return Outcome(job, status, run_dir, reason)


def _tidy(run_dir: Path) -> None:
    """Remove what a killed process left beside a finished run, unless someone is working on it right now."""
    if not store.leftovers(run_dir):
        return
    lock = store.RunLock(run_dir)
    if lock.acquire():
        try:
            store.recover(run_dir, keep_partial=False)
        finally:
            lock.release()


def _stage(run_dir: Path, config_hash: str, resume: bool) -> tuple[Path, int, dict[str, int]]:
    """The `.partial` folder for this attempt: fresh, or (`resume`, same config hash) keeping the checkpoints and
    the loss log of the interrupted attempt. Returns (folder, attempt number, {checkpointer: iteration})."""
    from bench.models.checkpoint import find_checkpoints

    partial = store.partial_dir(run_dir)
    try:
        previous = json.loads((partial / ATTEMPT).read_text())
    except (OSError, ValueError):
        previous = None
    keep = resume and isinstance(previous, dict) and previous.get("config_hash") == config_hash
    partial = store.staging_dir(run_dir, ("work", "loss_log.jsonl", "samples", ATTEMPT) if keep else ())
    attempts = int(previous.get("attempts", 1)) + 1 if keep else 1
    store.write_json_atomic(partial / ATTEMPT, {"config_hash": config_hash, "attempts": attempts,
                                                "pid": os.getpid(), "host": os.uname().nodename})
    return partial, attempts, find_checkpoints(partial / "work") if keep else {}


def _base_record(run: PlannedRun, ctx: Context) -> RunRecord:
    job = run.job
    return RunRecord.start(
        schema=store.SCHEMA_VERSION, status="running", method=job.method, variant=job.variant,
        concept=job.concept, seed=job.seed, profile=job.profile, backbone=job.backbone,
        method_version=run.version, presentation=run.info.presentation_for(job.backbone),
        eval_version=EVAL_VERSION, config=to_dict(run.typed_config()), config_hash=run.config_hash,
        overrides=json.loads(job.overrides), models=run.models, metric_suite=ctx.suite_description(),
        versions=versions(), git_commit=git_commit(), started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        host=os.uname().nodename, pid=os.getpid())


def _evaluated(evaluation: dict[str, Any], views: dict[str, Any], timing: dict[str, Any], **fields: Any
               ) -> dict[str, Any]:
    """The fields a finished run sets: its own evaluation (`evaluate`'s result), its views, its timing (the
    evaluation's sampling timings joined in, and the process's CPU threads) and `fields`, as the record's typed
    parts."""
    import torch

    own = Evaluation.from_json(evaluation)
    return {"steps": own.steps, "metrics": own.metrics, "images": own.images, "real_vs_real": own.real_vs_real,
            "views": {k: v if isinstance(v, Evaluation) else Evaluation.from_json(v) for k, v in views.items()},
            "timing": Timing.from_json({**timing, **evaluation["timing"], "threads": torch.get_num_threads()}),
            **fields}


def _train_and_evaluate(run: PlannedRun, ctx: Context, concept: Concept, run_dir: Path, on_step: Callable | None,
                        resumed: dict[str, int] | None = None, donor: Path | None = None, observer: Any = None
                        ) -> dict[str, Any]:
    import torch

    from bench.models.loading import Models
    from bench.timing import AttemptClock, Stopwatch, across_attempts, device_name, peak_memory, reset_peak_memory

    if run.profile.name == "tiny":  # build the tiny models (seeded) now, not at first use inside the seeded run
        from bench.models.tiny import ensure_built

        ensure_built()
    from bench.models.profiles import method_roles
    from bench.models.speed import parse_speed

    job, profile = run.job, run.profile
    method_roles(run.method, profile.name)  # the loaders of the roles it declares, in this (maybe worker) process
    torch.manual_seed(job.seed)
    models = Models(profile, ctx.device, parse_speed(ctx.speed))
    method = run.method(run.typed_config())  # the one instance of the method for this run
    reset_peak_memory(models.device)
    if donor is not None:
        return _sample_trained(run, ctx, concept, method, models, run_dir, donor)
    if not run.trains:
        return _prepare_and_evaluate(run, ctx, concept, method, models, run_dir)

    def not_training() -> float:  # model loading and sample grids (`--sample-every`) are not training time
        return models.load_seconds + (observer.sample_seconds if observer else 0.0)

    clock = AttemptClock(run_dir / "work", resumed or None, not_training)
    log = JsonlLog(run_dir / "loss_log.jsonl", observer=observer)
    log.on_step = clock.steps(log, on_step)
    try:
        with Stopwatch(models.device) as sw:
            trained = method.train(concept, models, run_dir / "work", job.seed, log)
    finally:
        log.close()
    attempts = clock.finish(max(sw.seconds - not_training(), 0.0), log.iterations)
    train_s, iterations = across_attempts(attempts, run_dir / "loss_log.jsonl", log.iterations)
    trained.save(run_dir / "weights")
    evaluation = evaluate(trained, concept, profile.eval_seeds, run_dir / "images", ctx, models.device)
    views = {}
    for name, view in api_views(trained).items():
        views[name] = evaluate(view, concept, profile.eval_seeds, run_dir / "views" / name, ctx, models.device)
    timing = {"train_s": train_s, "load_s": models.load_seconds, "iterations": iterations,
              "it_per_s": iterations / train_s if train_s > 0 else None,
              "peak_memory": peak_memory(models.device), "resumed": bool(resumed), "attempts": attempts}
    return _evaluated(evaluation, views, timing, identifier=trained.identifier, loss_log="loss_log.jsonl",
                      device=device_name(models.device), trained_from=None,
                      speed=models.speed.resolved(models.device))


def _prepare_and_evaluate(run: PlannedRun, ctx: Context, concept: Concept, method: Any, models: Any,
                          run_dir: Path) -> dict[str, Any]:
    """A method without a training stage (`trains = False`): `prepare` conditions the model on the concept's
    photos, then it is saved, sampled and scored like a trained one. No loss log, no checkpoints; the record has
    `conditioning` (the photos' file names) and `timing.prepare_s`, and no `train_s` or `iterations`."""
    from bench.timing import Stopwatch, device_name, peak_memory

    with Stopwatch(models.device) as sw:
        trained = method.prepare(concept, models, run_dir / "work", run.job.seed)
    prepare_s = max(sw.seconds - models.load_seconds, 0.0)  # model loading is not preparation
    trained.save(run_dir / "weights")
    evaluation = evaluate(trained, concept, run.profile.eval_seeds, run_dir / "images", ctx, models.device)
    timing = {"prepare_s": prepare_s, "load_s": models.load_seconds, "peak_memory": peak_memory(models.device)}
    return _evaluated(evaluation, {}, timing, identifier=trained.identifier, trains=False,
                      conditioning=list(trained.conditioning), loss_log=None, device=device_name(models.device),
                      trained_from=None, speed=models.speed.resolved(models.device))


def _sample_trained(run: PlannedRun, ctx: Context, concept: Concept, method: Any, models: Any, run_dir: Path,
                    donor: Path) -> dict[str, Any]:
    """Evaluate another run's training with this job's sampling settings (same training hash, see `find_trained`).

    The donor's weights and loss log are linked into this run, so it stands on its own (`bench generate` works on
    it). A view sampled exactly as the donor sampled it (same steps) is not sampled again: its scores and images
    are taken over. Training time and iterations are the donor's, marked `reused_training`.
    """
    from bench.timing import device_name, peak_memory

    profile = run.profile
    donor_record = store.read_run_record(donor) or RunRecord()
    # the donor's views can be taken over only if they were sampled and scored exactly as this run would do it
    def as_stored(value: Any) -> Any:  # what a value reads back as from record.json
        return json.loads(json.dumps(value, default=str))

    same_evaluation = (donor_record.eval_version == EVAL_VERSION
                       and same_view_sampling(run.typed_config(), donor_record.config or {})
                       and donor_record.metric_suite == as_stored(ctx.suite_description())
                       and donor_record.models == as_stored(run.models))
    store.link_tree(donor / "weights", run_dir / "weights")
    if (donor / "loss_log.jsonl").is_file():
        shutil.copy2(donor / "loss_log.jsonl", run_dir / "loss_log.jsonl")
    trained = method.load(run_dir / "weights", models)
    evaluation = evaluate(trained, concept, profile.eval_seeds, run_dir / "images", ctx, models.device)
    views = {}
    for name, view in api_views(trained).items():
        before = (donor_record.views or {}).get(name)
        if (same_evaluation and before and before.steps == view.default_steps
                and (donor / "views" / name).is_dir()):
            store.link_tree(donor / "views" / name, run_dir / "views" / name)
            views[name] = before
        else:
            views[name] = evaluate(view, concept, profile.eval_seeds, run_dir / "views" / name, ctx, models.device)
    source = donor_record.trained_from or TrainedFrom.from_json({
        "run": str(donor.relative_to(Path(ctx.results))), "variant": donor_record.variant or None,
        "config_hash": donor_record.config_hash})
    trained_timing = {k: v for k, v in (donor_record.timing.to_json() if donor_record.timing else {}).items()
                      if k in ("train_s", "iterations", "it_per_s", "resumed")}
    timing = {**trained_timing, "load_s": models.load_seconds, "reused_training": True,
              "peak_memory": peak_memory(models.device)}
    return _evaluated(evaluation, views, timing, identifier=trained.identifier, loss_log="loss_log.jsonl",
                      device=device_name(models.device), trained_from=source,
                      speed=models.speed.resolved(models.device))


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "diffusers", "transformers", "peft", "open_clip_torch", "timm", "onestep-bench"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
