"""Shared fixtures: the DreamBench copy beside the project and a per-session model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dreambench() -> Path:
    env = os.environ.get("BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "dreambench"


@pytest.fixture(scope="session")
def dreambench_root() -> Path:
    root = _dreambench()
    if not (root / "dataset" / "prompts_and_classes.txt").exists() and not (root / "prompts_and_classes.txt").exists():
        pytest.skip(f"DreamBench not found at {root} (set BENCH_DATA)")
    return root


@pytest.fixture(scope="session", autouse=True)
def _bench_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session builds its tiny models once, in its own cache, unless BENCH_CACHE is set."""
    if "BENCH_CACHE" not in os.environ:
        os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
