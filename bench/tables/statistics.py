"""How one cell is aggregated from run records: per run, per concept, over concepts, with the spread over training
seeds, a bootstrap interval over concepts, the pooled variant, and the count of runs behind it (the package
docstring, `bench.tables`, says it in full)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from bench.metrics.declared import METRICS as DECLARED
from bench.metrics.declared import accumulate, empty, means
from bench.record import ImageScore, RunRecord, Timing, gc_paused
from bench.tables.definitions import METRICS, TABLE_VIEW

BOOTSTRAP_SEED = 0


BOOTSTRAP_RESAMPLES = 1000


_SCORES = itemgetter(*METRICS) if len(METRICS) > 1 else (lambda scores: (scores[METRICS[0]],))
"""An image's scores in `METRICS` order, as one tuple (the aggregation loop below dominates a full render)."""


def as_records(records: Iterable[RunRecord | dict[str, Any]]) -> list[RunRecord]:
    """Records as `RunRecord`s: the entry of `build_tables` and the cell functions, for callers that hold
    `record.json` objects (dicts, converted once here); everything past it reads attributes."""
    with gc_paused():
        return [r if isinstance(r, RunRecord) else RunRecord.from_json(r) for r in records]


@dataclass
class RunSummary:
    """One run's evaluation reduced to what aggregation needs: per eval seed [n images, sum CLIP-T,
    sum CLIP-I x n_real, sum DINO x n_real, sum n_real], and the run's scores (`values`: per eval seed the mean
    over images / pairs, then the mean over eval seeds)."""

    by_eval_seed: dict[Any, list[float]]
    values: dict[str, float]
    infer_s: float | None


def _evaluation(record: RunRecord, source: str) -> tuple[list[ImageScore] | None, Timing | None] | None:
    """(images, sampling timing) of the evaluation `source` names; None where the run has no such view."""
    if source == "metrics":
        return record.images, record.timing
    if source == TABLE_VIEW:
        from bench.contract import recorded

        view = (record.views or {}).get(recorded(record).table_view or "")
        return (view.images, view.timing) if view is not None else (record.images, record.timing)
    if source.startswith("view:"):
        view = (record.views or {}).get(source.removeprefix("view:"))
        return (view.images, view.timing) if view is not None else None
    raise ValueError(source)


def summarize_run(record: RunRecord | dict[str, Any], source: str = "metrics") -> RunSummary | None:
    """None when the run has no scored images for `source` (failed, or the view is absent). A `record.json`
    object is converted first (`as_records`)."""
    if not isinstance(record, RunRecord):
        record = RunRecord.from_json(record)
    if record.status != "done":
        return None
    evaluation = _evaluation(record, source)
    images, timing = evaluation if evaluation is not None else (None, None)
    if not images:
        return None
    by_seed: dict[Any, list[float]] = {}
    for image in images:  # attributes and one itemgetter, no per-image dicts: this loop dominates a full render
        acc = by_seed.get(image.eval_seed)
        if acc is None:
            acc = by_seed[image.eval_seed] = empty()
        accumulate(acc, _SCORES(image.scores), image.n_real)
    return RunSummary(by_seed, _seed_mean(by_seed), timing.infer_s_per_image if timing is not None else None)


def _seed_mean(by_seed: dict[Any, list[float]]) -> dict[str, float]:
    """Per eval seed the mean over images (per-image metrics) or pairs (per-pair ones) of the sums, then the mean
    over seeds."""
    k = len(by_seed)
    per_seed = [means(t) for t in by_seed.values()]
    return {m: sum(v[m] for v in per_seed) / k for m in METRICS}


def pooled(summaries: list[RunSummary]) -> dict[str, float]:
    """`bench.metrics.aggregate`'s `*_pooled` numbers for the union of these runs' images (one training seed):
    per eval seed the pooled mean over images (CLIP-T) or pairs (CLIP-I, DINO) of all of them, then the mean over
    eval seeds. Not the headline (that is the mean over concepts: `concept_mean`)."""
    totals: dict[Any, list[float]] = defaultdict(empty)
    for s in summaries:
        for seed, acc in s.by_eval_seed.items():
            t = totals[seed]
            for i, x in enumerate(acc):
                t[i] += x
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


def cell_stats(records: Iterable[RunRecord | dict[str, Any]], source: str, concepts: list[str], seeds: list[int],
               cache: dict | None = None) -> Stats:
    """The statistics of one row from its records (all of one method and variant, one profile and suite)."""
    records = list(records)
    if cache is None or any(isinstance(r, dict) for r in records):
        cache = {}  # records converted here are temporaries: their ids must not key a cache that outlives the call
    by_key = {(r.concept, r.seed): r for r in as_records(records)}
    used: dict[int, list[tuple[str, RunSummary, RunRecord]]] = defaultdict(list)
    failures, absent = [], []
    for concept in concepts:
        for seed in seeds:
            r = by_key.get((concept, seed))
            if r is None or r.status == "corrupt":
                absent.append(f"{concept}/seed{seed}" + (f" (corrupt record: {r.reason})" if r else ""))
                continue
            ck = (id(r), source)
            if ck not in cache:
                cache[ck] = summarize_run(r, source)
            s = cache[ck]
            if s is not None:
                used[seed].append((concept, s, r))
            elif r.status != "done":
                failures.append(f"{concept}/seed{seed}: {r.status or '?'}" + (f" ({r.reason})" if r.reason else ""))
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
    iters = [float(r.timing.iterations) for _, r in runs if r.timing is not None and r.timing.iterations is not None]
    done = len(runs)
    return Stats(mean, std, lo, hi, per_concept, done, len(concepts) * len(seeds), len(failures),
                 len(concepts) * len(seeds) - done - len(failures), len(used), len(per_concept),
                 train_s=_mean([r.timing.train_s if r.timing is not None else None for _, r in runs]),
                 infer_s=_mean([s.infer_s for s, _ in runs]),
                 iterations=(min(iters), max(iters)) if iters else (math.nan, math.nan),
                 failures=failures, absent=absent, pooled=pool)


def ceiling_stats(records: Iterable[RunRecord | dict[str, Any]]) -> Stats | None:
    """The real-vs-real row: per concept, its real images against each other (the same for every run of the
    concept under one suite, so the first done record is used); the mean over concepts like every other row, the
    pooled mean over all pairs beside it, interval over concepts."""
    per: dict[str, dict[str, float]] = {}
    for r in as_records(records):
        rvr = r.real_vs_real
        if r.status == "done" and rvr and r.concept not in per:
            per[r.concept] = rvr
    if not per:
        return None
    nan = math.nan
    text = [m.name for m in DECLARED if not m.per_pair]  # one value per image and prompt: no real-vs-real value
    mean, lo, hi, pool = ({m: nan for m in text} for _ in range(4))
    per_concept: dict[str, dict[str, float]] = {}
    for m in (m.name for m in DECLARED if m.per_pair):
        pairs = [(v[m], v.get("n_pairs", 1)) for v in per.values() if v.get(m) is not None and v[m] == v[m]]
        weight = sum(n for _, n in pairs)
        mean[m] = _mean([x for x, _ in pairs])
        pool[m] = sum(x * n for x, n in pairs) / weight if weight else nan
        lo[m], hi[m] = bootstrap_interval([x for x, _ in pairs])
    for c, v in sorted(per.items()):
        per_concept[c] = {m.name: v.get(m.name, nan) if m.per_pair else nan for m in DECLARED}
    n = len(per)
    return Stats(mean, {m: nan for m in METRICS}, lo, hi, per_concept, n, n, 0, 0, 0, n, pooled=pool)
