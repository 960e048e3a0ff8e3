"""CPU threads (`bench.threads`): the usable cores divided by the processes the harness starts, 1 on the tiny
profile, overridden by `--threads` / `BENCH_THREADS`; applied by the local executor and recorded with each run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bench.api import BenchError
from bench.threads import choose_threads, parse_threads, set_override
from tests.helpers import bench


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.delenv("BENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_usable_cores_are_shared_between_the_processes(eight_cores) -> None:
    assert [choose_threads(n, "paper-random") for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert choose_threads(1, "paper") == 8
    assert choose_threads(1, "tiny") == 1  # tiny models are fastest on one thread


def test_overrides_win(eight_cores, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(1, "paper") == 3 and choose_threads(1, "tiny") == 3
    set_override(5)  # --threads 5
    assert os.environ["BENCH_THREADS"] == "5" and choose_threads(4, "tiny") == 5
    monkeypatch.setenv("BENCH_THREADS", "x")
    with pytest.raises(BenchError, match="BENCH_THREADS must be a positive integer"):
        choose_threads(1, "paper")
    with pytest.raises(BenchError, match="--threads must be a positive integer"):
        parse_threads(0, "--threads")


def test_local_executor_applies_the_count_and_the_record_keeps_it(eight_cores, monkeypatch, capsys, tmp_path,
                                                                  dreambench_root) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # torch's default on two cores
        code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog",
                             "--profile", "tiny", "--data", dreambench_root, "--results", tmp_path,
                             "--set", "iterations=2")
        assert code == 0, err
        record = json.loads(next(tmp_path.rglob("record.json")).read_text())
        assert record["timing"]["threads"] == 1 and torch.get_num_threads() == 1
        code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog",
                             "--profile", "tiny", "--data", dreambench_root, "--results", tmp_path / "b",
                             "--set", "iterations=2", "--threads", "2")
        assert code == 0, err
        assert json.loads(next((tmp_path / "b").rglob("record.json")).read_text())["timing"]["threads"] == 2
        code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog",
                             "--profile", "tiny", "--data", dreambench_root, "--results", tmp_path / "c",
                             "--threads", "-1")
        assert code == 2 and "--threads must be a positive integer" in err and "\n" not in err.strip()
    finally:
        torch.set_num_threads(before)
