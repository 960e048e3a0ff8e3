"""One report from run records: every table, bar charts with intervals, CLIP-I vs CLIP-T scatters, each method's
loss curves, and qualitative grids in the style of the paper's Figure 3; as Markdown (figures beside it as PNG)
and as one self-contained HTML page (figures embedded as base64 data URIs, no external resources).

Like the tables, the report reads records, `loss_log.jsonl` files and saved PNGs only; it never trains or scores.
The figures are drawn by `bench.figures`; this module arranges them with the tables and writes the two files.
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import Figure, _dataset_folder, bar_chart, loss_figures, qualitative_grid, scatter
from bench.record import RunRecord
from bench.tables import (
    Table,
    as_records,
    build_tables,
    load_records,
    md_rows,
    suite_name,
    to_markdown,
)


@dataclass
class Section:
    """One (profile, metric suite) group: its tables, each followed by its bar chart, then the other figures."""

    title: str
    tables: list[Table]
    bars: dict[str, Figure]
    figures: list[Figure]
    notes: list[str]

    def all_figures(self) -> list[Figure]:
        return list(self.bars.values()) + self.figures


def build_sections(records: list[RunRecord | dict[str, Any]], data: Path | None = None) -> list[Section]:
    """One section per (profile, metric suite) group: its tables with bar charts, scatter, losses, grid."""
    from bench.report_compare import forest_figures

    records = as_records(records)
    tables = build_tables("all", records, "paper")
    dataset, why = _dataset_folder(data)
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.status != "corrupt":  # unreadable records count in the tables only (expected, missing)
            groups[(r.profile, suite_name(r))].append(r)
    sections = []
    for (profile, suite), group in sorted(groups.items()):
        mine = [t for t in tables if t.profile == profile and t.metric_suite == suite and t.rows]
        bars = {t.name: f for t in mine if (f := bar_chart(t)) is not None}
        figures = [f for f in (scatter(group, profile, suite),) if f is not None]
        figures += forest_figures(mine)  # paired differences to EchoDistill (bench.report_compare)
        figures += loss_figures(group, profile, suite)
        grid = qualitative_grid(group, profile, suite, dataset, why)
        figures += [grid] if grid is not None else []
        statuses = defaultdict(int)
        for r in group:
            statuses[r.status or "unknown"] += 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        notes = [f"{len(group)} record{'s' if len(group) != 1 else ''}: {counts}."]
        empty = [t.title for t in tables if t.profile == profile and t.metric_suite == suite and not t.rows]
        if empty:
            notes.append("No runs yet for: " + "; ".join(empty) + ".")
        if why and grid is not None:
            notes.append(why[0].upper() + why[1:] + ".")
        sections.append(Section(f"Profile `{profile}`, metric suite `{suite}`", mine, bars, figures, notes))
    return sections


def write_markdown(sections: list[Section], path: Path, figure_dir: str = "figures",
                   studies: list[dict[str, Any]] = ()) -> None:
    lines = ["# Benchmark report", "", "Generated from run records by `bench report`; tables as `bench table all "
             "--compare paper` prints them.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""] + [f"- {n}" for n in s.notes] + [""]
        for t in s.tables:
            lines += [to_markdown(t)]
            lines += _md_figure(s.bars[t.name], figure_dir) if t.name in s.bars else []
        for f in s.figures:
            lines += _md_figure(f, figure_dir)
    for study in studies:  # Table 7, one per preference study (bench.study)
        lines += ["## User study", "", study["md"]]
    path.write_text("\n".join(lines))


def _md_figure(f: Figure, figure_dir: str) -> list[str]:
    return [f"![{f.name}]({figure_dir}/{f.name})", "", f"*{f.caption}*", ""]


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f0f3f7}tr:nth-child(even){background:#fafafa}.wrap{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#444}
p.caption{font-size:13px;color:#333}"""


def _md_inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def html_table(t: Table) -> str:
    head, body = md_rows(t)
    parts = [f"<h3>{_md_inline(t.title)}</h3>", f"<p class='caption'>{_md_inline(t.caption)}</p>", "<div class='wrap'>"
             "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
    parts.append("</tbody></table></div>")
    if t.notes:
        parts.append("<ul>" + "".join(f"<li>{_md_inline(n)}</li>" for n in t.notes) + "</ul>")
    return "\n".join(parts)


def _html_figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f"<figure><img alt='{html.escape(f.name, quote=True)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_md_inline(f.caption)}</figcaption></figure>")


def write_html(sections: list[Section], path: Path, studies: list[dict[str, Any]] = ()) -> None:
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", "<title>Benchmark report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>Benchmark report</h1>",
             "<p>Generated from run records by <code>bench report</code>. Self-contained: every figure is embedded."
             "</p>"]
    for s in sections:
        parts += [f"<h2>{_md_inline(s.title)}</h2>", "<ul>" + "".join(f"<li>{_md_inline(n)}</li>" for n in s.notes)
                  + "</ul>"]
        for t in s.tables:
            parts.append(html_table(t))
            parts += [_html_figure(s.bars[t.name])] if t.name in s.bars else []
        parts += [_html_figure(f) for f in s.figures]
    for study in studies:
        parts += ["<h2>User study</h2>", _md_block_html(study["md"])]
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def _md_block_html(md: str) -> str:
    """A Markdown block of heading, paragraphs and one pipe table (as `bench.study.table` writes it) in HTML."""
    out, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            head, *body = rows
            out.append("<div class='wrap'><table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r)
                                                           + "</tr>" for r in body) + "</tbody></table></div>")
            rows = []
        if line.startswith("### "):
            out.append(f"<h3>{_md_inline(line[4:])}</h3>")
        elif line.strip():
            out.append(f"<p class='caption'>{_md_inline(line)}</p>")
    return "\n".join(out)


def build_report(results: Path, out: Path | None = None, profile: str | None = None,
                 data: Path | None = None) -> str:
    """`bench report`: write OUT/report.md (+ OUT/figures/*.png) and OUT/report.html; returns a one-line summary."""
    records = load_records(results, profile)
    out = Path(out) if out is not None else Path(results) / "report"
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(records, data)
    for s in sections:
        for f in s.all_figures():
            (figure_dir / f.name).write_bytes(f.png)
    from bench.study.commands import report_tables

    studies = report_tables(results, profile)
    write_markdown(sections, out / "report.md", studies=studies)
    write_html(sections, out / "report.html", studies=studies)
    n_tables = sum(len(s.tables) for s in sections)
    n_figures = sum(len(s.all_figures()) for s in sections)
    return f"wrote {out / 'report.md'} and {out / 'report.html'} ({n_tables} tables, {n_figures} figures)"
