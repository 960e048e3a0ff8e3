"""Which method is better, and how sure: paired comparisons of methods over the same concepts.

For one metric, methods A and B are compared concept by concept. Each concept's value is the headline's
per-concept mean (`bench.tables.statistics.cell_stats`: per run the mean over evaluation seeds, then the mean over
the concept's training-seed runs), so a comparison reads exactly the numbers a table cell averages. Only concepts
both methods have are paired (their number is reported); the runs either one lacks are named.

Per comparison and metric:
  - `mean`: the mean over paired concepts of d_c = A_c - B_c (= the difference of the two cells when both have
    every concept);
  - a paired bootstrap 95% interval: concepts resampled with replacement, the mean of their d_c
    (`bench.tables.statistics.bootstrap_interval`, the tables' resampling: 1000 resamples, fixed seed);
  - a two-sided paired permutation p-value: under "no difference" each d_c is as likely to have either sign, so
    the observed |mean d| is compared with the |mean| of every sign flip of the d_c (all 2^n flips when n <=
    `EXACT_MAX`, else `PERMUTATIONS` random flips with a fixed seed, p = (1 + hits) / (1 + draws));
  - wins / losses / ties: the concepts where A is above / below / equal to B (every metric is higher-is-better);
  - with several comparisons against one reference, Holm's step-down adjustment of the p-values, per metric over
    the comparisons (`holm`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.api import BenchError

EXACT_MAX = 16
"""Up to this many paired concepts the sign-flip p-value enumerates all 2^n sign patterns (65,536 at 16)."""
PERMUTATIONS = 20000
"""Random sign patterns drawn above `EXACT_MAX` concepts (Monte Carlo standard error <= 0.0035 at p = 0.5)."""
PERMUTATION_SEED = 0
ALPHA = 0.05
"""The level at which a difference is called distinguishable (Holm-adjusted p < ALPHA)."""
FORMATS = ("md", "csv", "json")


def sign_flip_p(diffs: list[float]) -> float:
    """Two-sided paired permutation p-value of mean(diffs) = 0: the share of sign patterns whose |mean| is at least
    the observed one. Exact for n <= EXACT_MAX, Monte Carlo (fixed seed) above. NaN with no pairs; 1 when every
    difference is 0."""
    import numpy as np

    d = np.asarray([x for x in diffs if x == x], dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= EXACT_MAX:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # every +-1 pattern, one per row
        flipped = np.abs(patterns @ d) / n
        return float(np.mean(flipped >= observed - tol))
    rng = np.random.default_rng(PERMUTATION_SEED)
    hits = 0
    for start in range(0, PERMUTATIONS, 5000):
        signs = rng.choice((-1.0, 1.0), size=(min(5000, PERMUTATIONS - start), n))
        hits += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
    return (1 + hits) / (1 + PERMUTATIONS)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sorted ascending, the i-th smallest (0-based) of m
    becomes max over j <= i of min(1, (m - j) p_(j)). NaN entries stay NaN and do not count in m."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass
class Difference:
    """One comparison (A against B) on one metric, over the concepts both have."""

    a: str
    b: str
    metric: str
    concepts: int
    """Paired concepts (both methods have a value)."""
    mean_a: float
    """A's mean over the paired concepts."""
    mean_b: float
    mean: float
    """Mean over paired concepts of A_c - B_c."""
    lo: float
    hi: float
    p: float
    p_holm: float
    wins: int
    losses: int
    ties: int
    per_concept: dict[str, float] = field(default_factory=dict)

    @property
    def distinguishable(self) -> bool:
        """Holm-adjusted p < ALPHA."""
        return self.p_holm == self.p_holm and self.p_holm < ALPHA


def paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str, name_a: str = "A",
           name_b: str = "B") -> Difference:
    """A against B on `metric`, from per-concept means (`Stats.per_concept`); `p_holm` is `p` until `compare`
    adjusts it."""
    from bench.tables.statistics import bootstrap_interval

    common = sorted(c for c in set(a) & set(b) if a[c].get(metric, math.nan) == a[c].get(metric, math.nan)
                    and b[c].get(metric, math.nan) == b[c].get(metric, math.nan))
    d = {c: a[c][metric] - b[c][metric] for c in common}
    values = list(d.values())
    n = len(values)
    mean = sum(values) / n if n else math.nan
    lo, hi = bootstrap_interval(values)
    p = sign_flip_p(values)
    mean_a = sum(a[c][metric] for c in common) / n if n else math.nan
    mean_b = sum(b[c][metric] for c in common) / n if n else math.nan
    return Difference(name_a, name_b, metric, n, mean_a, mean_b, mean, lo, hi, p, p,
                      sum(x > 0 for x in values), sum(x < 0 for x in values), sum(x == 0 for x in values), d)


def adjust(diffs: list[Difference]) -> list[Difference]:
    """Holm-adjust, per metric, the p-values of comparisons against one reference (in place; returned)."""
    metrics = dict.fromkeys(d.metric for d in diffs)
    for m in metrics:
        group = [d for d in diffs if d.metric == m]
        for d, q in zip(group, holm([d.p for d in group])):
            d.p_holm = q
    return diffs


# --- `bench compare`: methods from run records ------------------------------------------------------------------


@dataclass
class Comparison:
    """The comparisons of one (profile, metric suite) group: the reference against each other method."""

    profile: str
    suite: str
    reference: str
    others: list[str]
    differences: list[Difference]
    notes: list[str]


def parse_spec(spec: str) -> tuple[str, str]:
    """`method` or `method:variant` -> (method, variant); the method must be registered."""
    from bench.naming import unknown
    from bench.registry import method_names

    method, _, variant = spec.partition(":")
    if method not in method_names():
        raise unknown("method", method, method_names())
    return method, variant or "default"


def label(method: str, variant: str) -> str:
    return method if variant == "default" else f"{method}:{variant}"


def compare_records(records: list[Any], specs: list[str], profile: str | None = None,
                    source: str | None = None) -> list[Comparison]:
    """The first of `specs` against each of the others, on every metric, per (profile, suite) group of `records`
    that holds runs of the reference. `source`: the evaluation compared (default: what the tables read, the view
    a method declares for them, else the final model)."""
    from collections import defaultdict

    from bench.tables.building import suite_name
    from bench.tables.definitions import METRICS, TABLE_VIEW, variant_key
    from bench.tables.statistics import as_records, cell_stats

    if len(specs) < 2:
        raise BenchError("bench compare needs at least two methods, e.g. `bench compare echodistill lora`")
    parsed = [parse_spec(s) for s in specs]
    if len(set(parsed)) != len(parsed):
        raise BenchError(f"a method is named twice in {' '.join(specs)}; name each method:variant once")
    records = [r for r in as_records(records) if profile is None or r.profile == profile]
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    concepts: dict[str, set[str]] = defaultdict(set)
    for r in records:
        concepts[r.profile].add(r.concept)
        if r.status != "corrupt":
            groups[(r.profile, suite_name(r))].append(r)
    out = []
    for (prof, suite), group in sorted(groups.items()):
        by_spec = {p: [r for r in group if (r.method, variant_key(r)) == p] for p in parsed}
        if not by_spec[parsed[0]]:
            continue
        seeds = sorted({r.seed for runs in by_spec.values() for r in runs})
        names = sorted(concepts[prof])
        stats = {p: cell_stats(runs, source or TABLE_VIEW, names, seeds) for p, runs in by_spec.items()}
        notes = []
        for p, s in stats.items():
            if not by_spec[p]:
                notes.append(f"No runs of {label(*p)} in profile {prof}, suite {suite}: "
                             f"run `bench run --method {p[0]} --variant {p[1]} --profile {prof}`.")
                continue
            lacking = s.failures + s.absent
            if lacking:
                more = f"; and {len(lacking) - 10} more" if len(lacking) > 10 else ""
                notes.append(f"Missing, {label(*p)}: {', '.join(lacking[:10])}{more}.")
        ref = parsed[0]
        diffs = adjust([paired(stats[ref].per_concept, stats[p].per_concept, m, label(*ref), label(*p))
                        for p in parsed[1:] for m in METRICS])
        out.append(Comparison(prof, suite, label(*ref), [label(*p) for p in parsed[1:]], diffs, notes))
    if not out:
        where = f" in profile '{profile}'" if profile else ""
        raise BenchError(f"no runs of {specs[0]}{where}; run `bench run --method {parsed[0][0]}` first")
    return out


def _f(x: float, digits: int = 3, sign: bool = False) -> str:
    return "–" if x != x else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def _p(x: float) -> str:
    return "–" if x != x else ("<0.0001" if x < 1e-4 else f"{x:.4f}")


def to_markdown(comparisons: list[Comparison]) -> str:
    from bench.tables.definitions import METRIC_LABELS

    lines = []
    for c in comparisons:
        lines += [f"### {c.reference} against {', '.join(c.others)} — profile `{c.profile}`, suite `{c.suite}`", "",
                  "Per concept: the difference of the headline's per-concept means (A − B); Δ: its mean over the "
                  "concepts both have; 95% paired bootstrap interval over concepts; p: two-sided sign-flip "
                  "permutation test (exact up to 16 concepts); p (Holm): adjusted over the comparisons of each "
                  "metric; wins: concepts where A is higher.", "",
                  "| A | B | Metric | Concepts | A | B | Δ (A − B) | 95% CI | p | p (Holm) | Wins / losses / ties |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in c.differences:
            lines.append(f"| {d.a} | {d.b} | {METRIC_LABELS[d.metric]} | {d.concepts} | {_f(d.mean_a)} | "
                         f"{_f(d.mean_b)} | {_f(d.mean, 4, True)} | [{_f(d.lo, 4, True)}, {_f(d.hi, 4, True)}]"
                         f" | {_p(d.p)} | {_p(d.p_holm)} | {d.wins} / {d.losses} / {d.ties} |")
        lines.append("")
        lines += [f"- {n}" for n in c.notes]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


CSV_COLUMNS = ["profile", "metric_suite", "a", "b", "metric", "concepts", "mean_a", "mean_b", "diff", "ci_low",
               "ci_high", "p", "p_holm", "wins", "losses", "ties"]


def render(comparisons: list[Comparison], fmt: str) -> str:
    if fmt not in FORMATS:
        from bench.naming import unknown

        raise unknown("format", fmt, FORMATS)
    if fmt == "md":
        return to_markdown(comparisons)
    if fmt == "json":
        return json.dumps(_clean([asdict(c) for c in comparisons]), indent=1) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in comparisons:
        for d in c.differences:
            writer.writerow({"profile": c.profile, "metric_suite": c.suite, "a": d.a, "b": d.b, "metric": d.metric,
                             "concepts": d.concepts, "mean_a": _c(d.mean_a), "mean_b": _c(d.mean_b),
                             "diff": _c(d.mean), "ci_low": _c(d.lo), "ci_high": _c(d.hi), "p": _c(d.p),
                             "p_holm": _c(d.p_holm), "wins": d.wins, "losses": d.losses, "ties": d.ties})
    return buf.getvalue()


def _clean(x: Any) -> Any:
    """JSON-safe: NaN as null (JSON has no NaN)."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _c(x: float) -> str:
    return "" if x != x else f"{x:.6f}"


def compare_command(specs: list[str], results: Path, profile: str | None, fmt: str,
                    view: str | None = None) -> str:
    """`bench compare`: check the names and the format first, then read the records and render."""
    from bench.tables.building import load_records

    if fmt not in FORMATS:
        from bench.naming import unknown

        raise unknown("format", fmt, FORMATS)
    for s in specs:
        parse_spec(s)
    source = None if view in (None, "table") else ("metrics" if view == "final" else f"view:{view}")
    return render(compare_records(load_records(results, profile), specs, profile, source), fmt)
