"""Plan jobs (method x variant x concept x seed), skip what is done, execute one job, record it.

A job is trained, sampled on the protocol's prompts x evaluation seeds, scored, timed, and recorded. Methods are
reached only through the registry. Executors (`bench.executors`) call `execute_job` in whatever process runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError, Concept, Diverged
from bench.config import build, stable_hash, to_dict
from bench.registry import get_method, unknown

EVAL_VERSION = 1
"""Bump when image generation or scoring changes in a way that invalidates finished runs."""


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


def resolve_config(job: Job, iteration_cap: int | None) -> Any:
    """The method's config for this job: the named variant's overrides, then the job's, then the profile's cap.

    The cap applies to schedule lengths, by convention the int fields named `iterations` or ending in `_iters`.
    """
    cls = get_method(job.method)
    base = job.variant.split("+")[0]
    overrides = {**cls.variants.get(base, {}), **json.loads(job.overrides)}
    config = build(cls.Config, overrides)
    if iteration_cap:
        capped = {f.name: min(getattr(config, f.name), iteration_cap) for f in dataclasses.fields(config)
                  if (f.name == "iterations" or f.name.endswith("_iters")) and isinstance(getattr(config, f.name), int)}
        config = dataclasses.replace(config, **capped)
    return config


def plan(methods: list[str], variants: list[tuple[str, dict[str, Any]]], concepts: list[str], seeds: list[int],
         profile: str, backbone: str = "sd-turbo") -> list[Job]:
    """Every (method, variant, concept, seed) job, validated up front so a typo fails before any work."""
    jobs = []
    for method in methods:
        cls = get_method(method)
        for name, overrides in variants:
            build(cls.Config, {**cls.variants.get(name.split("+")[0], {}), **overrides})  # bad keys fail now
            text = json.dumps(overrides, sort_keys=True)
            jobs += [Job(method, name, c, s, profile, backbone, text) for c in concepts for s in seeds]
    return jobs


def job_hash(job: Job, config: Any, profile_desc: dict[str, Any], suite: dict[str, Any]) -> str:
    """Everything that changes a run's output; a finished record with the same hash is not recomputed."""
    return stable_hash({"job": dataclasses.asdict(job), "config": to_dict(config), "models": profile_desc,
                        "suite": suite["name"], "eval_version": EVAL_VERSION, "schema": store.SCHEMA_VERSION})


def load_concept(job: Job, ctx: Context) -> Concept:
    from bench import data

    if job.concept in ctx.concept_dirs:
        folder, noun = ctx.concept_dirs[job.concept]
        return data.load_folder_concept(Path(folder), noun, name=job.concept, prompts_root=ctx.data)
    return data.select_concepts(ctx.data, job.concept)[0]


class JsonlLog:
    """The `Log` a method writes to: one JSON line per iteration, and a callback for live progress."""

    def __init__(self, path: Path, on_step: Callable[[str, int, int, dict], None] | None = None) -> None:
        self.path, self.on_step = path, on_step
        self.phase, self.total, self.iterations = "train", 0, 0
        self._file = open(path, "a")

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


def execute_job(job: Job, ctx: Context, on_step: Callable | None = None) -> dict[str, Any]:
    """Run one job unless it is done: train, sample, score, record. Returns a short summary.

    Failures inside the method (exceptions, divergence) are recorded as failed runs; the sweep goes on.
    User mistakes (BenchError) propagate.
    """
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile

    profile = get_profile(job.profile, job.backbone, ctx.weights)
    config = resolve_config(job, profile.iteration_cap)
    suite = get_suite(ctx.suite).describe()
    config_hash = job_hash(job, config, profile.describe(), suite)
    run_dir = job.key.path(ctx.results)
    if not ctx.force and store.is_done(run_dir, config_hash):
        return {"job": job, "status": "skipped", "run_dir": run_dir}
    lock = store.RunLock(run_dir)
    if not lock.acquire():
        return {"job": job, "status": "locked", "run_dir": run_dir}
    try:
        if not ctx.force and store.is_done(run_dir, config_hash):  # finished while we waited for the lock
            return {"job": job, "status": "skipped", "run_dir": run_dir}
        concept = load_concept(job, ctx)
        partial = store.staging_dir(run_dir)
        record = _base_record(job, config, config_hash, profile, suite)
        try:
            record.update(_train_and_evaluate(job, ctx, concept, profile, config, partial, on_step))
            record["status"] = "done"
        except BenchError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed run is a result, recorded with its reason
            record.update(status="failed", reason=f"{type(err).__name__}: {err}".strip()[:500],
                          diverged=isinstance(err, Diverged))
            (partial / "traceback.txt").write_text(traceback.format_exc())
            record["traceback"] = "traceback.txt"
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        previous = store.read_record(run_dir)
        if record["status"] == "failed" and previous and previous.get("status") == "done":
            # never replace a finished result with a failure: keep the failure beside it
            store.write_json_atomic(run_dir.with_name(run_dir.name + ".failed.json"), record)
        else:
            store.commit_run(partial, run_dir, record)
        return {"job": job, "status": record["status"], "run_dir": run_dir, "reason": record.get("reason")}
    finally:
        lock.release()


def _base_record(job: Job, config: Any, config_hash: str, profile: Any, suite: dict) -> dict[str, Any]:
    cls = get_method(job.method)
    return {
        "schema": store.SCHEMA_VERSION, "status": "running", "method": job.method, "variant": job.variant,
        "concept": job.concept, "seed": job.seed, "profile": job.profile, "backbone": job.backbone,
        "method_version": getattr(cls, "version", 1), "config": to_dict(config), "config_hash": config_hash,
        "overrides": json.loads(job.overrides), "models": profile.describe(), "metric_suite": suite,
        "versions": versions(), "git_commit": git_commit(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": os.uname().nodename,
    }


def _train_and_evaluate(job: Job, ctx: Context, concept: Concept, profile: Any, config: Any, run_dir: Path,
                        on_step: Callable | None) -> dict[str, Any]:
    import torch

    from bench.models.loading import Models
    from bench.timing import Stopwatch, device_name, peak_memory, reset_peak_memory

    torch.manual_seed(job.seed)
    models = Models(profile, ctx.device)
    method = get_method(job.method)(config)
    log = JsonlLog(run_dir / "loss_log.jsonl", on_step)
    reset_peak_memory(models.device)
    try:
        with Stopwatch(models.device) as sw:
            trained = method.train(concept, models, run_dir / "work", job.seed, log)
    finally:
        log.close()
    train_s = max(sw.seconds - models.load_seconds, 0.0)  # model loading is not training time
    trained.save(run_dir / "weights")
    evaluation = evaluate(trained, concept, profile.eval_seeds, run_dir / "images", ctx, models.device)
    views = {}
    for name, view in getattr(trained, "views", {}).items():
        views[name] = evaluate(view, concept, profile.eval_seeds, run_dir / "views" / name, ctx, models.device)
    import shutil

    shutil.rmtree(run_dir / "work", ignore_errors=True)
    return {
        **evaluation, "views": views, "identifier": trained.identifier, "loss_log": "loss_log.jsonl",
        "device": device_name(models.device),
        "timing": {"train_s": train_s, "load_s": models.load_seconds, "iterations": log.iterations,
                   "it_per_s": log.iterations / train_s if train_s > 0 else None,
                   "peak_memory": peak_memory(models.device), **evaluation.pop("timing")},
    }


def evaluate(trained: Any, concept: Concept, eval_seeds: tuple[int, ...], image_dir: Path, ctx: Context,
             device: Any) -> dict[str, Any]:
    """Sample the protocol's prompts x seeds, save PNGs, score them; with inference timings."""
    from bench.data import load_image
    from bench.metrics import aggregate, load_scorer, real_vs_real, score_images
    from bench.timing import Stopwatch

    pairs = [(i, t, s) for i, t in enumerate(concept.prompts) for s in eval_seeds]
    prompts = [concept.prompt(t, trained.identifier) for _, t, _ in pairs]
    seeds = [s for *_, s in pairs]
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
    rows = [{"file": f"{image_dir.name}/{name}", "prompt_index": i, "eval_seed": s, "prompt": p, **sc,
             "concept": concept.name}
            for (i, _, s), name, p, sc in zip(pairs, names, prompts, scores)]
    summary = aggregate(rows)
    return {
        "steps": steps,
        "metrics": {k: summary[k] for k in ("clip_t", "clip_i", "dino")},
        "real_vs_real": real_vs_real(scorer, reals),
        "images": [{k: v for k, v in r.items() if k != "concept"} for r in rows],
        "timing": {"infer_s_per_image": single.seconds, "infer_s_per_image_batched": batched.seconds / len(images),
                   "eval_batch_size": ctx.eval_batch_size},
    }


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
