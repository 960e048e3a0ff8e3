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
from pathlib import Path
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
                   label=declared("label") or method.name, table_view=declared("table_view"),
                   table_view_note=declared("table_view_note"))

    @property
    def presentation(self) -> Presentation:
        return Presentation(self.name, self.label or self.name, self.table_view, self.table_view_note)

    def ablation_field(self, flag: str) -> str:
        """The config field that `bench ablate --FLAG` sets; a one-line BenchError when the method has none."""
        from bench.api import BenchError

        if flag not in self.ablations:
            offered = ", ".join(f"--{f.replace('_', '-')}" for f in self.ablations) or "none"
            raise BenchError(f"method '{self.name}' declares no --{flag.replace('_', '-')} ablation; it offers: "
                             f"{offered} (MethodOptions.ablations)")
        return self.ablations[flag]


# --- how tables and figures show a method ---------------------------------------------------------------------

PRESENTATION_KEYS = ("label", "table_view", "table_view_note")
"""The declarations `Presentation` carries (`bench.api.MethodOptions`)."""


@dataclass(frozen=True)
class Presentation:
    """The part of `MethodInfo` that tables, the report and the user-study table read for every method they show:
    `presentation(name)` gives it without importing the method where it can."""

    name: str
    """Registry name."""
    label: str
    """Display name (`MethodOptions.label`; the registry name where none is declared or the method is unknown)."""
    table_view: str | None = None
    """`MethodOptions.table_view`."""
    table_view_note: str = ""
    """`MethodOptions.table_view_note`."""

    @property
    def caption(self) -> str:
        """The tables' caption sentence for rows that read `table_view` ("" without one)."""
        if not self.table_view:
            return ""
        return f"{self.label} rows: {self.table_view_note or f'view `{self.table_view}` where the run has one'}."


def presentation(name: str) -> Presentation:
    """How tables and figures show runs of method `name`. Cheap: the registry stays lazy (`bench.registry`), and
    the declarations are read from the class body's literals (as `bench.plugins` finds a class's `name`) unless
    the method is imported already, inherits, or computes one of them, when `MethodInfo.of` reads the class. A
    name no registry knows (a plug-in not loaded in this process) or a class that cannot be loaded: its name."""
    from bench.plugins import discover
    from bench.registry import METHODS

    discover(METHODS)
    target = METHODS.get(name)
    return Presentation(name, name) if target is None else _presentation(name, target)


@cache
def _presentation(name: str, target: str) -> Presentation:
    literals = _class_literals(target, PRESENTATION_KEYS)
    if literals is not None:
        return Presentation(name, literals.get("label") or name, literals.get("table_view"),
                            literals.get("table_view_note") or MethodOptions.table_view_note)
    from bench.plugins import load

    try:
        return MethodInfo.of(load(target)).presentation
    except Exception:  # noqa: BLE001 - a plug-in that does not load here still has its runs shown, by name
        return Presentation(name, name)


def _class_literals(target: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The class-body assignments of `keys` in the class a registry target names, when the module is not imported
    yet, the class has no base class and each of them is a literal; None when only importing it can tell."""
    import ast
    import importlib.util
    import sys

    module, _, cls_name = target.rpartition(":")
    try:
        if module.endswith(".py"):
            path = Path(module)
        else:
            if module in sys.modules:
                return None
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                return None
            path = Path(spec.origin)
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError, SyntaxError):
        return None
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
    if node is None or node.bases or node.keywords:
        return None
    found: dict[str, Any] = {}
    for item in node.body:
        target_node = item.target if isinstance(item, ast.AnnAssign) else (
            item.targets[0] if isinstance(item, ast.Assign) and len(item.targets) == 1 else None)
        if not isinstance(target_node, ast.Name) or target_node.id not in keys:
            continue
        try:
            found[target_node.id] = ast.literal_eval(item.value) if item.value is not None else None
        except (ValueError, TypeError, SyntaxError):
            return None
    return found


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
