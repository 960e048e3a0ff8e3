"""Faults are never results: an environment failure (disk full, a device error, a broken pipe) stops the sweep with
one line and exit code 4, leaves the run unfinished and resumable, and is never kept as a failed run; workers of
the `gpus` executor die with their parent. Self-contained: a one-concept DreamBench copy made here."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import store
from tests.helpers import bench, mini_dreambench

REPO = Path(__file__).resolve().parents[1]


def _two_concepts(root: Path) -> Path:
    """The mini DreamBench with a second concept, `cat`, so a stopped sweep visibly leaves work undone."""
    data = mini_dreambench(root)
    (data / "dataset" / "cat").mkdir()
    for photo in (data / "dataset" / "dog").iterdir():
        (data / "dataset" / "cat" / photo.name).write_bytes(photo.read_bytes())
    path = data / "dataset" / "prompts_and_classes.txt"
    path.write_text(path.read_text().replace("dog,dog\n", "cat,cat\ndog,dog\n"))
    return data


@pytest.mark.parametrize("error, says", [
    (OSError(errno.ENOSPC, "No space left on device", "/results/work/ckpt.safetensors"), "no space left on device"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), "lost the connection to the parent process"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "device error: CUDA error"),
    (type("SafetensorError", (Exception,), {})("Error while serializing: I/O error: No space left on device (os "
                                                "error 28)"), "no space left on device (SafetensorError"),
])
def test_an_environment_failure_stops_the_sweep_and_is_never_a_result(error, says, fake, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    from tests.fake_method import FakeMethod

    data = _two_concepts(tmp_path / "data")
    results = tmp_path / "results"
    common = ["run", "--method", "fake", "--concepts", "cat,dog", "--data", data, "--results", results]
    original = FakeMethod.train

    def failing(self, concept, *args, **kwargs):
        raise error

    monkeypatch.setattr(FakeMethod, "train", failing)
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 4 and len(err.strip().splitlines()) == 1 and says in err, err
    assert "--resume" in err
    assert not list(store.iter_records(results)), "nothing recorded: not a failed run, and the sweep stopped"
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", results)
    assert "failed" not in out

    monkeypatch.setattr(FakeMethod, "train", original)  # the disk is freed, the cable plugged back
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "2 done" in err and "kept failed" not in err, err


def test_a_method_exception_is_still_a_failed_run(fake, tmp_path, monkeypatch, capsys) -> None:
    data = _two_concepts(tmp_path / "data")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "cat,dog", "--data", data,
                         "--results", tmp_path / "r", "--set", "fail_on=cat")
    assert code == 3 and "1 done, 1 failed" in err


def test_disk_full_while_writing_the_record_stops_with_one_line(fake, tmp_path, monkeypatch, capsys) -> None:
    data = _two_concepts(tmp_path / "data")
    results = tmp_path / "results"
    real = store.commit_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "commit_run", full)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "cat,dog", "--data", data,
                         "--results", results)
    assert code == 4 and len(err.strip().splitlines()) == 1 and "no space left on device" in err, err
    assert not list(store.iter_records(results))
    monkeypatch.setattr(store, "commit_run", real)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "cat,dog", "--data", data,
                         "--results", results)
    assert code == 0 and "2 done" in err, err


def test_a_device_typo_is_one_line_before_any_work(fake, tmp_path, monkeypatch, capsys) -> None:
    data = mini_dreambench(tmp_path / "data")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data", data,
                         "--results", tmp_path / "r", "--device", "tpu9")
    assert code == 2 and "unknown --device 'tpu9'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_killing_the_gpus_executor_kills_its_workers_and_records_nothing_failed(tmp_path) -> None:
    data = _two_concepts(tmp_path / "data")
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "tests.fake_bench", "run", "--method", "fake", "--concepts", "cat,dog", "--data",
           str(data), "--results", str(results), "--executor", "gpus", "--workers", "2", "--set", "sleep=0.5",
           "--set", "iterations=40"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(results.rglob("seed0.partial"))) < 2:  # both workers training
        time.sleep(0.5)
    workers = _children(proc.pid)  # the spawned workers (and multiprocessing's resource tracker)
    assert len(list(results.rglob("seed0.partial"))) == 2 and workers, "the workers never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "a worker outlived its parent"
    time.sleep(1)
    failed = [r for r in store.iter_records(results) if r.get("status") != "done"]
    assert not failed, json.dumps(failed, default=str)[:500]
