"""The plan: jobs (method x variant x concept x seed), their resolved configs and hashes, validated before any work.

A run's *config hash* covers everything that makes its result (method and its version, resolved config, models,
metric suite, EVAL_VERSION); its *training hash* leaves out sampling-only fields (`bench.config.SAMPLING_ONLY`), so
runs that differ only in how they sample share one training.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError, Concept
from bench.config import build, stable_hash, to_dict, training_fields
from bench.record import RunRecord, SuiteRef, VariantName
from bench.registry import get_method, unknown
from bench.tracking import Tracking

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
    tracking: Tracking | None = None
    """Trackers and sample grids (`--report-to`, `--sample-every`); not part of any hash."""


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
    from bench.config import normalise_overrides

    overrides = normalise_overrides([get_method(m).Config for m in methods], overrides)  # 1e1 is 10
    suffix = override_suffix(overrides) if overrides else ""
    return [(f"{name}+{suffix}" if suffix else name, {**base, **overrides})
            for name, base in named_variants(methods, names)]


def resolve_config(job: Job, iteration_cap: int | None, step_cap: int | None = None) -> Any:
    """The method's config for this job: the named variant's overrides, then the job's, then the profile's caps.

    `iteration_cap` applies to schedule lengths, the fields declared `SCHEDULE` (and `checkpoint_every` to half of
    it, so capped runs resume mid-run); `step_cap` to step counts, the fields declared `SAMPLING_STEPS` or
    `STEP_COUNT` (`bench.contract`; a field's name never gives it a role).
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
    old, new = record.suite, SuiteRef.of(suite)
    if old != new:
        return f"re-score: metric suite {old} -> {new} (`bench score --suite {new.name}`)"
    return "recorded with another config hash; `bench run` recomputes it"


def training_hash(job: Job, config: Any, profile_desc: dict[str, Any]) -> str:
    """Everything that changes a run's trained weights: `job_hash` without the variant's name, the evaluation and
    the sampling-only config fields. Runs with equal training hashes share one training."""
    return stable_hash({"method": job.method, "method_version": _version(job.method),
                        "concept": job.concept, "seed": job.seed, "profile": job.profile, "backbone": job.backbone,
                        "config": training_fields(config), "models": profile_desc, "schema": store.SCHEMA_VERSION})


def hashed_config(config: Any) -> dict[str, Any]:
    """The config as hashed: fields marked `metadata={"hash": False}` (e.g. `checkpoint_every`) never change the
    result, so changing them does not invalidate finished runs."""
    out = to_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("hash") is False:
            out.pop(f.name, None)
    return out


def load_concept(job: Job, ctx: Context) -> Concept:
    from bench import data

    if job.concept in ctx.concept_dirs:
        folder, noun = ctx.concept_dirs[job.concept]
        return data.load_folder_concept(Path(folder), noun, name=job.concept, prompts_root=ctx.data)
    return data.select_concepts(ctx.data, job.concept)[0]


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


@dataclass(frozen=True)
class SweepRequest:
    """What one `bench run` / `bench ablate` / `bench plan` / `bench status` / `bench score` asks for, as typed
    values: built once from the command line (or a script), then handed to `prepare` and the executors."""

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


def prepare(request: SweepRequest, check_images: bool = True) -> tuple[list[Job], Context]:
    """The jobs and context of one `bench run`/`bench ablate`; every user mistake fails here, before any work.

    Checks names (methods, variants, config keys, profile, backbone, suite, concepts), `--weights` paths
    (safetensors only) and decodes every reference image of the concepts that still have work to do.
    """
    from bench import data as dataset
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile, parse_weights
    from bench.paths import data_root

    r = request
    methods, variants, seeds = list(r.methods), list(r.variants), list(r.seeds)
    profile, backbone = r.profile, r.backbone
    device, suite, concept_dir, class_noun = r.device, r.suite, r.concept_dir, r.class_noun
    check_device(device)
    check_no_training(methods, variants, r.resume)
    weight_map = parse_weights(list(r.weights))
    get_profile(profile, backbone, weight_map)  # validates profile, backbone and weight groups up front
    check_weight_paths(weight_map)
    suite = suite or default_suite(profile)
    get_suite(suite)
    if not seeds:
        raise BenchError("no seeds given; e.g. --seeds 0 or --seeds 0,1,2,3")
    root = data_root(r.data)
    from bench.models.speed import parse_speed

    ctx = Context(data=root, results=Path(r.results), suite=suite, device=device, weights=weight_map, force=r.force,
                  resume=r.resume, retry_failed=r.retry_failed, speed=dataclasses.asdict(parse_speed(list(r.speed))),
                  tracking=r.tracking)
    if concept_dir is not None:
        if not class_noun:
            raise BenchError("--concept-dir needs --class-noun (e.g. --class-noun dog)")
        concept = dataset.load_folder_concept(concept_dir, class_noun, prompts_root=root)
        chosen = [dataclasses.replace(concept, name=dataset.user_concept_name(concept))]  # keyed by its content
        ctx.concept_dirs[chosen[0].name] = (str(concept_dir), class_noun)
    else:
        chosen = dataset.select_concepts(root, r.concepts)
    jobs = plan(methods, variants, [c.name for c in chosen], seeds, profile, backbone)
    if check_images:
        todo = {job.concept for job in jobs if triage(job, ctx).state not in ("done", "failed")}
        for concept in chosen:
            if concept.name in todo:
                for path in concept.images:
                    dataset.load_image(path)  # a corrupt, truncated or non-image file: one line naming it
    return jobs, ctx


def weights_label(group: str) -> str:
    """`--weights GROUP` and what it must hold, for messages ("--weights omini (role omini_lora: ...)")."""
    from bench.models.profiles import group_roles

    roles = group_roles(group)
    return f"--weights {group} ({roles})" if roles else f"--weights {group}"


def check_weight_paths(weight_map: dict[str, str]) -> None:
    """`--weights GROUP=PATH`: a local path must exist and hold safetensors (pickles are never loaded)."""
    for group, source in weight_map.items():
        path = Path(source).expanduser()
        looks_local = source.startswith(("/", ".", "~")) or path.exists()
        if looks_local:
            store.check_safetensors(path, weights_label(group))


def trains(method: str) -> bool:
    """Whether a registered method has a training stage (`MethodOptions.trains`, default True)."""
    from bench.contract import MethodInfo

    return MethodInfo.of(get_method(method)).trains


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
                if key in schedule_fields(cls.Config):
                    raise BenchError(f"--set {key}: method '{method}' does not train, so it has no iterations to "
                                     f"set; drop the override (its settings: "
                                     f"{', '.join(f.name for f in dataclasses.fields(cls.Config))})")


def resolve_job(job: Job, ctx: Context) -> tuple[Any, Any, dict[str, Any], str]:
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile

    profile = get_profile(job.profile, job.backbone, ctx.weights).for_method(job.method)
    config = resolve_config(job, profile.iteration_cap, profile.step_cap)
    suite = get_suite(ctx.suite).describe()
    return profile, config, suite, job_hash(job, config, profile.describe(), suite)


@dataclass
class Triage:
    """Where one job stands: its config hash, its record (if any) and what a run would do with it."""

    config_hash: str
    run_dir: Path
    record: RunRecord | None
    state: str
    """done | failed (kept, same hash) | outdated (recorded with another hash) | todo (no record, or retried)."""


def triage(job: Job, ctx: Context, config_hash: str | None = None) -> Triage:
    config_hash = config_hash or resolve_job(job, ctx)[3]
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


def training_key(job: Job, ctx: Context) -> str:
    """The job's training hash: executors never train two jobs with the same key at once, so the second one
    samples the first one's weights instead of training them again."""
    profile, config, _, config_hash = resolve_job(job, ctx)
    if not trains(job.method):  # nothing to share: no job waits for another
        return config_hash
    return training_hash(job, config, profile.describe())
