"""What a plan costs before it runs (`bench plan`), and the machine-independent cost that `--shard` balances.

Timing sources for one method, in order:

1. `perf`: the newest `bench perf` record (`results/perf/*.json`, or `--perf DIR`) of the same profile whose entry
   for the method was measured on this device (same device name, default speed settings). A run costs
   `train_step_s x iterations x batch_size / perf batch` to train and `infer_s_per_image_batched x images x
   steps / perf steps` to sample. It leaves out model loading and scoring, which are small beside training.
2. `paper`: the paper's Table 5 (one A40): train seconds per iteration (its train time over its iterations)
   times the run's iterations, and its seconds per image (the row with the run's step count, else the 1-step
   row times the steps) times the run's images. A method is found there by its table label (`bench.tables`), else
   by name (`cones2` is Cones 2).

A method with neither is one line (exit 2), naming `bench perf` as the way to get a source. Runs that share a
training (`bench.runs.find_trained`) pay for it once: a group with a finished member pays only for sampling.

`reference_cost` is what `bench.shard` balances: the paper's timings only (the same on every machine, whatever
perf records a machine holds), with the mean Table 5 timings for a method the paper does not time.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.api import BenchError

PROMPTS_PER_CONCEPT = 25
"""DreamBench's prompt lists (objects and live subjects) both hold 25 prompts."""

PAPER_DEVICE = "NVIDIA A40 (paper, Table 5)"
PAPER_MODEL = {"sd-turbo": "SD Turbo"}
"""Which Table 5 model rows time a backbone; other backbones fall back to the SD Turbo rows."""


@dataclass(frozen=True)
class JobFacts:
    """What the cost of one job depends on, from its resolved config (profile caps applied)."""

    method: str
    variant: str
    profile: str
    backbone: str
    group: str
    """Training identity (machine independent): jobs with equal groups share one training."""
    iterations: int
    """The main training stage's length, the config's `MAIN_SCHEDULE` field (0 for a method that does not
    train)."""
    batch_size: int | None
    """The config's `BATCH_SIZE` field, where it declares one."""
    steps: int
    """Sampling steps of the evaluation (`eval_steps` or `sample_steps`, else 1)."""
    images: int
    """Images sampled: prompts x evaluation seeds."""


def job_facts(run: Any) -> JobFacts:
    """The cost facts of a planned run (`bench.runs.PlannedRun`), read from its resolved config: the field roles
    (`MAIN_SCHEDULE`, `BATCH_SIZE`, `SAMPLING_STEPS`), never a field's name."""
    from bench.config import stable_hash, training_fields
    from bench.contract import batch_field, is_sampling_only, is_step_count, main_schedule_field

    job, config = run.job, json.loads(run.config)
    typed = run.typed_config()
    training = {"method": job.method, "method_version": run.version, "profile": job.profile,
                "backbone": job.backbone, "config": training_fields(typed)}
    group = stable_hash({**training, "concept": job.concept, "seed": job.seed})
    main, batch = main_schedule_field(typed), batch_field(typed)
    iterations = int(config[main] or 0) if run.trains and main else 0  # the main stage (as bench perf times it)
    sampling = [f.name for f in dataclasses.fields(typed) if is_step_count(f) and is_sampling_only(f)]
    steps = config[sampling[0]] if sampling else 1  # the evaluation's step count (`SAMPLING_STEPS`)
    return JobFacts(job.method, job.variant, job.profile, job.backbone, group, iterations,
                    config[batch] if batch else None, int(steps or 1),
                    PROMPTS_PER_CONCEPT * len(run.profile.eval_seeds))


# --- the paper's timings ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _table5() -> list[dict[str, str]]:
    from importlib import resources

    text = resources.files("bench").joinpath("reference/paper_tables.csv").read_text()
    return [r for r in csv.DictReader(io.StringIO(text)) if r["table"] == "5"]


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def paper_label(method: str) -> str | None:
    """The method's name in Table 5: its table label, else the Table 5 method whose letters and digits begin the
    method's own (`cones2` -> Cones 2, `ip_adapter_tcd` -> IP-Adapter); None when the paper does not time it."""
    from bench.contract import presentation

    shown = presentation(method)
    if shown.label != shown.name:  # a declared label (without one, the label is the method's name)
        return shown.label
    names = sorted({r["method"] for r in _table5()}, key=lambda n: -len(_squash(n)))
    return next((n for n in names if _squash(method).startswith(_squash(n))), None)


@lru_cache(maxsize=1)
def _timed_variants() -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
    """{(method, variant): (its Table 5 row's values, that row's inference steps)} for every variant a table
    compares with a Table 5 row (`bench.tables` DEFS): Custom Diffusion `sd21` is timed on SD 2.1, each step of
    its grid on its own row."""
    from bench.tables.definitions import DEFS, _paper_values

    out: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
    for d in DEFS.values():
        for spec in d.rows:
            if spec.method and spec.paper and spec.paper[0] == "5":
                for variant in spec.variants:
                    out.setdefault((spec.method, variant), (_paper_values(spec.paper), int(spec.infer_nfe or 1)))
    return out


def timed_variant(method: str, variant: str, backbone: str) -> tuple[float, float] | None:
    """(train seconds per iteration, seconds per image per step) of the Table 5 row that times this very variant,
    or None when the paper does not time it (then `paper_timing`'s method-level figures are extrapolated)."""
    from bench.tables.definitions import split_variant

    found = _timed_variants().get((method, split_variant(variant)[0])) if backbone == "sd-turbo" else None
    if found is None:
        return None
    values, nfe = found
    train, iterations = values.get("train_time_s"), values.get("iterations")
    per_iteration = train / iterations if train == train and iterations and iterations == iterations else 0.0
    return per_iteration, values["infer_time_s"] / nfe


def paper_timing(method: str, backbone: str, steps: int, variant: str | None = None) -> tuple[float, float] | None:
    """(train seconds per iteration, seconds per image at `steps`) from Table 5, or None when not timed there: the
    row of this variant when the paper times it (`timed_variant`), else the method's rows. A method the paper
    times without training (encoder-based) trains for 0 s."""
    own = timed_variant(method, variant, backbone) if variant is not None else None
    if own is not None:
        return own[0], own[1] * steps
    label = paper_label(method)
    model = PAPER_MODEL.get(backbone, "SD Turbo")
    rows = [r for r in _table5() if r["method"] == label]
    rows = [r for r in rows if r["model"] == model] or rows  # encoder-based methods run on their own models
    if not rows:
        return None
    trained = [r for r in rows if r["train_time_s"] and r["iterations"]]
    per_iteration = float(trained[0]["train_time_s"]) / float(trained[0]["iterations"]) if trained else 0.0
    at_steps = [r for r in rows if r["infer_nfe"] == str(steps) and r["infer_time_s"]]
    one_step = [r for r in rows if r["infer_nfe"] == "1" and r["infer_time_s"]]
    if at_steps:
        per_image = float(at_steps[0]["infer_time_s"])
    elif one_step:
        per_image = float(one_step[0]["infer_time_s"]) * steps
    else:
        return None
    return per_iteration, per_image


@lru_cache(maxsize=1)
def _paper_mean() -> tuple[float, float]:
    """The mean Table 5 timings over the methods it times: the reference cost of a method it does not."""
    from bench.registry import method_names

    found = [t for m in method_names() if (t := paper_timing(m, "sd-turbo", 1)) is not None and t[0] > 0]
    return sum(t[0] for t in found) / len(found), sum(t[1] for t in found) / len(found)


def reference_cost(facts: JobFacts, trains: bool) -> float:
    """Seconds at the paper's timings: training (when this job trains its group) plus sampling."""
    per_iteration, per_image = paper_timing(facts.method, facts.backbone, facts.steps, facts.variant) or _paper_mean()
    return (per_iteration * facts.iterations if trains else 0.0) + per_image * facts.images


# --- the project's own perf records ------------------------------------------------------------------------------


def perf_entries(folders: list[Path], profile: str, device: str) -> dict[str, dict[str, Any]]:
    """{method: its newest perf entry} among perf records of `profile` measured on `device` at default speed."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or record.get("kind") != "perf" or record.get("profile") != profile:
                continue
            for entry in record.get("methods") or []:
                if (entry.get("device") != device or entry.get("speed_label", "default") != "default"
                        or not entry.get("train_step_s") or not entry.get("infer_s_per_image_batched")):
                    continue
                stamp = str(record.get("created_at", ""))
                if entry["method"] not in found or stamp > found[entry["method"]][0]:
                    found[entry["method"]] = (stamp, {**entry, "batch": record.get("batch"), "file": str(path)})
    return {method: entry for method, (_, entry) in found.items()}


def perf_cost(facts: JobFacts, entry: dict[str, Any], trains: bool) -> float:
    train = 0.0
    if trains:
        scale = facts.batch_size / entry["batch"] if facts.batch_size and entry.get("batch") else 1.0
        train = entry["train_step_s"] * facts.iterations * scale
    per_image = entry["infer_s_per_image_batched"] * facts.steps / max(int(entry.get("default_steps") or 1), 1)
    return train + per_image * facts.images


# --- a plan's estimate ----------------------------------------------------------------------------------------------


def estimate(jobs: list[Any], ctx: Any, device: str, perf_dirs: list[Path],
             trained_groups: set[str] | None = None) -> dict[str, Any]:
    """Per (method, variant): runs, done, kept failed, left, estimated hours left and the timing source; totals.
    `jobs` are planned runs (`bench.runs.prepare`). `trained_groups`: trainings already paid for by an earlier
    sweep of the same plan (updated in place)."""
    from bench.runs import triage

    facts = {job: job_facts(job) for job in jobs}
    states = {job: triage(job, ctx).state for job in jobs}
    entries: dict[str, dict[str, dict[str, Any]]] = {}
    trained_groups = trained_groups if trained_groups is not None else set()
    trained_groups |= {facts[j].group for j in jobs if states[j] == "done"}
    missing = []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        f = facts[job]
        perf = entries.setdefault(f.profile, perf_entries(perf_dirs, f.profile, device)).get(f.method)
        source = "perf" if perf else ("paper" if paper_timing(f.method, f.backbone, f.steps) else None)
        if source == "paper" and timed_variant(f.method, f.variant, f.backbone) is None:
            source = "paper, extrapolated"  # the paper times the method, not this variant (an ablation, a backbone)
        if source is None and f.iterations == 0:  # untimed, and nothing to train (the base model): sampling only,
            source = "paper, extrapolated"  # at the mean Table 5 time per image
        if source is None:
            missing.append(f"{f.method} ({f.profile})")
            continue
        row = rows.setdefault((f.method, f.variant), {
            "method": f.method, "variant": f.variant, "profile": f.profile, "runs": 0, "done": 0, "failed": 0,
            "left": 0, "hours_left": 0.0, "source": source,
            "source_detail": perf["file"] if perf else PAPER_DEVICE})
        row["runs"] += 1
        state = states[job]
        if state == "done":
            row["done"] += 1
            continue
        if state == "failed":  # kept and reported, not re-run without --retry-failed
            row["failed"] += 1
            continue
        row["left"] += 1
        trains = f.group not in trained_groups
        trained_groups.add(f.group)  # the next job of the group samples these weights
        seconds = perf_cost(f, perf, trains) if perf else reference_cost(f, trains)
        row["hours_left"] += seconds / 3600
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise BenchError(f"no timing source for {names} on '{device}': no perf record of this device and no paper "
                         f"timing; run `bench perf --methods {missing[0].split()[0]} --profile "
                         f"{jobs[0].job.profile}` here first")
    out = sorted(rows.values(), key=lambda r: (r["method"], r["variant"]))
    total = {k: sum(r[k] for r in out) for k in ("runs", "done", "failed", "left", "hours_left")}
    return {"device": device, "rows": out, "total": total}


def duration(seconds: float) -> str:
    """`42 s`, `12.5 min`, `3.2 h`, `4.1 d`: a readable length of time."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def render(result: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> str:
    """The estimate as a Markdown table (then the shards' reference loads, when asked)."""
    lines = [(f"Plan on {result['device']} (GPU-hours: one device; sources: perf = this project's `bench perf` "
             f"records of this device, paper = {PAPER_DEVICE})"), "",
             "| method | variant | runs | done | failed | left | GPU-h left | left | source |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['variant']} | {r['runs']} | {r['done']} | {r['failed']} | {r['left']} | "
                     f"{r['hours_left']:.2f} | {duration(r['hours_left'] * 3600)} | {r['source']} |")
    t = result["total"]
    lines.append(f"| **total** | | {t['runs']} | {t['done']} | {t['failed']} | {t['left']} | "
                 f"{t['hours_left']:.2f} | {duration(t['hours_left'] * 3600)} | |")
    if shards:
        lines += ["", "| shard | runs | reference cost (paper timings: what --shard balances) |", "|---|---:|---:|"]
        lines += [f"| {s['shard']} | {s['runs']} | {duration(s['reference_s'])} |" for s in shards]
    return "\n".join(lines) + "\n"
