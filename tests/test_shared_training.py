"""Runs that differ only in how they sample (steps, guidance) share one training: `bench ablate --nfe 1,2,4`
trains the student once and samples it three times, on every executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import bench, mini_dreambench

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def train_calls(fake, monkeypatch) -> list[str]:
    """Every call of the fake method's `train`, by concept."""
    from tests.fake_method import FakeMethod

    calls: list[str] = []
    original = FakeMethod.train

    def counted(self, concept, *args, **kwargs):
        calls.append(concept.name)
        return original(self, concept, *args, **kwargs)

    monkeypatch.setattr(FakeMethod, "train", counted)
    return calls


def record(results: Path, variant: str, method: str = "fake", concept: str = "dog") -> dict:
    return json.loads((results / "tiny" / method / variant / concept / "seed0" / "record.json").read_text())


def test_training_hash_ignores_only_sampling_fields() -> None:
    from bench.runs import Context, Job, plan_runs

    ctx = Context(data=Path("d"), results=Path("r"), suite="tiny")

    def training_key(job: Job, ctx: Context) -> str:
        return plan_runs([job], ctx)[0].training_key

    def key(method: str, variant: str, overrides: dict | None = None) -> str:
        return training_key(Job(method, variant, "dog", 0, "tiny", overrides=json.dumps(overrides or {})), ctx)

    assert key("echodistill", "nfe1", {"eval_steps": 1}) == key("echodistill", "nfe2", {"eval_steps": 2}) \
        == key("echodistill", "default")
    assert key("echodistill", "drop_disc_clip", {"drop": ["disc_clip"]}) != key("echodistill", "default")
    assert key("custom_diffusion", "train1-infer4") == key("custom_diffusion", "train1-infer25") \
        == key("custom_diffusion", "default")
    assert key("custom_diffusion", "train4-infer1") != key("custom_diffusion", "default")
    assert key("custom_diffusion", "default") != key("echodistill", "default")
    assert training_key(Job("echodistill", "default", "cat", 0, "tiny"), ctx) != key("echodistill", "default")
    assert training_key(Job("echodistill", "default", "dog", 1, "tiny"), ctx) != key("echodistill", "default")


def test_sampling_variants_train_once(train_calls, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    code, _, err = bench(monkeypatch, capsys, *common, "--variant", "default,steps2,steps4")
    assert code == 0 and "3 done" in err, err
    assert train_calls == ["dog"], "trained once, sampled three times"
    base, two, four = (record(tmp_path, v) for v in ("default", "steps2", "steps4"))
    assert base["trained_from"] is None and base["training_hash"] == two["training_hash"] == four["training_hash"]
    assert len({base["config_hash"], two["config_hash"], four["config_hash"]}) == 3
    for rec in (two, four):
        assert rec["trained_from"] == {"run": "tiny/fake/default/dog/seed0", "variant": "default",
                                       "config_hash": base["config_hash"]}
        assert rec["timing"]["reused_training"] and rec["timing"]["train_s"] == base["timing"]["train_s"]
    assert (base["steps"], two["steps"], four["steps"]) == (1, 2, 4)
    assert base["metrics"] != two["metrics"], "sampled with other steps, scored again"
    run = tmp_path / "tiny" / "fake"
    weights = [run / v / "dog" / "seed0" / "weights" / "fake.safetensors" for v in ("default", "steps2")]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    logs = [(run / v / "dog/seed0/loss_log.jsonl").read_text() for v in ("default", "steps2")]
    assert logs[0] == logs[1]
    image = "images/p00_s0.png"
    assert (run / "steps2/dog/seed0" / image).read_bytes() != (run / "default/dog/seed0" / image).read_bytes()

    # a shared-training run is a run like any other: `bench generate` loads it, a re-run skips it
    code, _, err = bench(monkeypatch, capsys, *common, "--variant", "steps2")
    assert code == 0 and "1 skipped" in err and train_calls == ["dog"]
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run / "steps2/dog/seed0", "--prompt",
                         "a <fake> dog", "--out", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").is_file(), err


def test_reuse_finds_an_earlier_sweep_and_force_retrains(train_calls, dreambench_root, tmp_path, monkeypatch,
                                                         capsys) -> None:
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, *common)[0] == 0
    assert bench(monkeypatch, capsys, *common, "--variant", "steps4")[0] == 0
    assert train_calls == ["dog"] and record(tmp_path, "steps4")["trained_from"]["variant"] == "default"
    # another training setting never reuses
    assert bench(monkeypatch, capsys, *common, "--variant", "steps4", "--set", "iterations=3")[0] == 0
    assert train_calls == ["dog", "dog"] and record(tmp_path, "steps4+iterations=3")["trained_from"] is None
    # --force recomputes everything, training included
    assert bench(monkeypatch, capsys, *common, "--variant", "steps4", "--force")[0] == 0
    assert train_calls == ["dog"] * 3 and record(tmp_path, "steps4")["trained_from"] is None


def test_a_failed_training_is_never_reused(train_calls, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path,
              "--set", "fail_on=dog"]
    code, _, err = bench(monkeypatch, capsys, *common, "--variant", "default,steps2")
    assert code == 3 and "2 failed" in err, err  # EXIT_RUNS_FAILED
    assert train_calls == ["dog", "dog"]


def test_gpus_executor_trains_shared_runs_once(fake, dreambench_root, tmp_path) -> None:
    """Two workers, two variants of one training: the second waits for the first and samples its weights."""
    cmd = [sys.executable, "-m", "tests.fake_bench", "run", "--method", "fake", "--concepts", "dog",
           "--variant", "default,steps2", "--set", "sleep=0.2", "--data", str(dreambench_root), "--results",
           str(tmp_path), "--executor", "gpus", "--workers", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "2 done" in proc.stderr, proc.stderr
    found = [record(tmp_path, v) for v in ("default+sleep=0.2", "steps2+sleep=0.2")]
    assert sorted(r["trained_from"] is None for r in found) == [False, True], "exactly one of them trained"


def test_slurm_submits_shared_runs_after_their_training(fake, fake_slurm, dreambench_root, tmp_path, monkeypatch,
                                                         capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,teapot", "--variant",
                         "default,steps2", "--data", dreambench_root, "--results", tmp_path / "r", "--executor",
                         "slurm", "--no-wait", "--gpus-per-job", "0")
    assert code == 0 and "4 submitted" in err, err
    scripts = [(fake_slurm / f"submission-{n}.sh").read_text() for n in range(4242, 4246)]
    assert not any("--dependency" in s for s in scripts[:2]), "the two trainings go first, unconditionally"
    assert "#SBATCH --dependency=afterany:4242" in scripts[2].splitlines()
    assert "#SBATCH --dependency=afterany:4243" in scripts[3].splitlines()


def test_echodistill_nfe_samples_one_student(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """`bench ablate --nfe 1,2`: one EchoDistill training; the 2-step run re-samples the student and its
    before-echo view with 2 steps and takes the teacher's view over unchanged."""
    from echodistill.trainer import EchoDistill

    calls: list[int] = []
    original = EchoDistill.train
    monkeypatch.setattr(EchoDistill, "train", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    code, _, err = bench(monkeypatch, capsys, "ablate", "--nfe", "1,2", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path, "--set", "iterations=1", "--set", "echo_iters=1",
                         "--set", "echo_samples=2")
    assert code == 0 and "2 done" in err, err
    assert calls == [1]
    suffix = "+echo_iters=1+echo_samples=2+iterations=1"
    one, two = (record(tmp_path, f"nfe{n}{suffix}", "echodistill") for n in (1, 2))
    assert two["trained_from"]["variant"] == f"nfe1{suffix}" and (one["steps"], two["steps"]) == (1, 2)
    assert two["views"]["teacher"] == one["views"]["teacher"], "the teacher is sampled as before: taken over"
    assert two["views"]["student_before_echo"]["steps"] == 2 and one["views"]["student_before_echo"]["steps"] == 1
    teacher = "views/teacher/p00_s0.png"
    root = tmp_path / "tiny" / "echodistill"
    assert (root / f"nfe2{suffix}/dog/seed0" / teacher).read_bytes() == \
        (root / f"nfe1{suffix}/dog/seed0" / teacher).read_bytes()


def test_views_are_sampled_again_under_another_metric_suite(dreambench_root, tmp_path, monkeypatch) -> None:
    """Shared training never shares scores across evaluations: a donor scored with another suite (or another
    evaluation version, or sampled with another precision) has its views sampled and scored again."""
    import dataclasses

    from bench import runs, store
    from bench.config import SAMPLING_ONLY, SAMPLING_STEPS
    from bench.runs import execution

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = dataclasses.field(default=1, metadata=SAMPLING_STEPS)
        sample_dtype: str = dataclasses.field(default="auto", metadata=SAMPLING_ONLY)

    calls: list[str] = []
    monkeypatch.setattr(execution, "evaluate", lambda trained, concept, seeds, image_dir, ctx, device: calls.append(
        image_dir.name) or {"steps": trained.default_steps, "metrics": {}, "timing": {}})

    class View:
        default_steps = 1

    class Trained:
        identifier, default_steps, views = "<x>", 1, {"teacher": View()}

    class Method:
        def load(self, weights_dir, models):
            return Trained()

    donor = tmp_path / "tiny" / "m" / "default" / "dog" / "seed0"
    (donor / "weights").mkdir(parents=True)
    (donor / "views" / "teacher").mkdir(parents=True)
    from bench.metrics import get_suite
    from bench.models.profiles import get_profile

    profile = get_profile("tiny")
    ctx = runs.Context(data=dreambench_root, results=tmp_path, suite="tiny")
    record = {"status": "done", "eval_version": runs.EVAL_VERSION, "views": {"teacher": {"steps": 1}},
              "config": {"steps": 4, "sample_dtype": "auto"},  # another step count of the main model: shared
              "metric_suite": json.loads(json.dumps(get_suite("tiny").describe(), default=str)),
              "models": json.loads(json.dumps(profile.describe(), default=str))}
    store.write_json_atomic(donor / "record.json", record)

    class Models:
        device, load_seconds, speed = "cpu", 0.0, __import__("bench.models.speed", fromlist=["Speed"]).Speed()

    job = runs.Job("m", "other", "dog", 0, "tiny")

    def planned(config: Config) -> runs.PlannedRun:
        return runs.PlannedRun(job=job, config=json.dumps(dataclasses.asdict(config)), config_hash="c",
                               training_hash="t", run_dir=tmp_path / "other", profile=profile, suite="tiny",
                               version=1, trains=True, _method=Method, _config=config)

    out = tmp_path / "out"
    out.mkdir()
    execution._sample_trained(planned(Config()), ctx, None, Method(), Models(), out, donor)
    assert calls == ["images"], "same evaluation: the teacher view is taken over"
    calls.clear()
    execution._sample_trained(planned(Config(sample_dtype="none")), ctx, None, Method(), Models(), tmp_path / "o1",
                              donor)
    assert calls == ["images", "teacher"], "another sampling precision: the view is sampled and scored again"
    record["metric_suite"] = {"name": "dreambooth"}
    store.write_json_atomic(donor / "record.json", record)
    calls.clear()
    execution._sample_trained(planned(Config()), ctx, None, Method(), Models(), tmp_path / "out2", donor)
    assert calls == ["images", "teacher"], "another suite: the view is sampled and scored again"




@pytest.mark.parametrize("edit, says", [
    ({"method_version": 0}, "re-run: method version 0 -> 1"),
    ({"eval_version": 1}, "re-sample: evaluation version 1 -> "),
    ({"metric_suite": {"name": "paper"}}, "re-score: metric suite paper v1 -> tiny v2"),
])
def test_status_says_how_an_outdated_record_is_brought_up_to_date(edit, says, fake, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    data = mini_dreambench(tmp_path / "data")
    common = ["--method", "fake", "--concepts", "dog", "--data", data, "--results", tmp_path / "results"]
    code, _, err = bench(monkeypatch, capsys, "run", *common)
    assert code == 0, err
    path = tmp_path / "results" / "tiny" / "fake" / "default" / "dog" / "seed0" / "record.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, **edit, "config_hash": "0" * 16}))  # as if recorded by an older harness
    code, out, _ = bench(monkeypatch, capsys, "status", *common)
    assert code == 0 and "outdated" in out and says in out, out


def test_a_user_concept_is_keyed_by_its_content(fake, tmp_path, monkeypatch, capsys) -> None:
    """A `--concept-dir` folder named `dog` is not DreamBench's dog, and another class noun or other photos make
    another run (never `skipped` as done)."""
    import numpy as np
    from PIL import Image

    data = mini_dreambench(tmp_path / "data")
    folder = tmp_path / "dog"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 30 * i + 100, dtype=np.uint8)).save(folder / f"{i}.png")
    results = tmp_path / "results"
    common = ["run", "--method", "fake", "--data", data, "--results", results]
    assert bench(monkeypatch, capsys, *common, "--concepts", "dog")[0] == 0  # DreamBench's dog

    def run_folder(noun: str) -> str:
        code, _, err = bench(monkeypatch, capsys, *common, "--concept-dir", folder, "--class-noun", noun)
        assert code == 0, err
        return err

    assert "1 done" in run_folder("dog"), "a folder named dog is not DreamBench's dog"
    assert "1 skipped" in run_folder("dog"), "the same photos, noun and prompts: done already"
    assert "1 done" in run_folder("cat"), "another class noun is another concept"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(folder / "1.png")
    assert "1 done" in run_folder("dog"), "other photos are another concept"
    names = sorted(p.name for p in (results / "tiny" / "fake" / "default").iterdir())
    assert len(names) == 4 and "dog" in names and all(n.startswith("dog@") for n in names if n != "dog")


def test_a_damaged_record_is_listed_as_corrupt_and_counted_missing(fake, tmp_path, monkeypatch, capsys) -> None:
    """A truncated record.json used to vanish: no status line, and the table showed the remaining runs as all."""
    data = mini_dreambench(tmp_path / "data")
    results = tmp_path / "results"
    common = ["--method", "fake", "--concepts", "dog", "--data", data, "--results", results]
    assert bench(monkeypatch, capsys, "run", *common, "--seeds", "0,1")[0] == 0
    path = results / "tiny" / "fake" / "default" / "dog" / "seed1" / "record.json"
    path.write_text(path.read_text()[:40])  # truncated mid-write by hand
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", results)
    assert code == 0 and "corrupt     tiny/fake/default/dog/seed1" in out and "JSONDecodeError" in out, out
    assert "1 corrupt" in out and "1 done" in out
    code, out, _ = bench(monkeypatch, capsys, "status", *common, "--seeds", "0,1")
    assert code == 0 and "corrupt" in out and str(path) in out, out
    from bench.tables import cell_stats, load_records

    records = load_records(results, "tiny")  # what every table reads: the corrupt run comes back as a stub
    assert [r.status for r in records if r.seed == 1] == ["corrupt"]
    stats = cell_stats([r for r in records if r.method == "fake"], "metrics", ["dog"], [0, 1])
    assert (stats.done, stats.expected, stats.missing) == (1, 2, 1)
    assert any("corrupt record" in a for a in stats.absent)


def test_a_failed_forced_rerun_shows_in_status_and_retries_count_attempts(fake, tmp_path, monkeypatch,
                                                                        capsys) -> None:
    from tests.fake_method import FakeMethod

    data = mini_dreambench(tmp_path / "data")
    results = tmp_path / "results"
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", data, "--results", results]
    assert bench(monkeypatch, capsys, *common)[0] == 0
    original = FakeMethod.train

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FakeMethod, "train", broken)
    assert bench(monkeypatch, capsys, *common, "--force")[0] == 3
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", results)
    assert "done" in out and "a forced re-run failed" in out and "disk on fire" in out and ".failed.json" in out, out

    failing = ["run", "--method", "fake", "--concepts", "dog", "--data", data, "--results", results, "--set",
               "iterations=3"]
    assert bench(monkeypatch, capsys, *failing)[0] == 3
    assert bench(monkeypatch, capsys, *failing, "--retry-failed")[0] == 3
    record = json.loads(next((results / "tiny" / "fake").glob("default+*/dog/seed0/record.json")).read_text())
    assert record["status"] == "failed" and record["attempts"] == 2
    monkeypatch.setattr(FakeMethod, "train", original)
    assert bench(monkeypatch, capsys, *failing, "--retry-failed")[0] == 0
    record = json.loads(next((results / "tiny" / "fake").glob("default+*/dog/seed0/record.json")).read_text())
    assert record["status"] == "done" and record["attempts"] == 3
