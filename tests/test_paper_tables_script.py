"""The workflow's script (tools/paper_tables.py) run locally on `tiny`: N = 3 shards as three processes with their
own results folders, merged, give the same tables as one unsharded run of the same plan.

The fast version uses the test-only method `fake` (tests/fake_bench.py, run as `bench` through $BENCH_MODULE);
the slow one uses LoRA, a real method. Timing columns are left out of the comparison (they are measured)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "paper_tables.py"
CONCEPTS = "dog,cat,teapot"


def script(method: str, results: Path, data: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_MODULE": "tests.fake_bench", "BENCH_DATA": str(data)}
    argv = [sys.executable, str(SCRIPT), "--profile", "tiny", "--concepts", CONCEPTS, "--seeds", "0",
            "--pieces", "main", "--methods", method, "--results", str(results), "--data", str(data), *args]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out
    return out


def measured_tables(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Every CSV table, without the columns that hold measured times."""
    tables = {}
    for path in sorted(folder.glob("*.csv")):
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        tables[path.stem] = [{k: v for k, v in r.items() if "time" not in k} for r in rows]
    return tables


def check_sharded_equals_unsharded(method: str, tmp_path: Path, data: Path) -> None:
    shards = [tmp_path / f"shard{k}" for k in (1, 2, 3)]
    procs = [script(method, folder, data, "shard", str(k), "3", "--executor", "local")
             for k, folder in enumerate(shards, start=1)]
    logs = [finish(p) for p in procs]
    runs = [int(log.split(" of the plan's")[0].rsplit(" ", 1)[-1]) for log in logs]  # "shard k/3: M of ..."
    assert sum(runs) == 3 and max(runs) < 3, logs  # every run exactly once, spread over more than one shard
    finish(script(method, tmp_path / "merged", data, "merge", *map(str, shards), "--into",
                  str(tmp_path / "merged"), "--out", str(tmp_path / "published"), "--no-report"))
    finish(script(method, tmp_path / "whole", data, "shard", "1", "1", "--executor", "local"))
    finish(script(method, tmp_path / "whole", data, "merge", str(tmp_path / "whole"), "--into",
                  str(tmp_path / "whole-merged"), "--out", str(tmp_path / "published-whole"), "--no-report"))
    sharded = measured_tables(tmp_path / "published" / "tables")
    whole = measured_tables(tmp_path / "published-whole" / "tables")
    assert sharded and sharded == whole
    measured = [r for t in sharded.values() for r in t if r.get("method") == method and r.get("kind") != "not_run"]
    assert measured and all(r["clip_t"] for r in measured), sharded  # the method's row holds measured scores


def test_three_shards_merged_equal_one_run_fake(tmp_path, dreambench_root):
    check_sharded_equals_unsharded("fake", tmp_path, dreambench_root)


@pytest.mark.slow
def test_three_shards_merged_equal_one_run_lora(tmp_path, dreambench_root):
    check_sharded_equals_unsharded("lora", tmp_path, dreambench_root)
