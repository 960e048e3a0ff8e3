"""The results tree: one folder per run, self-describing records, atomic writes, per-run locks.

Layout: `<results>/<profile>/<method>/<variant>/<concept>/seed<k>/` holding `record.json`, `weights/`
(safetensors), `images/` (PNG), `loss_log.jsonl`. Beside a run folder, only while something is in flight:

- `seed<k>.lock`      the run's lock (owner host, pid, start time, token; its mtime is the owner's heartbeat);
- `seed<k>.partial/`  the run being built (its `work/` holds training checkpoints); it never holds a
                      `record.json` except in the instant before it is renamed into place;
- `seed<k>.old-<pid>` the previous result during the swap of a forced re-run.

A run becomes visible only by renaming a complete `.partial` (record written last) into place, so a killed
process never leaves a folder that looks finished, and a forced re-run never destroys the previous result
before the new one exists. `recover` (called with the lock held) finishes or undoes whatever a killed process
left, so there is never more than one complete copy of a run and no leftover survives a successful re-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.locks import RunLock, lock_stale_seconds  # noqa: F401 (re-exported: store.RunLock)
from bench.paths import fsync_dir
from bench.record import SCHEMA_VERSION, RunRecord

RECORD = "record.json"
RUN_DIR = re.compile(r"^seed-?\d+$")
"""Names of run folders; `.partial`, `.old-*` and other siblings are never read as runs."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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


# --- atomic files ------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none (or it is unreadable, e.g. from a crash before rename)."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("schema", 0) > SCHEMA_VERSION:
        raise BenchError(f"{path} has record schema {record['schema']}, newer than this bench ({SCHEMA_VERSION}); "
                         f"upgrade the package to read it")
    return record


def record_problem(run_dir: Path) -> str | None:
    """Why the run's `record.json` cannot be read (truncated, not JSON, not an object), or None when it is fine
    or absent. `read_record` treats such a record as absent; status and tables list it as corrupt."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"{path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None if isinstance(record, dict) else f"{path}: not a JSON object"


def corrupt_stub(path: Path, results: Path, problem: str) -> dict[str, Any] | None:
    """A stand-in for an unreadable record at `<results>/<profile>/<method>/<variant>/<concept>/seed<k>/record.json`:
    its identity from the path, `status: corrupt` and the parse error as `reason` (so tables count it as expected
    but missing, and status lists it). None when the path does not have that shape."""
    parts = path.parent.relative_to(results).parts
    if len(parts) != 5 or not RUN_DIR.match(parts[4]):
        return None
    profile, method, variant, concept, seed = parts
    return {"status": "corrupt", "reason": problem, "profile": profile, "method": method, "variant": variant,
            "concept": concept, "seed": int(seed.removeprefix("seed")), "run_dir": str(path.parent)}


def read_run_record(run_dir: Path) -> RunRecord | None:
    """The run's record as a typed `RunRecord` (with `run_dir` set), or None as for `read_record`."""
    data = read_record(run_dir)
    if data is None:
        return None
    record = RunRecord.from_json(data)
    record.run_dir = str(run_dir)
    return record


def iter_run_records(results: Path, profile: str | None = None, corrupt: bool = False) -> Iterator[RunRecord]:
    """`iter_records` as typed `RunRecord`s, `run_dir` set. With `corrupt`, an unreadable record also comes back,
    as a stand-in `RunRecord` of status `corrupt` (`corrupt_stub`: identity from the path, the parse error as
    `reason`, `run_dir` set), which tables count as expected but missing and `bench status` lists."""
    for data in iter_records(results, profile, corrupt):
        run_dir = data.pop("run_dir")
        record = RunRecord.from_json(data)
        record.run_dir = run_dir
        yield record


def is_done(run_dir: Path, config_hash: str) -> bool:
    record = read_run_record(run_dir)
    return bool(record and record.done and record.config_hash == config_hash)


def iter_records(results: Path, profile: str | None = None, corrupt: bool = False) -> Iterator[dict[str, Any]]:
    """Every record under `results` (optionally one profile) as its JSON object, with `run_dir` added; never a
    staged copy. With `corrupt`, an unreadable record also comes back, as a `corrupt_stub` (`status: corrupt`).
    Readers that use the record's fields take `iter_run_records` (typed); this is for those that copy it."""
    root = Path(results) / profile if profile else Path(results)
    if not root.exists():
        return
    for path in sorted(root.rglob(RECORD)):
        if not RUN_DIR.match(path.parent.name):
            continue
        record = read_record(path.parent)
        if record is not None:
            record["run_dir"] = str(path.parent)
            yield record
        elif corrupt and (problem := record_problem(path.parent)):
            stub = corrupt_stub(path, Path(results), problem)
            if stub is not None:
                yield stub


# --- staging, commit and recovery ---------------------------------------------------------------------------


def partial_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".partial")


def staging_dir(run_dir: Path, keep: Iterable[str] = ()) -> Path:
    """The folder beside `run_dir` to build the run in: fresh, or (resume) keeping only the entries in `keep`."""
    partial = partial_dir(run_dir)
    keep = set(keep)
    if partial.is_dir() and keep:
        for child in partial.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    return partial


def commit_run(partial: Path, run_dir: Path, record: RunRecord) -> None:
    """Write the record into the staged folder, then swap it into place (old result removed only after)."""
    from bench.models.checkpoint import settle_weight_files

    settle_weight_files(partial)  # sorted safetensors metadata (identical runs, identical bytes); the umask's mode
    write_json_atomic(partial / RECORD, record.to_json())
    _swap(partial, run_dir)


def _swap(partial: Path, run_dir: Path) -> None:
    old = run_dir.with_name(run_dir.name + f".old-{os.getpid()}")
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(partial, run_dir)
    fsync_dir(run_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def leftovers(run_dir: Path) -> list[Path]:
    """What an interrupted process may have left beside `run_dir`: staged, old and temporary copies, and a lock
    (which may be live: take it before cleaning)."""
    name, parent = run_dir.name, run_dir.parent
    if not parent.is_dir():
        return []
    found = [p for p in parent.glob(f"{name}.old-*")]
    found += [p for p in parent.glob(f".{name}.*.tmp")]
    found += [p for p in (partial_dir(run_dir), run_dir.with_name(name + ".lock")) if p.exists()]
    return sorted(found)


def recover(run_dir: Path, keep_partial: bool = True) -> list[str]:
    """Finish or undo what a killed process left beside `run_dir`. Call it with the run's lock held.

    - a `.partial` holding a record is a commit that was cut between its two renames: it is completed
      (the record is written last, so such a folder is complete);
    - with no run folder left, the newest `.old-*` copy is put back; every other `.old-*` is removed;
    - torn temporary files are removed; a `.partial` without a record is removed unless `keep_partial`
      (it may hold checkpoints for `--resume`).
    Returns a short description of each action.
    """
    actions: list[str] = []
    partial, parent, name = partial_dir(run_dir), run_dir.parent, run_dir.name
    if not parent.is_dir():
        return actions
    if (partial / RECORD).is_file() and read_record(partial) is not None:
        if run_dir.exists() and not (run_dir / RECORD).exists():
            shutil.rmtree(run_dir)  # an incomplete folder cannot be a result
        _swap(partial, run_dir)
        actions.append("completed an interrupted commit")
    olds = sorted(parent.glob(f"{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if olds and not (run_dir / RECORD).exists() and (olds[0] / RECORD).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        os.rename(olds.pop(0), run_dir)
        actions.append("restored the previous result")
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
        actions.append(f"removed {old.name}")
    for tmp in parent.glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if partial.exists() and not keep_partial:
        shutil.rmtree(partial, ignore_errors=True)
        actions.append("removed an unfinished attempt")
    return actions


def link_tree(src: Path, dst: Path) -> None:
    """Copy folder `src` to `dst` as hard links where the filesystem allows (no extra space), else as copies.
    Safe because nothing in the results tree is modified in place: every write replaces the file."""
    for path in sorted(Path(src).rglob("*")):
        target = Path(dst) / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def check_writable(results: Path) -> None:
    """Fail early, with one line, when the results folder cannot be written."""
    try:
        Path(results).mkdir(parents=True, exist_ok=True)
        probe = Path(results) / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"results folder '{results}' is not writable ({err.strerror}); pass --results DIR") from None


# --- weights -----------------------------------------------------------------------------------------------


def check_safetensors(path: Path, what: str) -> None:
    """Refuse a weights file or folder that holds no safetensors (missing, empty, or pickle files only).

    Only safetensors are ever loaded: a pickle (`.bin`, `.pt`, `.ckpt`, ...) can run code when unpickled.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BenchError(f"{what}: {path} does not exist")
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    safe = [p for p in files if p.suffix == ".safetensors"]
    if safe:
        return
    pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        shown = pickles[0].relative_to(path) if path.is_dir() else pickles[0].name
        raise BenchError(f"{what}: {path} holds only pickle weights ({shown}); only safetensors are loaded, "
                         f"convert them (e.g. safetensors.torch.save_file) and try again")
    raise BenchError(f"{what}: no .safetensors file in {path}; only safetensors are loaded")


# --- what is there -----------------------------------------------------------------------------------------


def run_status(results: Path, profile: str | None = None) -> tuple[dict[str, int], list[str]]:
    """Counts by state and one line per run found under `results`: done, failed (with reason), running (a live
    lock), interrupted (an unfinished attempt, no live lock). Problems are listed last."""
    counts: dict[str, int] = {}
    entries: list[tuple[str, str, str]] = []
    root = Path(results) / profile if profile else Path(results)
    for record in iter_run_records(results, profile, corrupt=True):
        note = record.reason if record.status == "corrupt" else failure_note(record) or failed_rerun_note(record)
        entries.append((record.status or "unknown", record.label(), note))
    if root.exists():
        for lock_path in sorted(root.rglob("seed*.lock")):
            run_dir = lock_path.with_name(lock_path.name.removesuffix(".lock"))
            lock = RunLock(run_dir)
            if not lock._stale():
                entries = [e for e in entries if e[1] != str(run_dir.relative_to(results))]
                entries.append(("running", str(run_dir.relative_to(results)), lock.describe()))
        running = {e[1] for e in entries if e[0] == "running"}
        for partial in sorted(root.rglob("seed*.partial")):
            run_dir = partial.with_name(partial.name.removesuffix(".partial"))
            key = str(run_dir.relative_to(results))
            if key not in running:
                entries.append(("interrupted", key, interrupted_note(partial)))
    order = {"done": 0, "running": 1, "interrupted": 2, "failed": 3, "corrupt": 4}
    entries.sort(key=lambda e: (order.get(e[0], 4), e[1]))
    lines = [f"{state:11} {key}{': ' + note if note else ''}" for state, key, note in entries]
    for state, _, _ in entries:
        counts[state] = counts.get(state, 0) + 1
    return counts, lines


def failed_rerun_path(run_dir: Path) -> Path:
    """`seed<k>.failed.json` beside a run: the record of a forced re-run that failed after the run was done."""
    return Path(run_dir).with_name(Path(run_dir).name + ".failed.json")


def failed_rerun_note(record: RunRecord) -> str:
    """For a done run whose forced re-run failed (the failure is kept beside the result, never over it): what
    failed and where it is; else ""."""
    if not record.done or not record.run_dir:
        return ""
    sidecar = failed_rerun_path(record.run_dir)
    if not sidecar.is_file():
        return ""
    try:
        failed = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        failed = {}
    return (f"a forced re-run failed at {failed.get('finished_at', '?')} ({failed.get('reason', 'unreadable')}); "
            f"this result is kept; details in {sidecar}")


def failure_note(record: RunRecord) -> str:
    if record.status != "failed":
        return ""
    note = record.reason or ""
    if record.traceback and record.run_dir:
        note += f" (traceback: {Path(record.run_dir) / record.traceback})"
    return note


def interrupted_note(partial: Path) -> str:
    """What an unfinished attempt left: its last checkpoint, if any."""
    from bench.models.checkpoint import find_checkpoints

    found = find_checkpoints(partial / "work")
    if found:
        where = ", ".join(f"{name} iteration {it}" for name, it in sorted(found.items()))
        return f"unfinished (killed or stopped); checkpoint at {where}; `bench run ... --resume` continues it"
    return "unfinished (killed or stopped) before any checkpoint; `bench run` redoes it"
