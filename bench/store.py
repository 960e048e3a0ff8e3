"""The results tree: one folder per run, self-describing records, atomic writes, per-run locks.

Layout: `<results>/<profile>/<method>/<variant>/<concept>/seed<k>/` holding `record.json`, `weights/`
(safetensors), `images/` (PNG), `loss_log.jsonl`. A run is first built in a sibling `.partial` folder and moved
into place only when its record is complete, so a killed process never leaves a folder that looks finished and
a forced re-run never destroys the previous result before the new one exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.api import BenchError

SCHEMA_VERSION = 1
RECORD = "record.json"


@dataclass(frozen=True)
class RunKey:
    """What names a run in the results tree."""

    profile: str
    method: str
    variant: str
    concept: str
    seed: int

    def path(self, results: Path) -> Path:
        return Path(results) / self.profile / self.method / self.variant / self.concept / f"seed{self.seed}"

    def label(self) -> str:
        return f"{self.method}/{self.variant}/{self.concept}/seed{self.seed}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none (or it is unreadable, e.g. from a crash before rename)."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("schema", 0) > SCHEMA_VERSION:
        raise BenchError(f"{path} has record schema {record['schema']}, newer than this bench ({SCHEMA_VERSION}); "
                         f"upgrade the package to read it")
    return record


def is_done(run_dir: Path, config_hash: str) -> bool:
    record = read_record(run_dir)
    return bool(record and record.get("status") == "done" and record.get("config_hash") == config_hash)


def iter_records(results: Path, profile: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record under `results` (optionally one profile), with `run_dir` added."""
    root = Path(results) / profile if profile else Path(results)
    if not root.exists():
        return
    for path in sorted(root.rglob(RECORD)):
        if ".partial" in path.parent.name:
            continue
        record = read_record(path.parent)
        if record is not None:
            record["run_dir"] = str(path.parent)
            yield record


def staging_dir(run_dir: Path) -> Path:
    """A fresh folder beside `run_dir` to build the run in."""
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def commit_run(partial: Path, run_dir: Path, record: dict[str, Any]) -> None:
    """Write the record into the staged folder, then swap it into place (old result removed only after)."""
    write_json_atomic(partial / RECORD, record)
    old = run_dir.with_name(run_dir.name + f".old-{os.getpid()}")
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(partial, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def check_writable(results: Path) -> None:
    """Fail early, with one line, when the results folder cannot be written."""
    try:
        Path(results).mkdir(parents=True, exist_ok=True)
        probe = Path(results) / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"results folder '{results}' is not writable ({err.strerror}); pass --results DIR") from None


class RunLock:
    """An exclusive lock on one run, taken atomically (O_EXCL). A lock whose owner died is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir.with_name(run_dir.name + ".lock")
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Being written right now, or left empty by a crash: stale only if old.
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot see another host's processes; a cluster scheduler owns that case
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_status(results: Path, profile: str | None = None) -> tuple[dict[str, int], list[str]]:
    """Counts of done / failed / running runs and one line per run that is not done (with its reason)."""
    counts: dict[str, int] = {}
    lines: list[str] = []
    root = Path(results) / profile if profile else Path(results)
    for record in iter_records(results, profile):
        status = record.get("status", "unknown")
        counts[status] = counts.get(status, 0) + 1
        if status != "done":
            key = f"{record['profile']}/{record['method']}/{record['variant']}/{record['concept']}/seed{record['seed']}"
            lines.append(f"{status:8} {key}: {record.get('reason', '')}")
    if root.exists():
        for lock in sorted(root.rglob("*.lock")):
            run_dir = lock.with_name(lock.name.removesuffix(".lock"))
            if not RunLock(run_dir)._stale():
                counts["running"] = counts.get("running", 0) + 1
                lines.append(f"running  {run_dir.relative_to(results)}")
    return counts, lines
