"""The contract between the harness and every method.

A method is a class registered in `bench.registry` that follows `Method`; what it returns after training
follows `Trained`. This module imports nothing heavy (no torch), so `bench --help` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL.Image import Image


class BenchError(Exception):
    """A mistake the user can fix. The CLI prints it as one line and exits with code 2."""


class InfraError(Exception):
    """The environment failed, not the method: disk full, read-only filesystem, quota, I/O error, a device or
    driver error, a broken pipe to the parent process. It stops the sweep with one line and exit code 4; the run is
    left unfinished (resumable) and is never recorded as a result. See `infra_cause`."""


INFRA_ERRNOS = {"ENOSPC": "no space left on device", "EROFS": "read-only file system", "EDQUOT": "disk quota "
                "exceeded", "EIO": "input/output error"}
"""OSError numbers that are the environment's fault (by name: `errno` lacks some on some systems)."""
DEVICE_ERRORS = ("CUDA error", "CUDA driver", "cudaError", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                 "NCCL error", "no CUDA GPUs are available", "Found no NVIDIA driver", "NVML")
"""Text of a device or driver error (raised by torch as RuntimeError)."""
OS_MESSAGES = ("no space left on device", "read-only file system", "disk quota exceeded", "input/output error")
"""The same OS errors as text, for libraries that wrap them in their own exception type (safetensors writes
"I/O error: No space left on device (os error 28)" as a `SafetensorError`)."""


def infra_cause(err: BaseException) -> str | None:
    """One line naming the environment failure behind `err` (or its causes), or None when the fault is the
    method's own (an exception in its code, divergence)."""
    import errno as errno_codes

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, InfraError):
            return str(err)
        if isinstance(err, (BrokenPipeError, ConnectionError)):
            return f"lost the connection to the parent process ({type(err).__name__})"
        if isinstance(err, OSError):
            for name, text in INFRA_ERRNOS.items():
                if err.errno is not None and err.errno == getattr(errno_codes, name, None):
                    return f"{text}" + (f": {err.filename}" if err.filename else "")
        if isinstance(err, RuntimeError) and any(marker in str(err) for marker in DEVICE_ERRORS):
            return f"device error: {str(err).strip().splitlines()[0][:200]}"
        text = str(err).lower()  # libraries that wrap the OS error in their own type (safetensors, PIL, ...)
        for message in OS_MESSAGES:
            if message in text:
                return f"{message} ({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})"
        err = err.__cause__ or err.__context__
    return None


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the run is recorded as failed with this message as the reason."""


LIVE_CLASSES = ("cat", "dog")
"""Class nouns of living subjects: their concepts are `live` and take the living-subject prompt list."""


DEFAULT_PHRASE = "{identifier} {class_noun}"
"""What stands for the concept in an evaluation prompt unless a trained model declares its own `eval_phrase`."""


def eval_phrase(trained: Any) -> str:
    """The evaluation phrase a trained model declares (`TrainedOptions.eval_phrase`), else `DEFAULT_PHRASE`."""
    return getattr(trained, "eval_phrase", DEFAULT_PHRASE)


def views(trained: Any) -> dict[str, Any]:
    """The further models a trained model declares (`TrainedOptions.views`), else none."""
    return dict(getattr(trained, "views", None) or {})


@dataclass(frozen=True)
class Concept:
    """One subject to personalise: its reference photos and its evaluation prompts.

    `prompts` are templates in DreamBench's form, `{0}` the method's identifier and `{1}` the class noun,
    e.g. `"a {0} {1} in the jungle"`.
    """

    name: str
    class_noun: str
    images: tuple[Path, ...]
    prompts: tuple[str, ...]
    live: bool = False
    dataset: bool = True
    """True for a dataset's concept (DreamBench), False for a user's own folder (`--concept-dir`), whatever its
    name: dataset-specific choices (the released init words) never apply to a user's folder."""

    def prompt(self, template: str, identifier: str, phrase: str = DEFAULT_PHRASE) -> str:
        """The prompt given to the model. Where the template names the concept as `{0} {1}` (identifier, class
        noun), the method's evaluation `phrase` stands there: `"a <new1> dog in the jungle"` (the default phrase),
        `"a <new1> in the jungle"` (phrase "{identifier}": textual inversion). Any other `{0}` is the identifier
        and any other `{1}` the class noun ("a {0} in a {1} costume" -> "a <new1> in a dog costume")."""
        if "{0} {1}" in template:
            text = phrase.format(identifier=identifier, class_noun=self.class_noun)
            return _squash(template.replace("{0} {1}", text.replace("{", "{{").replace("}", "}}"))
                           .format(identifier, self.class_noun))
        return _squash(template.format(identifier, self.class_noun))

    def clip_text(self, template: str) -> str:
        """The CLIP-T text: the prompt with the identifier removed, `"a dog in the jungle"`."""
        return _squash(template.format("", self.class_noun))

    def with_images(self, images: tuple[Path, ...]) -> Concept:
        """The same concept with another set of reference photos (the one-shot ablation)."""
        return Concept(self.name, self.class_noun, images, self.prompts, self.live, self.dataset)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class Log(Protocol):
    """Where a method reports its progress. The harness writes every call to the run's loss log (JSONL)."""

    def begin(self, phase: str, total: int) -> None:
        """A new phase of training (`"train"`, `"echo"`, ...) with `total` iterations."""

    def __call__(self, iteration: int, **scalars: float) -> None:
        """One finished iteration with its scalar values (losses, weights, accuracies, gradient norms)."""

    # Optional: `sample_from(model)`, reached through `offer_samples`.


def offer_samples(log: Log, model: Trained) -> None:
    """Hand the harness the model being trained: a `Trained` whose `generate` samples the current weights. With
    `--sample-every N` the harness samples a small fixed grid from it every N iterations of each stage (no gradient,
    every random state put back: training is unchanged); a log that takes no samples ignores it."""
    hook = getattr(log, "sample_from", None)
    if hook is not None:
        hook(model)


class Models(Protocol):
    """The models of one run, as a method receives them (`train`, `prepare`, `load`); the harness's
    `bench.models.loading.Models` follows it. Every model role of the run's profile is an attribute, loaded on first
    access, frozen and in eval mode: this run's own copy, which the method may change freely (the next run gets a
    fresh one). Roles of the base pair: `student_unet`, `student_scheduler`, `student_text_encoder`,
    `student_tokenizer`, the same four of `teacher_`, and `vae`; the image encoders `clip_vision`, `ip_proj`,
    `dino1`, `dinov2`; and any role the method declares itself (`MethodOptions.model_roles`)."""

    profile: Any
    """The profile (`bench.models.profiles.Profile`): its `name` (`tiny`, `paper`, `paper-random`), `backbone`,
    `components` (role -> where its weights come from), caps."""
    device: Any
    """The `torch.device` every role is loaded on."""
    resolution: int
    """Training resolution in pixels (the profile's: 512 at paper scale, 64 on tiny)."""
    speed: Any
    """The speed switches applied to the UNets and the VAE (`bench.models.speed.Speed`)."""

    @property
    def latent_size(self) -> int:
        """Latent side length at `resolution` (the resolution over the VAE's downsampling factor)."""

    @property
    def dtype(self) -> Any:
        """The floating-point type the roles are loaded in (`torch.float32`); lower-precision training and sampling
        run under autocast (the configs' `autocast_dtype`, `sample_dtype`)."""

    def __getattr__(self, role: str) -> Any:
        """The component of `role` (this run's copy): `models.student_unet`, `models.dino1`, ..."""

    def get_pristine(self, role: str) -> Any:
        """The process-wide loaded component of `role`, shared by every run: read it, never change it."""

    def pipeline_parts(self, role: str = "student") -> dict[str, Any]:
        """One base model's sampling parts (this run's copies): `unet`, `scheduler`, `tokenizer`, `text_encoder` of
        `role` ("student" or "teacher") and the shared `vae`, as `generate` takes them."""

    def generate(self, parts: dict[str, Any], prompts: list[str], seeds: list[int], steps: int,
                 **options: Any) -> list[Image]:
        """One image per (prompt, seed) with `parts` (`pipeline_parts`, or the same keys with the method's own
        UNet): the harness's seeded sampler (`bench.models.sampling.generate_parts`; `options`: `latent_size`
        (default the UNet's native size), `guidance`, `batch_size`, `precision` (a `sample_dtype`), `sampler`)."""


@runtime_checkable
class Trained(Protocol):
    """A personalised model, ready to sample and to save."""

    identifier: str
    """The word that stands for the concept in prompts (`"<new1>"`, `"sks"`)."""

    default_steps: int
    """Sampling steps used for evaluation unless a caller asks for others."""

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list[Image]:
        """One image per (prompt, seed) pair; the same pair always gives the same image."""

    def save(self, out_dir: Path) -> None:
        """Write the trained weights in the ecosystem's formats (safetensors only) under `out_dir`."""

    # Optional declarations: see `TrainedOptions` (views, eval_phrase), read through `bench.contract`.
    # Required of a method without training (`Method.trains = False`): `conditioning: list[str]`, the file names
    # of the reference photo(s) that condition the model (`prepare` chose them); the run record keeps them.


@runtime_checkable
class Method(Protocol):
    """A personalisation method. One instance per run, built from its resolved config."""

    name: ClassVar[str]
    """Registry name (`"custom_diffusion"`)."""

    Config: ClassVar[type]
    """A dataclass; every field documented, defaults here only, validated in `__post_init__`."""

    variants: ClassVar[dict[str, dict[str, Any]]]
    """Named config overrides (`{"default": {}, "sd21": {"base": "teacher", ...}}`)."""

    def __init__(self, config: Any) -> None: ...

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> Trained:
        """Train on `concept` and return the personalised model. `out_dir` may hold checkpoints."""

    def load(self, weights_dir: Path, models: Models) -> Trained:
        """Rebuild a trained model from what `Trained.save` wrote (for `bench generate`)."""

    # Optional declarations, each with its default: see `MethodOptions`, read through `bench.contract.MethodInfo`.


class MethodOptions(Protocol):
    """What a method MAY declare beside the `Method` members, as class attributes; the values here are the
    defaults. `bench.contract.MethodInfo.of(cls)` reads them (the one place that does), and the contract check
    (`bench check-method`) validates them. They are not part of `Method`'s runtime check, so a method that
    declares none of them still is a `Method`."""

    version: ClassVar[int] = 1
    """Bumped when the method's training changes its results: a record of another version is re-run."""

    trains: ClassVar[bool] = True
    """False for a method with no training stage (an encoder-based method such as IP-Adapter). The harness then
    calls `prepare(concept, models, out_dir, seed) -> Trained` instead of `train` (no log, no checkpoints): it
    builds the conditioned model from the concept's photos. Such a run records no `timing.train_s`, and
    `--resume` or an iteration override is refused for it."""

    resumable: ClassVar[bool] = False
    """True when `train` writes checkpoints (every N iterations, N its `CHECKPOINT_EVERY` field, through
    `bench.models.checkpoint.Checkpointer`) and continues from them, so `bench run --resume` continues a killed
    run instead of restarting it."""

    ablations: ClassVar[dict[str, str]] = {}
    """`bench ablate` flags this method supports -> the config field each sets: `drop` (`--drop NAME`, repeatable:
    a tuple field), `teacher_first` (a bool field), `shots` (an int field), `nfe` (`--nfe 1,2,4`: a sampling step
    count field). EchoDistill: `{"drop": "drop", "teacher_first": "teacher_first", "shots": "shots",
    "nfe": "eval_steps"}`. A flag the method does not declare is a one-line error."""

    perf_overrides: ClassVar[dict[str, Any]] = {}
    """Config overrides `bench perf` applies to time one training iteration of the main stage (EchoDistill:
    `{"drop": ["echo"]}`, the echo stage repeats the same iteration). `bench perf` itself sets the schedule
    fields by their roles (`bench.config`): the `MAIN_SCHEDULE` field to the timed count, other `SCHEDULE` fields
    to 1, the `BATCH_SIZE` field to `--batch`, the `CHECKPOINT_EVERY` field to 0."""

    label: ClassVar[str | None] = None
    """The method's display name (`"Custom Diffusion"`) in the rows of variants no table lists, figure titles and
    the user-study table; the paper's own rows (`bench.tables.DEFS`) and the report's Figure 3 columns keep the
    paper's wording. None: its registry name. Every built-in method declares one. Each run writes it into its
    record (`presentation`), so `bench table` and `bench report` show it without importing the method, and a
    plug-in's label without `--include`."""

    base_model: ClassVar[str | None] = None
    """The base model its runs sample, as the tables' Model column names it for rows the paper's tables do not
    list (`"Flux"`, `"TCD"`); None: the run's backbone (`"SD Turbo"`, `"Hyper-SD1.5"`). Written into every run's
    record (`presentation.model`) with `label` and `table_view`, so tables and the report read it from there."""

    model_roles: ClassVar[Any] = None
    """Model roles the method brings with it (`bench.models.component.ModelRoles`: per profile, each role's
    loader kind, `--weights` group, hub id or tiny stand-in path, options; loaders of new kinds; the tiny
    builder): a method on another base-model family declares them in its own module, and they join its profile
    only (`Profile.for_method`). IP-Adapter TCD declares SDXL + TCD, OminiControl FLUX.1-schnell. None: the
    profile's roles suffice."""

    table_view: ClassVar[str | None] = None
    """The view (`TrainedOptions.views`) the paper-style tables read for this method's runs where a run has it, in
    place of the final model: rows of source `table_view` (`bench.tables.TABLE_VIEW`), and the rows of variants
    no table lists. EchoDistill: `"student_before_echo"`, the student before its echo stage, as the paper reports
    it. None: the run's own evaluation."""

    table_view_note: ClassVar[str] = ""
    """What the tables' caption says those rows show, as "<label> rows: <note>." (EchoDistill: "the student before
    the echo stage where the run has one (the paper's convention)"); default "view `<table_view>` where the run
    has one"."""


class TrainedOptions(Protocol):
    """What a trained model MAY declare beside the `Trained` members; the values here are the defaults, read by
    `bench.contract.views` and `eval_phrase`."""

    views: dict[str, Trained] = {}
    """Further models of the same run that the harness also samples and scores (e.g. EchoDistill's teacher, and
    both models before the echo stage), each recorded by name."""

    eval_phrase: str = DEFAULT_PHRASE
    """What stands for the concept in evaluation prompts, a format of `identifier` and `class_noun`; default
    DEFAULT_PHRASE ("<new1> dog"); textual inversion declares "{identifier}" ("<new1>"), the authors' evaluation
    format for it. CLIP-T always scores the class prompt."""
