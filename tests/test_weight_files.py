"""Weight files are reproducible and readable like every other file: two identical runs in two processes (Python's
string hashing differs between them) give byte-identical LoRA files, written with the umask's mode, not 0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.models.checkpoint import sort_safetensors_metadata, stable_lora_metadata


def _run(results: Path, data: Path, hash_seed: str) -> Path:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "lora", "--concepts", "dog", "--profile", "tiny",
           "--results", str(results), "--data", str(data), "--set", "iterations=2"]
    done = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *cmd], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return next(results.rglob("pytorch_lora_weights.safetensors"))


def test_identical_runs_give_identical_weight_files_with_the_umask_mode(dreambench_root, tmp_path) -> None:
    first = _run(tmp_path / "a", dreambench_root, "1")
    second = _run(tmp_path / "b", dreambench_root, "7")
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o644


def test_set_valued_lora_fields_are_sorted() -> None:
    meta = stable_lora_metadata({"target_modules": {"to_v", "to_k", "to_q"}, "r": 4, "layers": [3, 1]})
    assert meta == {"target_modules": ["to_k", "to_q", "to_v"], "r": 4, "layers": [3, 1]}


def test_safetensors_metadata_sorted_in_place(tmp_path) -> None:
    """The header's metadata keys in sorted order, the same byte count, the tensors untouched."""
    import json
    import struct

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0)}, path, metadata={"zeta": "1", "alpha": "2", "format": "pt"})
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items(), reverse=True))  # as a writer may order it
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(data[:8] + text + b" " * (size - len(text)) + data[8 + size:])
    assert sort_safetensors_metadata(path)
    again = path.read_bytes()
    assert len(again) == len(data) and again[8 + size:] == data[8 + size:]
    assert list(json.loads(again[8:8 + size])["__metadata__"]) == ["alpha", "format", "zeta"]
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(4.0)) and f.metadata()["zeta"] == "1"
    assert not sort_safetensors_metadata(path)  # already sorted: left alone
