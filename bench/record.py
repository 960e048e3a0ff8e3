"""The run record as typed values: `RunRecord` and its parts, with `to_json` / `from_json`.

`record.json` on disk is unchanged (schema 1, `results/README.md` documents every key; a test checks that table
against the fields here). Reading is lenient, writing exact: a key an older bench did not write reads as None
and is not written back (`absent`), and a key this module does not know is kept as it was (`extra`), so
`RunRecord.from_json(d).to_json() == d` for every record ever written. `VariantName` and `SuiteRef` are the
structure that used to travel as strings (`default+iterations=500`, a suite's name inside its description),
parsed once here.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.record_values import SuiteRef, VariantName  # noqa: F401 (re-exported: part of the record's API)

SCHEMA_VERSION = 1
"""The record schema this bench writes (and the newest it reads); `bench.store.SCHEMA_VERSION` is the same."""

NOT_STORED = ("run_dir",)
"""Attributes a reader sets that are never written to `record.json`."""

T = TypeVar("T")

_NAMES_OF: dict[type, frozenset[str]] = {}
"""Per record part, its stored field names (`dataclasses.fields` is slow: reading 2000 records calls it a million
times otherwise)."""

NONE_ABSENT: frozenset[str] = frozenset()


def _names(cls: type) -> frozenset[str]:
    names = _NAMES_OF.get(cls)
    if names is None:
        names = _NAMES_OF[cls] = frozenset(f.name for f in dataclasses.fields(cls)) - {"extra", "absent"}
    return names


def _load(cls: type[T], data: dict[str, Any], nested: dict[str, Any] | None = None) -> T:
    """`cls` from a JSON object: known keys become fields (`nested` converts some), the rest goes to `extra`, and
    the fields the object lacks are remembered in `absent`."""
    names = _names(cls)
    values = {k: (nested[k](v) if nested and k in nested and v is not None else v)
              for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    absent = frozenset(n for n in names if n not in data and n not in NOT_STORED) if len(values) < len(names) \
        else NONE_ABSENT
    return cls(**values, extra=extra, absent=absent)


def _dump(obj: Any) -> dict[str, Any]:
    """The JSON object of a record part: every field but the absent ones, then the extra keys as they were."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in ("extra", "absent") or f.name in NOT_STORED or f.name in obj.absent:
            continue
        value = getattr(obj, f.name)
        out[f.name] = _plain(value)
    out.update(obj.extra)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: while records are built nothing can be garbage, and the collections
    that their hundreds of thousands of `ImageScore`s trigger tripled the time to read a full sweep. Readers of
    many records (`bench.tables.load_records`, `as_records`) pause it around the whole batch."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


# --- the parts of a record -------------------------------------------------------------------------------------


@dataclass
class ImageScore:
    """One generated image and its scores."""

    file: str | None = None
    """Path relative to the run folder (`images/p00_s0.png`)."""
    prompt_index: int | None = None
    """Index of the prompt template in the concept's list."""
    eval_seed: int | None = None
    """Evaluation seed."""
    noise_seed: int | None = None
    """Seed of its initial noise (`1000 * eval_seed + prompt_index`)."""
    prompt: str | None = None
    """The prompt as given to the model."""
    n_real: int | None = None
    """Real images CLIP-I and DINO were averaged over."""
    scores: dict[str, float] = field(default_factory=dict)
    """Metric name -> value (`clip_t`, `clip_i`, `dino`, ...): every other key of the image's JSON object."""
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageScore:
        """The fields by name, every other number a score, anything else `extra` (a full sweep reads about a
        million images: one pass over the keys, no per-image field introspection)."""
        scores: dict[str, float] = {}
        extra: dict[str, Any] = {}
        for k, v in data.items():
            if k in _IMAGE_KEYS:
                continue
            if isinstance(v, (int, float)) and v.__class__ is not bool:
                scores[k] = v
            else:
                extra[k] = v
        absent = NONE_ABSENT if len(data) - len(scores) - len(extra) == len(_IMAGE_FIELDS) else frozenset(
            k for k in _IMAGE_FIELDS if k not in data)
        return cls(*map(data.get, _IMAGE_FIELDS), scores, extra, absent)

    def to_json(self) -> dict[str, Any]:
        out = _dump(self)
        out.pop("scores", None)  # written flat, beside the other keys
        return {**out, **self.scores}


_IMAGE_FIELDS = tuple(f.name for f in dataclasses.fields(ImageScore) if f.name not in ("scores", "extra", "absent"))
"""`ImageScore`'s named keys, in field order (`from_json` passes them positionally)."""
_IMAGE_KEYS = frozenset(_IMAGE_FIELDS)


@dataclass
class Timing:
    """Where a run's time went (seconds unless named otherwise)."""

    train_s: float | None = None
    """Training loop, model loading excluded, synchronised."""
    load_s: float | None = None
    """Loading and copying model components."""
    iterations: int | None = None
    """Logged iterations, all phases."""
    it_per_s: float | None = None
    """Iterations per second of training."""
    peak_memory: dict[str, Any] | None = None
    """`bytes`, `kind`."""
    infer_s_per_image: float | None = None
    """Sampling at batch 1, after warm-up."""
    infer_s_per_image_batched: float | None = None
    """Sampling at the evaluation batch size."""
    eval_batch_size: int | None = None
    """The evaluation batch size."""
    resumed: bool | None = None
    """Training continued from a checkpoint."""
    reused_training: bool | None = None
    """`train_s`, `iterations` and `it_per_s` are those of the `trained_from` run."""
    prepare_s: float | None = None
    """A method without training (`trains: false`): conditioning the model on the photos, loading excluded."""
    threads: int | None = None
    """CPU intra-op threads torch used in the run's process (`bench.threads`)."""
    attempts: list[dict[str, Any]] | None = None
    """Every attempt of the training, oldest first (`bench.timing.AttemptClock`): `started_at`, `finished_at`,
    `train_s`, `iterations` (done in that attempt), `resumed_from` ({checkpointer: iteration}) and `interrupted`
    for a killed one. `train_s` above is their sum and `iterations` the run's total."""
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timing:
        return _load(cls, data)

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


@dataclass
class Evaluation:
    """One sampled-and-scored model of a run: a view (`views.<name>`), or the run's own (`RunRecord.evaluation`)."""

    steps: int | None = None
    """Sampling steps (inference NFE)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Metric name -> the run's aggregated score."""
    images: list[ImageScore] = field(default_factory=list)
    """Per generated image."""
    real_vs_real: dict[str, Any] | None = None
    """The ceiling: each real image against the others (`clip_i`, `dino`, `n`, `n_pairs`)."""
    timing: Timing | None = None
    """Sampling timings of this evaluation."""
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        return _load(cls, data, {"images": lambda xs: [ImageScore.from_json(x) for x in xs],
                                 "timing": Timing.from_json})

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


@dataclass
class TrainedFrom:
    """The run whose training a sampling-only variant took over."""

    run: str | None = None
    """Its folder under the results root."""
    variant: str | None = None
    """Its variant."""
    config_hash: str | None = None
    """Its config hash."""
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainedFrom:
        return _load(cls, data)

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


@dataclass
class Rescored:
    """`bench score` scored the run's saved images again under another suite."""

    from_suite: Any = None
    """The suite it was scored under before."""
    at: str | None = None
    """When (ISO 8601)."""
    pass_images: int | None = None
    """Images embedded in that one pass."""
    pass_s: float | None = None
    """Seconds of that pass."""
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rescored:
        return _load(cls, data)

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


@dataclass
class RunRecord:
    """One run's `record.json`. Keys and meanings: results/README.md ("record.json")."""

    # every record
    schema: int = SCHEMA_VERSION
    """Record schema version."""
    status: str | None = None
    """`done`, `failed` (and, in memory only, `running`; `corrupt` for a stand-in of an unreadable record)."""
    method: str = ""
    """Registry name."""
    variant: str = ""
    """Variant name as in the path (`VariantName.parse(variant)`)."""
    concept: str = ""
    """DreamBench subject or a user concept folder's name."""
    dataset: str | None = None
    """Which concepts the run's concept is one of (`bench.concept_sets.dataset_of`): `dreambench`,
    `customconcept101`, or `yours` (a `--concept-dir` folder); the tables never average two datasets. Absent in
    older records (told by the name)."""
    seed: int = 0
    """Training seed."""
    profile: str = ""
    """`paper`, `tiny` or `paper-random`."""
    backbone: str | None = None
    """`sd-turbo` or `hyper-sd15`."""
    method_version: int | None = None
    """The method class's `version`."""
    presentation: dict[str, Any] | None = None
    """How tables and figures show the run, from its method's declarations: `label`, `table_view`,
    `table_view_note`, `model` (`bench.contract.recorded` reads it; None in records written before it was)."""
    eval_version: int | None = None
    """`bench.runs.EVAL_VERSION` the run was evaluated with."""
    config: dict[str, Any] = field(default_factory=dict)
    """The full resolved method config."""
    config_hash: str | None = None
    """Hash of everything that changes the run's output."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Ad-hoc `--set` overrides on top of the named variant."""
    training_hash: str | None = None
    """Hash of what determines the trained weights."""
    models: dict[str, Any] | None = None
    """The profile's description (components and their sources)."""
    metric_suite: dict[str, Any] | None = None
    """The metric suite's description (`suite` for its name and version)."""
    versions: dict[str, Any] | None = None
    """Library versions."""
    git_commit: str | None = None
    """Commit of the harness."""
    host: str | None = None
    """Machine name."""
    pid: int | None = None
    """Process that wrote the record."""
    attempts: int | None = None
    """Attempts this run took."""
    resumed_from: Any = None
    """The checkpoint iteration(s) a `--resume` continued from."""
    started_at: str | None = None
    """ISO 8601."""
    finished_at: str | None = None
    """ISO 8601."""
    # finished runs
    identifier: str | None = None
    """The token the prompts use."""
    steps: int | None = None
    """Sampling steps of the evaluation."""
    metrics: dict[str, float] | None = None
    """Metric name -> the run's score."""
    images: list[ImageScore] | None = None
    """Per generated image."""
    real_vs_real: dict[str, Any] | None = None
    """The ceiling: real against real."""
    views: dict[str, Evaluation] | None = None
    """Name -> another evaluation of the same run."""
    loss_log: str | None = None
    """The loss log's file name."""
    device: str | None = None
    """Device name."""
    speed: dict[str, Any] | None = None
    """Speed switches as applied."""
    rescored: Rescored | None = None
    """Present when `bench score` scored the saved images again."""
    trained_from: TrainedFrom | None = None
    """The run whose training this one sampled; None when it trained itself."""
    timing: Timing | None = None
    """Training and sampling timings."""
    # failed runs
    reason: str | None = None
    """One line: why the run failed."""
    diverged: bool | None = None
    """Training produced a non-finite loss."""
    traceback: str | None = None
    """The traceback file (`traceback.txt`)."""
    # runs of a method without training
    trains: bool | None = None
    """False for a run of a method without training (absent for every other run): no `train_s`, no loss log."""
    conditioning: list[str] | None = None
    """A method without training: the file names of the photo(s) that condition its model."""
    # not stored
    run_dir: str | None = None
    """The run folder, set by the reader (`bench.store.iter_run_records`); never written."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this module does not know, kept as they were."""
    absent: frozenset[str] = frozenset()
    """Fields the JSON object lacked (an older record): not written back."""

    @classmethod
    def start(cls, **fields: Any) -> RunRecord:
        """A record built in code (`bench.runs.execution`, where every run's record is made): only the given fields
        are written, and each field set later with `set_fields`, so what a run writes is what it set."""
        record = cls(**fields)
        record.absent = _names(cls) - set(fields) - set(NOT_STORED)
        return record

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The record of a `record.json` object (`gc_paused` meanwhile: a finished run holds hundreds of
        `ImageScore`s)."""
        with gc_paused():
            return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> RunRecord:
        return _load(cls, data, {
            "images": lambda xs: [ImageScore.from_json(x) for x in xs],
            "views": lambda vs: {k: Evaluation.from_json(v) for k, v in vs.items()},
            "rescored": Rescored.from_json, "trained_from": TrainedFrom.from_json, "timing": Timing.from_json})

    def to_json(self) -> dict[str, Any]:
        return _dump(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True, default=str)

    # --- derived, read-only ---

    @property
    def variant_name(self) -> VariantName:
        return VariantName.parse(self.variant)

    @property
    def suite(self) -> SuiteRef:
        return SuiteRef.of(self.metric_suite)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def evaluation(self) -> Evaluation:
        """The run's own evaluation (the top-level `steps`, `metrics`, `images`, `real_vs_real`)."""
        return Evaluation(self.steps, dict(self.metrics or {}), list(self.images or []), self.real_vs_real,
                          self.timing)

    def label(self) -> str:
        return f"{self.profile}/{self.method}/{self.variant}/{self.concept}/seed{self.seed}"


def set_fields(part: Any, **values: Any) -> None:
    """Set fields of a record or one of its parts, written from now on even where the record read (or started)
    lacked them; a name the part does not declare is a TypeError, never a stray key."""
    names = _names(type(part))
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{type(part).__name__} has no field {', '.join(unknown)}")
    for name, value in values.items():
        setattr(part, name, value)
    part.absent = part.absent - set(values)


FAILED_KEYS = ("reason", "diverged", "traceback")
"""The keys a failed run adds (results/README.md, below the second table)."""
NO_TRAINING_KEYS = ("trains", "conditioning")
"""Keys only a run of a method without training has (results/README.md)."""
_NAMES = [f.name for f in dataclasses.fields(RunRecord) if f.name not in ("extra", "absent", *NOT_STORED)]
EVERY_RECORD = tuple(_NAMES[: _NAMES.index("identifier")])
"""The keys of every record (results/README.md's first table)."""
DONE_KEYS = tuple(_NAMES[_NAMES.index("identifier"): _NAMES.index("reason")])
"""The keys a finished run adds (the second table)."""

