"""Tables rendered as Markdown and CSV, beside the paper's numbers."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from bench.tables.building import Row, Table, _check_options, build_tables, load_records
from bench.tables.definitions import FORMATS, METRIC_LABELS, METRICS, TABLES
from bench.tables.statistics import Stats


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


def dataset_heading(t: Table) -> str:
    """What a table's heading adds for a dataset other than DreamBench (the paper's)."""
    return {"dreambench": "", "customconcept101": " — CustomConcept101", "yours": " — your concepts"}[t.dataset]


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title} — profile `{t.profile}`, suite `{t.metric_suite}`{dataset_heading(t)}", ""]
    lines += [t.caption, ""] if t.caption else []
    if t.rows:
        head, body = md_rows(t)
        sections: dict[str, list[list[str]]] = {}
        for row, cells in zip(t.rows, body):
            sections.setdefault(row.section, []).append(cells)
        for section, cells_of in sections.items():  # the paper's rows first (`build_tables` orders them so)
            lines += [f"#### {section}", ""] if section else []
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in cells_of]
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
        row = {"table": t.name, "dataset": t.dataset, "profile": t.profile, "metric_suite": t.metric_suite,
               "row": r.label,
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
        from bench.naming import unknown

        raise unknown("format", fmt, FORMATS)
    if fmt == "md":
        return "\n".join(to_markdown(t) for t in tables)
    columns = CSV_COLUMNS + (PAPER_COLUMNS if any(t.compare for t in tables) else [])
    if any(t.dataset != "dreambench" for t in tables):  # a column only where two datasets can meet
        columns.insert(1, "dataset")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for t in tables:
        writer.writerows(csv_rows(t))
    return buf.getvalue()


def table_command(name: str, results: Path, profile: str | None, fmt: str, compare: str | None,
                  out: Path | None, against: str | None = None, dataset: str | None = None) -> str:
    """`bench table`: render NAME (or all) to text; with `out`, also write `<out>/<table>.<fmt>` per table.
    `against` and `compare` add the paired columns and the paper agreement (`bench.tables.paired`); `dataset`:
    only that dataset's tables (default: DreamBench's, then each other dataset's apart)."""
    from bench.tables import paired

    _check_options(name, fmt, compare)  # a typo is reported before the results folder is read
    paired.check_against(against)
    tables = build_tables(name, load_records(results, profile), compare, dataset)

    def text(group: list[Table]) -> str:
        return paired.render(group, fmt, against) if against or compare else render(group, fmt)

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for n in TABLES if name == "all" else (name,):
            (out / f"{n}.{fmt}").write_text(text([t for t in tables if t.name == n]))
    return text(tables)
