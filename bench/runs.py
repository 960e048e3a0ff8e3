"""Plan jobs (method x variant x concept x seed), skip what is done, execute one job, record it.

A job is trained, sampled on the protocol's prompts x evaluation seeds, scored, timed, and recorded. Methods are
reached only through the registry. Executors (`bench.executors`) call `execute_job` in whatever process runs it.

What a re-run does with each run (`execute_job`):
- done, same config hash: skipped (`--force` recomputes);
- failed, same config hash: kept as failed and reported, NOT retried: a failure (divergence, a bug) is a result
  and retrying it blindly would hide it or burn GPU hours. `--retry-failed` re-runs them;
- recorded with another config hash (the config, the code's EVAL_VERSION or the models changed): recomputed;
- locked by a live process (here, or elsewhere with a fresh heartbeat): left alone, reported `locked`;
- interrupted (a `.partial` left by a killed process): redone from scratch, or with `--resume` continued from
  the method's last checkpoint (same config hash only).

Runs that differ only in sampling-only config fields (`bench.config.SAMPLING_ONLY`: step counts, guidance) have
the same *training hash*. A run whose training hash matches a finished run of the same method, concept and seed
(any variant) is not trained again: its method loads that run's weights (`Method.load`) and samples them with its
own settings; the record names the source (`trained_from`) and carries its training time. `--force` retrains.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError, Concept, Diverged, InfraError, infra_cause
from bench.api import views as api_views
from bench.config import build, stable_hash, to_dict, training_fields
from bench.record import RunRecord, VariantName
from bench.registry import get_method, unknown

ATTEMPT = "attempt.json"
"""In a `.partial` folder: which config hash the attempt is for and how many attempts there were."""

EVAL_VERSION = 2
"""Bump when image generation or scoring changes in a way that invalidates finished runs. 2: each (prompt,
evaluation seed) has its own noise (`sampling.eval_noise_seed`); methods declare their evaluation phrase;
multi-step SD-Turbo samples with Euler ancestral; SD 2.1 at its native size; metric fidelity."""


@dataclass(frozen=True)
class Job:
    """One run to do. `overrides` are config overrides on top of the named variant (a JSON object string)."""

    method: str
    variant: str
    concept: str
    seed: int
    profile: str
    backbone: str = "sd-turbo"
    overrides: str = "{}"

    @property
    def key(self) -> store.RunKey:
        return store.RunKey(self.profile, self.method, self.variant, self.concept, self.seed)


@dataclass
class Context:
    """Everything a job needs beyond its own fields; plain values, so it can be pickled to other processes."""

    data: Path
    results: Path
    suite: str
    device: str | None = None
    weights: dict[str, str] = field(default_factory=dict)
    force: bool = False
    eval_batch_size: int = 25
    concept_dirs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """User concept folders: name -> (folder, class noun); others come from DreamBench under `data`."""
    resume: bool = False
    """Continue an interrupted run from its last checkpoint instead of starting it over."""
    retry_failed: bool = False
    """Re-run runs recorded as failed (with the same config hash); by default they are kept and reported."""
    speed: dict[str, str] = field(default_factory=dict)
    """Speed switches (`bench.models.speed.Speed` fields); recorded with each run, not part of its hash."""


def default_suite(profile: str) -> str:
    return "tiny" if profile == "tiny" else "paper"


def named_variants(methods: list[str], names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for variants a method defines; an unknown name fails with the valid ones."""
    out = []
    for name in names:
        for method in methods:
            cls = get_method(method)
            if name not in cls.variants:
                raise unknown(f"variant of {cls.name}", name, sorted(cls.variants))
        out.append((name, {}))
    return out


def variants_for(methods: list[str], names: list[str], overrides: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`bench run --variant a,b --set k=v`: each named variant, with ad-hoc overrides forming their own name."""
    from bench.ablations import override_suffix

    suffix = override_suffix(overrides) if overrides else ""
    return [(f"{name}+{suffix}" if suffix else name, {**base, **overrides})
            for name, base in named_variants(methods, names)]


def resolve_config(job: Job, iteration_cap: int | None, step_cap: int | None = None) -> Any:
    """The method's config for this job: the named variant's overrides, then the job's, then the profile's caps.

    `iteration_cap` applies to schedule lengths, the fields declared `SCHEDULE` (and `checkpoint_every` to half of
    it, so capped runs resume mid-run); `step_cap` to step counts, the fields declared `SAMPLING_STEPS` or
    `STEP_COUNT` (`bench.contract`; fields without metadata are still read by name, a deprecated fallback).
    """
    from bench.contract import is_schedule, is_step_count

    cls = get_method(job.method)
    base = VariantName.parse(job.variant).base
    overrides = {**cls.variants.get(base, {}), **json.loads(job.overrides)}
    config = build(cls.Config, overrides)
    capped = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if iteration_cap and is_schedule(f):
            capped[f.name] = min(value, iteration_cap)
        elif iteration_cap and f.name == "checkpoint_every" and value:  # a capped run checkpoints mid-run too
            capped[f.name] = min(value, max(1, iteration_cap // 2))
        elif step_cap and is_step_count(f):
            capped[f.name] = min(value, step_cap)
    return dataclasses.replace(config, **capped) if capped else config


def plan(methods: list[str], variants: list[tuple[str, dict[str, Any]]], concepts: list[str], seeds: list[int],
         profile: str, backbone: str = "sd-turbo") -> list[Job]:
    """Every (method, variant, concept, seed) job, validated up front so a typo fails before any work."""
    jobs = []
    for method in methods:
        cls = get_method(method)
        for name, overrides in variants:
            build(cls.Config, {**cls.variants.get(VariantName.parse(name).base, {}), **overrides})  # fail now
            text = json.dumps(overrides, sort_keys=True)
            jobs += [Job(method, name, c, s, profile, backbone, text) for c in concepts for s in seeds]
    return jobs


def _version(method: str) -> int:
    from bench.contract import MethodInfo

    return MethodInfo.of(get_method(method)).version


def job_hash(job: Job, config: Any, profile_desc: dict[str, Any], suite: dict[str, Any]) -> str:
    """Everything that changes a run's output; a finished record with the same hash is not recomputed."""
    return stable_hash({"job": dataclasses.asdict(job), "config": hashed_config(config), "models": profile_desc,
                        "suite": suite["name"], "suite_version": suite.get("version", 1),
                        "eval_version": EVAL_VERSION, "schema": store.SCHEMA_VERSION,
                        "method_version": _version(job.method)})


def outdated_reason(record: RunRecord, job: Job, config: Any, profile_desc: dict[str, Any],
                    suite: dict[str, Any]) -> str:
    """Why a record no longer matches its job, and what brings it up to date: a re-run (training changed), a
    re-sample (the evaluation changed; `bench run` samples the run's own weights when its training still matches),
    or a re-score (only the metric suite changed: `bench score`)."""
    version = _version(job.method)
    recorded = record.config or {}

    def differs(wanted: dict[str, Any]) -> bool:
        return {k: recorded.get(k) for k in wanted} != wanted

    recorded_version = 1 if record.method_version is None else record.method_version
    if recorded_version != version:
        return f"re-run: method version {recorded_version} -> {version} (training changed)"
    if record.models != profile_desc or differs(training_fields(config)):
        return "re-run: other models or training config"
    if record.eval_version != EVAL_VERSION or differs(hashed_config(config)):
        return (f"re-sample: evaluation version {record.eval_version} -> {EVAL_VERSION} or sampling config "
                "changed (`bench run` samples and scores again, reusing the training where it still matches)")
    old = record.metric_suite or {}
    if (old.get("name"), old.get("version", 1)) != (suite["name"], suite.get("version", 1)):
        return (f"re-score: metric suite {old.get('name')} v{old.get('version', 1)} -> {suite['name']} "
                f"v{suite.get('version', 1)} (`bench score --suite {suite['name']}`)")
    return "recorded with another config hash; `bench run` recomputes it"


def training_hash(job: Job, config: Any, profile_desc: dict[str, Any]) -> str:
    """Everything that changes a run's trained weights: `job_hash` without the variant's name, the evaluation and
    the sampling-only config fields. Runs with equal training hashes share one training."""
    return stable_hash({"method": job.method, "method_version": _version(job.method),
                        "concept": job.concept, "seed": job.seed, "profile": job.profile, "backbone": job.backbone,
                        "config": training_fields(config), "models": profile_desc, "schema": store.SCHEMA_VERSION})


def find_trained(job: Job, ctx: Context, train_hash: str) -> Path | None:
    """A finished run (any variant of this method, concept and seed) whose weights this job may sample instead
    of training: same training hash, status done, weights present. None if there is none, or with `--force`."""
    if ctx.force or not trains(job.method):  # nothing trained to share: a method without training prepares anew
        return None
    method_dir = job.key.path(ctx.results).parents[2]  # <results>/<profile>/<method>
    found = []
    for candidate in sorted(method_dir.glob(f"*/{job.concept}/seed{job.seed}")):
        record = store.read_run_record(candidate)
        if record and record.done and record.training_hash == train_hash and (candidate / "weights").is_dir():
            found.append((record.trained_from is not None, candidate))  # prefer a run that trained itself
    return min(found)[1] if found else None


def hashed_config(config: Any) -> dict[str, Any]:
    """The config as hashed: fields marked `metadata={"hash": False}` (e.g. `checkpoint_every`) never change the
    result, so changing them does not invalidate finished runs."""
    out = to_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("hash") is False:
            out.pop(f.name, None)
    return out


class JsonlLog:
    """The `Log` a method writes to: one JSON line per iteration, and a callback for live progress.

    A resumed attempt appends to the interrupted attempt's log and repeats the iterations after its checkpoint;
    `close` keeps the last row of each (phase, iteration), so the log reads as one uninterrupted run.
    """

    def __init__(self, path: Path, on_step: Callable[[str, int, int, dict], None] | None = None) -> None:
        self.path, self.on_step = path, on_step
        self.phase, self.total, self.iterations = "train", 0, 0
        self._appended = path.exists() and path.stat().st_size > 0
        self._file = open(path, "a", buffering=1)  # line-buffered: readable while the run goes

    def begin(self, phase: str, total: int) -> None:
        self.phase, self.total = phase, total
        if self.on_step:
            self.on_step(phase, 0, total, {})

    def __call__(self, iteration: int, **scalars: float) -> None:
        self.iterations += 1
        row = {"phase": self.phase, "iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        if self.on_step:
            self.on_step(self.phase, iteration + 1, self.total, scalars)

    def close(self) -> None:
        self._file.close()
        if self._appended:
            compact_loss_log(self.path)


def compact_loss_log(path: Path) -> None:
    """Keep the last row of each (phase, iteration), in order; drop a torn last line from a kill."""
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            key = (row["phase"], int(row["iteration"]))
        except (ValueError, KeyError, TypeError):
            continue
        rows.pop(key, None)  # a repeat moves to where the resumed attempt wrote it
        rows[key] = row
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    os.replace(tmp, path)


def load_concept(job: Job, ctx: Context) -> Concept:
    from bench import data

    if job.concept in ctx.concept_dirs:
        folder, noun = ctx.concept_dirs[job.concept]
        return data.load_folder_concept(Path(folder), noun, name=job.concept, prompts_root=ctx.data)
    return data.select_concepts(ctx.data, job.concept)[0]


# --- a sweep, validated before any work -----------------------------------------------------------------------


def check_device(device: str | None) -> None:
    """A `--device` that torch does not know, or a CUDA device this machine does not have, is one line (exit 2)
    before any work, not a failed run per job."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise BenchError(f"unknown --device '{device}'; valid: cpu, cuda, cuda:N, mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and (count == 0 or (parsed.index or 0) >= count):
        raise BenchError(f"--device {device}: this machine has {count} CUDA device(s); "
                         f"use --device cpu or another index")


def prepare(methods: list[str], variants: list[tuple[str, dict[str, Any]]], concepts: str, seeds: list[int],
            profile: str, backbone: str, data: Path | None, results: Path, suite: str | None = None,
            device: str | None = None, weights: list[str] | None = None, force: bool = False, resume: bool = False,
            retry_failed: bool = False, concept_dir: Path | None = None, class_noun: str | None = None,
            check_images: bool = True, speed: list[str] | None = None) -> tuple[list[Job], Context]:
    """The jobs and context of one `bench run`/`bench ablate`; every user mistake fails here, before any work.

    Checks names (methods, variants, config keys, profile, backbone, suite, concepts), `--weights` paths
    (safetensors only) and decodes every reference image of the concepts that still have work to do.
    """
    from bench import data as dataset
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile, parse_weights
    from bench.paths import data_root

    check_device(device)
    check_no_training(methods, variants, resume)
    weight_map = parse_weights(weights or [])
    get_profile(profile, backbone, weight_map)  # validates profile, backbone and weight groups up front
    check_weight_paths(weight_map)
    suite = suite or default_suite(profile)
    get_suite(suite)
    if not seeds:
        raise BenchError("no seeds given; e.g. --seeds 0 or --seeds 0,1,2,3")
    root = data_root(data)
    from bench.models.speed import parse_speed

    ctx = Context(data=root, results=Path(results), suite=suite, device=device, weights=weight_map, force=force,
                  resume=resume, retry_failed=retry_failed, speed=dataclasses.asdict(parse_speed(speed)))
    if concept_dir is not None:
        if not class_noun:
            raise BenchError("--concept-dir needs --class-noun (e.g. --class-noun dog)")
        concept = dataset.load_folder_concept(concept_dir, class_noun, prompts_root=root)
        chosen = [dataclasses.replace(concept, name=dataset.user_concept_name(concept))]  # keyed by its content
        ctx.concept_dirs[chosen[0].name] = (str(concept_dir), class_noun)
    else:
        chosen = dataset.select_concepts(root, concepts)
    jobs = plan(methods, variants, [c.name for c in chosen], seeds, profile, backbone)
    if check_images:
        todo = {job.concept for job in jobs if triage(job, ctx).state not in ("done", "failed")}
        for concept in chosen:
            if concept.name in todo:
                for path in concept.images:
                    dataset.load_image(path)  # a corrupt, truncated or non-image file: one line naming it
    return jobs, ctx


def check_weight_paths(weight_map: dict[str, str]) -> None:
    """`--weights GROUP=PATH`: a local path must exist and hold safetensors (pickles are never loaded)."""
    for group, source in weight_map.items():
        path = Path(source).expanduser()
        looks_local = source.startswith(("/", ".", "~")) or path.exists()
        if looks_local:
            store.check_safetensors(path, f"--weights {group}")


def trains(method: str) -> bool:
    """Whether a registered method has a training stage (`Method.trains`, default True)."""
    return bool(getattr(get_method(method), "trains", True))


def schedule_fields(config_cls: type) -> set[str]:
    """The config fields that set a schedule length: marked `SCHEDULE`, or named by convention (`iterations`,
    `*_iters`, `checkpoint_every`)."""
    fields = {f.name for f in dataclasses.fields(config_cls) if f.metadata.get("schedule")}
    return fields | {"iterations", "checkpoint_every"}


def check_no_training(methods: list[str], variants: list[tuple[str, dict[str, Any]]], resume: bool) -> None:
    """A method that does not train (`trains = False`) has nothing to resume and no iterations to set: `--resume`
    or an iteration override (`--set iterations=...`, any `SCHEDULE` field) for it is one line (exit 2)."""
    for method in methods:
        if trains(method):
            continue
        if resume:
            raise BenchError(f"--resume: method '{method}' does not train, so it has no checkpoint to continue; "
                             f"run it without --resume (an unfinished run is simply redone)")
        cls = get_method(method)
        for _, overrides in variants:
            for key in overrides:
                if key in schedule_fields(cls.Config) or key.endswith("_iters"):
                    raise BenchError(f"--set {key}: method '{method}' does not train, so it has no iterations to "
                                     f"set; drop the override (its settings: "
                                     f"{', '.join(f.name for f in dataclasses.fields(cls.Config))})")


@dataclass
class Triage:
    """Where one job stands: its config hash, its record (if any) and what a run would do with it."""

    config_hash: str
    run_dir: Path
    record: RunRecord | None
    state: str
    """done | failed (kept, same hash) | outdated (recorded with another hash) | todo (no record, or retried)."""


def _resolve(job: Job, ctx: Context) -> tuple[Any, Any, dict[str, Any], str]:
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile

    profile = get_profile(job.profile, job.backbone, ctx.weights).for_method(job.method)
    config = resolve_config(job, profile.iteration_cap, profile.step_cap)
    suite = get_suite(ctx.suite).describe()
    return profile, config, suite, job_hash(job, config, profile.describe(), suite)


def training_key(job: Job, ctx: Context) -> str:
    """The job's training hash: executors never train two jobs with the same key at once, so the second one
    samples the first one's weights instead of training them again."""
    profile, config, _, config_hash = _resolve(job, ctx)
    if not trains(job.method):  # nothing to share: no job waits for another
        return config_hash
    return training_hash(job, config, profile.describe())


def triage(job: Job, ctx: Context, config_hash: str | None = None) -> Triage:
    config_hash = config_hash or _resolve(job, ctx)[3]
    run_dir = job.key.path(ctx.results)
    record = store.read_run_record(run_dir)  # a record from a newer schema raises a one-line BenchError
    if record is None:
        state = "todo"
    elif record.config_hash != config_hash:
        state = "outdated"
    elif ctx.force:
        state = "todo"
    elif record.done:
        state = "done"
    elif record.status == "failed" and not ctx.retry_failed:
        state = "failed"
    else:
        state = "todo"
    return Triage(config_hash, run_dir, record, state)


# --- one job -------------------------------------------------------------------------------------------------


def execute_job(job: Job, ctx: Context, on_step: Callable | None = None) -> dict[str, Any]:
    """Run one job unless it is done: train, sample, score, record. Returns a short summary.

    Failures inside the method (exceptions, divergence) are recorded as failed runs; the sweep goes on.
    User mistakes (BenchError) propagate. A kill at any moment leaves the run redoable (see `bench.store`).
    """
    profile, config, suite, config_hash = _resolve(job, ctx)
    train_hash = training_hash(job, config, profile.describe())
    state = triage(job, ctx, config_hash)
    run_dir = state.run_dir
    if state.state in ("done", "failed"):
        _tidy(run_dir)
        return _outcome(job, run_dir, "skipped" if state.state == "done" else "kept_failed", state.record)
    lock = store.RunLock(run_dir)
    if not lock.acquire():
        return {"job": job, "status": "locked", "run_dir": run_dir, "reason": lock.describe()}
    try:
        store.recover(run_dir, keep_partial=True)  # finish or undo what a killed attempt left
        state = triage(job, ctx, config_hash)
        if state.state in ("done", "failed"):  # finished while we waited for the lock, or just recovered
            store.recover(run_dir, keep_partial=False)
            return _outcome(job, run_dir, "skipped" if state.state == "done" else "kept_failed", state.record)
        concept = load_concept(job, ctx)
        partial, attempts, resumed_from = _stage(run_dir, config_hash, ctx.resume)
        if state.record and state.record.status == "failed" and state.record.config_hash == config_hash:
            attempts += int(state.record.attempts or 1)  # --retry-failed: the failed tries count too
        record = _base_record(job, config, config_hash, profile, suite)
        record.update(attempts=attempts, resumed_from=resumed_from or None, training_hash=train_hash)
        donor = find_trained(job, ctx, train_hash)
        try:
            record.update(_train_and_evaluate(job, ctx, concept, profile, config, partial, on_step,
                                              resumed=bool(resumed_from), donor=donor))
            record["status"] = "done"
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
            record.update(status="failed", reason=f"{type(err).__name__}: {err}".strip()[:500],
                          diverged=isinstance(err, Diverged))
            (partial / "traceback.txt").write_text(traceback.format_exc())
            record["traceback"] = "traceback.txt"
        shutil.rmtree(partial / "work", ignore_errors=True)  # checkpoints are for kills, not for results
        (partial / ATTEMPT).unlink(missing_ok=True)
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not lock.still_held():  # frozen past the stale timeout and taken over: the new owner decides
            return {"job": job, "status": "lost_lock", "run_dir": run_dir,
                    "reason": "the run's lock was taken over by another process; nothing committed"}
        previous = store.read_run_record(run_dir)
        if record["status"] == "failed" and previous and previous.done:
            # never replace a finished result with a failure: keep the failure beside it
            record["traceback_text"] = (partial / "traceback.txt").read_text()
            store.write_json_atomic(store.failed_rerun_path(run_dir), record)
            shutil.rmtree(partial, ignore_errors=True)
        else:
            store.commit_run(partial, run_dir, record)
        return _outcome(job, run_dir, record["status"], record)
    finally:
        lock.release()


def _outcome(job: Job, run_dir: Path, status: str, record: RunRecord | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(record, dict):  # the record this attempt just wrote
        record = RunRecord.from_json(record)
    reason = record.reason if record and status in ("failed", "kept_failed") else None
    return {"job": job, "status": status, "run_dir": run_dir, "reason": reason}


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
    partial = store.staging_dir(run_dir, ("work", "loss_log.jsonl", ATTEMPT) if keep else ())
    attempts = int(previous.get("attempts", 1)) + 1 if keep else 1
    store.write_json_atomic(partial / ATTEMPT, {"config_hash": config_hash, "attempts": attempts,
                                                "pid": os.getpid(), "host": os.uname().nodename})
    return partial, attempts, find_checkpoints(partial / "work") if keep else {}


def _base_record(job: Job, config: Any, config_hash: str, profile: Any, suite: dict) -> dict[str, Any]:
    return {
        "schema": store.SCHEMA_VERSION, "status": "running", "method": job.method, "variant": job.variant,
        "concept": job.concept, "seed": job.seed, "profile": job.profile, "backbone": job.backbone,
        "method_version": _version(job.method), "eval_version": EVAL_VERSION, "config": to_dict(config),
        "config_hash": config_hash,
        "overrides": json.loads(job.overrides), "models": profile.describe(), "metric_suite": suite,
        "versions": versions(), "git_commit": git_commit(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": os.uname().nodename, "pid": os.getpid(),
    }


def _train_and_evaluate(job: Job, ctx: Context, concept: Concept, profile: Any, config: Any, run_dir: Path,
                        on_step: Callable | None, resumed: bool = False, donor: Path | None = None
                        ) -> dict[str, Any]:
    import torch

    from bench.models.loading import Models
    from bench.timing import Stopwatch, device_name, peak_memory, reset_peak_memory

    if profile.name == "tiny":  # build the tiny models (seeded) now, not at first use inside the seeded run
        from bench.models.tiny import ensure_built

        ensure_built()
    from bench.models.speed import parse_speed

    torch.manual_seed(job.seed)
    models = Models(profile, ctx.device, parse_speed(ctx.speed))
    method = get_method(job.method)(config)
    reset_peak_memory(models.device)
    if donor is not None:
        return _sample_trained(job, ctx, concept, profile, config, method, models, run_dir, donor)
    if not trains(job.method):
        return _prepare_and_evaluate(job, ctx, concept, profile, method, models, run_dir)
    log = JsonlLog(run_dir / "loss_log.jsonl", on_step)
    try:
        with Stopwatch(models.device) as sw:
            trained = method.train(concept, models, run_dir / "work", job.seed, log)
    finally:
        log.close()
    train_s = max(sw.seconds - models.load_seconds, 0.0)  # model loading is not training time
    trained.save(run_dir / "weights")
    evaluation = evaluate(trained, concept, profile.eval_seeds, run_dir / "images", ctx, models.device)
    views = {}
    for name, view in api_views(trained).items():
        views[name] = evaluate(view, concept, profile.eval_seeds, run_dir / "views" / name, ctx, models.device)
    return {
        **evaluation, "views": views, "identifier": trained.identifier, "loss_log": "loss_log.jsonl",
        "device": device_name(models.device), "trained_from": None, "speed": models.speed.resolved(models.device),
        "timing": {"train_s": train_s, "load_s": models.load_seconds, "iterations": log.iterations,
                   "it_per_s": log.iterations / train_s if train_s > 0 else None,
                   "peak_memory": peak_memory(models.device), "resumed": resumed, **evaluation.pop("timing")},
    }


def _prepare_and_evaluate(job: Job, ctx: Context, concept: Concept, profile: Any, method: Any, models: Any,
                          run_dir: Path) -> dict[str, Any]:
    """A method without a training stage (`trains = False`): `prepare` conditions the model on the concept's
    photos, then it is saved, sampled and scored like a trained one. No loss log, no checkpoints; the record has
    `conditioning` (the photos' file names) and `timing.prepare_s`, and no `train_s` or `iterations`."""
    from bench.timing import Stopwatch, device_name, peak_memory

    with Stopwatch(models.device) as sw:
        trained = method.prepare(concept, models, run_dir / "work", job.seed)
    prepare_s = max(sw.seconds - models.load_seconds, 0.0)  # model loading is not preparation
    trained.save(run_dir / "weights")
    evaluation = evaluate(trained, concept, profile.eval_seeds, run_dir / "images", ctx, models.device)
    return {
        **evaluation, "views": {}, "identifier": trained.identifier, "trains": False,
        "conditioning": list(trained.conditioning), "loss_log": None, "device": device_name(models.device),
        "trained_from": None, "speed": models.speed.resolved(models.device),
        "timing": {"prepare_s": prepare_s, "load_s": models.load_seconds, "peak_memory": peak_memory(models.device),
                   **evaluation.pop("timing")},
    }


def _sample_trained(job: Job, ctx: Context, concept: Concept, profile: Any, config: Any, method: Any, models: Any,
                    run_dir: Path, donor: Path) -> dict[str, Any]:
    """Evaluate another run's training with this job's sampling settings (same training hash, see `find_trained`).

    The donor's weights and loss log are linked into this run, so it stands on its own (`bench generate` works on
    it). A view sampled exactly as the donor sampled it (same steps) is not sampled again: its scores and images
    are taken over. Training time and iterations are the donor's, marked `reused_training`.
    """
    from bench.timing import device_name, peak_memory

    from bench.metrics import get_suite

    donor_record = store.read_run_record(donor) or RunRecord()
    # the donor's views can be taken over only if they were sampled and scored exactly as this run would do it
    def as_stored(value: Any) -> Any:  # what a value reads back as from record.json
        return json.loads(json.dumps(value, default=str))

    same_evaluation = (donor_record.eval_version == EVAL_VERSION
                       and same_view_sampling(config, donor_record.config or {})
                       and donor_record.metric_suite == as_stored(get_suite(ctx.suite).describe())
                       and donor_record.models == as_stored(profile.describe()))
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
            views[name] = before.to_json()
        else:
            views[name] = evaluate(view, concept, profile.eval_seeds, run_dir / "views" / name, ctx, models.device)
    source = donor_record.trained_from.to_json() if donor_record.trained_from else {
        "run": str(donor.relative_to(Path(ctx.results))), "variant": donor_record.variant or None,
        "config_hash": donor_record.config_hash}
    trained_timing = {k: v for k, v in (donor_record.timing.to_json() if donor_record.timing else {}).items()
                      if k in ("train_s", "iterations", "it_per_s", "resumed")}
    return {
        **evaluation, "views": views, "identifier": trained.identifier, "loss_log": "loss_log.jsonl",
        "device": device_name(models.device), "trained_from": source, "speed": models.speed.resolved(models.device),
        "timing": {**trained_timing, "load_s": models.load_seconds, "reused_training": True,
                   "peak_memory": peak_memory(models.device), **evaluation.pop("timing")},
    }



def same_view_sampling(config: Any, donor_config: dict[str, Any]) -> bool:
    """Whether a donor run sampled its views as `config` would: every sampling-only field other than the step
    counts (precision, sampler, guidance) equal; the views' own step counts are compared one by one."""
    from bench.contract import is_sampling_only, is_step_count

    mine = to_dict(config)
    return all(donor_config.get(f.name) == mine[f.name] for f in dataclasses.fields(config)
               if is_sampling_only(f) and not is_step_count(f))

def evaluate(trained: Any, concept: Concept, eval_seeds: tuple[int, ...], image_dir: Path, ctx: Context,
             device: Any) -> dict[str, Any]:
    """Sample the protocol's prompts x seeds, save PNGs, score them; with inference timings."""
    from bench.data import load_image
    from bench.metrics import aggregate, load_scorer, real_vs_real, score_images
    from bench.timing import Stopwatch

    from bench.api import eval_phrase
    from bench.models.sampling import eval_noise_seed

    pairs = [(i, t, s) for i, t in enumerate(concept.prompts) for s in eval_seeds]
    prompts = [concept.prompt(t, trained.identifier, eval_phrase(trained)) for _, t, _ in pairs]
    seeds = [eval_noise_seed(i, s) for i, _, s in pairs]  # each (prompt, eval seed) its own noise, paired
    steps = trained.default_steps
    trained.generate(prompts[:1], seeds[:1], steps)  # warm-up, not timed
    with Stopwatch(device) as single:
        trained.generate(prompts[:1], seeds[:1], steps)
    images = []
    with Stopwatch(device) as batched:
        for start in range(0, len(prompts), ctx.eval_batch_size):
            end = start + ctx.eval_batch_size
            images += trained.generate(prompts[start:end], seeds[start:end], steps)
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"p{i:02d}_s{s}.png" for i, _, s in pairs]
    for name, image in zip(names, images):
        image.save(image_dir / name)
    reals = [load_image(p) for p in concept.images]
    scorer = load_scorer(ctx.suite, "cuda" if str(device).startswith("cuda") else "cpu")
    scores = score_images(scorer, images, [concept.clip_text(t) for _, t, _ in pairs], reals)
    rows = [{"file": f"{image_dir.name}/{name}", "prompt_index": i, "eval_seed": s, "noise_seed": n, "prompt": p,
             **sc, "concept": concept.name}
            for (i, _, s), name, p, n, sc in zip(pairs, names, prompts, seeds, scores)]
    summary = aggregate(rows)
    return {
        "steps": steps,
        "metrics": {k: summary[k] for k in ("clip_t", "clip_i", "dino")},
        "real_vs_real": real_vs_real(scorer, reals),
        "images": [{k: v for k, v in r.items() if k != "concept"} for r in rows],
        "timing": {"infer_s_per_image": single.seconds, "infer_s_per_image_batched": batched.seconds / len(images),
                   "eval_batch_size": ctx.eval_batch_size},
    }


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
        jobs, ctx = prepare(methods, variants_for(methods, variants or ["default"], overrides or {}), concepts,
                            seeds or [0], profile or "tiny", backbone, data, results, suite, check_images=False)
        counts, lines = plan_status(jobs, ctx)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    return "\n".join([*lines, summary])


def plan_status(jobs: list[Job], ctx: Context) -> tuple[dict[str, int], list[str]]:
    """(counts by state, one line per job) for a plan; problems are listed last."""
    entries = []
    for job in jobs:
        state = triage(job, ctx)
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
            profile, config, suite, _ = _resolve(job, ctx)
            entries.append(("outdated", key, outdated_reason(state.record, job, config, profile.describe(), suite)))
        else:
            entries.append(("missing", key, ""))
    order = {"done": 0, "running": 1, "interrupted": 2, "outdated": 3, "failed": 4, "corrupt": 5, "missing": 6}
    entries.sort(key=lambda e: (order[e[0]], e[1]))
    counts: dict[str, int] = {}
    for state_name, _, _ in entries:
        counts[state_name] = counts.get(state_name, 0) + 1
    return counts, [f"{s:11} {k}{': ' + n if n else ''}" for s, k, n in entries]


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
