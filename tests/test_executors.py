"""Executors (local, gpus, slurm through submitit), concurrent sweeps, failures and the retry policy.

Most tests use the test-only method `fake` (tests/fake_method.py): the real harness path (lock, stage, train,
checkpoint, save, sample, score, record) in a fraction of a second per run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import store
from tests.helpers import bench, include_fake

REPO = Path(__file__).resolve().parents[1]


def fake_cmd(results: Path, data: Path, concepts: str, *extra: str) -> list[str]:
    """`bench run --method fake ...` in a fresh process (tests/fake_bench.py registers `fake`)."""
    return [sys.executable, "-m", "tests.fake_bench", "run", "--method", "fake", "--concepts", concepts,
            "--data", str(data), "--results", str(results), *extra]


def records(results: Path) -> dict[str, dict]:
    return {r["concept"]: r for r in store.iter_records(results)}


# --- gpus ------------------------------------------------------------------------------------------------------


def test_gpus_executor_with_two_cpu_workers(dreambench_root, tmp_path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(fake_cmd(tmp_path, dreambench_root, "dog,teapot", "--executor", "gpus", "--workers", "2"),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "2 done" in err and "2 workers" in err
    found = records(tmp_path)
    assert set(found) == {"dog", "teapot"}
    for record in found.values():
        assert record["status"] == "done" and record["device"].startswith("cpu")
        assert record["pid"] != proc.pid, "runs happen in worker processes, not in the parent"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", ".lock"))]


def test_gpus_executor_needs_a_gpu_or_workers(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path / "r", "--executor", "gpus")
    assert code == 2 and "--workers N" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_visible_gpus(monkeypatch) -> None:
    from bench.executors.gpus import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,-1,4")
    assert visible_gpus() == ["GPU-1a2b"], "CUDA stops at the first invalid entry"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


# --- two sweeps at once ---------------------------------------------------------------------------------------------


def test_concurrent_sweeps_run_each_job_once(dreambench_root, tmp_path) -> None:
    concepts = ["backpack", "can", "dog", "teapot"]
    cmd = fake_cmd(tmp_path, dreambench_root, ",".join(concepts), "--set", "sleep=0.3")
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    errs = [err for _, err in outputs]
    done = [sum(int(n) for n in re.findall(r"(?m)^(\d+) done", e)) for e in errs]
    assert sum(done) == len(concepts), f"each run trained exactly once: {errs}"
    assert any("locked" in e or "skipped" in e for e in errs), "the other process saw the runs taken"
    found = records(tmp_path)
    assert set(found) == set(concepts)
    assert {r["pid"] for r in found.values()} <= {p.pid for p in procs}
    assert len(list(tmp_path.rglob("record.json"))) == len(concepts)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", ".lock"))]


# --- failures and the retry policy -----------------------------------------------------------------------------------


def test_failed_run_is_recorded_and_the_sweep_goes_on(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    common = ["run", "--method", "fake", "--data", dreambench_root, "--results", tmp_path, "--set", "fail_on=dog"]
    code, _, err = bench(monkeypatch, capsys, *common, "--concepts", "dog,teapot")
    from bench.executors import EXIT_RUNS_FAILED

    assert code == EXIT_RUNS_FAILED == 3 and "1 done, 1 failed" in err and "bench status" in err
    dog = tmp_path / "tiny" / "fake" / "default+fail_on=dog" / "dog" / "seed0"
    record = store.read_record(dog)
    assert record["status"] == "failed" and record["reason"] == "RuntimeError: fake failure on dog"
    assert not record["diverged"] and "Traceback" in (dog / record["traceback"]).read_text()
    assert store.read_record(dog.parent.parent / "teapot" / "seed0")["status"] == "done"

    code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path)
    assert code == 0 and "fake failure on dog" in out and "traceback.txt" in out and "1 done, 1 failed" in out
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path, "--method", "fake", "--set",
                         "fail_on=dog", "--concepts", "dog,teapot,can", "--data", dreambench_root)
    assert code == 0 and "missing     tiny/fake/default+fail_on=dog/can/seed0" in out
    assert out.strip().splitlines()[-1] == "1 done, 1 failed, 1 missing"

    finished = record["finished_at"], (dog / "record.json").stat().st_mtime_ns
    code, _, err = bench(monkeypatch, capsys, *common, "--concepts", "dog,teapot")
    assert code == EXIT_RUNS_FAILED and "1 skipped, 1 kept failed" in err and "--retry-failed" in err
    assert (dog / "record.json").stat().st_mtime_ns == finished[1], "a failed run is not retried by default"
    code, _, err = bench(monkeypatch, capsys, *common, "--concepts", "dog,teapot", "--retry-failed")
    assert code == EXIT_RUNS_FAILED and "1 skipped, 1 failed" in err
    assert (dog / "record.json").stat().st_mtime_ns != finished[1]
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--data", dreambench_root, "--results",
                         tmp_path, "--concepts", "teapot")
    assert code == 0 and "1 done" in err, "every run of the plan done: exit 0"


def test_diverged_run_is_recorded_as_failed(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog,teapot",
                         "--data", dreambench_root, "--results", tmp_path, "--set", "lr=1e30", "--set", "iterations=3")
    assert code == 3 and "2 failed" in err
    for record in records(tmp_path).values():
        assert record["status"] == "failed" and record["diverged"] is True
        assert record["reason"].startswith("Diverged: non-finite loss")
        assert (Path(record["run_dir"]) / "traceback.txt").is_file()
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path)
    assert code == 0 and out.count("Diverged: non-finite loss") == 2


# --- slurm ---------------------------------------------------------------------------------------------------------


def test_slurm_array_submission(fake, fake_slurm, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    results = tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,teapot,can",
                         "--data", dreambench_root, "--results", results, "--executor", "slurm", "--slurm-array",
                         "--partition", "gpu-long", "--time", "90", "--gpus-per-job", "2", "--cpus-per-job", "8",
                         "--mem", "32GB", "--sbatch", "account=proj", "--sbatch", "qos=high", "--no-wait")
    assert code == 0, err
    assert "3 submitted" in err and "4242" in err
    [script] = sorted(fake_slurm.glob("submission-*.sh"))
    text = script.read_text()
    logs = results.resolve() / "_slurm"
    for line in ("#SBATCH --partition=gpu-long", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --array=0-2%3", f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out",
                 f"#SBATCH --error={logs}/%A_%a/%A_%a_0_log.err", "#SBATCH --job-name=bench"):
        assert line in text.splitlines(), f"{line} not in\n{text}"
    assert f"{sys.executable} -u -m submitit.core._submit {logs}/%j" in text
    assert len(list(logs.rglob("*.pkl"))) == 3, "one pickled task per run"
    assert not list(results.rglob("record.json")) and not list(results.rglob("*.lock"))


def test_slurm_one_job_per_run_skips_finished_runs(fake, fake_slurm, dreambench_root, tmp_path, monkeypatch,
                                                    capsys) -> None:
    common = ["run", "--method", "fake", "--data", dreambench_root, "--results", tmp_path / "r"]
    code, _, _ = bench(monkeypatch, capsys, *common, "--concepts", "dog")  # finished here, locally
    assert code == 0
    code, _, err = bench(monkeypatch, capsys, *common, "--concepts", "dog,teapot,can", "--executor", "slurm",
                         "--no-wait", "--gpus-per-job", "0")
    assert code == 0 and "1 skipped, 2 submitted" in err, err
    scripts = sorted(fake_slurm.glob("submission-*.sh"))
    assert len(scripts) == 2, "one sbatch per run, none for the finished one"
    for script in scripts:
        text = script.read_text()
        assert "--array" not in text and "--gpus-per-node" not in text and "#SBATCH --time=120" in text


def test_slurm_local_cluster_end_to_end(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """The same submission run through submitit's LocalExecutor: a separate process per run, then the records. The
    method comes in as a plug-in does (`--include`), the jobs find it through $BENCH_INCLUDE."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    include_fake(monkeypatch)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,teapot", "--data",
                         dreambench_root, "--results", tmp_path, "--executor", "slurm", "--cluster", "local",
                         "--gpus-per-job", "0", "--time", "10", "--slurm-array")
    assert code == 0 and "2 done" in err, err
    found = records(tmp_path)
    assert {r["status"] for r in found.values()} == {"done"} and set(found) == {"dog", "teapot"}
    assert all(r["pid"] != os.getpid() for r in found.values()), "ran in submitit's job processes"
    assert list((tmp_path / "_slurm").rglob("*_log.out")), "logs in <results>/_slurm/"
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,teapot", "--data",
                         dreambench_root, "--results", tmp_path, "--executor", "slurm", "--cluster", "local")
    assert code == 0 and "2 skipped" in err, "nothing submitted when everything is done"


def test_slurm_task_requeues_with_resume() -> None:
    from bench.executors.slurm import SlurmTask
    from bench.runs import Context, Job

    task = SlurmTask(Context(data=Path("d"), results=Path("r"), suite="tiny"))
    job = Job("fake", "default", "dog", 0, "tiny")
    delayed = task.checkpoint(job)
    assert delayed.function.ctx.resume and delayed.args == (job,)


def test_local_executor_progress_and_summary(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path)
    assert code == 0 and "sweep" in err and err.strip().splitlines()[-1] == "1 done"
    record = records(tmp_path)["dog"]
    assert record["pid"] == os.getpid() and record["host"] and record["attempts"] == 1
    rows = [json.loads(x) for x in (Path(record["run_dir"]) / "loss_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(6))
    assert time.strptime(record["finished_at"][:19], "%Y-%m-%dT%H:%M:%S")
