"""Resumable training: a method's state saved every N iterations and restored bit-exactly (`bench run --resume`).

The harness gives `Method.train` an `out_dir` inside the run's `.partial` folder. It keeps that folder across
attempts only with `--resume` (and only for the same config hash), and removes it once the run is recorded.

Adopting it in a method (the baselines get it from their shared loop, `bench/models/loop.py`; EchoDistill's
`Session._loop` checkpoints each stage in its own folder):

    from bench.models.checkpoint import Checkpointer

    # 1. Build everything exactly as a fresh run does: models, new tokens, optimiser, data stream, generators.
    ckpt = Checkpointer(out_dir / "train", every=cfg.checkpoint_every, total=cfg.iterations,
                        rows={"token_embedding": [token_id]})      # optional: save only these rows of a matrix
    state = dict(tensors={"kv": kv, "token_embedding": token_weight},  # what training changes (in place)
                 stateful={"optimizer": optimizer},                # anything with state_dict()/load_state_dict()
                 generators={"noise": generator},                  # torch.Generator objects
                 randoms={"batches": batches.rng})                 # random.Random objects (TrainingBatches.rng)
    # 2. Restore: returns the number of iterations already done (0 without a checkpoint).
    start = ckpt.restore(**state)
    log.begin("train", cfg.iterations)
    for it in range(start, cfg.iterations):
        ...                                                        # one optimiser step
        log(it, loss=loss.item())
        ckpt.maybe_save(it + 1, **state)                           # `it + 1` iterations are done

Rules that make a resumed run bit-identical to an uninterrupted one:
- pass every tensor and object whose value changes during training (trainable parameters, EMA copies,
  discriminators as `stateful`, optimisers, LR schedulers, GradScalers); frozen weights need not be saved;
- pass every random source the loop draws from: generators and `random.Random` streams. The global RNGs
  (torch CPU and CUDA, Python `random`, NumPy) are saved and restored automatically;
- save only at iteration boundaries, after the step, with the same names at save and restore;
- several phases (e.g. train, then echo): one Checkpointer per phase, each in its own sub-folder. A phase
  always saves at `total`, so on resume a finished phase restores its final state and its loop does nothing;
- scalars that are neither tensors nor RNGs (a counter, a best score) go in `extra={...}` at save and are
  read back from `ckpt.extra` after `restore`;
- add a documented checkpoint-period field to the method's config (0 = off), declared `CHECKPOINT_EVERY`
  (`bench.config`), and pass it as `every`.

Rows (`rows={name: [row, ...]}`): when a large matrix trains only a few rows (a new token's row of the 49,409-row
token-embedding table), only those rows are saved, of the tensor and of its optimiser moments (every state tensor
of the same shape, e.g. AdamW's exp_avg and exp_avg_sq). Restoring copies them back into those rows and leaves the
tensor's other rows as the fresh build made them; the moments' other rows are restored as zeros. So the other
rows must never change: their gradient is masked (`personalize.train_token_row`: their moments then stay exactly
zero, which `save` checks) and any drift, such as weight decay, is undone after every step
(`personalize.restore_rows`). A checkpoint records which of its tensors hold only some rows.

Format (never pickle): `<dir>/step-<iteration:08d>/tensors.safetensors` holds every tensor (parameters, optimiser
moments, RNG states as uint8), `state.json` everything else (iteration, optimiser hyper-parameters, Python RNG
states, which tensors hold only some rows, the SHA-256 of the tensors file). A checkpoint is written in a temporary
folder, fsynced and renamed into place, then older ones are deleted, so a kill at any moment leaves the previous
checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from bench.paths import fsync_dir

FORMAT = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
PREFIX = "step-"


def find_checkpoints(work_dir: Path) -> dict[str, int]:
    """{checkpointer folder (relative to `work_dir`): iteration of its newest complete checkpoint}."""
    out: dict[str, int] = {}
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return out
    for state in work_dir.rglob(f"{PREFIX}*/{STATE}"):
        try:
            iteration = int(json.loads(state.read_text())["iteration"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        name = str(state.parent.parent.relative_to(work_dir))
        out[name] = max(out.get(name, -1), iteration)
    return out


class Checkpointer:
    """Save a training loop's state every `every` iterations (and at `total`) under `directory`; restore it.

    `every=0` (or `directory=None`) turns saving off; `restore` then finds nothing and returns 0.
    `rows={tensor name: [row, ...]}` saves only those rows of a tensor and of its optimiser moments (module doc).
    """

    def __init__(self, directory: Path | None, every: int, total: int | None = None, keep: int = 1,
                 rows: dict[str, list[int]] | None = None) -> None:
        if every < 0:
            raise ValueError(f"checkpoint every must be >= 0, got {every}")
        self.directory = Path(directory) if directory is not None else None
        self.every, self.total, self.keep = every, total, max(1, keep)
        self.rows = {name: sorted({int(r) for r in keep_rows}) for name, keep_rows in (rows or {}).items()}
        self.extra: dict[str, Any] = {}
        self.restored_from: int | None = None

    @property
    def enabled(self) -> bool:
        return self.directory is not None and self.every > 0

    # --- restore ---------------------------------------------------------------------------------------------

    def restore(self, tensors: dict[str, Any] | None = None, stateful: dict[str, Any] | None = None,
                generators: dict[str, Any] | None = None, randoms: dict[str, random.Random] | None = None) -> int:
        """Load the newest complete checkpoint into the given objects; the number of iterations it had done."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        self._clean_temporary()
        for path in self._complete():
            try:
                meta = json.loads((path / STATE).read_text())
                if meta.get("format") != FORMAT or meta.get("sha256") != _sha256(path / TENSORS):
                    continue
                from safetensors.torch import load_file

                saved = load_file(path / TENSORS)
            except (OSError, ValueError):
                continue  # damaged: fall back to an older one, if any
            self._load(meta, saved, tensors or {}, stateful or {}, generators or {}, randoms or {}, path)
            self.extra = dict(meta.get("extra", {}))
            self.restored_from = int(meta["iteration"])
            return self.restored_from
        return 0

    def _load(self, meta: dict, saved: dict, tensors: dict, stateful: dict, generators: dict, randoms: dict,
              path: Path) -> None:
        import torch

        flat = _flatten_tensors(tensors)
        sliced = meta.get("rows", {})  # store key -> {"rows", "shape"}: saved as those rows only
        for key, spec in sliced.items():
            if key.startswith("s/"):  # optimiser moments: zero outside the saved rows
                saved[key] = _expand(saved[key], spec)
        expected = {"tensors": sorted(flat), "stateful": sorted(stateful), "generators": sorted(generators),
                    "randoms": sorted(randoms)}
        found = {k: sorted(meta.get("names", {}).get(k, [])) for k in expected}
        if found != expected:
            raise ValueError(f"checkpoint {path} does not match this training loop (saved {found}, "
                             f"expected {expected}); run without --resume to start over")
        with torch.no_grad():
            for name, target in flat.items():
                value, spec = saved[f"t/{name}"], sliced.get(f"t/{name}")
                shape = tuple(spec["shape"]) if spec else tuple(value.shape)
                if shape != tuple(target.shape):
                    raise ValueError(f"checkpoint tensor '{name}' has shape {shape}, the model has "
                                     f"{tuple(target.shape)}; run without --resume to start over")
                value = value.to(device=target.device, dtype=target.dtype)
                if spec:  # only the trained rows were saved; the others are as built
                    target[spec["rows"]] = value
                else:
                    target.copy_(value)
        for name, obj in stateful.items():
            obj.load_state_dict(_decode(meta["stateful"][name], saved))
        for name, gen in generators.items():
            gen.set_state(saved[f"g/{name}"])
        for name, rng in randoms.items():
            rng.setstate(_random_state(meta["randoms"][name]))
        _set_global_rng(meta["rng"], saved)

    # --- save ------------------------------------------------------------------------------------------------

    def due(self, iteration: int) -> bool:
        return self.enabled and iteration > 0 and (iteration % self.every == 0 or iteration == self.total)

    def maybe_save(self, iteration: int, tensors: dict[str, Any] | None = None,
                   stateful: dict[str, Any] | None = None, generators: dict[str, Any] | None = None,
                   randoms: dict[str, random.Random] | None = None, extra: dict[str, Any] | None = None) -> bool:
        """Save when `iteration` (iterations done) is a multiple of `every` or equals `total`; True if saved."""
        if not self.due(iteration):
            return False
        self.save(iteration, tensors, stateful, generators, randoms, extra)
        return True

    def save(self, iteration: int, tensors: dict[str, Any] | None = None, stateful: dict[str, Any] | None = None,
             generators: dict[str, Any] | None = None, randoms: dict[str, random.Random] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint for `iteration` now, atomically; returns its folder."""
        from safetensors.torch import save_file

        assert self.directory is not None
        tensors, stateful = tensors or {}, stateful or {}
        generators, randoms = generators or {}, randoms or {}
        store: dict[str, Any] = {}
        flat = _flatten_tensors(tensors)
        for name, t in flat.items():
            store[f"t/{name}"] = t
        row_specs = self._row_specs(flat, stateful)
        meta: dict[str, Any] = {
            "format": FORMAT, "iteration": int(iteration), "total": self.total,
            "names": {"tensors": sorted(flat), "stateful": sorted(stateful), "generators": sorted(generators),
                      "randoms": sorted(randoms)},
            "stateful": {name: _encode(obj.state_dict(), f"s/{name}", store) for name, obj in stateful.items()},
            "randoms": {name: _json_random(rng.getstate()) for name, rng in randoms.items()},
            "rng": _global_rng(store),
            "extra": json.loads(json.dumps(extra or {})),  # JSON values only
        }
        for name, gen in generators.items():
            store[f"g/{name}"] = gen.get_state()
        meta["rows"] = {}
        for key, value in store.items():  # a row-saved tensor or one of its moments: keep only its rows
            spec = row_specs.get(id(value))
            if spec is not None:
                store[key] = _take_rows(key, value, spec)
                meta["rows"][key] = spec
        store = {k: v.detach().to("cpu").contiguous().clone() for k, v in store.items()}

        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{PREFIX}{iteration:08d}"
        tmp = self.directory / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        try:
            save_file(store, tmp / TENSORS)
            fsync_dir(tmp / TENSORS)
            meta["sha256"] = _sha256(tmp / TENSORS)
            with open(tmp / STATE, "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            if final.exists():  # the same iteration again (a resumed phase that re-saves at `total`)
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self._complete()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _row_specs(self, flat: dict[str, Any], stateful: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """{id(tensor): {"rows", "shape"}} for each `rows` tensor and each optimiser state tensor of its shape."""
        import torch

        specs: dict[int, dict[str, Any]] = {}
        for name, keep_rows in self.rows.items():
            if name not in flat:
                raise ValueError(f"checkpoint rows name '{name}' is not one of the tensors {sorted(flat)}")
            param = flat[name]
            if param.dim() == 0 or not all(0 <= r < param.shape[0] for r in keep_rows):
                raise ValueError(f"checkpoint rows {keep_rows} out of range for '{name}' {tuple(param.shape)}")
            spec = {"rows": keep_rows, "shape": list(param.shape)}
            specs[id(param)] = spec
            for obj in stateful.values():
                if isinstance(obj, torch.optim.Optimizer):
                    for value in obj.state.get(param, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == param.shape:
                            specs[id(value)] = spec
        return specs

    # --- housekeeping ----------------------------------------------------------------------------------------

    def _complete(self) -> list[Path]:
        """Checkpoint folders with their state file, newest first."""
        assert self.directory is not None
        found = [p for p in self.directory.glob(f"{PREFIX}*") if (p / STATE).is_file() and (p / TENSORS).is_file()]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def _clean_temporary(self) -> None:
        assert self.directory is not None
        for tmp in self.directory.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


# --- encoding state without pickle ------------------------------------------------------------------------------


def _flatten_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """{"kv": [a, b], "token": t} -> {"kv.0": a, "kv.1": b, "token": t}."""
    out = {}
    for name, value in tensors.items():
        if isinstance(value, (list, tuple)):
            out.update({f"{name}.{i}": t for i, t in enumerate(value)})
        else:
            out[name] = value
    return out


def _take_rows(key: str, value: Any, spec: dict[str, Any]) -> Any:
    """`value[rows]`; for optimiser state (`s/` keys) also checks that every other row is zero, as restored."""
    import torch

    part = value.detach()[spec["rows"]]
    if key.startswith("s/") and int(torch.count_nonzero(value)) != int(torch.count_nonzero(part)):
        raise ValueError(f"checkpoint rows: optimiser state '{key}' is non-zero outside rows {spec['rows']}; "
                         "mask the other rows' gradient (personalize.train_token_row) or save the whole tensor")
    return part


def _expand(part: Any, spec: dict[str, Any]) -> Any:
    """The full-shape tensor of a row-saved optimiser state: the saved rows, zeros elsewhere."""
    import torch

    full = torch.zeros(spec["shape"], dtype=part.dtype)
    full[spec["rows"]] = part
    return full


def _encode(value: Any, path: str, store: dict[str, Any]) -> Any:
    """A state_dict as JSON, its tensors moved to `store` under `path` keys (placeholders left behind)."""
    import torch

    if isinstance(value, torch.Tensor):
        store[path] = value
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {"__dict__": [[k, _encode(v, f"{path}.{k}", store)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", store) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", store) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at '{path}' (only tensors and JSON values)")


def _decode(value: Any, saved: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return saved[value["__tensor__"]]
        if "__dict__" in value:
            return {k: _decode(v, saved) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, saved) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_decode(v, saved) for v in value]
    return value


def _json_random(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state(value: list) -> tuple:
    version, internal, gauss = value
    return version, tuple(internal), gauss


def _global_rng(store: dict[str, Any]) -> dict[str, Any]:
    """Save torch (CPU, CUDA), Python and NumPy global RNG states; tensors go to `store`."""
    import torch

    store["rng/torch"] = torch.get_rng_state()
    out: dict[str, Any] = {"python": _json_random(random.getstate()), "cuda": 0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        for i, s in enumerate(states):
            store[f"rng/cuda{i}"] = s
        out["cuda"] = len(states)
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        store["rng/numpy"] = torch.from_numpy(keys.astype("int64"))
        out["numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
    return out


def _set_global_rng(meta: dict[str, Any], saved: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(saved["rng/torch"])
    random.setstate(_random_state(meta["python"]))
    if meta.get("cuda") and torch.cuda.is_available():
        states = [saved[f"rng/cuda{i}"] for i in range(meta["cuda"])]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # resumed on a machine with another number of GPUs: the first device's stream continues
            torch.cuda.set_rng_state(states[0])
    if "numpy" in meta and "rng/numpy" in saved:
        import numpy as np

        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, saved["rng/numpy"].numpy().astype("uint32"), pos, has_gauss, cached))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reproducible weight files ---------------------------------------------------------------------------------


def stable_lora_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """A peft LoRA config (`peft_config[name].to_dict()`) with its set-valued fields (`target_modules`,
    `modules_to_save`, `exclude_modules`, ...) as sorted lists: peft keeps them as sets, whose order changes from
    one process to the next, so the JSON written into a weight file's metadata, and the file's bytes, would too."""
    def stable(value: Any) -> Any:
        if isinstance(value, (set, frozenset)) or (isinstance(value, (list, tuple)) and value
                                                    and all(isinstance(v, str) for v in value)):
            return sorted(value)
        return value

    return {key: stable(value) for key, value in config.items()}


def sort_safetensors_metadata(path: Path) -> bool:
    """Rewrite a safetensors file's header with its `__metadata__` keys sorted; True if it changed. The writer
    keeps the metadata in a hash map whose order changes from one process to the next, so two identical runs'
    files differed in their header bytes (the tensors are identical). Only the header is rewritten, in place: the
    same keys and values in another order take the same number of bytes."""
    import struct

    with open(path, "r+b") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        (size,) = struct.unpack("<Q", head)
        raw = f.read(size)
        try:
            header = json.loads(raw)
        except ValueError:
            return False
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or list(meta) == sorted(meta):
            return False
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size or json.loads(text) != json.loads(raw):
            return False  # another serialisation: leave the file as written
        f.seek(8)
        f.write(text + b" " * (size - len(text)))  # the writer pads its header with spaces too
    return True


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def settle_weight_files(folder: Path) -> None:
    """Make the files under `folder` (a run's staged results) reproducible and readable like every other file:
    the weight files' safetensors headers with sorted metadata (`sort_safetensors_metadata`; files under a
    `weights/` folder), and the umask's mode (0666 less the umask) where the safetensors writer made a file 0600
    whatever the umask."""
    mode = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        weights = "weights" in path.relative_to(folder).parts  # not a checkpoint: its state.json holds its hash
        if weights and path.suffix == ".safetensors" and path.stat().st_nlink == 1:  # nor a file shared by a link
            sort_safetensors_metadata(path)
        if (path.stat().st_mode & 0o777) == 0o600 != mode:
            path.chmod(mode)
