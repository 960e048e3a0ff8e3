"""`bench merge SRC... --into DEST`: combine the results folders of several machines (e.g. the shards of a plan).

Only committed runs are read (a run folder holding its `record.json`: done or failed); unfinished attempts
(`.partial`), locks and temporary files are never copied. For each run (same profile/method/variant/concept/seed)
the candidates are DEST's record, then each SRC's in the order given:

- nothing in DEST: the best source record is copied (done before failed);
- DEST failed, a source done with the same config hash: the done run replaces it (a failure is never kept over a
  result, and a result is never replaced by a failure);
- the same config hash, both done, with the same results: nothing to do (so a second merge changes nothing);
- the same config hash, both done, results that differ only by numerical noise (every number within
  `REL_TOL` relative or `ABS_TOL` absolute, everything else equal: two GPUs, or two thread counts, computing one
  run): not a conflict. The copy of the shard that owns the run under the current plan (`OWNERS`, written by
  `tools/paper_tables.py pack`) wins, else the destination's, else the first source's; the summary says so;
- the same config hash, both done, with *different* results: a conflict. Every conflict is found before anything
  is copied, and the merge stops with one line (exit 2) naming both folders, the first field that differs, by
  how much, and where each copy was computed;
- another config hash: DEST's record is kept (reported); `bench run` recomputes whichever one the plan no longer
  matches.

A run is copied into a folder beside its place (`<run>.merge-<pid>`), then renamed into place under the run's lock, so a
killed merge leaves nothing that looks finished; the next merge removes what a dead one left (its locks, judged
by pid and host as `bench.locks.RunLock` does, and its `.merge-<pid>` folders). An unfinished attempt in the
destination (`<run>.partial`) is removed when a finished copy of the run is merged over it. Files are hard-linked
where the filesystem allows (nothing in a results tree is modified in place), else copied. A full disk stops the
merge with one line (exit 4); the runs already copied stay.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError, InfraError, infra_cause
from bench.paths import fsync_dir
from bench.record import RunRecord

VOLATILE = ("run_dir", "started_at", "finished_at", "host", "pid", "timing", "attempts", "resumed_from",
            "git_commit", "versions", "speed", "device", "trained_from", "traceback", "traceback_text")
"""Record fields that differ between two machines computing the same run; left out when results are compared."""
REL_TOL = 1e-4
ABS_TOL = 1e-6
"""Two copies of one run whose numbers all agree within `REL_TOL` (relative) or `ABS_TOL` (absolute) differ only
by numerical noise (another GPU, another thread count): one of them is kept, not a conflict."""
OWNERS = "shard.json"
"""In a packed shard folder: `{"shard": "K/N", "runs": [relative run paths]}`, the runs the shard owns."""


@dataclass
class MergeOutcome:
    """Run labels (`profile/method/variant/concept/seedK`) by what the merge did with them."""

    copied: list[str] = field(default_factory=list)
    replaced_failed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    kept_other_hash: list[str] = field(default_factory=list)
    kept_done_over_failed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    """Runs found twice with results equal up to numerical noise: one copy kept (the owner's)."""
    tidied: list[str] = field(default_factory=list)
    """What a dead merge or an unfinished attempt had left in the destination, removed."""

    def summary(self, dest: Path) -> str:
        parts = [f"{len(self.copied)} copied", f"{len(self.replaced_failed)} failed replaced by done",
                 f"{len(self.already)} already there"]
        if self.kept_done_over_failed:
            parts.append(f"{len(self.kept_done_over_failed)} failed copies ignored (done kept)")
        if self.kept_other_hash:
            parts.append(f"{len(self.kept_other_hash)} kept with another config hash in {dest} (e.g. "
                         f"{self.kept_other_hash[0]}; `bench run` recomputes outdated ones)")
        if self.locked:
            parts.append(f"{len(self.locked)} skipped: being written in {dest} right now (merge again later)")
        if self.noise:
            parts.append(f"{len(self.noise)} found twice with results equal up to numerical noise (numbers within "
                         f"{REL_TOL:g} relative): the owner shard's copy kept (e.g. {self.noise[0]})")
        if self.tidied:
            parts.append(f"{len(self.tidied)} leftovers of a dead merge or unfinished attempts removed")
        return f"merged into {dest}: " + ", ".join(parts)


def result_view(record: RunRecord) -> dict[str, Any]:
    """A record's JSON without the fields that differ between machines: what two copies of one run must agree on
    (compared as written, so a key an older bench did not write differs from one written as null)."""
    return {k: v for k, v in record.to_json().items() if k not in VOLATILE}


def _runs(root: Path) -> dict[str, RunRecord]:
    """{relative run path: record} for every committed run under `root`."""
    out = {}
    for record in store.iter_run_records(root):
        rel = Path(record.run_dir or "").relative_to(root)
        if len(rel.parts) == 5:
            out[str(rel)] = record
    return out


def _differs(a: RunRecord, b: RunRecord) -> str:
    """The first result field in which two records of one run differ, or ""."""
    va, vb = result_view(a), result_view(b)
    return next((k for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)), "")


def _first_difference(a: Any, b: Any, path: str, tolerant: bool) -> tuple[str, Any, Any] | None:
    """(dotted path, value in a, value in b) of the first leaf where `a` and `b` differ (beyond the noise tolerance
    when `tolerant`), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k), tolerant)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{i}]", tolerant)
            if found:
                return found
        return None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers and tolerant and math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL):
        return None
    if numbers and a != a and b != b:  # NaN in both
        return None
    return None if a == b else (path, a, b)


def compare(a: RunRecord, b: RunRecord) -> tuple[str, str]:
    """("same" | "noise" | "differs", what differs): two finished records of one run and config hash."""
    va, vb = result_view(a), result_view(b)
    if va == vb:
        return "same", ""
    found = _first_difference(va, vb, "", tolerant=True)
    if found is None:
        return "noise", ""
    key, x, y = found
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
        gap = abs(x - y)
        rel = gap / max(abs(x), abs(y)) if max(abs(x), abs(y)) else 0.0
        how = f"{x!r} vs {y!r}: differs by {gap:.3g} ({rel:.2%}), beyond the noise tolerance ({REL_TOL:g} relative)"
    else:
        how = f"{_short(x)} vs {_short(y)}"
    return "differs", f"field '{key}': {how}"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(record: RunRecord) -> str:
    threads = (record.speed or {}).get("threads") if isinstance(record.speed, dict) else None
    return ", ".join(str(p) for p in (record.device or "device unknown", record.host or "host unknown",
                                      f"{threads} threads" if threads else None) if p)


def _conflict(first: Path, second: Path, a: RunRecord, b: RunRecord, how: str) -> BenchError:
    computed = f"computed on {_where(a)} and on {_where(b)}"
    cause = ("; two devices or thread counts compute a run a little differently, but not this much"
             if _where(a) != _where(b) else "")
    return BenchError(f"conflict: {first} and {second} hold different finished records for the same run and "
                      f"config hash ({how}; {computed}{cause}); keep the copy you trust: delete the other run "
                      f"folder and merge again")


def _owners(sources: list[Path]) -> dict[str, Path]:
    """{relative run path: the source folder whose packed shard owns it} (`OWNERS` files)."""
    out: dict[str, Path] = {}
    for src in sources:
        try:
            runs = json.loads((src / OWNERS).read_text()).get("runs") or []
        except (OSError, ValueError, AttributeError):
            continue
        out.update({str(Path(rel)): src for rel in runs})
    return out


def _check_roots(sources: list[Path], dest: Path) -> None:
    if not sources:
        raise BenchError("bench merge needs at least one SRC folder, e.g. bench merge shard1 shard2 --into results")
    for src in sources:
        if not src.is_dir():
            raise BenchError(f"merge source {src} is not a folder; pass results folders (each holding <profile>/...)")
        if src.resolve() == dest.resolve():
            raise BenchError(f"merge source {src} is the destination itself; pass other folders")


def plan_merge(sources: list[Path], dest: Path) -> tuple[dict[str, tuple[Path, RunRecord]], MergeOutcome]:
    """Which source run goes where ({relative path: (source run folder, record)}); every conflict found first."""
    outcome = MergeOutcome()
    mine = _runs(dest) if dest.is_dir() else {}
    owners = _owners(sources)
    chosen: dict[str, tuple[Path, RunRecord]] = {}
    best: dict[str, tuple[Path, RunRecord]] = {}
    for src in sources:
        for rel, record in _runs(src).items():
            here = best.get(rel)
            if here is None or (not here[1].done and record.done and here[1].config_hash == record.config_hash):
                best[rel] = (src, record)
                continue
            if here[1].config_hash == record.config_hash and here[1].done and record.done:
                verdict, how = compare(here[1], record)
                if verdict == "differs":
                    raise _conflict(here[0] / rel, src / rel, here[1], record, how)
                if verdict == "noise":
                    outcome.noise.append(rel)
                    if owners.get(rel) == src:  # the owner shard's copy wins
                        best[rel] = (src, record)
    for rel, (src, record) in sorted(best.items()):
        held = mine.get(rel)
        if held is None:
            chosen[rel] = (src / rel, record)
        elif held.config_hash != record.config_hash:
            outcome.kept_other_hash.append(rel)
        elif held.done and record.done:
            verdict, how = compare(held, record)
            if verdict == "differs":
                raise _conflict(dest / rel, src / rel, held, record, how)
            if verdict == "noise" and rel not in outcome.noise:
                outcome.noise.append(rel)  # the destination's copy stands
            outcome.already.append(rel)
        elif held.done:
            outcome.kept_done_over_failed.append(rel)
        elif record.done:
            chosen[rel] = (src / rel, record)
        else:
            outcome.already.append(rel)  # failed in both: the destination's failure stands
    return chosen, outcome


def merge(sources: list[Path], dest: Path) -> MergeOutcome:
    """Merge `sources` into `dest` (see the module docstring); raises BenchError on a conflict, copying nothing."""
    sources, dest = [Path(s) for s in sources], Path(dest)
    _check_roots(sources, dest)
    chosen, outcome = plan_merge(sources, dest)
    if chosen:
        store.check_writable(dest)
    outcome.tidied += tidy_dead_merges(dest)
    try:
        _copy_chosen(chosen, dest, outcome)
    except OSError as err:
        cause = infra_cause(err)
        if cause is None:
            raise
        done = len(outcome.copied) + len(outcome.replaced_failed)
        raise InfraError(f"{cause} while merging into {dest}: {done} of {len(chosen)} runs copied, the rest not "
                         f"(nothing half-copied is left); free space on that disk, then `bench run ... --results "
                         f"{dest} --resume` finishes what is missing there, keeping every run already in place"
                         ) from err
    return outcome


def _copy_chosen(chosen: dict[str, tuple[Path, RunRecord]], dest: Path, outcome: MergeOutcome) -> None:
    for rel, (src_run, record) in chosen.items():
        run_dir = dest / rel
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = store.RunLock(run_dir)
        if not lock.acquire():
            outcome.locked.append(rel)
            continue
        try:
            store.recover(run_dir, keep_partial=True)
            held = store.read_run_record(run_dir)
            if held is not None and (held.done or held.config_hash != record.config_hash):
                outcome.already.append(rel)  # finished here while we were merging: it stands
                continue
            _copy_run(src_run, run_dir)
            (outcome.replaced_failed if held is not None else outcome.copied).append(rel)
            if store.partial_dir(run_dir).exists():  # an unfinished attempt, merged away: `bench status` forgets it
                shutil.rmtree(store.partial_dir(run_dir), ignore_errors=True)
                outcome.tidied.append(f"{rel} (unfinished attempt)")
        finally:
            lock.release()


def tidy_dead_merges(dest: Path) -> list[str]:
    """Remove what a killed merge left in `dest`: its run locks, when their owner is dead (`RunLock.is_stale`:
    the pid is gone on this host, or the heartbeat is old), and its `.merge-<pid>` folders beside them."""
    from bench.locks import _pid_alive

    removed = []
    if not dest.is_dir():
        return removed
    for path in sorted(dest.glob("*/*/*/*/*.merge-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path.relative_to(dest)))
    for path in sorted(dest.glob("*/*/*/*/*.lock")):
        lock = store.RunLock(path.with_name(path.name.removesuffix(".lock")))
        if lock.is_stale() and lock.acquire():  # taken over under the take-over mutex, then let go
            lock.release()
            removed.append(str(path.relative_to(dest)))
    return removed


def _copy_run(src_run: Path, run_dir: Path) -> None:
    """Copy a committed run into place: build it beside (record last), rename it in; the old copy goes after (a
    kill between the renames leaves `<run>.old-<pid>`, which `store.recover` puts back or removes)."""
    for stale in run_dir.parent.glob(f"{run_dir.name}.merge-*"):  # what a killed merge left
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir.with_name(f"{run_dir.name}.merge-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        _fill(src_run, tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk or a kill: nothing half-copied stays
        raise
    old = run_dir.with_name(f"{run_dir.name}.old-{os.getpid()}")
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(tmp, run_dir)
    fsync_dir(run_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fill(src_run: Path, tmp: Path, run_dir: Path) -> None:
    for child in sorted(src_run.iterdir()):
        if child.name == store.RECORD:
            continue
        if child.is_dir():
            store.link_tree(child, tmp / child.name)
        else:
            shutil.copy2(child, tmp / child.name)
    sidecar = store.failed_rerun_path(src_run)
    if sidecar.is_file():
        shutil.copy2(sidecar, store.failed_rerun_path(run_dir))
    shutil.copy2(src_run / store.RECORD, tmp / store.RECORD)
    fsync_dir(tmp)
