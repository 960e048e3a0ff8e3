"""Every trainable method resumes: a kill mid-training (EchoDistill: mid-distillation and again mid-echo), then
`--resume`, gives the uninterrupted run's weights, images, loss log and scores bit for bit (CPU, tiny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import store
from bench.models.checkpoint import find_checkpoints
from tests.helpers import Killed, assert_same_run, bench

REPO = Path(__file__).resolve().parents[1]


def kill_in(monkeypatch, phase: str, iteration: int) -> None:
    """The run's loss log raises `Killed` right after logging `iteration` of `phase`."""
    from bench.runs import JsonlLog

    original = JsonlLog.__call__

    def logged_then_killed(self, it, **scalars):
        original(self, it, **scalars)
        if self.phase == phase and it == iteration:
            raise Killed(f"killed at {phase} iteration {it}")

    monkeypatch.setattr(JsonlLog, "__call__", logged_then_killed)


@pytest.mark.parametrize("method, variant, extra", [
    ("textual_inversion", "default", []),
    ("lora", "default", []),
    ("dreambooth", "default", []),
    ("dreambooth", "prior+num_class_images=2", ["--variant", "prior", "--set", "num_class_images=2"]),
    ("cones2", "default", []),
    ("disenbooth", "default", []),
    ("textboost", "default", []),
], ids=["textual_inversion", "lora", "dreambooth", "dreambooth-prior", "cones2", "disenbooth", "textboost"])
def test_baselines_resume_bit_identically(method, variant, extra, dreambench_root, tmp_path, monkeypatch,
                                          capsys) -> None:
    """tiny: 10 iterations, a checkpoint at 5; killed after iteration 7 (its 8th), resumed from 5."""
    common = ["run", "--method", method, "--concepts", "dog", "--data", dreambench_root, *extra]
    code, _, err = bench(monkeypatch, capsys, *common, "--results", tmp_path / "a")
    assert code == 0, err
    with monkeypatch.context() as m:
        kill_in(m, "train", 7)
        with pytest.raises(Killed):
            bench(m, capsys, *common, "--results", tmp_path / "b")
    run_b = tmp_path / "b" / "tiny" / method / variant / "dog" / "seed0"
    assert find_checkpoints(run_b.with_name("seed0.partial") / "work") == {"train": 5}
    code, _, err = bench(monkeypatch, capsys, *common, "--results", tmp_path / "b", "--resume")
    assert code == 0, err
    record = store.read_record(run_b)
    assert record["resumed_from"] == {"train": 5} and record["timing"]["resumed"]
    assert_same_run(tmp_path / "a" / "tiny" / method / variant / "dog" / "seed0", run_b)


def _echodistill(results: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "run", "--method", "echodistill", "--concepts", "dog", "--data",
            str(data), "--results", str(results), *extra]


def _kill_when_logged(cmd: list[str], log: Path, phase: str, iteration: int, env: dict[str, str]) -> None:
    """Start `cmd`, SIGKILL its process group once the loss log holds `iteration` of `phase` (bounded wait)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its kill: {proc.stderr.read()[-2000:]}")
            rows = []
            if log.exists():
                for line in log.read_text().splitlines():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written
            if any(r["phase"] == phase and r["iteration"] >= iteration for r in rows):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no {phase} iteration {iteration} within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_echodistill_sigkilled_mid_distillation_and_mid_echo_resumes_bit_identically(dreambench_root, tmp_path
                                                                                      ) -> None:
    """A real SIGKILL in the distillation stage, `--resume`, another SIGKILL in the echo stage, `--resume`: the
    weights, every view's images, the loss log and the scores equal an uninterrupted run's."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(_echodistill(tmp_path / "a", dreambench_root), cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run_b = tmp_path / "b" / "tiny" / "echodistill" / "default" / "dog" / "seed0"
    partial = run_b.with_name("seed0.partial")
    _kill_when_logged(_echodistill(tmp_path / "b", dreambench_root), partial / "loss_log.jsonl", "distill", 6, env)
    assert find_checkpoints(partial / "work") == {"distill": 5}, "killed after the mid-distillation checkpoint"
    _kill_when_logged(_echodistill(tmp_path / "b", dreambench_root, "--resume"), partial / "loss_log.jsonl", "echo",
                      6, env)
    assert find_checkpoints(partial / "work") == {"distill": 10, "echo": 5}, "killed after the mid-echo checkpoint"
    done = subprocess.run(_echodistill(tmp_path / "b", dreambench_root, "--resume"), cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    record = store.read_record(run_b)
    assert record["attempts"] == 3 and record["resumed_from"] == {"distill": 10, "echo": 5}
    run_a = tmp_path / "a" / "tiny" / "echodistill" / "default" / "dog" / "seed0"
    assert_same_run(run_a, run_b)
    untimed = {name: {k: v for k, v in view.items() if k != "timing"} for name, view in record["views"].items()}
    assert untimed == {name: {k: v for k, v in view.items() if k != "timing"}
                       for name, view in store.read_record(run_a)["views"].items()}, "every view's scores"
