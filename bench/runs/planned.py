"""Planned runs: each job of a sweep resolved once, then read by every consumer.

`prepare` turns a `SweepRequest` into planned runs and one `Context`. A `PlannedRun` holds what every later step
reads: its job, its method's declarations, its resolved config (as JSON), its config and training hashes, its run
folder, its models (the method's part of the context's resolved profile) and its metric suite. Executors,
`execute_job`, `bench plan` (`bench.estimate`, `bench.shard`), `bench score` and `bench status` read those values;
none of them looks a method up by name or resolves a config again. A planned run crosses to a worker process as
plain values: the method class is looked up there once, by name, through the registry and the files in
$BENCH_INCLUDE (`bench.plugins`), never pickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError
from bench.record import RunRecord
from bench.registry import get_method
from bench.runs.planning import (
    Context,
    Job,
    check_device,
    check_weight_paths,
    default_suite,
    job_hash,
    plan,
    resolve_config,
    training_hash,
)
from bench.tracking import Tracking


@dataclass(eq=False)
class PlannedRun:
    """One job, resolved once: equal (and hashed) by its job."""

    job: Job
    config: str
    """The resolved config (named variant, the job's overrides, the profile's caps) as canonical JSON: plain text,
    so a plug-in's config class is never pickled to a worker (`typed_config` builds it back)."""
    config_hash: str
    """`bench.runs.job_hash`: a finished record with this hash is not recomputed."""
    training_hash: str
    """`bench.runs.training_hash`: runs with equal training hashes share one training."""
    run_dir: Path
    """`<results>/<profile>/<method>/<variant>/<concept>/seed<N>`."""
    profile: Any
    """This method's models: its part of the context's resolved profile (`bench.models.profiles.Profile`)."""
    suite: str
    """The metric suite's name; its description is the context's (`Context.suite_description`)."""
    version: int
    """The method's declared version (`MethodOptions.version`)."""
    trains: bool
    """The method has a training stage (`MethodOptions.trains`)."""
    _method: Any = field(default=None, repr=False)
    _config: Any = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlannedRun) and other.job == self.job

    def __hash__(self) -> int:
        return hash(self.job)

    def __getstate__(self) -> dict[str, Any]:  # plain values only: the class is looked up where the run lands
        return {**self.__dict__, "_method": None, "_config": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def key(self) -> store.RunKey:
        return self.job.key

    @property
    def method(self) -> type:
        """The method class: the one `prepare` looked up, or (in a process it was sent to) looked up once here."""
        if self._method is None:
            self._method = get_method(self.job.method)
        return self._method

    @property
    def info(self) -> Any:
        """The method's declarations (`bench.contract.MethodInfo`)."""
        from bench.contract import MethodInfo

        return MethodInfo.of(self.method)

    def typed_config(self) -> Any:
        """The resolved config as the method's config dataclass."""
        if self._config is None:
            from bench.config import build

            self._config = build(self.method.Config, json.loads(self.config))
        return self._config

    @property
    def models(self) -> dict[str, Any]:
        """What a record stores about the models (`Profile.describe`)."""
        return self.profile.describe()

    @property
    def training_key(self) -> str:
        """Executors never run two runs with the same key at once, so the second samples the first one's weights
        instead of training them again; a method without training shares nothing (its config hash)."""
        return self.training_hash if self.trains else self.config_hash


def plan_runs(jobs: list[Job], ctx: Context, classes: dict[str, type] | None = None) -> list[PlannedRun]:
    """Each job resolved once: every method looked up once (or taken from `classes`), every profile and the
    suite resolved once into `ctx`."""
    from bench.config import to_dict
    from bench.contract import MethodInfo

    classes = dict(classes or {})
    suite = ctx.suite_description()
    out = []
    for job in jobs:
        if job.method not in classes:
            classes[job.method] = get_method(job.method)
        cls = classes[job.method]
        info = MethodInfo.of(cls)
        profile = ctx.profile(job.profile, job.backbone).for_method(cls)
        config = resolve_config(cls, job, profile.iteration_cap, profile.step_cap)
        desc = profile.describe()
        run = PlannedRun(job=job, config=json.dumps(to_dict(config), sort_keys=True),
                         config_hash=job_hash(job, config, desc, suite, info.version),
                         training_hash=training_hash(job, config, desc, info.version),
                         run_dir=job.key.path(ctx.results), profile=profile, suite=ctx.suite, version=info.version,
                         trains=info.trains, _method=cls, _config=config)
        out.append(run)
    return out


@dataclass
class Triage:
    """Where one planned run stands: its record (if any) and what a run would do with it."""

    config_hash: str
    run_dir: Path
    record: RunRecord | None
    state: str
    """done | failed (kept, same hash) | outdated (recorded with another hash) | todo (no record, or retried)."""


def triage(run: PlannedRun, ctx: Context) -> Triage:
    record = store.read_run_record(run.run_dir)  # a record from a newer schema raises a one-line BenchError
    if record is None:
        state = "todo"
    elif record.config_hash != run.config_hash:
        state = "outdated"
    elif ctx.force:
        state = "todo"
    elif record.done:
        state = "done"
    elif record.status == "failed" and not ctx.retry_failed:
        state = "failed"
    else:
        state = "todo"
    return Triage(run.config_hash, run.run_dir, record, state)


@dataclass(frozen=True, kw_only=True)
class SweepRequest:
    """What one `bench run` / `bench ablate` / `bench plan` / `bench status` / `bench score` asks for, as typed
    values (keywords only): built once from the command line (or a script), then handed to `prepare`."""

    methods: tuple[str, ...]
    """Registry names."""
    variants: tuple[tuple[str, dict[str, Any]], ...]
    """(variant name, config overrides) pairs (`variants_for`, `bench.ablations.ablation_variants`)."""
    concepts: str = "all"
    """`all` or a comma-separated list of the dataset's concepts."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds."""
    profile: str = "tiny"
    backbone: str = "sd-turbo"
    data: Path | None = None
    """The dataset folder (`--data`; None: $BENCH_DATA, else ./data/dreambench)."""
    results: Path = Path("results")
    suite: str | None = None
    """Metric suite; None: the profile's default."""
    device: str | None = None
    weights: tuple[str, ...] = ()
    """`--weights GROUP=PATH` items."""
    force: bool = False
    resume: bool = False
    retry_failed: bool = False
    concept_dir: Path | None = None
    """A user's own concept folder (`--concept-dir`), with `class_noun`."""
    class_noun: str | None = None
    speed: tuple[str, ...] = ()
    """`--speed KEY=VALUE` items."""
    tracking: Tracking | None = None
    """`--report-to` trackers and `--sample-every` (`bench.tracking`); None: nothing watches the runs."""

    def __post_init__(self) -> None:  # lists from a caller are kept as tuples: a request never changes
        for name in ("methods", "variants", "seeds", "weights", "speed"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))


def prepare(request: SweepRequest, check_images: bool = True) -> tuple[list[PlannedRun], Context]:
    """The planned runs and the context of one sweep; every user mistake fails here, before any work.

    Checks names (methods, variants, config keys, profile, backbone, suite, concepts), `--weights` paths
    (safetensors only) and decodes every reference image of the concepts that still have work to do. Each method
    is looked up once; the profile and the suite are resolved once, into the context.
    """
    from bench import data as dataset
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile, parse_weights
    from bench.models.speed import parse_speed
    from bench.paths import data_root

    r = request
    check_device(r.device)
    classes = {m: get_method(m) for m in dict.fromkeys(r.methods)}
    check_no_training(classes, list(r.variants), r.resume)
    weight_map = parse_weights(list(r.weights))
    profile = get_profile(r.profile, r.backbone, weight_map)  # validates profile, backbone and weight groups
    check_weight_paths(weight_map)
    suite = r.suite or default_suite(r.profile)
    suite_info = get_suite(suite).describe()
    if not r.seeds:
        raise BenchError("no seeds given; e.g. --seeds 0 or --seeds 0,1,2,3")
    root = data_root(r.data)
    ctx = Context(data=root, results=Path(r.results), suite=suite, device=r.device, weights=weight_map,
                  force=r.force, resume=r.resume, retry_failed=r.retry_failed,
                  speed=dataclasses.asdict(parse_speed(list(r.speed))),
                  tracking=r.tracking, profiles={(r.profile, r.backbone): profile}, suite_info=suite_info)
    if r.concept_dir is not None:
        if not r.class_noun:
            raise BenchError("--concept-dir needs --class-noun (e.g. --class-noun dog)")
        concept = dataset.load_folder_concept(r.concept_dir, r.class_noun, prompts_root=root)
        chosen = [dataclasses.replace(concept, name=dataset.user_concept_name(concept))]  # keyed by its content
        ctx.concept_dirs[chosen[0].name] = (str(r.concept_dir), r.class_noun)
    else:
        chosen = dataset.select_concepts(root, r.concepts)
    jobs = plan(list(r.methods), list(r.variants), [c.name for c in chosen], list(r.seeds), r.profile, r.backbone,
                classes)
    runs = plan_runs(jobs, ctx, classes)
    if check_images:
        todo = {run.job.concept for run in runs if triage(run, ctx).state not in ("done", "failed")}
        for concept in chosen:
            if concept.name in todo:
                for path in concept.images:
                    dataset.load_image(path)  # a corrupt, truncated or non-image file: one line naming it
    return runs, ctx


def check_no_training(classes: dict[str, type], variants: list[tuple[str, dict[str, Any]]], resume: bool) -> None:
    """A method that does not train (`trains = False`) has nothing to resume and no iterations to set: `--resume`
    or an override of a `SCHEDULE` or `CHECKPOINT_EVERY` field for it is one line (exit 2)."""
    from bench.contract import MethodInfo, checkpoint_field, schedule_fields

    for method, cls in classes.items():
        if MethodInfo.of(cls).trains:
            continue
        if resume:
            raise BenchError(f"--resume: method '{method}' does not train, so it has no checkpoint to continue; "
                             f"run it without --resume (an unfinished run is simply redone)")
        training_only = {*schedule_fields(cls.Config), checkpoint_field(cls.Config)} - {None}
        for _, overrides in variants:
            for key in overrides:
                if key in training_only:
                    raise BenchError(f"--set {key}: method '{method}' does not train, so it has no iterations to "
                                     f"set; drop the override (its settings: "
                                     f"{', '.join(f.name for f in dataclasses.fields(cls.Config))})")
