"""Timing and iterations survive `--resume`: a run killed twice and resumed keeps every attempt, and its table row
shows the run's full iteration count and the training time summed over the attempts."""

from __future__ import annotations

import pytest

from bench import store
from bench.tables import cell_stats
from tests.helpers import Killed, bench, kill_at


def test_killed_twice_then_resumed_keeps_every_attempt(fake, dreambench_root, tmp_path, monkeypatch, capsys):
    from bench import timing

    monkeypatch.setattr(timing, "TICK_S", 0.0)  # record every step, so a kill loses nothing
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path,
              "--set", "sleep=0.05", "--resume"]
    for kill in (3, 5):  # checkpoints every 2 iterations: killed after logging 3 (saved 2), then 5 (saved 4)
        with monkeypatch.context() as m:
            kill_at(m, kill)
            with pytest.raises(Killed):
                bench(m, capsys, *common)
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "1 done" in err, err
    run = tmp_path / "tiny" / "fake" / "default+sleep=0.05" / "dog" / "seed0"
    record = store.read_run_record(run)
    attempts = record.timing.attempts
    assert [a["resumed_from"] for a in attempts] == [None, {"train": 2}, {"train": 4}]
    assert [a["iterations"] for a in attempts] == [4, 4, 2]  # a resumed attempt repeats the steps after its checkpoint
    assert [bool(a.get("interrupted")) for a in attempts] == [True, True, False]
    assert all(a["started_at"] and a["finished_at"] or a.get("last_seen") for a in attempts)
    assert attempts[0]["train_s"] >= 4 * 0.05 and attempts[1]["train_s"] >= 4 * 0.05
    assert record.timing.train_s == pytest.approx(sum(a["train_s"] for a in attempts))
    assert record.timing.iterations == 6 and record.attempts == 3
    stats = cell_stats([record], "metrics", ["dog"], [0])
    assert stats.iterations == (6, 6) and stats.train_s == pytest.approx(sum(a["train_s"] for a in attempts))
    assert not (run / "work").exists()


def test_one_uninterrupted_attempt_is_timed_as_before(fake, dreambench_root, tmp_path, monkeypatch, capsys):
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path)
    assert code == 0, err
    timing = store.read_run_record(tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0").timing
    assert timing.iterations == 6 and len(timing.attempts) == 1 and timing.train_s == timing.attempts[0]["train_s"]
    assert timing.attempts[0]["resumed_from"] is None and timing.attempts[0]["finished_at"]
