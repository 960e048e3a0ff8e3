"""Typed configs: build a config dataclass from overrides (unknown keys raise), dump it, hash it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

from bench.api import BenchError
from bench.naming import did_you_mean

SAMPLING_ONLY = {"sampling": True}
"""Field metadata for a setting that only changes how a trained model is sampled (its step count, its guidance).
Runs whose configs differ only in such fields share one training: `bench run` trains the first and samples the
others from its weights (`bench.runs`), e.g. `bench ablate --nfe 1,2,4`."""

SAMPLING_STEPS = {"sampling": True, "steps": True}
"""Field metadata for a sampling step count: sampling-only, and capped on a capped profile (`tiny`: 5 steps)."""

STEP_COUNT = {"steps": True}
"""Field metadata for a step count of a sampler used during training (EchoDistill's `teacher_steps`): capped on a
capped profile like `SAMPLING_STEPS`, but part of the training (not sampling-only)."""

SCHEDULE = {"schedule": True}
"""Field metadata for a schedule length (optimiser iterations of a training stage): capped on a capped profile
(`tiny`: 10 iterations), and rewritten by `bench perf` to time a few iterations (1 for a stage that is not the
main one)."""

MAIN_SCHEDULE = {"schedule": "main"}
"""Field metadata for the schedule length of the method's main training stage: a `SCHEDULE` field that `bench perf`
times (set to its warm-up plus timed iterations) and `bench plan` multiplies a step's cost by. Where a config
declares none, its first `SCHEDULE` field (in declaration order) is the main one."""

BATCH_SIZE = {"batch": True}
"""Field metadata for the training batch size: `bench perf --batch` sets it, `bench plan` scales a measured step
time by it."""

NOT_HASHED = {"hash": False}
"""Field metadata for a setting that never changes a result: left out of every hash."""

CHECKPOINT_EVERY = {"hash": False, "checkpoint": True}
"""Field metadata for the checkpoint period in iterations (0 = off), which a resumable method declares: never
hashed, halved to the cap on a capped profile (so a capped run checkpoints mid-run), 0 under `bench perf`."""


def build(cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """`cls(**overrides)` with a clear error for an unknown key or a value `__post_init__` rejects."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields:
            raise BenchError(
                f"unknown config field '{key}' for {cls.__name__}{did_you_mean(key, list(fields))}; "
                f"valid: {', '.join(fields)}"
            )
    hints = typing.get_type_hints(cls)
    for key, value in list(overrides.items()):
        try:
            overrides[key] = _coerce(value, hints.get(key))
        except BenchError as err:
            raise BenchError(f"invalid {cls.__name__} field '{key}': {err}") from None
    try:
        return cls(**overrides)
    except (ValueError, TypeError) as err:
        raise BenchError(f"invalid {cls.__name__}: {err}") from None


def normalise_overrides(classes: list[type], overrides: dict[str, Any]) -> dict[str, Any]:
    """`--set` values written in another form of the same integer (`iterations=1e1`, `iterations=10.0`) as the
    integer (10), for fields that are `int` in every config class of `classes` that has them; so one value is one
    variant (`...iterations=10`), whatever its spelling. Everything else is left as given (`build` checks it)."""
    out = dict(overrides)
    for key, value in overrides.items():
        if not isinstance(value, float) or not value.is_integer():
            continue
        kinds = [typing.get_type_hints(cls).get(key) for cls in classes
                 if key in {f.name for f in dataclasses.fields(cls)}]
        if kinds and all(kind is int for kind in kinds):
            out[key] = int(value)
    return out


def _coerce(value: Any, hint: Any) -> Any:
    """Values from the command line arrive as strings or JSON (numbers, lists). Make them the field's type; a number
    that does not fit an int or float field (2.5 for an int, true for a number) is a BenchError."""
    if hint in (int, float) and not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchError(f"expected {'an integer' if hint is int else 'a number'}, got {value!r}")
        if hint is int and not float(value).is_integer():
            raise BenchError(f"expected an integer, got {value!r}")
        return hint(value)
    if hint is None or not isinstance(value, (str, list)):
        return value
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, str):
        return value
    if hint is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise BenchError(f"expected true/false, got '{value}'")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            raise BenchError(f"expected {'an integer' if hint is int else 'a number'}, got '{value}'") from None
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def stable_hash(payload: Any) -> str:
    """A short sha256 of the canonical JSON of `payload`; equal payloads give equal hashes."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_fields(config: Any) -> dict[str, Any]:
    """The config as it bears on training: without sampling-only fields (`SAMPLING_ONLY`) and without fields that
    never change a result (`NOT_HASHED`, `CHECKPOINT_EVERY`)."""
    out = to_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("sampling") or f.metadata.get("hash") is False:
            out.pop(f.name, None)
    return out
