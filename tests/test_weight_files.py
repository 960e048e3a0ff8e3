"""Weight files are reproducible and readable like every other file: two identical runs in two processes (Python's
string hashing differs between them) give byte-identical LoRA files, written with the umask's mode, not 0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.models.checkpoint import stable_lora_metadata


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
