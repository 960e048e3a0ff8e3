"""The whole paper on a SLURM cluster (`tools/paper_tables.py slurm N`, bench.cluster): one job array of N shard
jobs with the lab's resources, into one shared results folder, then the tables. Run here with submitit's local
executor (the same job objects SLURM would run), and against a fake `sbatch` for the submission file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import load_script

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fake")  # registered here too: tests.fake_bench does it once per process

def test_the_whole_plan_as_one_job_array_on_the_local_cluster(tmp_path, dreambench_root, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_MODULE", "tests.fake_bench")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = tmp_path / "shared"
    code = load_script().main(["--profile", "tiny", "--concepts", "dog,cat,teapot", "--pieces", "main", "--methods",
                               "fake", "--data", str(dreambench_root), "--results", str(results), "slurm", "2",
                               "--cluster", "local", "--gpus-per-job", "0", "--time", "30", "--shard-executor",
                               "local", "--no-report"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "one array" in out and "shard 1/2: exit 0" in out and "shard 2/2: exit 0" in out
    done = sorted(p.parents[0].parent.name for p in results.glob("tiny/fake/default/*/seed0/record.json"))
    assert done == ["cat", "dog", "teapot"]  # every run of the plan, in the one shared folder
    assert (results / "published" / "tables" / "main.md").is_file()
    coverage = (results / "published" / "coverage.md").read_text()
    assert "3 of the plan's 3 runs done" in coverage and "**0 missing**" in coverage


def test_the_submission_file_carries_the_labs_resources(fake_slurm, tmp_path, dreambench_root, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("BENCH_MODULE", "tests.fake_bench")
    code = load_script().main(["--profile", "tiny", "--concepts", "dog", "--pieces", "main", "--methods", "fake",
                               "--data", str(dreambench_root), "--results", str(tmp_path / "r"), "slurm", "4",
                               "--partition", "gpu", "--time", "600", "--gpus-per-job", "2", "--mem", "64G",
                               "--account", "lab", "--sbatch", "qos=high", "--parallel", "3", "--no-wait"])
    out = capsys.readouterr().out
    assert code == 0 and "submitted 4 shard job(s) as one array" in out and "publish" in out, out
    [script] = sorted(fake_slurm.glob("submission-*.sh"))
    text = script.read_text()
    for line in ("--partition=gpu", "--time=600", "--mem=64G", "--account=lab", "--qos=high", "--array=0-3%3",
                 "--gpus-per-node=2"):
        assert f"#SBATCH {line}" in text, (line, text)


def test_without_sbatch_the_error_is_one_line_naming_the_local_cluster(tmp_path, dreambench_root, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    monkeypatch.setenv("BENCH_MODULE", "tests.fake_bench")
    code = load_script().main(["--profile", "tiny", "--concepts", "dog", "--pieces", "main", "--methods", "fake",
                               "--data", str(dreambench_root), "--results", str(tmp_path / "r"), "slurm", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--cluster local" in err
    assert not Path(tmp_path / "r" / "_slurm").exists()


def test_a_requeued_shard_task_continues_its_interrupted_runs() -> None:
    from bench.cluster import ShardTask

    task = ShardTask("paper_tables.py", ["--profile", "tiny"], 4)
    assert "--resume" not in task.argv(2)
    again = task.checkpoint(2)  # what submitit runs after a time limit or a preemption
    assert again.args == (2,) and again.function.argv(2)[-1] == "--resume"
