"""Where things live on disk: the dataset, the results tree and the model cache."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA = Path("data/dreambench")
DEFAULT_RESULTS = Path("results")


def data_root(data: str | Path | None = None) -> Path:
    """`--data`, else `$BENCH_DATA`, else `./data/dreambench`."""
    return Path(data or os.environ.get("BENCH_DATA") or DEFAULT_DATA)


def cache_root() -> Path:
    """Built `tiny` models and other derived files: `$BENCH_CACHE`, else `~/.cache/bench`."""
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench")
