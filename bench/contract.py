"""The method contract as the harness reads it: a method's declarations (`MethodInfo`) and its config fields' roles.

Everything optional a method or its config may declare has its default in `bench.api.MethodOptions` (class
attributes) or in the field metadata of `bench.config` (`SCHEDULE`, `SAMPLING_STEPS`, `STEP_COUNT`,
`SAMPLING_ONLY`, `NOT_HASHED`); this module is the one place that reads them, so no other module calls
`getattr(cls, "version", 1)` or looks at a field's name to learn what it means (`SCHEDULE`, `MAIN_SCHEDULE`,
`BATCH_SIZE`, `CHECKPOINT_EVERY`, `SAMPLING_STEPS`, `STEP_COUNT`: the roles below).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bench.api import MethodOptions

ABLATION_FLAGS = ("drop", "teacher_first", "shots", "nfe")
"""The `bench ablate` flags a method may map onto its config fields (`MethodOptions.ablations`)."""


@dataclass(frozen=True)
class MethodInfo:
    """What the harness knows about one method class: its required members and its optional declarations (with the
    defaults of `bench.api.MethodOptions` where it declares none)."""

    name: str
    """Registry name."""
    config: type
    """The config dataclass."""
    variants: dict[str, dict[str, Any]]
    """Named config overrides."""
    version: int = MethodOptions.version
    """Method version: a record of another version is re-run."""
    trains: bool = MethodOptions.trains
    """False: no training stage (`prepare` instead of `train`)."""
    resumable: bool = MethodOptions.resumable
    """True: `train` checkpoints and continues from its checkpoints under `--resume`."""
    ablations: dict[str, str] = field(default_factory=dict)
    """`bench ablate` flag -> config field."""
    perf_overrides: dict[str, Any] = field(default_factory=dict)
    """Config overrides `bench perf` applies to time one main-stage iteration."""
    label: str = ""
    """Display name in tables and figures (the registry name where the method declares none)."""
    base_model: str | None = MethodOptions.base_model
    """The base model the tables' Model column names (None: the run's backbone)."""
    model_roles: Any = MethodOptions.model_roles
    """The model roles it declares (`bench.models.component.ModelRoles`), or None."""
    table_view: str | None = MethodOptions.table_view
    """The view the paper-style tables read for its runs where a run has it; None: the run's own evaluation."""
    table_view_note: str = MethodOptions.table_view_note
    """The caption's words for `table_view`."""

    @classmethod
    def of(cls, method: type) -> MethodInfo:
        """The declarations of `method` (a class following `bench.api.Method`)."""

        def declared(key: str) -> Any:
            return getattr(method, key, getattr(MethodOptions, key))

        return cls(name=method.name, config=method.Config, variants=dict(method.variants),
                   version=declared("version"), trains=declared("trains"), resumable=declared("resumable"),
                   ablations=dict(declared("ablations")), perf_overrides=dict(declared("perf_overrides")),
                   label=declared("label") or method.name, base_model=declared("base_model"),
                   model_roles=declared("model_roles"),
                   table_view=declared("table_view"),
                   table_view_note=declared("table_view_note"))

    @property
    def presentation(self) -> Presentation:
        return Presentation(self.name, self.label or self.name, self.table_view, self.table_view_note,
                            self.base_model)

    def presentation_for(self, backbone: str | None) -> dict[str, Any]:
        """What a run of this method on `backbone` writes into its record (`RunRecord.presentation`)."""
        return {"label": self.label or self.name, "table_view": self.table_view,
                "table_view_note": self.table_view_note, "model": self.base_model or backbone_label(backbone)}

    def ablation_field(self, flag: str) -> str:
        """The config field that `bench ablate --FLAG` sets; a one-line BenchError when the method has none."""
        from bench.api import BenchError

        if flag not in self.ablations:
            offered = ", ".join(f"--{f.replace('_', '-')}" for f in self.ablations) or "none"
            raise BenchError(f"method '{self.name}' declares no --{flag.replace('_', '-')} ablation; it offers: "
                             f"{offered} (MethodOptions.ablations)")
        return self.ablations[flag]


# --- how tables and figures show a method ---------------------------------------------------------------------

PRESENTATION_KEYS = ("label", "table_view", "table_view_note", "model")
"""What a run records of how it is shown (`RunRecord.presentation`; `bench.api.MethodOptions`)."""

BACKBONE_LABELS = {"sd-turbo": "SD Turbo", "hyper-sd15": "Hyper-SD1.5"}
"""The tables' Model column for a backbone (`--backbone`), as the paper names it."""


def backbone_label(backbone: str | None) -> str:
    backbone = backbone or "sd-turbo"
    return BACKBONE_LABELS.get(backbone, backbone)


@dataclass(frozen=True)
class Presentation:
    """How tables, the report and the user-study table show a method's runs."""

    name: str
    """Registry name."""
    label: str
    """Display name (`MethodOptions.label`; the registry name where none is declared or the method is unknown)."""
    table_view: str | None = None
    """`MethodOptions.table_view`."""
    table_view_note: str = ""
    """`MethodOptions.table_view_note`."""
    model: str | None = None
    """The base model (`MethodOptions.base_model`, else the run's backbone); None where nothing says."""

    @property
    def caption(self) -> str:
        """The tables' caption sentence for rows that read `table_view` ("" without one)."""
        if not self.table_view:
            return ""
        return f"{self.label} rows: {self.table_view_note or f'view `{self.table_view}` where the run has one'}."


def recorded(record: Any) -> Presentation:
    """How a run is shown: what it recorded (`RunRecord.presentation`), never the registry or the method's source.
    A record written before runs recorded it falls back to what this process knows: the method's declarations
    when it is registered here (`presentation`; imports it, once per method), else its name; its model is then
    its backbone's."""
    shown = record.presentation
    if isinstance(shown, dict) and shown.get("label"):
        return Presentation(record.method, shown["label"], shown.get("table_view"),
                            shown.get("table_view_note") or "", shown.get("model"))
    known = presentation(record.method)
    return dataclasses.replace(known, model=known.model or backbone_label(record.backbone))


def recorded_by_method(records: Any) -> dict[str, Presentation]:
    """Method name -> how its runs are shown: from the first of `records` that recorded it, else `recorded`'s
    fallback."""
    records = list(records)
    out: dict[str, Presentation] = {}
    for r in records:
        if r.method not in out and r.presentation:
            out[r.method] = recorded(r)
    for r in records:  # methods none of whose runs recorded it (older records)
        if r.method not in out:
            out[r.method] = recorded(r)
    return out


def presentation(name: str) -> Presentation:
    """How method `name` is shown by what this process knows of it: its declarations (`MethodInfo.of`, importing it
    once) when it is registered here (a built-in, an entry point, an `--include`d file), else its name. Tables and
    the report read runs' records instead (`recorded`); this serves records written before runs recorded it, and
    the commands that name methods without records (`bench estimate`, the user-study table)."""
    from bench.plugins import discover
    from bench.registry import METHODS

    discover(METHODS)
    target = METHODS.get(name)
    return Presentation(name, name) if target is None else _presentation(name, target)


@cache
def _presentation(name: str, target: str) -> Presentation:
    from bench.plugins import load

    try:
        return MethodInfo.of(load(target)).presentation
    except Exception:  # noqa: BLE001 - a plug-in that does not load here still has its runs shown, by name
        return Presentation(name, name)


# --- config field roles --------------------------------------------------------------------------------------

def is_schedule(f: dataclasses.Field) -> bool:
    """A schedule length (iterations of a training stage, `SCHEDULE`): capped on a capped profile, shortened by
    `bench perf`. Declared only: a field's name never makes it one."""
    return bool(f.metadata.get("schedule"))


def is_step_count(f: dataclasses.Field) -> bool:
    """A sampling step count (of evaluation or of a training-time sampler; `SAMPLING_STEPS`, `STEP_COUNT`): capped
    on a capped profile. Declared only: a field's name never makes it one."""
    return bool(f.metadata.get("steps"))


def is_main_schedule(f: dataclasses.Field) -> bool:
    """Declared the main training stage's schedule length (`MAIN_SCHEDULE`)."""
    return f.metadata.get("schedule") == "main"


def is_checkpoint_period(f: dataclasses.Field) -> bool:
    """The checkpoint period (`CHECKPOINT_EVERY`): capped to half the cap on a capped profile, 0 under `bench perf`."""
    return bool(f.metadata.get("checkpoint"))


def is_batch_size(f: dataclasses.Field) -> bool:
    """The training batch size (`BATCH_SIZE`): set by `bench perf --batch`, scaled by in `bench plan`."""
    return bool(f.metadata.get("batch"))


def is_sampling_only(f: dataclasses.Field) -> bool:
    """Changes only how a trained model is sampled: runs differing only here share one training."""
    return bool(f.metadata.get("sampling"))


def is_hashed(f: dataclasses.Field) -> bool:
    """Part of the config hash (False for settings that never change a result, `NOT_HASHED`)."""
    return f.metadata.get("hash", True) is not False


def schedule_fields(config: Any) -> list[str]:
    """Names of the schedule-length fields of a config (class or instance)."""
    return [f.name for f in dataclasses.fields(config) if is_schedule(f)]


def main_schedule_field(config: Any) -> str | None:
    """The main training stage's schedule field: the one declared `MAIN_SCHEDULE`, else the first `SCHEDULE` field;
    None for a config without one."""
    fields = [f for f in dataclasses.fields(config) if is_schedule(f)]
    main = [f for f in fields if is_main_schedule(f)]
    chosen = main or fields
    return chosen[0].name if chosen else None


def checkpoint_field(config: Any) -> str | None:
    """The config's checkpoint-period field (`CHECKPOINT_EVERY`), or None."""
    return next((f.name for f in dataclasses.fields(config) if is_checkpoint_period(f)), None)


def batch_field(config: Any) -> str | None:
    """The config's training batch-size field (`BATCH_SIZE`), or None."""
    return next((f.name for f in dataclasses.fields(config) if is_batch_size(f)), None)


def step_fields(config: Any) -> list[str]:
    """Names of the step-count fields of a config (class or instance)."""
    return [f.name for f in dataclasses.fields(config) if is_step_count(f)]


def undeclared_fields(config: Any) -> list[str]:
    """Fields named like a schedule length, a step count, a batch size or a checkpoint period (`iterations`,
    `*_iters`, `steps`, `*_steps`, `batch_size`, `checkpoint_every`) that declare no role: the harness does not cap,
    shorten or set them. A hint for `bench check-method`, nothing more."""
    out = []
    for f in dataclasses.fields(config):
        by_name = f.name in ("iterations", "steps", "batch_size", "checkpoint_every") or f.name.endswith(
            ("_iters", "_steps"))
        if by_name and not any(key in f.metadata for key in ("schedule", "steps", "batch", "checkpoint")):
            out.append(f.name)
    return out
