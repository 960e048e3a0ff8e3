"""The contract test every method passes on the tiny profile: declarations, train, sample, save, load.

`bench check-method NAME` runs it on any registered method (a built-in one, an entry point, an `--include`d file);
`tests/test_contract.py` runs it on every registered method. Each check is one line of the report; the first that
fails raises `ContractViolation` (an AssertionError, so pytest shows it as a failed assertion).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ContractViolation(AssertionError):
    """A method breaks the contract; the message says which check and why."""


class ListLog:
    """A `bench.api.Log` that keeps every call."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.rows: list[dict[str, Any]] = []

    def begin(self, phase: str, total: int) -> None:
        self.phases.append((phase, total))

    def __call__(self, iteration: int, **scalars: float) -> None:
        self.rows.append({"iteration": iteration, **scalars})


def _check(ok: bool, what: str, why: str, say: Callable[[str], None]) -> None:
    if not ok:
        raise ContractViolation(f"{what}: {why}")
    say(f"ok  {what}")


def check_declarations(cls: Any, say: Callable[[str], None] = lambda _: None) -> Any:
    """The class-level part: name, Config, variants, optional declarations, field metadata. Returns MethodInfo."""
    from bench.api import BenchError
    from bench.config import build
    from bench.contract import ABLATION_FLAGS, MethodInfo, undeclared_fields

    _check(isinstance(getattr(cls, "name", None), str), "name", "a class attribute `name: str` is required", say)
    _check(dataclasses.is_dataclass(getattr(cls, "Config", None)), "Config", "`Config` must be a dataclass", say)
    variants = getattr(cls, "variants", None)
    _check(isinstance(variants, dict) and "default" in variants, "variants",
           "`variants` must be a dict with a 'default' entry", say)
    for variant, overrides in variants.items():
        try:
            build(cls.Config, overrides)
        except BenchError as err:
            raise ContractViolation(f"variant '{variant}': {err}") from None
    say(f"ok  every named variant builds a valid config ({', '.join(variants)})")
    info = MethodInfo.of(cls)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    _check(isinstance(info.version, int) and info.version >= 1, "version", f"an int >= 1, not {info.version!r}", say)
    _check(isinstance(info.trains, bool) and isinstance(info.resumable, bool), "trains/resumable", "must be bools",
           say)
    from bench.contract import checkpoint_field

    _check(not info.resumable or checkpoint_field(cls.Config) is not None, "resumable checkpoints",
           "a resumable method's Config declares its checkpoint period (a field with CHECKPOINT_EVERY)", say)
    bad = {flag: f for flag, f in info.ablations.items() if flag not in ABLATION_FLAGS or f not in fields}
    _check(not bad, "ablations", f"flags must be among {', '.join(ABLATION_FLAGS)} and name Config fields: {bad}", say)
    bad_perf = sorted(set(info.perf_overrides) - fields)
    _check(not bad_perf, "perf_overrides", f"not Config fields: {', '.join(bad_perf)}", say)
    legacy = undeclared_fields(cls.Config)
    say("ok  field metadata" if not legacy else
        f"note: {', '.join(legacy)} declare no role, so no profile caps them; declare SCHEDULE / "
        f"SAMPLING_STEPS / STEP_COUNT (bench.config) if they are iterations or steps")
    return info


def check_log(log: ListLog, say: Callable[[str], None] = lambda _: None) -> None:
    """What `train` reported through its Log: every phase begun with a whole number of iterations (>= 0), at least
    one iteration logged when the phases have any (none for phases of 0: a method may train zero iterations),
    every value finite. A method that trains nothing and never calls the Log passes."""
    import numpy as np

    _check(all(isinstance(total, int) and not isinstance(total, bool) and total >= 0 for _, total in log.phases),
           "log phases", f"`log.begin(phase, total)` takes a whole number of iterations >= 0: {log.phases}", say)
    _check(not log.rows or bool(log.phases), "log calls", "`log.begin(phase, total)` comes before the iterations it "
           "counts", say)
    planned = sum(total for _, total in log.phases)
    _check(planned == 0 or bool(log.rows), "log calls", f"train reports its iterations through the Log "
           f"({planned} begun, none logged)", say)
    finite = all(np.isfinite(v) for row in log.rows for k, v in row.items() if k != "iteration")
    _check(finite, "log values", "every logged value is finite", say)


def synthetic_concept(folder: Path) -> Any:
    """A two-photo concept of drawn images with two prompts, for checking a method without a dataset."""
    import numpy as np
    from PIL import Image

    from bench.data import load_folder_concept

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = np.clip(rng.normal(120 + 40 * i, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    (folder / "prompts.txt").write_text("a {0} {1} in the snow\na red {0} {1}\n")
    return load_folder_concept(folder, "dog", name="dog")


def check_method(name: str, concept: Any = None, work: Path | None = None,
                 say: Callable[[str], None] = lambda _: None) -> None:
    """Run the whole contract on registered method `name` on the tiny profile, on CPU. `concept` defaults to a
    synthetic one; `work` (default: a temporary folder) holds the training folder and the saved weights."""
    import numpy as np

    from bench.api import Method, Trained
    from bench.models.loading import Models
    from bench.models.profiles import get_profile
    from bench.registry import get_method
    from bench.runs import Job, resolve_config

    cls = get_method(name)
    declared = getattr(cls, "name", None)
    _check(declared == name, "registry name", f"registered as '{name}' but declares {declared!r}", say)
    info = check_declarations(cls, say)
    with tempfile.TemporaryDirectory(prefix=f"bench-check-{name}-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        concept = concept if concept is not None else synthetic_concept(work / "concept")
        config = resolve_config(cls, Job(name, "default", concept.name, 0, "tiny"), iteration_cap=2)
        method = cls(config)
        if info.trains:
            _check(isinstance(method, Method), "Method", "an instance must follow bench.api.Method (train, load, ...)",
                   say)
        else:  # no training stage: `prepare` stands in for `train` (bench.api, the end of `Method`)
            _check(callable(getattr(method, "prepare", None)) and callable(getattr(method, "load", None)), "Method",
                   "a method with trains = False has prepare(concept, models, out_dir, seed) and load", say)
        profile = get_profile("tiny").for_method(cls)
        log = ListLog()
        if info.trains:
            trained = method.train(concept, Models(profile, "cpu"), work / "work", 0, log)
            check_log(log, say)
        else:
            trained = method.prepare(concept, Models(profile, "cpu"), work / "work", 0)
            chosen = getattr(trained, "conditioning", None)
            _check(isinstance(chosen, (list, tuple)) and set(chosen) <= {p.name for p in concept.images},
                   "conditioning", "prepare's model lists the concept photo(s) that condition it (`conditioning`: "
                   "a list of their file names, empty when nothing conditions it)", say)
        _check(isinstance(trained, Trained), "Trained", "train (or prepare) must return a bench.api.Trained", say)

        prompts = [concept.prompt("a {0} {1} in the snow", trained.identifier)] * 2
        images = trained.generate(prompts, [0, 1])
        size = (profile.resolution, profile.resolution)
        _check([im.size for im in images] == [size] * 2, "generate", f"one {size} image per (prompt, seed)", say)
        repeat = trained.generate(prompts, [0, 1])
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, repeat))
        _check(same, "determinism", "the same (prompt, seed) gives a bit-identical image", say)
        alone = trained.generate(prompts[:1], [1])  # another batch: only float summation order changes
        diff = np.abs(np.asarray(alone[0]).astype(int) - np.asarray(images[1]).astype(int)).max()
        _check(diff <= 1, "batching", f"an image does not depend on its batch (differs by {diff}/255)", say)
        _check(not np.array_equal(np.asarray(images[0]), np.asarray(images[1])), "seeds", "different seeds differ",
               say)

        trained.save(work / "weights")
        files = [p for p in (work / "weights").rglob("*") if p.is_file()]
        _check(any(p.suffix == ".safetensors" for p in files), "save", "weights saved as .safetensors", say)
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        _check(not pickles, "no pickles", f"safetensors only, found {', '.join(pickles)}", say)
        loaded = method.load(work / "weights", Models(profile, "cpu"))
        reloaded = loaded.generate(prompts[:1], [0])
        diff = np.abs(np.asarray(reloaded[0]).astype(int) - np.asarray(images[0]).astype(int)).max()
        _check(diff <= 1, "load", f"loading the saved weights gives the same sample (differs by {diff}/255)", say)
