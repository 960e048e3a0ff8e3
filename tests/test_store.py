"""Records: atomic writes, schema guard, locks with stale-owner detection, and the staged commit of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import store
from bench.api import BenchError


def test_atomic_write_and_read(tmp_path) -> None:
    store.write_json_atomic(tmp_path / "a" / "record.json", {"schema": 1, "status": "done"})
    assert store.read_record(tmp_path / "a") == {"schema": 1, "status": "done"}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["record.json"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "record.json").write_text('{"schema": 1, "sta')  # torn by a crash
    assert store.read_record(tmp_path / "b") is None


def test_newer_schema_is_refused(tmp_path) -> None:
    store.write_json_atomic(tmp_path / "record.json", {"schema": store.SCHEMA_VERSION + 1})
    with pytest.raises(BenchError, match="newer"):
        store.read_record(tmp_path)


def test_is_done_needs_matching_hash(tmp_path) -> None:
    store.write_json_atomic(tmp_path / "record.json", {"schema": 1, "status": "done", "config_hash": "abc"})
    assert store.is_done(tmp_path, "abc") and not store.is_done(tmp_path, "abd")


def test_commit_run_replaces_only_when_complete(tmp_path) -> None:
    run = tmp_path / "seed0"
    partial = store.staging_dir(run)
    (partial / "images").mkdir()
    store.commit_run(partial, run, {"schema": 1, "status": "done", "n": 1})
    assert store.read_record(run)["n"] == 1 and not partial.exists()
    partial = store.staging_dir(run)
    assert store.read_record(run)["n"] == 1, "the old result stays until the new one is committed"
    store.commit_run(partial, run, {"schema": 1, "status": "done", "n": 2})
    assert store.read_record(run)["n"] == 2 and not list(tmp_path.glob("*.old-*"))


def test_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path) -> None:
    run = tmp_path / "seed0"
    first, second = store.RunLock(run), store.RunLock(run)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = store.RunLock(run)
    lock.path.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "time": 0}))
    assert lock.acquire(), "a lock whose owner is gone is stale"
    lock.release()


def test_unwritable_results_folder(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchError, match="not writable"):
        store.check_writable(blocker / "results")
