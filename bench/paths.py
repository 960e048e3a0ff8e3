"""Where things live on disk (the dataset, the results tree, the model cache), and durable renames."""

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


def fsync_dir(path: Path) -> None:
    """fsync a file, or a folder so that a rename inside it is durable (a no-op where it cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
