"""Tables built from records: one per (profile, metric suite) group, each row's cells aggregated, captions, and the
`bench table` command."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.record import RunRecord, SuiteRef
from bench.tables.definitions import (
    CHOICES,
    COMPARE,
    DEFS,
    FORMATS,
    TABLE_VIEW,
    TABLES,
    RowSpec,
    TableDef,
    _catch_table,
    _extra_label,
    _owners,
    _paper_values,
    listed_methods,
    split_variant,
    variant_key,
)
from bench.tables.statistics import Stats, as_records, ceiling_stats, cell_stats


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
    section: str = ""
    """The table section the row is shown in: "" for the paper's rows, `OTHER_METHODS` for a method no table
    lists (a plug-in)."""


OTHER_METHODS = "Other methods"
"""The section of rows whose method no table lists (`Row.section`): shown apart, below the paper's rows."""


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
    metric_suite: str = ""
    """The suite's name alone (`tiny`), which `suite` describes."""
    dataset: str = "dreambench"
    """Whose concepts the table counts (`bench.concept_sets.DATASET_NAMES`): one dataset per table, never averaged."""

    @property
    def measured(self) -> list[Row]:
        return [r for r in self.rows if r.kind in ("measured", "ceiling")]


def suite_name(record: RunRecord) -> str:
    """The name of the suite that scored the record (`SuiteRef`; an old record's bare string as it is)."""
    suite = record.metric_suite
    return SuiteRef.of(suite).name if isinstance(suite, dict) or not suite else str(suite)


def _suite_desc(records: list[RunRecord]) -> str:
    suite = next((r.metric_suite for r in records if isinstance(r.metric_suite, dict)), {})
    parts = [p for p in (suite.get("clip_arch"), suite.get("dino_arch")) if p]
    return f"{suite_name(records[0])}" + (f" (CLIP {parts[0]}, DINO {parts[1]})" if len(parts) == 2 else "")


def _check_options(name: str, fmt: str, compare: str | None) -> None:
    from bench.naming import unknown

    if name not in CHOICES:
        raise unknown("table", name, CHOICES)
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if compare is not None and compare not in COMPARE:
        raise unknown("--compare target", compare, COMPARE)


def build_tables(name: str, records: Iterable[RunRecord | dict[str, Any]], compare: str | None = None,
                 dataset: str | None = None) -> list[Table]:
    """Tables `name` (or every table for "all") from records, one per (profile, metric suite, dataset) group: the
    paper's DreamBench tables count DreamBench concepts only; CustomConcept101 and your own concepts
    (`--concept-dir`) get tables of their own (`dataset` keeps one of them), never compared with the paper's
    numbers. Records are `RunRecord`s (`load_records`); `record.json` objects are converted here, once."""
    from bench.concept_sets import DATASET_NAMES, record_dataset
    from bench.record import gc_paused

    _check_options(name, "md", compare)
    if dataset is not None and dataset not in DATASET_NAMES:
        from bench.naming import unknown

        raise unknown("--dataset", dataset, DATASET_NAMES)
    records = as_records(records)
    if not records:
        raise BenchError("no run records found; run `bench run ...` first, or pass --results DIR / --profile")
    if dataset is not None:
        records = [r for r in records if record_dataset(r) == dataset]
        if not records:
            raise BenchError(f"no run records of dataset '{dataset}' found; valid datasets: {', '.join(DATASET_NAMES)}")
    names = TABLES if name == "all" else (name,)
    concepts_by_profile: dict[tuple[str, str], set[str]] = defaultdict(set)
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    corrupt: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)  # unreadable records: no suite is known
    for r in records:
        where = record_dataset(r)
        concepts_by_profile[(r.profile, where)].add(r.concept)
        if r.status == "corrupt":
            corrupt[(r.profile, where)].append(r)
        else:
            groups[(r.profile, suite_name(r), where)].append(r)
    for (profile, _, where), group in groups.items():
        group += corrupt[(profile, where)]  # expected in every table of their profile, and never done
    cache: dict = {}
    out = []
    with gc_paused():  # no cycles are made here; a full collection over a sweep's records costs more than the build
        for (profile, suite, where), group in sorted(groups.items(),
                                                     key=lambda g: (DATASET_NAMES.index(g[0][2]), g[0])):
            for n in names:
                table = _build_one(DEFS[n], group, sorted(concepts_by_profile[(profile, where)]), profile,
                                   _suite_desc(group), compare is not None and where == "dreambench", cache, suite)
                table.dataset = where
                out.append(table)
    return out


def _build_one(d: TableDef, records: list[RunRecord], concepts: list[str], profile: str, suite: str,
               compare: bool, cache: dict, suite_id: str) -> Table:
    from bench.contract import recorded_by_method

    shown = recorded_by_method(records)
    by_variant: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        by_variant[(r.method, variant_key(r))].append(r)
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
        if (method, base) not in owners and _catch_table(base) == d.name:
            model = recorded_by_method(by_variant[(method, full)])[method].model  # its runs' own base model
            spec = RowSpec(_extra_label(method, base, d.name, shown[method].label), method, (full,),
                           model or "", optional=True,
                           source=TABLE_VIEW if shown[method].table_view else "metrics")
            planned.append((spec, full, bool(split_variant(full)[1])))
    # The expected runs of every row: the profile's concepts x the training seeds this table's runs used.
    feeding = [r for spec, v, _ in planned if v is not None for r in by_variant[(spec.method, v)]]
    seeds = sorted({r.seed for r in feeding})
    rows: list[Row] = []
    for spec, variant, ad_hoc in planned:
        label = spec.label + (f" [{split_variant(variant)[1]}]" if ad_hoc and split_variant(variant)[1] else "")
        paper = None if ad_hoc else _paper_values(spec.paper)
        runs = by_variant.get((spec.method, variant), []) if variant is not None else []
        common = dict(label=label, method=spec.method, model=spec.model, train_nfe=spec.train_nfe,
                      infer_nfe=spec.infer_nfe, source=spec.source, paper=paper,
                      note=spec.note if not ad_hoc else "ad-hoc override; not compared with the paper",
                      trains=spec.trains and not (runs and all(r.trains is False for r in runs)),
                      section="" if spec.method is None or spec.method in listed_methods() else OTHER_METHODS)
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
    rows = [r for r in rows if not r.section] + [r for r in rows if r.section]
    viewed = [shown[m].caption for m in dict.fromkeys(r.method for r in rows if r.source == TABLE_VIEW)
              if m in shown]  # methods with runs in this group: the others' rows show nothing to caption
    caption = _caption(profile, suite, concepts, seeds, compare, [v for v in viewed if v],
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
    return Table(d.name, d.title, profile, suite, caption, rows, d.timings, compare, notes, suite_id)


def _caps(records: list[RunRecord]) -> str:
    """The profile's schedule caps the records ran under ("at most 10 iterations per stage, 5 sampling steps")."""
    found = {((r.models or {}).get("iteration_cap"), (r.models or {}).get("step_cap")) for r in records}
    parts = []
    for name, unit in ((0, "iterations per training stage"), (1, "sampling steps")):
        values = sorted({str(f[name]) for f in found if f[name]})
        if values:
            parts.append(f"{' or '.join(values)} {unit}")
    return ", ".join(parts)


def _caption(profile: str, suite: str, concepts: list[str], seeds: list[int], compare: bool,
             viewed: list[str], caps: str = "") -> str:
    """The table's caption; `viewed`: a sentence per method whose rows read its declared table view."""
    text = (f"Profile `{profile}`, metric suite {suite}. Cells: mean over concepts of per-concept means (per "
            f"concept: the mean over training seeds of the run's mean over evaluation seeds of its per-seed mean "
            f"over images or image-real pairs; the released evaluation's \"Average over Instances\"), ± std over "
            f"training seeds (when several), [95% bootstrap interval over concepts of the mean of per-concept "
            f"means]; the pooled mean over all images or pairs is in the CSV (`*_pooled`). "
            f"Runs: done/expected, expected = {len(concepts)} concept(s) x {len(seeds)} training seed(s) "
            f"({', '.join(map(str, seeds))}); failed and missing runs are counted in the cell.")
    for sentence in viewed:
        text += f" {sentence}"
    if caps:
        text += f" Capped by the profile: at most {caps}; rows keep the paper's labels."
    if compare:
        text += " Paper: arXiv 2510.20512, one NVIDIA A40; Δ = measured − paper; paper timings with (×ours/paper)."
        if profile != "paper":
            text += f" Measured on different hardware and weights (profile `{profile}`)."
    return text


def load_records(results: Path, profile: str | None = None) -> list[RunRecord]:
    """Every record under `results` (optionally one profile), typed; an unreadable one as its `corrupt` stand-in."""
    from bench.record import gc_paused
    from bench.store import iter_run_records

    with gc_paused():
        records = list(iter_run_records(results, profile, corrupt=True))  # unreadable: expected but missing
    if not records:
        where = f"{results}" + (f" for profile '{profile}'" if profile else "")
        raise BenchError(f"no run records found under {where}; run `bench run ...` first, or pass --results DIR")
    return records
