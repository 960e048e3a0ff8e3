"""Watching training (`bench.tracking`): `--report-to tensorboard|wandb|mlflow`, `--sample-every`, read back with
each tool's own reader; a failing tracker and the sample grids change nothing of a run."""

from __future__ import annotations

import json
import random
import struct
import warnings
from pathlib import Path

import pytest

from tests.helpers import bench, include_fake

ECHO = ["--method", "echodistill", "--concepts", "dog", "--set", "iterations=4", "--set", "echo_iters=2",
        "--set", "echo_samples=2"]
VARIANT = "default+echo_iters=2+echo_samples=2+iterations=4"


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class Boom:
    """A tracker that raises on every call, starting with `start`."""

    def start(self, run) -> None:
        raise ConnectionError("tracker offline")


class Flaky:
    """A tracker that starts, then draws from every random generator and raises on every further call."""

    calls: list[str] = []

    def start(self, run) -> None:
        self._draw()

    def _draw(self) -> None:
        import numpy as np
        import torch

        random.random(), np.random.rand(), torch.randn(3)

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            Flaky.calls.append(name)
            self._draw()
            raise RuntimeError(f"quota exceeded in {name}")

        return fail


def _run_dir(results: Path) -> Path:
    return results / "tiny" / "echodistill" / VARIANT / "dog" / "seed0"


@pytest.fixture(scope="module")
def echo_runs(dreambench_root, tmp_path_factory):
    """The same tiny EchoDistill run twice: plain, and watched (TensorBoard if installed, a sample grid every 2
    iterations, and two failing trackers). Returns (plain run dir, watched run dir, tracker warnings)."""
    from bench import tracking

    root = tmp_path_factory.mktemp("tracking")
    caught: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        capsys = _Capture()
        code, _, err = bench(mp, capsys, "run", *ECHO, "--data", dreambench_root, "--results", root / "plain")
        assert code == 0, err
        mp.setitem(tracking.TRACKERS, "boom", ("tests.test_tracking:Boom", "boom"))
        mp.setitem(tracking.TRACKERS, "flaky", ("tests.test_tracking:Flaky", "flaky"))
        report = ["--report-to", "boom,flaky"] + (["--report-to", "tensorboard"] if _installed("tensorboard") else [])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            code, _, err = bench(mp, capsys, "run", *ECHO, "--data", dreambench_root, "--results", root / "watched",
                                 "--sample-every", "2", *report)
        assert code == 0, err
        caught = [str(w.message) for w in seen if w.category.__name__ == "TrackerWarning"]
    return _run_dir(root / "plain"), _run_dir(root / "watched"), caught


class _Capture:
    """`capsys` for a module-scoped fixture: `bench` only needs `readouterr`."""

    def readouterr(self):
        class Out:
            out = err = ""

        return Out()


def test_samples_and_failing_trackers_change_nothing(echo_runs) -> None:
    """Sample grids every 2 iterations and two trackers raising on every call (one drawing from every random
    generator first): same loss log, weights, images, scores and hashes as the plain run; one warning each."""
    plain, watched, caught = echo_runs
    a, b = (json.loads((d / "record.json").read_text()) for d in (plain, watched))
    assert a["status"] == b["status"] == "done"
    for key in ("config_hash", "training_hash", "config", "metrics", "images", "steps"):
        assert a[key] == b[key], key
    untimed = [{name: {k: v for k, v in view.items() if k != "timing"} for name, view in r["views"].items()}
               for r in (a, b)]
    assert untimed[0] == untimed[1] and set(untimed[0]) == {"teacher", "student_before_echo", "teacher_before_echo"}
    assert (plain / "loss_log.jsonl").read_text() == (watched / "loss_log.jsonl").read_text()
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file() and p.name != "record.json")
    assert files and all((watched / f).read_bytes() == (plain / f).read_bytes() for f in files)
    assert not (plain / "samples").exists()
    grids = sorted(p.name for p in (watched / "samples").glob("*.png"))
    assert grids == ["distill_000002.png", "distill_000004.png", "echo_000002.png"]
    assert len([w for w in caught if "boom" in w]) == 1 and "tracker offline" in caught[0]
    assert len([w for w in caught if "flaky" in w]) == 1 and Flaky.calls[:1] == ["scalars"]


def test_tensorboard_holds_every_logged_scalar_and_the_grids(echo_runs) -> None:
    """The event file, read with TensorBoard's own EventAccumulator: every scalar of the loss log, once per
    iteration, at the run's global step; the sample grids at their steps; the final scores."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, watched, _ = echo_runs
    results = watched.parents[4]
    events = EventAccumulator(str(results / "tensorboard" / watched.relative_to(results)),
                              size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = [json.loads(line) for line in (watched / "loss_log.jsonl").read_text().splitlines()]
    offsets = {"distill": 0, "echo": 4}
    names = {(r["phase"], k) for r in rows for k in r if k not in ("phase", "iteration")}
    assert ("distill", "loss_student") in names and ("echo", "loss_student") in names
    for phase, name in names:
        logged = [(offsets[phase] + r["iteration"] + 1, r[name]) for r in rows if r["phase"] == phase and name in r]
        got = [(e.step, e.value) for e in events.Scalars(f"{phase}/{name}")]
        assert [s for s, _ in got] == [s for s, _ in logged], (phase, name)
        assert [v for _, v in got] == pytest.approx([v for _, v in logged], rel=1e-6, abs=1e-6)
    assert len(events.Scalars("time/iteration_s")) == len(rows) == 6
    assert [e.step for e in events.Images("samples/distill")] == [2, 4]
    assert [e.step for e in events.Images("samples/echo")] == [6]
    record = json.loads((watched / "record.json").read_text())
    assert events.Scalars("metrics/clip_i")[-1].value == pytest.approx(record["metrics"]["clip_i"], rel=1e-6)
    assert events.Scalars("lr/lr_student")[0].value == pytest.approx(record["config"]["lr_student"])


def test_sample_grid_is_the_evaluation_prompts_and_noise(echo_runs) -> None:
    """The grid's cells are evaluation prompts with the evaluation's noise seeds, one row per prompt."""
    from PIL import Image

    _, watched, _ = echo_runs
    entries = [json.loads(line) for line in (watched / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [(e["phase"], e["iteration"], e["step"]) for e in entries] == [("distill", 2, 2), ("distill", 4, 4),
                                                                         ("echo", 2, 6)]
    cells = entries[0]["cells"]
    images = json.loads((watched / "record.json").read_text())["images"]
    by_pair = {(i["prompt_index"], i["eval_seed"]): (i["prompt"], i["noise_seed"]) for i in images}
    seeds = sorted({i["eval_seed"] for i in images})[:2]  # the grid's columns: the first two evaluation seeds
    assert len(cells) == 4 * len(seeds)
    assert all(by_pair[(c["prompt_index"], c["eval_seed"])] == (c["prompt"], c["noise_seed"]) for c in cells)
    with Image.open(watched / "samples" / "distill_000002.png") as grid:
        cell = Image.open(watched / "images" / "p00_s0.png").size
        assert grid.size == (len(seeds) * cell[0] + (len(seeds) - 1) * 2, 4 * cell[1] + 3 * 2)


@pytest.mark.parametrize("method", ["custom_diffusion", "lora"])
def test_a_baseline_offers_its_live_model(method, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """A baseline on the shared denoising loop offers the model it trains (LoRA: its adapter unfused): grids every
    2 iterations, and the run trains exactly as without them (same loss log, weights and scores)."""
    base = ["run", "--method", method, "--concepts", "dog", "--data", dreambench_root,
            "--set", "iterations=4"]
    for name, extra in (("plain", []), ("watched", ["--sample-every", "2"])):
        code, _, err = bench(monkeypatch, capsys, *base, "--results", tmp_path / name, *extra)
        assert code == 0, err
    plain, watched = (tmp_path / n / f"tiny/{method}/default+iterations=4/dog/seed0" for n in ("plain",
                                                                                                   "watched"))
    assert sorted(p.name for p in (watched / "samples").glob("*.png")) == ["train_000002.png", "train_000004.png"]
    assert (plain / "loss_log.jsonl").read_text() == (watched / "loss_log.jsonl").read_text()
    a, b = (json.loads((d / "record.json").read_text()) for d in (plain, watched))
    assert a["metrics"] == b["metrics"] and a["images"] == b["images"]
    weights = sorted(p.relative_to(plain) for p in (plain / "weights").rglob("*") if p.is_file())
    assert weights and all((plain / w).read_bytes() == (watched / w).read_bytes() for w in weights)


def _fake(monkeypatch) -> None:
    from bench import registry

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")


def _wandb_records(path: Path):
    """The records of a W&B transaction log (`run-<id>.wandb`: a ":W&B" header, then LevelDB-style framed
    blocks of 32 KiB), parsed with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_run_has_config_tags_and_metrics(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("wandb")
    _fake(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path / "r", "--report-to", "wandb")
    assert code == 0, err
    [log] = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    record = json.loads((tmp_path / "r/tiny/fake/default/dog/seed0/record.json").read_text())
    assert run.project == "onestep-bench" and run.run_group == "fake/default"
    assert list(run.tags) == ["fake", "default", "dog", "seed0", "tiny"]
    assert config["config"] == record["config"] and config["config_hash"] == record["config_hash"]
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "r/tiny/fake/default/dog/seed0/loss_log.jsonl")
              .read_text().splitlines()]
    assert [h["train/loss"] for h in history] == pytest.approx(losses) and len(losses) == 6
    assert [h["_step"] for h in history] == list(range(1, 7))
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert summary["status"] == "done" and summary["metrics/clip_i"] == pytest.approx(record["metrics"]["clip_i"])


def test_mlflow_file_store_has_params_tags_and_metrics(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("mlflow")
    _fake(monkeypatch)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,cat", "--data",
                         dreambench_root, "--results", tmp_path, "--report-to", "mlflow")
    assert code == 0, err
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("onestep-bench")
    runs = {r.data.tags["concept"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["cat", "dog"]
    run = runs["dog"]
    record = json.loads((tmp_path / "tiny/fake/default/dog/seed0/record.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny/fake/default/dog/seed0"
    assert {k: run.data.tags[k] for k in ("method", "variant", "seed", "profile", "group", "status")} == {
        "method": "fake", "variant": "default", "seed": "0", "profile": "tiny", "group": "fake/default",
        "status": "done"}
    assert run.data.params["config_hash"] == record["config_hash"]
    assert run.data.params["config.iterations"] == str(record["config"]["iterations"])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 7))
    assert run.data.metrics["metrics/clip_i"] == pytest.approx(record["metrics"]["clip_i"])
    assert "config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_tracking_reaches_worker_processes_and_changes_no_hash(dreambench_root, tmp_path, monkeypatch,
                                                                capsys) -> None:
    """`--executor gpus` (CPU workers here): the tracker options travel with the run request to each worker; the
    run's config hash is the one of an untracked run."""
    pytest.importorskip("tensorboard")
    include_fake(monkeypatch)  # workers find plug-ins through $BENCH_INCLUDE
    args = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root]
    code, _, err = bench(monkeypatch, capsys, *args, "--results", tmp_path / "a", "--report-to", "tensorboard",
                         "--executor", "gpus", "--workers", "1", "--device", "cpu")
    assert code == 0, err
    assert list((tmp_path / "a" / "tensorboard/tiny/fake/default/dog/seed0").glob("events.out.tfevents.*"))
    code, _, err = bench(monkeypatch, capsys, *args, "--results", tmp_path / "b")
    assert code == 0, err
    hashes = [json.loads((tmp_path / r / "tiny/fake/default/dog/seed0/record.json").read_text())["config_hash"]
              for r in ("a", "b")]
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("args, message", [
    (["run", "--method", "custom_diffusion", "--report-to", "neptune"],
     "unknown --report-to 'neptune'; valid: tensorboard, wandb, mlflow"),
    (["run", "--method", "custom_diffusion", "--sample-every", "-3"], "--sample-every must be an integer >= 0"),
    (["ablate", "--drop", "disc_clip", "--report-to", "tensorboard,comet"], "unknown --report-to 'comet'"),
])
def test_bad_tracking_options_are_one_line(args, message, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, *args, "--concepts", "dog", "--data", dreambench_root, "--results",
                         tmp_path)
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_missing_client_library_is_one_warning(monkeypatch) -> None:
    from bench import tracking
    from bench.tracking.fanout import Fanout, TrackerWarning

    monkeypatch.setitem(tracking.TRACKERS, "absent", ("bench_no_such_module:Tracker", "absent"))
    with pytest.warns(TrackerWarning, match=r"not installed .*onestep-bench\[absent\]"):
        fanout = Fanout.open(("absent",), tracking.RunInfo("m", "v", "c", 0, "tiny"))
    assert fanout.names == [] and list(fanout.failed) == ["absent"]
    fanout.call("scalars", {"x": 1.0}, 1)  # nothing left to call: no error, no second warning


def _text(renderable, width: int = 140) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_status_watch_renderable(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """`bench status --watch`'s table: done / running / failed / left per method from the disk, a running run's
    stage, iteration, loss and ETA from its progress file, and the sweep's ETA from `bench plan`'s costs."""
    from bench import store
    from bench.runs import SweepRequest, prepare, variants_for
    from bench.tracking import live
    from bench.tracking.live import ProgressFile, Snapshot, render, snapshot_plan, snapshot_results

    _fake(monkeypatch)
    monkeypatch.setattr(live, "WRITE_EVERY_S", 0.0)  # every step written (a run writes at most once a second)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,cat", "--data",
                         dreambench_root, "--results", tmp_path, "--set", "fail_on=cat")
    assert code == 3, err  # one run failed
    variants = variants_for(["fake"], ["default"], {"fail_on": "cat"})
    jobs, ctx = prepare(SweepRequest(methods=("fake",), variants=tuple(variants), concepts="dog,cat,teapot,backpack",
                                     data=dreambench_root, results=tmp_path), check_images=False)
    teapot = next(j for j in jobs if j.job.concept == "teapot")
    lock = store.RunLock(teapot.key.path(tmp_path))
    assert lock.acquire()
    try:
        partial = store.partial_dir(teapot.key.path(tmp_path))
        partial.mkdir(parents=True)
        progress = ProgressFile(partial)
        progress.begin("train", 10)
        for it in range(4):
            progress.step(it, {"loss": 0.5 / (it + 1), "grad_norm": 1.0})
        state = json.loads((partial / "progress.json").read_text())
        state.update(started=state["updated"] - 8.0)  # 4 iterations in 8 s: 12 s left for the other 6
        (partial / "progress.json").write_text(json.dumps(state))
        plan = snapshot_plan(jobs, ctx)
        found = snapshot_results(tmp_path)
    finally:
        lock.release()
    assert plan.counts == {"fake": {"done": 1, "failed": 1, "running": 1, "left": 1}}
    assert found.counts == {"fake": {"done": 1, "failed": 1, "running": 1}}
    [run] = plan.running
    assert (run.label, run.phase, run.iteration, run.total, run.loss) == (
        f"fake/{variants[0][0]}/teapot/seed0", "train", 4, 10, ("loss", 0.125))
    assert 10.0 <= run.eta_s <= 12.0
    text = _text(render(plan))
    assert "fake" in text and "train" in text and "4/10" in text and "loss 0.125" in text and "12 s" in text
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith("fake "))
    assert [c.strip() for c in row.strip("│ ").split("│")[1:]] == ["1", "1", "1", "1"]
    assert "sweep ETA: unknown (no timing source for fake" in text  # no perf record, no paper timing for it
    # a method the paper times: the sweep's ETA from `bench plan`'s costs, over the runs running at once
    echo, ectx = prepare(SweepRequest(methods=("echodistill",), variants=(("default", {}),), concepts="dog,cat",
                                      data=dreambench_root, results=tmp_path), check_images=False)
    snap = snapshot_plan(echo, ectx)
    assert snap.counts == {"echodistill": {"left": 2}} and snap.sweep.startswith("sweep ETA: ")
    assert "2 runs not done" in snap.sweep and "GPU-h by `bench plan`" in snap.sweep
    empty = _text(render(Snapshot({}, [], "sweep ETA: –", "r")))
    assert "(none)" in empty and "sweep ETA: –" in empty


def test_wandb_online_without_credentials_is_one_warning_not_a_prompt(tmp_path, monkeypatch) -> None:
    """W&B online with no key anywhere would stop the run to ask for one: it is a warning instead."""
    pytest.importorskip("wandb")
    from bench import tracking
    from bench.tracking.fanout import Fanout, TrackerWarning

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("machine example.org login u password p\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.warns(TrackerWarning, match="not logged in to W&B"):
        fanout = Fanout.open(("wandb",), tracking.RunInfo("m", "v", "c", 0, "tiny", results=tmp_path))
    assert fanout.names == [] and not (tmp_path / "wandb").exists()
