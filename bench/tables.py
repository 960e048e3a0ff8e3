"""The paper's tables from run records only (they never train or score), as Markdown and CSV.

Each table is a list of rows (`RowSpec`) that say which records feed them (registry method name, variant names,
and which evaluation of the record: the final student, a view, or the real-vs-real ceiling) and which row of the
paper's `reference/paper_tables.csv` they correspond to. Records are grouped by (profile, metric suite): one
rendered table per group, since numbers from different suites or models are not comparable.

Aggregation of one cell (one row, one metric), as the authors' released evaluation writes its result ("Average
over Instances") and then honestly:
  1. per run (one concept, one training seed): per evaluation seed, the mean over the run's images (CLIP-T) or
     over all its (image, real) pairs (CLIP-I, DINO); then the mean over evaluation seeds (the run's `metrics`,
     `bench.metrics.aggregate` on its images);
  2. per concept: the mean over its training-seed runs;
  3. the cell: the mean over concepts of the per-concept means, each concept weighing the same; ± the sample
     std over training seeds (of each seed's mean over its concepts) when there are several;
  4. a 95% bootstrap interval over concepts: concepts resampled with replacement (1000 resamples, fixed RNG
     seed) of the mean of per-concept means;
  5. runs behind the cell: done / expected (expected = the concepts present for the profile x the training
     seeds present in the table), failed and missing runs written into the cell, never dropped.
Beside it, `Stats.pooled` (CSV `*_pooled`): per training seed, the pooled mean over every image / pair of all
concepts per evaluation seed, then the mean over evaluation seeds (what the released script prints per seed),
then the mean over training seeds. Both are computed here from per-record sums, because calling `aggregate` per
cell takes seconds for a full sweep and importing it imports torch; `tests/test_tables.py` holds them to
`aggregate`'s numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from bench.api import BenchError

METRICS = ("clip_t", "clip_i", "dino")
METRIC_LABELS = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino": "DINO"}
TABLES = ("main", "ablation", "echo", "nfe", "backbone", "alternatives", "shots")
CHOICES = (*TABLES, "all")
FORMATS = ("md", "csv")
COMPARE = ("paper",)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CD, ED = "custom_diffusion", "echodistill"
BEFORE_ECHO = "before_echo"
"""Source of EchoDistill rows in the ablation-style tables: the student before the echo stage when the run has
one (view `student_before_echo`), else the final student (runs without an echo stage). The paper's main and
ablation numbers are before echo (method.md, variant `echo`); the echo table shows the stage's effect."""


# --- table definitions -----------------------------------------------------------------------------------


def _paper(table: int, section: str, method: str, model: str, variant: str = "", train: int | None = 1,
           infer: int | None = 1) -> tuple[str, ...]:
    """Key of one row of paper_tables.csv: (table, section, method, model, variant, train_nfe, infer_nfe)."""
    return (str(table), section, method, model, variant, "" if train is None else str(train),
            "" if infer is None else str(infer))


@dataclass(frozen=True)
class RowSpec:
    """One row of a table: which records feed it and which paper row it is compared with."""

    label: str
    method: str | None = None
    """Registry name of the method; None for a paper-only row (method not in the harness) or the ceiling."""
    variants: tuple[str, ...] = ()
    """Variant names accepted (each one present gets its own row); ad-hoc `name+key=value` runs follow them."""
    model: str = "SD Turbo"
    train_nfe: int | None = 1
    infer_nfe: int | None = 1
    paper: tuple[str, ...] | None = None
    source: str = "metrics"
    """"metrics" (the record's own evaluation), "view:<name>" (one of its `views`), BEFORE_ECHO, "real_vs_real"."""
    optional: bool = False
    """Shown only when it has records (or, with a paper row, under --compare paper)."""
    note: str = ""
    trains: bool = True
    """False for a method without a training stage (encoder-based): its train time, iterations and train NFE
    read "/", as in the paper."""


@dataclass(frozen=True)
class TableDef:
    name: str
    title: str
    rows: tuple[RowSpec, ...]
    timings: bool = False
    hint: str = ""


def _cd_grid() -> list[RowSpec]:
    """Paper Table 5's Custom Diffusion grid (train NFE x infer NFE); (1, 1) is the harness default."""
    paper = {(1000, 1), (1000, 4), (1000, 25), (1, 1), (1, 4), (4, 1), (4, 4)}
    rows = []
    for t in (1000, 1, 4):
        for i in (1, 4, 25):
            key = _paper(5, "main_timed", "Custom Diffusion", "SD Turbo", "", t, i) if (t, i) in paper else None
            variants = ("default", "train1-infer1") if (t, i) == (1, 1) else (f"train{t}-infer{i}",)
            rows.append(RowSpec("Custom Diffusion", CD, variants, "SD Turbo", t, i, key, optional=(t, i) != (1, 1)))
    return rows


def _only_paper(label: str, model: str = "SD Turbo", train: int | None = 1, note: str = "") -> RowSpec:
    return RowSpec(label, None, (), model, train, 1, _paper(5, "main_timed", label, model, "", train, 1), note=note)


def _baseline(label: str, method: str) -> RowSpec:
    return RowSpec(label, method, ("default",), paper=_paper(5, "main_timed", label, "SD Turbo"))


def _ablation(label: str, variant: str, paper_variant: str) -> RowSpec:
    return RowSpec(label, ED, (variant,), source=BEFORE_ECHO,
                   paper=_paper(8, "extended_ablation", "EchoDistill", "SD Turbo", paper_variant))


DEFS: dict[str, TableDef] = {d.name: d for d in (
    TableDef("main", "Tables 1 and 5: main comparison on DreamBench", (
        RowSpec("Custom Diffusion", CD, ("sd21",), "SD 2.1", 1000, 25,
                _paper(5, "main_timed", "Custom Diffusion", "SD 2.1", "", 1000, 25),
                note="multi-step reference; paper Table 1 gives 0.269 / 0.752 / 0.519"),
        *_cd_grid(),
        _baseline("Textual Inversion", "textual_inversion"),
        _baseline("Cones 2", "cones2"),
        _baseline("DreamBooth", "dreambooth"),
        _baseline("TextBoost", "textboost"),
        _baseline("DisenBooth", "disenbooth"),
        _baseline("LoRA", "lora"),
        RowSpec("IP-Adapter", "ip_adapter_tcd", ("default",), "TCD", None, 1,
                _paper(5, "main_timed", "IP-Adapter", "TCD", "", None, 1), trains=False,
                note="encoder-based, no training: SDXL + TCD LoRA + IP-Adapter, conditioned on the first photo"),
        RowSpec("OminiControl", "ominicontrol", ("default", "each"), "Flux", None, 1,
                _paper(5, "main_timed", "OminiControl", "Flux", "", None, 1), trains=False,
                note="encoder-based, no training: FLUX.1-schnell + OminiControl subject LoRA, one step, conditioned "
                     "on the first photo (variant each: every photo in turn)"),
        RowSpec("EchoDistill, before echo", ED, ("default",), source=BEFORE_ECHO,
                paper=_paper(5, "main_timed", "EchoDistill", "SD Turbo"),
                note="student before the echo stage (the paper's main numbers); train time covers the whole run"),
        RowSpec("EchoDistill, after echo", ED, ("default",),
                paper=_paper(3, "echo", "EchoDistill student", "SD Turbo", "after echo"),
                note="the final student; paper number from Table 3 (echo)"),
        RowSpec("Real vs real (ceiling)", None, (), "", None, None, source="real_vs_real",
                note="each real image against the other real images of its concept"),
    ), timings=True, hint="bench run --method custom_diffusion,echodistill --concepts all"),
    TableDef("ablation", "Tables 3 and 8: ablations of EchoDistill's components", (
        _ablation("full", "default", "full"),
        _ablation("w/o teacher", "drop_teacher", "w/o teacher"),
        _ablation("w/o all discriminators", "drop_discriminators", "w/o all discriminators"),
        _ablation("w/o identity feature loss", "drop_id_loss", "w/o identity feature loss"),
        _ablation("w/o MSE loss", "drop_mse_loss", "w/o MSE loss"),
        _ablation("w/o MS-SWD loss", "drop_msswd_loss", "w/o MS-SWD loss"),
        _ablation("w/o DINOv1 discriminator", "drop_disc_dino1", "w/o DINOv1 discriminator"),
        _ablation("w/o DINOv2 discriminator", "drop_disc_dino2", "w/o DINOv2 discriminator"),
        _ablation("w/o CLIP discriminator", "drop_disc_clip", "w/o CLIP discriminator"),
        RowSpec("w/o echo stage", ED, ("drop_echo",), source=BEFORE_ECHO, optional=True),
    ), hint="bench ablate --drop teacher (and the other --drop names)"),
    TableDef("echo", "Table 3 (echo): teacher and student before and after the echo stage", (
        RowSpec("Teacher, before echo", ED, ("default",), "SD 2.1", None, None,
                _paper(3, "echo", "EchoDistill teacher", "SD 2.1", "before echo", None, None),
                source="view:teacher_before_echo"),
        RowSpec("Teacher, after echo", ED, ("default",), "SD 2.1", None, None,
                _paper(3, "echo", "EchoDistill teacher", "SD 2.1", "after echo", None, None), source="view:teacher"),
        RowSpec("Student, before echo", ED, ("default",), "SD Turbo", 1, 1,
                _paper(3, "echo", "EchoDistill student", "SD Turbo", "before echo"),
                source="view:student_before_echo"),
        RowSpec("Student, after echo", ED, ("default",), "SD Turbo", 1, 1,
                _paper(3, "echo", "EchoDistill student", "SD Turbo", "after echo")),
    ), hint="bench run --method echodistill"),
    TableDef("nfe", "Table 3 (inference NFEs): the student sampled with 1, 2 and 4 steps", tuple(
        RowSpec(f"{n} step{'s' if n > 1 else ''}", ED, (f"nfe{n}",), "SD Turbo", 1, n,
                _paper(3, "infer_nfe", "EchoDistill", "SD Turbo", f"{n} step{'s' if n > 1 else ''}", 1, n),
                source=BEFORE_ECHO) for n in (1, 2, 4)), hint="bench ablate --nfe 1,2,4"),
    TableDef("backbone", "Table 3 (backbone): SD-Turbo and Hyper-SD 1.5 students", (
        RowSpec("Hyper-SD 1.5 (teacher SD 1.5)", ED, ("backbone_hyper-sd15",), "Hyper-SD1.5",
                paper=_paper(3, "backbone", "EchoDistill", "Hyper-SD1.5"), source=BEFORE_ECHO),
        RowSpec("SD Turbo (teacher SD 2.1)", ED, ("default",), paper=_paper(3, "backbone", "EchoDistill", "SD Turbo"),
                source=BEFORE_ECHO),
    ), hint="bench ablate --backbone hyper-sd15"),
    TableDef("alternatives", "Table 6: alternative designs (teacher first, separate text encoders)", (
        RowSpec("Teacher-first", ED, ("teacher_first",), paper=_paper(6, "alternatives", "Teacher-first", "SD Turbo"),
                source=BEFORE_ECHO),
        RowSpec("Remove STE", ED, ("drop_ste",), paper=_paper(6, "alternatives", "Remove STE", "SD Turbo"),
                source=BEFORE_ECHO),
        RowSpec("EchoDistill", ED, ("default",), paper=_paper(6, "alternatives", "EchoDistill", "SD Turbo"),
                source=BEFORE_ECHO),
    ), hint="bench ablate --teacher-first; bench ablate --drop ste"),
    TableDef("shots", "Table 9: one-shot personalisation", (
        RowSpec("one-shot", ED, ("shots1", "one_shot"), paper=_paper(9, "shots", "EchoDistill", "SD Turbo", "one-shot"),
                source=BEFORE_ECHO),
        RowSpec("few-shot (all images)", ED, ("default",),
                paper=_paper(9, "shots", "EchoDistill", "SD Turbo", "few-shot"), source=BEFORE_ECHO),
    ), hint="bench ablate --shots 1"),
)}


def variant_key(record: dict[str, Any]) -> str:
    """The record's variant, marked `@<backbone>` when a run used another backbone than its variant says (e.g.
    `bench run --backbone hyper-sd15`), so that runs on different models never share a row."""
    variant, backbone = record["variant"], record.get("backbone") or "sd-turbo"
    if backbone == "sd-turbo" or variant.startswith(f"backbone_{backbone}"):
        return variant
    return f"{variant}@{backbone}"


def split_variant(variant: str) -> tuple[str, str]:
    """`drop_disc_clip+disc_dino1+iterations=500` -> (`drop_disc_clip+disc_dino1`, `iterations=500`).

    Named variants join drop names with `+`; ad-hoc overrides (`bench run --set`) append `+key=value` parts."""
    from bench.record import VariantName

    name = VariantName.parse(variant)
    return name.base, "+".join(name.parts)


@lru_cache(maxsize=1)
def _owners() -> dict[tuple[str, str], str]:
    """(method, base variant) -> the first table listing it: ad-hoc runs of that variant are shown there."""
    owners: dict[tuple[str, str], str] = {}
    for name in TABLES:
        for spec in DEFS[name].rows:
            for v in spec.variants:
                owners.setdefault((spec.method, v), name)
    return owners


def _catch_table(method: str, base: str) -> str:
    """Where a variant no table lists is shown, so that no recorded run is left out of every table."""
    if method != ED:
        return "main"
    for prefix, name in (("nfe", "nfe"), ("backbone_", "backbone"), ("shots", "shots")):
        if base.startswith(prefix):
            return name
    if "@" in base:
        return "backbone"
    return "ablation"


def _extra_label(method: str, base: str) -> str:
    if method == ED and base.startswith("drop_"):
        return "w/o " + " + ".join(base.removeprefix("drop_").split("+"))
    return f"{METHOD_LABELS.get(method, method)} ({base})"


METHOD_LABELS = {CD: "Custom Diffusion", ED: "EchoDistill", "textual_inversion": "Textual Inversion",
                 "dreambooth": "DreamBooth", "lora": "LoRA", "cones2": "Cones 2", "disenbooth": "DisenBooth",
                 "ip_adapter_tcd": "IP-Adapter", "ominicontrol": "OminiControl", "textboost": "TextBoost"}


# --- the paper's numbers ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def paper_rows() -> dict[tuple[str, ...], dict[str, str]]:
    """paper_tables.csv (shipped as package data), keyed like `_paper`."""
    from importlib import resources

    text = resources.files("bench").joinpath("reference/paper_tables.csv").read_text()
    rows = {}
    for r in csv.DictReader(io.StringIO(text)):
        rows[(r["table"], r["section"], r["method"], r["model"], r["variant"], r["train_nfe"], r["infer_nfe"])] = r
    return rows


def _paper_values(key: tuple[str, ...] | None) -> dict[str, Any] | None:
    if key is None:
        return None
    row = paper_rows()[key]  # a KeyError here is a typo in DEFS; tests check every key
    def num(k: str) -> float:
        return float(row[k]) if row[k] else math.nan
    return {**{m: num(m) for m in METRICS}, "train_time_s": num("train_time_s"),
            "infer_time_s": num("infer_time_s"), "iterations": num("iterations"),
            "ref": f"Table {row['table']}" + (f" ({row['section']})" if row["table"] == "3" else "")}


# --- aggregation -----------------------------------------------------------------------------------------


_COLUMNS = itemgetter("eval_seed", "clip_t", "clip_i", "dino", "n_real")


@dataclass
class RunSummary:
    """One run's evaluation reduced to what aggregation needs: per eval seed [n images, sum CLIP-T,
    sum CLIP-I x n_real, sum DINO x n_real, sum n_real], and the run's scores (`values`: per eval seed the mean
    over images / pairs, then the mean over eval seeds)."""

    by_eval_seed: dict[Any, list[float]]
    values: dict[str, float]
    infer_s: float | None


def _evaluation(record: dict[str, Any], source: str) -> dict[str, Any] | None:
    views = record.get("views") or {}
    if source == "metrics":
        return record
    if source == BEFORE_ECHO:
        return views.get("student_before_echo") or record
    if source.startswith("view:"):
        return views.get(source.removeprefix("view:"))
    raise ValueError(source)


def summarize_run(record: dict[str, Any], source: str = "metrics") -> RunSummary | None:
    """None when the run has no scored images for `source` (failed, or the view is absent)."""
    if record.get("status") != "done":
        return None
    evaluation = _evaluation(record, source)
    rows = (evaluation or {}).get("images") or []
    if not rows:
        return None
    by_seed: dict[Any, list[float]] = {}
    for seed, ct, ci, dn, n in map(_COLUMNS, rows):  # tuples, not dict lookups: this loop dominates a full render
        acc = by_seed.get(seed)
        if acc is None:
            acc = by_seed[seed] = [0, 0.0, 0.0, 0.0, 0]
        acc[0] += 1
        acc[1] += ct
        acc[2] += ci * n
        acc[3] += dn * n
        acc[4] += n
    return RunSummary(by_seed, _seed_mean(by_seed), (evaluation.get("timing") or {}).get("infer_s_per_image"))


def _seed_mean(by_seed: dict[Any, list[float]]) -> dict[str, float]:
    """Per eval seed the mean over images (CLIP-T) or pairs (CLIP-I, DINO) of the sums, then the mean over seeds."""
    k = len(by_seed)
    return {"clip_t": sum(t[1] / t[0] for t in by_seed.values()) / k,
            "clip_i": sum(t[2] / t[4] for t in by_seed.values()) / k,
            "dino": sum(t[3] / t[4] for t in by_seed.values()) / k}


def pooled(summaries: list[RunSummary]) -> dict[str, float]:
    """`bench.metrics.aggregate`'s `*_pooled` numbers for the union of these runs' images (one training seed):
    per eval seed the pooled mean over images (CLIP-T) or pairs (CLIP-I, DINO) of all of them, then the mean over
    eval seeds. Not the headline (that is the mean over concepts: `concept_mean`)."""
    totals: dict[Any, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0])
    for s in summaries:
        for seed, acc in s.by_eval_seed.items():
            t = totals[seed]
            for i in range(5):
                t[i] += acc[i]
    return _seed_mean(totals)


def concept_mean(runs: list[tuple[str, RunSummary]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The headline of (concept, run) pairs: per concept the mean of its runs' `values` (over training seeds),
    then the mean over concepts (`bench.metrics.aggregate`'s "Average over Instances"); and the per-concept means."""
    by_concept: dict[str, list[RunSummary]] = defaultdict(list)
    for concept, s in runs:
        by_concept[concept].append(s)
    per_concept = {c: {m: _mean([s.values[m] for s in ss]) for m in METRICS} for c, ss in sorted(by_concept.items())}
    return {m: _mean([v[m] for v in per_concept.values()]) for m in METRICS}, per_concept


def bootstrap_interval(values: list[float]) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` (one per concept), concepts resampled with replacement."""
    import numpy as np

    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = v[rng.integers(0, len(v), size=(BOOTSTRAP_RESAMPLES, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Stats:
    """One row's numbers. `mean`/`std`/`lo`/`hi` per metric; NaN where not defined."""

    mean: dict[str, float]
    """The headline: mean over concepts of per-concept means (each the mean over its training-seed runs)."""
    std: dict[str, float]
    """Sample std over training seeds of each seed's mean over its concepts (NaN with one seed)."""
    lo: dict[str, float]
    hi: dict[str, float]
    per_concept: dict[str, dict[str, float]]
    done: int
    expected: int
    failed: int
    missing: int
    seeds: int
    concepts: int
    train_s: float = math.nan
    infer_s: float = math.nan
    iterations: tuple[float, float] = (math.nan, math.nan)
    """(min, max) over runs."""
    failures: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    pooled: dict[str, float] = field(default_factory=lambda: {m: math.nan for m in METRICS})
    """The second figure: per training seed the pooled mean over all images / pairs of all concepts (per eval
    seed, then the mean over eval seeds), then the mean over training seeds."""

    @property
    def complete(self) -> bool:
        return self.done == self.expected


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def cell_stats(records: list[dict[str, Any]], source: str, concepts: list[str], seeds: list[int],
               cache: dict | None = None) -> Stats:
    """The statistics of one row from its records (all of one method and variant, one profile and suite)."""
    cache = {} if cache is None else cache
    by_key = {(r["concept"], r["seed"]): r for r in records}
    used: dict[int, list[tuple[str, RunSummary, dict]]] = defaultdict(list)
    failures, absent = [], []
    for concept in concepts:
        for seed in seeds:
            r = by_key.get((concept, seed))
            if r is None or r.get("status") == "corrupt":
                absent.append(f"{concept}/seed{seed}" + (f" (corrupt record: {r['reason']})" if r else ""))
                continue
            ck = (id(r), source)
            if ck not in cache:
                cache[ck] = summarize_run(r, source)
            s = cache[ck]
            if s is not None:
                used[seed].append((concept, s, r))
            elif r.get("status") != "done":
                failures.append(f"{concept}/seed{seed}: {r.get('status', '?')}"
                                + (f" ({r['reason']})" if r.get("reason") else ""))
            else:
                absent.append(f"{concept}/seed{seed} (no '{source}' evaluation)")
    mean, per_concept = concept_mean([(c, s) for runs in used.values() for c, s, _ in runs])
    per_seed = [concept_mean([(c, s) for c, s, _ in runs])[0] for _, runs in sorted(used.items())]
    pooled_per_seed = [pooled([s for _, s, _ in runs]) for _, runs in sorted(used.items())]
    std, lo, hi, pool = {}, {}, {}, {}
    for m in METRICS:
        std[m] = _std([p[m] for p in per_seed])
        pool[m] = _mean([p[m] for p in pooled_per_seed])
        lo[m], hi[m] = bootstrap_interval([v[m] for v in per_concept.values()])
    runs = [(s, r) for group in used.values() for _, s, r in group]
    iters = [float((r.get("timing") or {}).get("iterations")) for _, r in runs
             if (r.get("timing") or {}).get("iterations") is not None]
    done = len(runs)
    return Stats(mean, std, lo, hi, per_concept, done, len(concepts) * len(seeds), len(failures),
                 len(concepts) * len(seeds) - done - len(failures), len(used), len(per_concept),
                 train_s=_mean([(r.get("timing") or {}).get("train_s") for _, r in runs]),
                 infer_s=_mean([s.infer_s for s, _ in runs]),
                 iterations=(min(iters), max(iters)) if iters else (math.nan, math.nan),
                 failures=failures, absent=absent, pooled=pool)


def ceiling_stats(records: list[dict[str, Any]]) -> Stats | None:
    """The real-vs-real row: per concept, its real images against each other (the same for every run of the
    concept under one suite, so the first done record is used); the mean over concepts like every other row, the
    pooled mean over all pairs beside it, interval over concepts."""
    per: dict[str, dict[str, float]] = {}
    for r in records:
        rvr = r.get("real_vs_real")
        if r.get("status") == "done" and rvr and r["concept"] not in per:
            per[r["concept"]] = rvr
    if not per:
        return None
    nan = math.nan
    mean, lo, hi, pool, per_concept = {"clip_t": nan}, {"clip_t": nan}, {"clip_t": nan}, {"clip_t": nan}, {}
    for m in ("clip_i", "dino"):
        pairs = [(v[m], v.get("n_pairs", 1)) for v in per.values() if v.get(m) is not None and v[m] == v[m]]
        weight = sum(n for _, n in pairs)
        mean[m] = _mean([x for x, _ in pairs])
        pool[m] = sum(x * n for x, n in pairs) / weight if weight else nan
        lo[m], hi[m] = bootstrap_interval([x for x, _ in pairs])
    for c, v in sorted(per.items()):
        per_concept[c] = {"clip_t": nan, "clip_i": v.get("clip_i", nan), "dino": v.get("dino", nan)}
    n = len(per)
    return Stats(mean, {m: nan for m in METRICS}, lo, hi, per_concept, n, n, 0, 0, 0, n, pooled=pool)


# --- building tables ---------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    method: str | None
    variant: str
    model: str
    train_nfe: int | None
    infer_nfe: int | None
    source: str
    kind: str
    """"measured", "not_run", "paper_only" or "ceiling"."""
    stats: Stats | None = None
    paper: dict[str, Any] | None = None
    note: str = ""
    trains: bool = True
    """False for a method without training: "/" for its train time, iterations and train NFE."""


@dataclass
class Table:
    name: str
    title: str
    profile: str
    suite: str
    caption: str
    rows: list[Row]
    timings: bool = False
    compare: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> list[Row]:
        return [r for r in self.rows if r.kind in ("measured", "ceiling")]


def suite_name(record: dict[str, Any]) -> str:
    from bench.record import SuiteRef

    suite = record.get("metric_suite") or {}
    return SuiteRef.of(suite).name if isinstance(suite, dict) else str(suite)


def _suite_desc(records: list[dict[str, Any]]) -> str:
    suite = next((r["metric_suite"] for r in records if isinstance(r.get("metric_suite"), dict)), {})
    parts = [p for p in (suite.get("clip_arch"), suite.get("dino_arch")) if p]
    return f"{suite_name(records[0])}" + (f" (CLIP {parts[0]}, DINO {parts[1]})" if len(parts) == 2 else "")


def _check_options(name: str, fmt: str, compare: str | None) -> None:
    from bench.registry import unknown

    if name not in CHOICES:
        raise unknown("table", name, CHOICES)
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if compare is not None and compare not in COMPARE:
        raise unknown("--compare target", compare, COMPARE)


def build_tables(name: str, records: list[dict[str, Any]], compare: str | None = None) -> list[Table]:
    """Tables `name` (or every table for "all") from records, one per (profile, metric suite) group."""
    _check_options(name, "md", compare)
    if not records:
        raise BenchError("no run records found; run `bench run ...` first, or pass --results DIR / --profile")
    names = TABLES if name == "all" else (name,)
    concepts_by_profile: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    corrupt: dict[str, list[dict[str, Any]]] = defaultdict(list)  # unreadable records: no suite is known
    for r in records:
        concepts_by_profile[r["profile"]].add(r["concept"])
        if r.get("status") == "corrupt":
            corrupt[r["profile"]].append(r)
        else:
            groups[(r["profile"], suite_name(r))].append(r)
    for (profile, _), group in groups.items():
        group += corrupt[profile]  # expected in every table of their profile, and never done
    cache: dict = {}
    out = []
    for (profile, _suite), group in sorted(groups.items()):
        for n in names:
            out.append(_build_one(DEFS[n], group, sorted(concepts_by_profile[profile]), profile,
                                  _suite_desc(group), compare is not None, cache))
    return out


def _build_one(d: TableDef, records: list[dict[str, Any]], concepts: list[str], profile: str, suite: str,
               compare: bool, cache: dict) -> Table:
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_variant[(r["method"], variant_key(r))].append(r)
    owners = _owners()
    # (spec, variant) pairs this table shows: the specs' named variants, ad-hoc runs of those variants where this
    # table owns them, and variants listed nowhere that fall to this table.
    planned: list[tuple[RowSpec, str | None, bool]] = []  # (spec, variant or None when nothing ran, ad hoc)
    for spec in d.rows:
        present = [v for v in spec.variants if (spec.method, v) in by_variant]
        planned += [(spec, v, False) for v in present]
        if not present and spec.method is not None and spec.source != "real_vs_real":
            planned.append((spec, None, False))
        if spec.method is None:
            planned.append((spec, None, False))
        for v in spec.variants:
            if owners.get((spec.method, v)) != d.name:
                continue
            planned += [(spec, full, True) for (m, full) in sorted(by_variant)
                        if m == spec.method and "+" in full and split_variant(full)[0] == v and full != v]
    for (method, full) in sorted(by_variant):
        base = split_variant(full)[0]
        if (method, base) not in owners and _catch_table(method, base) == d.name:
            spec = RowSpec(_extra_label(method, base), method, (full,), optional=True,
                           source=BEFORE_ECHO if method == ED else "metrics")
            planned.append((spec, full, bool(split_variant(full)[1])))
    # The expected runs of every row: the profile's concepts x the training seeds this table's runs used.
    feeding = [r for spec, v, _ in planned if v is not None for r in by_variant[(spec.method, v)]]
    seeds = sorted({r["seed"] for r in feeding})
    rows: list[Row] = []
    for spec, variant, ad_hoc in planned:
        label = spec.label + (f" [{split_variant(variant)[1]}]" if ad_hoc and split_variant(variant)[1] else "")
        paper = None if ad_hoc else _paper_values(spec.paper)
        runs = by_variant.get((spec.method, variant), []) if variant is not None else []
        common = dict(label=label, method=spec.method, model=spec.model, train_nfe=spec.train_nfe,
                      infer_nfe=spec.infer_nfe, source=spec.source, paper=paper,
                      note=spec.note if not ad_hoc else "ad-hoc override; not compared with the paper",
                      trains=spec.trains and not (runs and all(r.get("trains") is False for r in runs)))
        if spec.source == "real_vs_real":
            stats = ceiling_stats(records)
            if stats is not None:
                rows.append(Row(variant="", kind="ceiling", stats=stats, **common))
        elif spec.method is None:
            if compare:
                rows.append(Row(variant="", kind="paper_only", **common))
        elif variant is None:
            if not spec.optional or (compare and paper is not None):
                stats = cell_stats([], spec.source, concepts, seeds, cache)
                rows.append(Row(variant=spec.variants[0], kind="not_run", stats=stats, **common))
        else:
            stats = cell_stats(by_variant[(spec.method, variant)], spec.source, concepts, seeds, cache)
            rows.append(Row(variant=variant, kind="measured", stats=stats, **common))
    if not feeding:
        rows = []
    caption = _caption(profile, suite, concepts, seeds, compare, any(r.source == BEFORE_ECHO for r in rows),
                       _caps(feeding)) if rows else ""
    notes = []
    for r in rows:
        if r.stats and r.stats.failures:
            shown = r.stats.failures[:10]
            more = f"; and {len(r.stats.failures) - 10} more" if len(r.stats.failures) > 10 else ""
            notes.append(f"Failed, {r.label} ({r.method}/{r.variant}): " + "; ".join(shown) + more)
        if r.stats and r.kind == "measured" and r.stats.absent:
            shown = r.stats.absent[:10]
            more = f"; and {len(r.stats.absent) - 10} more" if len(r.stats.absent) > 10 else ""
            notes.append(f"Missing, {r.label} ({r.method}/{r.variant}): " + ", ".join(shown) + more)
    if not rows:
        notes.append(f"No runs recorded for this table; run `{d.hint}`.")
    return Table(d.name, d.title, profile, suite, caption, rows, d.timings, compare, notes)


def _caps(records: list[dict[str, Any]]) -> str:
    """The profile's schedule caps the records ran under ("at most 10 iterations per stage, 5 sampling steps")."""
    found = {((r.get("models") or {}).get("iteration_cap"), (r.get("models") or {}).get("step_cap")) for r in records}
    parts = []
    for name, unit in ((0, "iterations per training stage"), (1, "sampling steps")):
        values = sorted({str(f[name]) for f in found if f[name]})
        if values:
            parts.append(f"{' or '.join(values)} {unit}")
    return ", ".join(parts)


def _caption(profile: str, suite: str, concepts: list[str], seeds: list[int], compare: bool,
             before_echo: bool, caps: str = "") -> str:
    text = (f"Profile `{profile}`, metric suite {suite}. Cells: mean over concepts of per-concept means (per "
            f"concept: the mean over training seeds of the run's mean over evaluation seeds of its per-seed mean "
            f"over images or image-real pairs; the released evaluation's \"Average over Instances\"), ± std over "
            f"training seeds (when several), [95% bootstrap interval over concepts of the mean of per-concept "
            f"means]; the pooled mean over all images or pairs is in the CSV (`*_pooled`). "
            f"Runs: done/expected, expected = {len(concepts)} concept(s) x {len(seeds)} training seed(s) "
            f"({', '.join(map(str, seeds))}); failed and missing runs are counted in the cell.")
    if before_echo:
        text += " EchoDistill rows: the student before the echo stage where the run has one (the paper's convention)."
    if caps:
        text += f" Capped by the profile: at most {caps}; rows keep the paper's labels."
    if compare:
        text += " Paper: arXiv 2510.20512, one NVIDIA A40; Δ = measured − paper; paper timings with (×ours/paper)."
        if profile != "paper":
            text += f" Measured on different hardware and weights (profile `{profile}`)."
    return text


# --- rendering -------------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _runs(s: Stats, kind: str) -> str:
    if kind == "ceiling":
        return f"{s.concepts} concept{'s' if s.concepts != 1 else ''}"
    if kind == "not_run":
        return f"0/{s.expected}, not run"
    text = f"{s.done}/{s.expected}"
    if s.failed:
        text += f", {s.failed} failed"
    if s.missing:
        text += f", {s.missing} missing"
    return text


def metric_cell(row: Row, m: str) -> str:
    s = row.stats
    if s is None:
        return "–"
    text = _f(s.mean[m])
    if text == "–":
        return text
    if s.std[m] == s.std[m]:
        text += f" ± {_f(s.std[m])}"
    if s.lo[m] == s.lo[m]:
        text += f" [{_f(s.lo[m])}, {_f(s.hi[m])}]"
    if row.kind == "measured" and not s.complete:
        text += f" ({_runs(s, row.kind)})"
    return text


def _iters(s: Stats | None) -> str:
    if s is None or s.iterations[0] != s.iterations[0]:
        return "–"
    lo, hi = s.iterations
    return f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}"


def _ratio(ours: float, paper: float, digits: int) -> str:
    if paper != paper:
        return "–"
    text = _f(paper, digits)
    if ours == ours and paper:
        text += f" (×{ours / paper:.2f})"
    return text


def _nfe(x: int | None) -> str:
    return "–" if x is None else str(x)


def md_rows(t: Table) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a table as strings (used by Markdown and the HTML report)."""
    head = ["Row", "Variant"]
    if t.name == "main":
        head += ["Model", "Train NFE", "Infer NFE"]
    for m in METRICS:
        head.append(METRIC_LABELS[m])
        if t.compare:
            head += [f"{METRIC_LABELS[m]} paper", f"Δ {METRIC_LABELS[m]}"]
    if t.timings:
        head += ["Train (s)"] + (["Train paper (s)"] if t.compare else [])
        head += ["Infer (s/img)"] + (["Infer paper (s/img)"] if t.compare else [])
        head += ["Iterations"] + (["Iterations paper"] if t.compare else [])
    head += ["Runs"]
    with_notes = any(r.note for r in t.rows)
    if with_notes:
        head.append("Note")
    body = []
    for r in t.rows:
        s, p = r.stats, r.paper or {}
        cells = [r.label, r.variant or "–"]
        if t.name == "main":
            cells += [r.model or "–", _nfe(r.train_nfe) if r.trains else "/", _nfe(r.infer_nfe)]
        for m in METRICS:
            cells.append(metric_cell(r, m))
            if t.compare:
                ours = s.mean[m] if s else math.nan
                theirs = p.get(m, math.nan)
                diff = ours - theirs
                cells += [_f(theirs), "–" if diff != diff else f"{diff:+.3f}"]
        if t.timings:
            measured = r.kind == "measured"
            train = s.train_s if s and measured else math.nan
            infer = s.infer_s if s and measured else math.nan
            cells.append(_f(train, 1) if r.trains else "/")
            if t.compare:
                cells.append(_ratio(train, p.get("train_time_s", math.nan), 0) if r.trains else "/")
            cells.append(_f(infer, 3))
            if t.compare:
                cells.append(_ratio(infer, p.get("infer_time_s", math.nan), 2))
            cells.append((_iters(s) if measured else "–") if r.trains else "/")
            if t.compare:
                cells.append(_f(p.get("iterations", math.nan), 0) if r.trains else "/")
        cells.append(_runs(s, r.kind) if s else "not in harness")
        if with_notes:
            cells.append(r.note)
        body.append(cells)
    return head, body


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title} — profile `{t.profile}`, suite `{t.suite.split(' ')[0]}`", ""]
    lines += [t.caption, ""] if t.caption else []
    if t.rows:
        head, body = md_rows(t)
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        lines.append("")
    lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


CSV_COLUMNS = ["table", "profile", "metric_suite", "row", "kind", "method", "variant", "model", "train_nfe",
               "infer_nfe", "source",
               *[f"{m}{s}" for m in METRICS for s in ("", "_std", "_ci_low", "_ci_high", "_pooled")],
               "runs_done", "runs_expected", "runs_failed", "runs_missing", "seeds", "concepts", "train_time_s",
               "infer_time_s", "iterations_min", "iterations_max", "note"]
PAPER_COLUMNS = ["paper_ref", *[f"{p}{m}" for m in METRICS for p in ("paper_", "diff_")], "paper_train_time_s",
                 "paper_infer_time_s", "paper_iterations"]


def _c(x: Any, digits: int = 6) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if x != x else f"{x:.{digits}f}"
    return str(x)


def csv_rows(t: Table) -> list[dict[str, str]]:
    out = []
    for r in t.rows:
        s, p = r.stats, r.paper or {}
        row = {"table": t.name, "profile": t.profile, "metric_suite": t.suite.split(" ")[0], "row": r.label,
               "kind": r.kind, "method": r.method or "", "variant": r.variant, "model": r.model,
               "train_nfe": _c(r.train_nfe), "infer_nfe": _c(r.infer_nfe), "source": r.source, "note": r.note}
        for m in METRICS:
            for suffix, part in (("", "mean"), ("_std", "std"), ("_ci_low", "lo"), ("_ci_high", "hi"),
                                 ("_pooled", "pooled")):
                row[f"{m}{suffix}"] = _c(getattr(s, part)[m]) if s else ""
        if s:
            row.update(runs_done=s.done, runs_expected=s.expected, runs_failed=s.failed, runs_missing=s.missing,
                       seeds=s.seeds, concepts=s.concepts, train_time_s=_c(s.train_s, 4),
                       infer_time_s=_c(s.infer_s, 4), iterations_min=_c(s.iterations[0], 0),
                       iterations_max=_c(s.iterations[1], 0))
        if t.compare:
            row["paper_ref"] = p.get("ref", "")
            for m in METRICS:
                row[f"paper_{m}"] = _c(p.get(m))
                row[f"diff_{m}"] = _c(s.mean[m] - p[m]) if s and p else ""
            for k in ("train_time_s", "infer_time_s", "iterations"):
                row[f"paper_{k}"] = _c(p.get(k), 4)
        out.append({k: str(v) for k, v in row.items()})
    return out


def render(tables: list[Table], fmt: str) -> str:
    """Markdown (each table with its caption and notes) or CSV (one header, every table's rows)."""
    if fmt not in FORMATS:
        from bench.registry import unknown

        raise unknown("format", fmt, FORMATS)
    if fmt == "md":
        return "\n".join(to_markdown(t) for t in tables)
    columns = CSV_COLUMNS + (PAPER_COLUMNS if any(t.compare for t in tables) else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for t in tables:
        writer.writerows(csv_rows(t))
    return buf.getvalue()


def load_records(results: Path, profile: str | None = None) -> list[dict[str, Any]]:
    from bench.store import iter_records

    records = list(iter_records(results, profile, corrupt=True))  # unreadable ones count as expected but missing
    if not records:
        where = f"{results}" + (f" for profile '{profile}'" if profile else "")
        raise BenchError(f"no run records found under {where}; run `bench run ...` first, or pass --results DIR")
    return records


def table_command(name: str, results: Path, profile: str | None, fmt: str, compare: str | None,
                  out: Path | None) -> str:
    """`bench table`: render NAME (or all) to text; with `out`, also write `<out>/<table>.<fmt>` per table."""
    _check_options(name, fmt, compare)  # a typo is reported before the results folder is read
    tables = build_tables(name, load_records(results, profile), compare)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for n in TABLES if name == "all" else (name,):
            (out / f"{n}.{fmt}").write_text(render([t for t in tables if t.name == n], fmt))
    return render(tables, fmt)
