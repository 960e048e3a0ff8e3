"""`bench merge SRC... --into DEST`: combine the results folders of several machines (e.g. the shards of a plan).

Only committed runs are read (a run folder holding its `record.json`: done or failed); unfinished attempts
(`.partial`), locks and temporary files are never copied. For each run (same profile/method/variant/concept/seed)
the candidates are DEST's record, then each SRC's in the order given:

- nothing in DEST: the best source record is copied (done before failed);
- DEST failed, a source done with the same config hash: the done run replaces it (a failure is never kept over a
  result, and a result is never replaced by a failure);
- the same config hash, both done, with the same results: nothing to do (so a second merge changes nothing);
- the same config hash, both done, with *different* results: a conflict. Every conflict is found before anything
  is copied, and the merge stops with one line (exit 2) naming both folders;
- another config hash: DEST's record is kept (reported); `bench run` recomputes whichever one the plan no longer
  matches.

A run is copied into a folder beside its place (`<run>.merge-<pid>`), then renamed into place under the run's lock, so a
killed merge leaves nothing that looks finished. Files are hard-linked where the filesystem allows (nothing in a
results tree is modified in place), else copied.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.api import BenchError
from bench.paths import fsync_dir
from bench.record import RunRecord

VOLATILE = ("run_dir", "started_at", "finished_at", "host", "pid", "timing", "attempts", "resumed_from",
            "git_commit", "versions", "speed", "device", "trained_from", "traceback", "traceback_text")
"""Record fields that differ between two machines computing the same run; left out when results are compared."""


@dataclass
class MergeOutcome:
    """Run labels (`profile/method/variant/concept/seedK`) by what the merge did with them."""

    copied: list[str] = field(default_factory=list)
    replaced_failed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    kept_other_hash: list[str] = field(default_factory=list)
    kept_done_over_failed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)

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
    chosen: dict[str, tuple[Path, RunRecord]] = {}
    best: dict[str, tuple[Path, RunRecord]] = {}
    for src in sources:
        for rel, record in _runs(src).items():
            here = best.get(rel)
            if here is None or (not here[1].done and record.done and here[1].config_hash == record.config_hash):
                best[rel] = (src, record)
                continue
            if (here[1].config_hash == record.config_hash and here[1].done and record.done
                    and (key := _differs(here[1], record))):
                raise BenchError(f"conflict: {here[0] / rel} and {src / rel} hold different finished records for "
                                 f"the same run and config hash (field '{key}'); remove the wrong one and merge "
                                 f"again")
    for rel, (src, record) in sorted(best.items()):
        held = mine.get(rel)
        if held is None:
            chosen[rel] = (src / rel, record)
        elif held.config_hash != record.config_hash:
            outcome.kept_other_hash.append(rel)
        elif held.done and record.done:
            if key := _differs(held, record):
                raise BenchError(f"conflict: {dest / rel} and {src / rel} hold different finished records for the "
                                 f"same run and config hash (field '{key}'); remove the wrong one and merge again")
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
        finally:
            lock.release()
    return outcome


def _copy_run(src_run: Path, run_dir: Path) -> None:
    """Copy a committed run into place: build it beside (record last), rename it in; the old copy goes after (a
    kill between the renames leaves `<run>.old-<pid>`, which `store.recover` puts back or removes)."""
    for stale in run_dir.parent.glob(f"{run_dir.name}.merge-*"):  # what a killed merge left
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir.with_name(f"{run_dir.name}.merge-{os.getpid()}")
    tmp.mkdir(parents=True)
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
    old = run_dir.with_name(f"{run_dir.name}.old-{os.getpid()}")
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(tmp, run_dir)
    fsync_dir(run_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
