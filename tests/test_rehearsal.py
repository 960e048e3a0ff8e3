"""The rehearsal of the whole paper pipeline (tools/rehearsal.py), reduced: 2 concepts, 6 shards, every piece of
the plan, through the workflow's commands with the injected faults (a shard killed midway, a re-run after the plan
grew by a concept, a noisy duplicate record), checked against an unsharded run.

The first (fast tier) runs every piece under its name with the test-only method `fake` (tests/fake_plan.py): the
real pieces on `tiny` take minutes per concept on a CPU (EchoDistill's nine ablations alone). It is the slowest
fast test, about 2.5 min wall on a quiet 2-core machine: its ~40 processes (each shard of two rounds, packs,
merges and their `bench` steps) each import torch, which is what the workflow does too. The second (slow tier)
runs the real methods (the main piece: the base model, the cheapest; the others as the plan has them);
`make rehearsal` the whole plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rehearse(tmp_path: Path, data: Path, module: str | None, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if module:
        env["BENCH_MODULE"] = module
    done = subprocess.run([sys.executable, str(REPO / "tools" / "rehearsal.py"), "--data", str(data), "--work",
                           str(tmp_path / "rehearsal"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done.stdout


def test_rehearsal_two_concepts_six_shards_every_piece(tmp_path, dreambench_root):
    out = rehearse(tmp_path, dreambench_root, "tests.fake_plan", "--concepts", "dog,cat", "--shards", "6",
                   "--no-report", "--parallel", "2")
    assert "FAIL" not in out and out.count("ok   ") == 9, out
    assert "killed midway" in out and "noise" in out and "equals the unsharded" in out
    assert "| 6/6 |" in out


@pytest.mark.slow
def test_rehearsal_with_the_real_methods(tmp_path, real_dreambench_root):
    out = rehearse(tmp_path, real_dreambench_root, None, "--concepts", "dog,cat", "--shards", "6", "--methods",
                   "base", "--no-report")
    assert "FAIL" not in out and out.count("ok   ") == 9, out
