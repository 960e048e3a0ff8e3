"""Records: atomic writes, schema guard, locks with stale-owner detection, and the staged commit of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from bench import locks, store
from bench.api import BenchError
from bench.record import RunRecord


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
    store.commit_run(partial, run, RunRecord.from_json({"schema": 1, "status": "done", "n": 1}))
    assert store.read_record(run)["n"] == 1 and not partial.exists()
    partial = store.staging_dir(run)
    assert store.read_record(run)["n"] == 1, "the old result stays until the new one is committed"
    store.commit_run(partial, run, RunRecord.from_json({"schema": 1, "status": "done", "n": 2}))
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


# --- recovery after kills, and the lock's hardening (bench/store.py) -------------------------------------------


def _record(n: int) -> RunRecord:
    return RunRecord.from_json({"schema": 1, "status": "done", "n": n})


def test_recover_completes_a_commit_cut_between_its_renames(tmp_path) -> None:
    run = tmp_path / "seed0"
    store.commit_run(store.staging_dir(run), run, _record(1))
    partial = store.staging_dir(run)
    store.write_json_atomic(partial / store.RECORD, _record(2).to_json())
    os.rename(run, run.with_name("seed0.old-999"))  # killed right here: no run folder, two complete copies
    assert list(store.iter_records(tmp_path)) == [], "staged copies are never read as runs"
    assert store.recover(run)
    assert store.read_record(run)["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0"]


def test_recover_puts_back_the_previous_result_and_cleans_up(tmp_path) -> None:
    run = tmp_path / "seed0"
    store.commit_run(store.staging_dir(run), run, _record(1))
    os.rename(run, run.with_name("seed0.old-1"))
    (store.staging_dir(run) / "images").mkdir()  # an unfinished attempt, no record
    (tmp_path / ".seed0.failed.json.77.abc.tmp").write_text("{")
    store.recover(run, keep_partial=False)
    assert store.read_record(run)["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0"]


def test_recover_keeps_an_unfinished_attempt_for_resume(tmp_path) -> None:
    run = tmp_path / "seed0"
    partial = store.staging_dir(run)
    (partial / "work").mkdir()
    (partial / "images").mkdir()
    store.recover(run, keep_partial=True)
    assert (partial / "work").is_dir()
    kept = store.staging_dir(run, keep=("work",))
    assert sorted(p.name for p in kept.iterdir()) == ["work"]
    assert sorted(p.name for p in store.staging_dir(run).iterdir()) == []


def test_lock_of_a_recycled_pid_is_stale(tmp_path) -> None:
    lock = store.RunLock(tmp_path / "seed0")
    owner = {"pid": os.getpid(), "host": os.uname().nodename, "start": "1", "token": "x"}  # our pid, other start
    lock.path.write_text(json.dumps(owner))
    if locks._process_start(os.getpid()) is None:
        pytest.skip("no /proc: start times unavailable")
    assert lock.is_stale() and lock.acquire()
    lock.release()
    assert not lock.path.exists()


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path, monkeypatch) -> None:
    lock = store.RunLock(tmp_path / "seed0")
    lock.path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "x"}))
    assert not lock.is_stale() and not lock.acquire()
    monkeypatch.setenv("BENCH_LOCK_STALE_S", "60")
    old = time.time() - 120
    os.utime(lock.path, (old, old))
    assert lock.is_stale() and lock.acquire()
    lock.release()


def test_lock_being_written_is_not_stale_until_its_heartbeat_is_old(tmp_path, monkeypatch) -> None:
    lock = store.RunLock(tmp_path / "seed0")
    lock.path.write_text("")  # created but not yet written (O_EXCL fallback), or truncated
    assert not lock.is_stale() and not lock.acquire()
    monkeypatch.setenv("BENCH_LOCK_STALE_S", "60")
    old = time.time() - 120
    os.utime(lock.path, (old, old))
    assert lock.acquire()
    lock.release()


def test_lock_heartbeat_and_ownership(tmp_path) -> None:
    lock = store.RunLock(tmp_path / "seed0", heartbeat=0.05)
    assert lock.acquire()
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    time.sleep(0.3)
    assert time.time() - lock.path.stat().st_mtime < 5, "the owner refreshes its heartbeat"
    assert lock.still_held()
    lock.path.write_text(json.dumps({"pid": os.getpid(), "host": "x", "token": "someone else"}))
    assert not lock.still_held(), "a lock taken over is no longer ours"
    lock.release()
    assert lock.path.exists(), "release never deletes another owner's lock"


def test_stale_lock_is_taken_over_by_exactly_one_contender(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "seed0"
    for trial in range(5):
        store.RunLock(run).path.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
        locks = [store.RunLock(run) for _ in range(8)]
        barrier = threading.Barrier(len(locks))
        won = []

        def contend(lock: store.RunLock, barrier: threading.Barrier = barrier, won: list = won) -> None:
            barrier.wait()
            if lock.acquire():
                won.append(lock)

        threads = [threading.Thread(target=contend, args=(lock,)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"trial {trial}: {len(won)} owners"
        won[0].release()
        assert not list(tmp_path.glob("*.takeover")) and not list(tmp_path.glob(".*.tmp"))


def test_iter_records_reads_run_folders_only(tmp_path) -> None:
    base = tmp_path / "tiny" / "m" / "default" / "dog"
    for name in ("seed0", "seed0.partial", "seed0.old-12", "seed1.partial"):
        store.write_json_atomic(base / name / store.RECORD, {"schema": 1, "status": "done", "profile": "tiny",
                                                              "method": "m", "variant": "default",
                                                              "concept": "dog", "seed": 0})
    assert [r["run_dir"] for r in store.iter_records(tmp_path)] == [str(base / "seed0")]


def test_iter_run_records_types_every_record_and_stands_in_for_a_corrupt_one(tmp_path) -> None:
    base = tmp_path / "tiny" / "m" / "default" / "dog"
    store.write_json_atomic(base / "seed0" / store.RECORD, {"schema": 1, "status": "done", "profile": "tiny",
                                                             "method": "m", "variant": "default", "concept": "dog",
                                                             "seed": 0, "images": [{"eval_seed": 0, "clip_i": 0.5}]})
    (base / "seed1").mkdir()
    (base / "seed1" / store.RECORD).write_text('{"schema": 1, "sta')
    assert [r.seed for r in store.iter_run_records(tmp_path)] == [0]
    done, corrupt = store.iter_run_records(tmp_path, corrupt=True)
    assert done.run_dir == str(base / "seed0") and done.images[0].scores == {"clip_i": 0.5}
    assert (corrupt.status, corrupt.method, corrupt.concept, corrupt.seed) == ("corrupt", "m", "dog", 1)
    assert corrupt.run_dir == str(base / "seed1") and "JSONDecodeError" in corrupt.reason


def test_check_safetensors(tmp_path) -> None:
    (tmp_path / "w").mkdir()
    with pytest.raises(BenchError, match="no .safetensors"):
        store.check_safetensors(tmp_path / "w", "weights")
    (tmp_path / "w" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BenchError, match="only safetensors are loaded"):
        store.check_safetensors(tmp_path / "w", "weights")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"{}")
    store.check_safetensors(tmp_path / "w", "weights")
    with pytest.raises(BenchError, match="does not exist"):
        store.check_safetensors(tmp_path / "nope", "weights")
