"""Paired inference inside the tables: `bench table --against METHOD` and the paper-agreement marker of
`--compare paper`.

`--against METHOD`: per metric, a column with each measured row's paired difference to METHOD's row (the first row
of that method in the table: EchoDistill's is "before echo", the paper's main numbers), as `bench compare` computes
it (`bench.compare.paired`: per-concept means, mean difference, paired bootstrap 95% interval over the concepts both
have). Each metric's best row (highest mean among the measured method rows; the ceiling is no method) is marked
"best", and every row not distinguishable from it "≈", by the stated rule: a paired sign-flip test against the
best row over the concepts both have, Holm-adjusted over the column's rows, p >= 0.05.

`--compare paper`: per metric, a column saying whether the paper's value lies inside this row's 95% bootstrap
interval over concepts ("in" / "out"), and a note counting the cells that agree. With few concepts the interval is
wide (and with one it does not exist: "–"), so "in" on the tiny profile says little; on `paper` with all 30
concepts it is the checkable form of "reproduced within noise".
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from bench.compare import ALPHA, Difference, adjust, paired
from bench.tables.building import Table
from bench.tables.definitions import FLOOR, FORMATS, METRIC_LABELS, METRICS
from bench.tables.rendering import CSV_COLUMNS, PAPER_COLUMNS, csv_rows, dataset_heading, md_rows


@dataclass
class Annotation:
    """Per row (index into `Table.rows`) and metric: the difference to the reference, the best-row marks and the
    paper agreement."""

    against: str | None = None
    reference: int | None = None
    diffs: dict[int, dict[str, Difference]] = field(default_factory=dict)
    best: dict[str, int] = field(default_factory=dict)
    tied: dict[int, dict[str, Difference]] = field(default_factory=dict)
    """Rows not distinguishable from the column's best, with the test against it."""
    agree: dict[int, dict[str, bool]] = field(default_factory=dict)


def _candidates(t: Table) -> list[int]:
    """Measured rows of methods (not the ceiling, not the floor) with per-concept values."""
    return [i for i, r in enumerate(t.rows) if r.kind == "measured" and r.method not in (None, FLOOR)
            and r.stats is not None and r.stats.per_concept]


def annotate(t: Table, against: str | None, compare: bool) -> Annotation:
    a = Annotation(against)
    rows = t.rows
    if against is not None:
        a.reference = next((i for i, r in enumerate(rows) if r.method == against and r.kind == "measured"
                            and r.stats is not None and r.stats.per_concept), None)
        if a.reference is not None:
            ref = rows[a.reference]
            for i, r in enumerate(rows):
                if i != a.reference and r.kind == "measured" and r.stats is not None and r.stats.per_concept:
                    a.diffs[i] = {m: paired(r.stats.per_concept, ref.stats.per_concept, m, r.label, ref.label)
                                  for m in METRICS}
        candidates = _candidates(t)
        for m in METRICS:
            scored = [i for i in candidates if rows[i].stats.mean[m] == rows[i].stats.mean[m]]
            if not scored:
                continue
            best = max(scored, key=lambda i: rows[i].stats.mean[m])
            a.best[m] = best
            tests = {i: paired(rows[i].stats.per_concept, rows[best].stats.per_concept, m) for i in scored
                     if i != best}
            adjust(list(tests.values()))
            for i, d in tests.items():
                if d.concepts and not d.p_holm < ALPHA:
                    a.tied.setdefault(i, {})[m] = d
    if compare:
        for i, r in enumerate(rows):
            s, p = r.stats, r.paper or {}
            if r.kind != "measured" or s is None:
                continue
            for m in METRICS:
                value = p.get(m, math.nan)
                if value == value and s.lo[m] == s.lo[m]:
                    a.agree.setdefault(i, {})[m] = s.lo[m] <= value <= s.hi[m]
    return a


def _diff_cell(d: Difference | None) -> str:
    if d is None or d.mean != d.mean:
        return "–"
    text = f"{d.mean:+.4f}"  # a digit more than the cells: differences on one concept set are small
    if d.lo == d.lo:
        text += f" [{d.lo:+.4f}, {d.hi:+.4f}]"
    return text + f" (n={d.concepts})"


def _mark(a: Annotation, i: int, m: str) -> str:
    if a.best.get(m) == i:
        return " best"
    return " ≈" if m in a.tied.get(i, {}) else ""


def agreement_note(t: Table, a: Annotation) -> str:
    cells = [(m, ok) for per in a.agree.values() for m, ok in per.items()]
    if not cells:
        return "Agreement with the paper: no cell has both a paper value and a 95% interval (it needs 2+ concepts)."
    parts = ", ".join(f"{METRIC_LABELS[m]} {sum(ok for k, ok in cells if k == m)}/{sum(k == m for k, _ in cells)}"
                      for m in METRICS if any(k == m for k, _ in cells))
    return (f"Agreement with the paper: {sum(ok for _, ok in cells)} of {len(cells)} cells with a paper value have "
            f"it inside this reproduction's 95% interval over concepts ({parts}).")


def notes(t: Table, a: Annotation) -> list[str]:
    out = []
    if a.against is not None:
        if a.reference is None:
            out.append(f"--against {a.against}: no measured row of {a.against} in this table.")
        else:
            out.append(f"Δ vs {t.rows[a.reference].label}: per metric, the mean over the concepts both rows have of "
                       f"the per-concept difference (row − reference) [95% paired bootstrap interval] (concepts). "
                       f"best: the column's highest mean among method rows; ≈: not distinguishable from it "
                       f"(paired sign-flip test over shared concepts, Holm-adjusted over the column, p ≥ {ALPHA}).")
    if a.agree or t.compare:
        out.append(agreement_note(t, a))
    return out


def md_table(t: Table, a: Annotation) -> tuple[list[str], list[list[str]]]:
    head, body = md_rows(t)
    at = head.index("Runs")
    extra_head = []
    if a.against is not None and a.reference is not None:
        extra_head += [f"Δ {METRIC_LABELS[m]} vs {a.against}" for m in METRICS]
    if t.compare:
        extra_head += [f"{METRIC_LABELS[m]} paper in CI" for m in METRICS]
    for i, cells in enumerate(body):
        for m in METRICS:
            col = head.index(METRIC_LABELS[m])
            cells[col] += _mark(a, i, m)
        extra = []
        if a.against is not None and a.reference is not None:
            extra += ["reference" if i == a.reference else _diff_cell(a.diffs.get(i, {}).get(m)) for m in METRICS]
        if t.compare:
            extra += [{True: "in", False: "out"}.get(a.agree.get(i, {}).get(m), "–") for m in METRICS]
        cells[at:at] = extra
    head[at:at] = extra_head
    return head, body


def to_markdown(t: Table, a: Annotation) -> str:
    lines = [f"### {t.title} — profile `{t.profile}`, suite `{t.metric_suite}`{dataset_heading(t)}", ""]
    lines += [t.caption, ""] if t.caption else []
    if t.rows:
        head, body = md_table(t, a)
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        lines.append("")
    lines += [f"- {n}" for n in t.notes + (notes(t, a) if t.rows else [])]
    return "\n".join(lines).rstrip() + "\n"


AGAINST_COLUMNS = ["against", *[f"against_{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high", "_p",
                                                                          "_concepts")],
                   *[f"best_{m}" for m in METRICS], *[f"indistinguishable_{m}" for m in METRICS]]
AGREEMENT_COLUMNS = [f"paper_in_ci_{m}" for m in METRICS]


def _c(x: float) -> str:
    return "" if x != x else f"{x:.6f}"


def csv_table(t: Table, a: Annotation) -> list[dict[str, str]]:
    out = csv_rows(t)
    for i, row in enumerate(out):
        if a.against is not None:
            row["against"] = a.against
            for m in METRICS:
                d = a.diffs.get(i, {}).get(m)
                if d is not None:
                    row.update({f"against_{m}": _c(d.mean), f"against_{m}_ci_low": _c(d.lo),
                                f"against_{m}_ci_high": _c(d.hi), f"against_{m}_p": _c(d.p),
                                f"against_{m}_concepts": str(d.concepts)})
                row[f"best_{m}"] = str(a.best.get(m) == i).lower() if m in a.best else ""
                row[f"indistinguishable_{m}"] = str(m in a.tied.get(i, {})).lower() if m in a.best else ""
        if t.compare:
            for m in METRICS:
                ok = a.agree.get(i, {}).get(m)
                row[f"paper_in_ci_{m}"] = "" if ok is None else str(ok).lower()
    return out


def render(tables: list[Table], fmt: str, against: str | None) -> str:
    """The tables as `bench.tables.render` writes them, with the `--against` columns and the paper agreement."""
    if fmt not in FORMATS:
        from bench.naming import unknown

        raise unknown("format", fmt, FORMATS)
    annotated = [(t, annotate(t, against, t.compare)) for t in tables]
    if fmt == "md":
        return "\n".join(to_markdown(t, a) for t, a in annotated)
    compare = any(t.compare for t in tables)
    columns = CSV_COLUMNS + (PAPER_COLUMNS + AGREEMENT_COLUMNS if compare else []) + \
        (AGAINST_COLUMNS if against else [])
    if any(t.dataset != "dreambench" for t in tables):  # a column only where two datasets can meet
        columns.insert(1, "dataset")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for t, a in annotated:
        writer.writerows(csv_table(t, a))
    return buf.getvalue()


def check_against(against: str | None) -> None:
    """A one-line error for an unknown --against method."""
    if against is None:
        return
    from bench.naming import unknown
    from bench.registry import method_names

    if against not in method_names():
        raise unknown("--against method", against, method_names())
