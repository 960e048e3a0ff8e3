"""What the tables are: each table's rows (`RowSpec`: which records feed a row, which row of the paper's
`reference/paper_tables.csv` it matches), the metrics they show, and the paper's numbers."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from bench.record import RunRecord

from bench.metrics.declared import LABELS, NAMES

METRICS = NAMES  # the declared metrics (bench.metrics.declared)


METRIC_LABELS = LABELS


TABLES = ("main", "ablation", "echo", "nfe", "backbone", "alternatives", "shots")


CHOICES = (*TABLES, "all")


FORMATS = ("md", "csv")


COMPARE = ("paper",)


CD, ED = "custom_diffusion", "echodistill"
"""Registry names the paper's rows below name (data: the harness logic never branches on a method's name)."""


TABLE_VIEW = "before_echo"
"""Source of rows that read the view the method declares for the tables (`MethodOptions.table_view`) where a run
has it, else the run's own evaluation. EchoDistill declares its student before the echo stage: the paper's main
and ablation numbers are before echo (method.md, variant `echo`); the echo table shows the stage's effect. The
value is the CSV's `source` as it has always read."""


BEFORE_ECHO = TABLE_VIEW
"""The former name of `TABLE_VIEW`."""


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
    """"metrics" (the record's own evaluation), "view:<name>" (one of its `views`), TABLE_VIEW (the view the
    method declares for the tables, else its own evaluation), "real_vs_real"."""
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
    return RowSpec(label, ED, (variant,), source=TABLE_VIEW,
                   paper=_paper(8, "extended_ablation", "EchoDistill", "SD Turbo", paper_variant))


FLOOR = "base"
"""Registry name of the floor: the model under test with no personalization (`baselines.base`)."""


def _floor_rows() -> list[RowSpec]:
    """The floor, one row per backbone (`bench run --method base`, `bench ablate --method base --backbone
    hyper-sd15`): shown where it ran, so the main table reads floor, methods, ceiling."""
    note = "floor: no personalization, the class noun in place of the identifier"
    return [RowSpec("Base model (no personalization)", FLOOR, ("default",), "SD Turbo", None, 1, optional=True,
                    trains=False, note=note),
            RowSpec("Base model (no personalization)", FLOOR, ("backbone_hyper-sd15", "default@hyper-sd15"),
                    "Hyper-SD1.5", None, 1, optional=True, trains=False, note=note)]


DEFS: dict[str, TableDef] = {d.name: d for d in (
    TableDef("main", "Tables 1 and 5: main comparison on DreamBench", (
        *_floor_rows(),
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
        RowSpec("EchoDistill, before echo", ED, ("default",), source=TABLE_VIEW,
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
        RowSpec("w/o echo stage", ED, ("drop_echo",), source=TABLE_VIEW, optional=True),
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
                source=TABLE_VIEW) for n in (1, 2, 4)), hint="bench ablate --nfe 1,2,4"),
    TableDef("backbone", "Table 3 (backbone): SD-Turbo and Hyper-SD 1.5 students", (
        RowSpec("Hyper-SD 1.5 (teacher SD 1.5)", ED, ("backbone_hyper-sd15",), "Hyper-SD1.5",
                paper=_paper(3, "backbone", "EchoDistill", "Hyper-SD1.5"), source=TABLE_VIEW),
        RowSpec("SD Turbo (teacher SD 2.1)", ED, ("default",), paper=_paper(3, "backbone", "EchoDistill", "SD Turbo"),
                source=TABLE_VIEW),
    ), hint="bench ablate --backbone hyper-sd15"),
    TableDef("alternatives", "Table 6: alternative designs (teacher first, separate text encoders)", (
        RowSpec("Teacher-first", ED, ("teacher_first",), paper=_paper(6, "alternatives", "Teacher-first", "SD Turbo"),
                source=TABLE_VIEW),
        RowSpec("Remove STE", ED, ("drop_ste",), paper=_paper(6, "alternatives", "Remove STE", "SD Turbo"),
                source=TABLE_VIEW),
        RowSpec("EchoDistill", ED, ("default",), paper=_paper(6, "alternatives", "EchoDistill", "SD Turbo"),
                source=TABLE_VIEW),
    ), hint="bench ablate --teacher-first; bench ablate --drop ste"),
    TableDef("shots", "Table 9: one-shot personalisation", (
        RowSpec("one-shot", ED, ("shots1", "one_shot"), paper=_paper(9, "shots", "EchoDistill", "SD Turbo", "one-shot"),
                source=TABLE_VIEW),
        RowSpec("few-shot (all images)", ED, ("default",),
                paper=_paper(9, "shots", "EchoDistill", "SD Turbo", "few-shot"), source=TABLE_VIEW),
    ), hint="bench ablate --shots 1"),
)}


def variant_key(record: RunRecord) -> str:
    """The record's variant, marked `@<backbone>` when a run used another backbone than its variant says (e.g.
    `bench run --backbone hyper-sd15`), so that runs on different models never share a row."""
    variant, backbone = record.variant, record.backbone or "sd-turbo"
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


ABLATION_TABLES = (("nfe", "nfe"), ("backbone_", "backbone"), ("shots", "shots"), ("@", "backbone"),
                   ("drop_", "ablation"), ("teacher_first", "ablation"))
"""Where a variant no table lists is shown, by its name, first match: the names `bench ablate` gives
(`bench.ablations.ablation_variants`, the same for every method that declares ablation flags), and `@<backbone>`
for a run on another backbone (`variant_key`; a prefix except for `@`, which may stand anywhere)."""


def _catch_table(base: str) -> str:
    """The table for a variant no table lists, so that no recorded run is left out of every table: by
    `ABLATION_TABLES`, else main."""
    for mark, name in ABLATION_TABLES:
        if (mark in base) if mark == "@" else base.startswith(mark):
            return name
    return "main"


@cache
def _subject(table: str) -> str | None:
    """The one method every row of `table` names (EchoDistill for its ablation tables), else None."""
    methods = {spec.method for spec in DEFS[table].rows if spec.method is not None}
    return methods.pop() if len(methods) == 1 else None


def _extra_label(method: str, base: str, table: str, label: str) -> str:
    """The label of a row for a variant no table lists, from the method's `label`: "w/o a + b" for a drop ablation
    (prefixed with the label in a table about another method), the label alone for its default variant (the
    Variant column names it), else "<label> (<variant>)"."""
    if base.startswith("drop_"):
        text = "w/o " + " + ".join(base.removeprefix("drop_").split("+"))
        return text if _subject(table) == method else f"{label} {text}"
    return label if base == "default" else f"{label} ({base})"


@cache
def listed_methods() -> frozenset[str]:
    """The methods some table's rows name: any other method's rows are a section of their own."""
    return frozenset(spec.method for d in DEFS.values() for spec in d.rows if spec.method is not None)


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
    def num(k: str) -> float:  # a declared metric the paper has no column for is not in the paper: NaN
        return float(row[k]) if row.get(k) else math.nan
    return {**{m: num(m) for m in METRICS}, "train_time_s": num("train_time_s"),
            "infer_time_s": num("infer_time_s"), "iterations": num("iterations"),
            "ref": f"Table {row['table']}" + (f" ({row['section']})" if row["table"] == "3" else "")}
