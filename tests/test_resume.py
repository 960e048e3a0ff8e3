"""Kills at any moment and resumes: checkpoints restore training bit-exactly, killed sweeps redo only unfinished
runs, and nothing is ever left half-written or duplicated."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import store
from bench.models.checkpoint import Checkpointer, find_checkpoints
from tests.helpers import Killed, ListLog, assert_same_run, bench, kill_at, tensors_of

REPO = Path(__file__).resolve().parents[1]


# --- the checkpoint helper -------------------------------------------------------------------------------------


def _toy_training(ckpt: Checkpointer | None, stop: int | None = None, total: int = 7):
    """A tiny training loop drawing from every RNG kind; returns (parameters, losses)."""
    import random as pyrandom

    torch.manual_seed(0), np.random.seed(3), pyrandom.seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    gen = torch.Generator().manual_seed(1)
    stream = pyrandom.Random(2)
    state = dict(tensors={"params": list(model.parameters())}, stateful={"opt": opt, "sched": sched},
                 generators={"g": gen}, randoms={"stream": stream})
    start = ckpt.restore(**state) if ckpt else 0
    losses = []
    for it in range(start, total):
        x = torch.randn(16, 4, generator=gen) + stream.random() + float(np.random.rand()) + pyrandom.random()
        loss = model(x).pow(2).mean()  # dropout draws from the global torch RNG
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if ckpt:
            ckpt.maybe_save(it + 1, **state)
        if stop is not None and it + 1 == stop:
            break
    return [p.detach().clone() for p in model.parameters()], losses


def test_checkpointer_restores_training_bit_exactly(tmp_path) -> None:
    reference, ref_losses = _toy_training(None)
    folder = tmp_path / "train"
    first, losses_a = _toy_training(Checkpointer(folder, every=2, total=7), stop=5)  # killed after 5, ckpt at 4
    assert find_checkpoints(tmp_path) == {"train": 4}
    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # disturb every global RNG between the attempts
    resumed, losses_b = _toy_training(Checkpointer(folder, every=2, total=7))
    assert losses_a[:4] + losses_b == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))
    assert find_checkpoints(tmp_path) == {"train": 7}, "a finished phase saves at `total`"
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert files == {"tensors.safetensors", "state.json"}, "never pickle"


def test_checkpointer_survives_torn_and_damaged_checkpoints(tmp_path) -> None:
    ckpt = Checkpointer(tmp_path, every=1, keep=2)
    w = torch.zeros(3)
    for it in (1, 2):
        w += 1
        ckpt.maybe_save(it, tensors={"w": w})
    (tmp_path / ".tmp-step-00000003-1-abc").mkdir()  # killed while writing the next one
    (tmp_path / "step-00000002" / "tensors.safetensors").write_bytes(b"torn")  # damaged newest
    w2 = torch.zeros(3)
    assert Checkpointer(tmp_path, every=1).restore(tensors={"w": w2}) == 1, "falls back to the older one"
    assert torch.equal(w2, torch.ones(3)) and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="does not match"):
        Checkpointer(tmp_path, every=1).restore(tensors={"other": w2})
    assert Checkpointer(tmp_path / "none", every=0).restore(tensors={"w": w2}) == 0
    assert not Checkpointer(tmp_path / "off", every=0).maybe_save(5, tensors={"w": w2})


def _embedding_training(ckpt: Checkpointer | None, stop: int | None = None, total: int = 6, row: int = 7,
                        mask_grad: bool = True):
    """A 50-row table of which only `row` trains (its gradient masked, as a new token's is); (parameters, losses)."""
    torch.manual_seed(0)
    table, head = torch.nn.Embedding(50, 4), torch.nn.Linear(4, 2)
    if mask_grad:
        mask = torch.zeros(50, 1)
        mask[row] = 1.0
        table.weight.register_hook(lambda grad: grad * mask)
    opt = torch.optim.AdamW([{"params": list(head.parameters())}, {"params": [table.weight], "weight_decay": 0.0}],
                            lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    state = dict(tensors={"head": list(head.parameters()), "table": table.weight}, stateful={"opt": opt},
                 generators={"g": gen})
    start = ckpt.restore(**state) if ckpt else 0
    losses = []
    for it in range(start, total):
        ids = torch.randint(0, 50, (8,), generator=gen)
        ids[0] = row
        loss = head(table(ids)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if ckpt:
            ckpt.maybe_save(it + 1, **state)
        if stop is not None and it + 1 == stop:
            break
    return [t.detach().clone() for t in [*head.parameters(), table.weight]], losses


def test_checkpointer_saves_only_the_trained_rows(tmp_path) -> None:
    """`rows=`: the table's trained row and that row of its AdamW moments are saved, and resume stays bit-exact."""
    from safetensors.torch import load_file

    reference, ref_losses = _embedding_training(None)
    folder = tmp_path / "train"
    _, losses_a = _embedding_training(Checkpointer(folder, every=2, total=6, rows={"table": [7]}), stop=5)
    shapes = {k: tuple(v.shape) for k, v in load_file(folder / "step-00000004" / "tensors.safetensors").items()}
    assert shapes["t/table"] == (1, 4) and (50, 4) not in shapes.values()
    assert sorted(k for k, s in shapes.items() if s == (1, 4)) == [
        "s/opt.state.2.exp_avg", "s/opt.state.2.exp_avg_sq", "t/table"], "the row and its two moments"
    resumed, losses_b = _embedding_training(Checkpointer(folder, every=2, total=6, rows={"table": [7]}))
    assert losses_a[:4] + losses_b == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))
    with pytest.raises(ValueError, match="non-zero outside rows"):  # every row trains: saving one would lose state
        _embedding_training(Checkpointer(tmp_path / "unmasked", every=1, rows={"table": [7]}), mask_grad=False)
    with pytest.raises(ValueError, match="not one of the tensors"):
        _embedding_training(Checkpointer(tmp_path / "typo", every=1, rows={"tabel": [7]}))


def test_checkpoint_every_does_not_change_the_config_hash() -> None:
    from bench.registry import get_method
    from bench.runs import Job, hashed_config, resolve_config

    cls = get_method("custom_diffusion")
    a = resolve_config(cls, Job("custom_diffusion", "default", "dog", 0, "tiny"), None)
    b = resolve_config(cls, Job("custom_diffusion", "default", "dog", 0, "tiny", overrides='{"checkpoint_every": 7}'),
                       None)
    assert a.checkpoint_every != b.checkpoint_every and hashed_config(a) == hashed_config(b)


def test_tiny_checkpoints_mid_run() -> None:
    """The tiny profile caps `checkpoint_every` below its iteration cap, so tiny runs exercise resume too."""
    from bench.models.profiles import get_profile
    from bench.registry import get_method
    from bench.runs import Job, resolve_config

    cap = get_profile("tiny").iteration_cap

    def every(overrides: str = "{}", iteration_cap: int | None = cap) -> int:
        job = Job("custom_diffusion", "default", "dog", 0, "tiny", overrides=overrides)
        return resolve_config(get_method("custom_diffusion"), job, iteration_cap).checkpoint_every

    assert 0 < every() < cap, f"tiny never checkpoints mid-run: checkpoint_every {every()} >= {cap} iterations"
    assert every(iteration_cap=None) == 100, "paper scale keeps the default"
    assert every('{"checkpoint_every": 2}') == 2 and every('{"checkpoint_every": 0}') == 0, "0 stays off"


# --- resume through the CLI -------------------------------------------------------------------------------------

CD_RESUME = ["--set", "iterations=6", "--set", "checkpoint_every=2"]


def assert_token_row_checkpoint(step: Path) -> None:
    """A Custom Diffusion checkpoint holds the token's embedding row and its AdamW moments, not the whole table."""
    from safetensors import safe_open

    with safe_open(step / "tensors.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    row = shapes["t/token_embedding"]
    assert len(row) == 2 and row[0] == 1, row
    moments = sorted(k.rsplit(".", 1)[1] for k, s in shapes.items() if s == row and k.startswith("s/optimizer."))
    assert moments == ["exp_avg", "exp_avg_sq"], shapes
    spec = json.loads((step / "state.json").read_text())["rows"]["t/token_embedding"]
    assert spec["shape"][0] > 1000 and spec["shape"][1] == row[1] and len(spec["rows"]) == 1
    assert not any(s[:1] == (spec["shape"][0],) for s in shapes.values()), "no tensor of the table's 49,409 rows"
    assert (step / "tensors.safetensors").stat().st_size < 1 << 20, "tiny: the whole table was ~19 MiB"


@pytest.mark.parametrize("overrides, kill, saved", [
    (CD_RESUME, 4, 4),
    ([], 7, 5),  # the default config on tiny: 10 iterations (the cap), a checkpoint at 5 (the cap halved)
], ids=["checkpoint_every=2", "default"])
def test_custom_diffusion_resumes_bit_identically(overrides, kill, saved, dreambench_root, tmp_path, monkeypatch,
                                                  capsys) -> None:
    """Kill a CD run after a mid-run checkpoint; `--resume` gives the uninterrupted run's bits."""
    common = ["run", "--method", "custom_diffusion", "--concepts", "dog", "--data", dreambench_root, *overrides]
    code, _, err = bench(monkeypatch, capsys, *common, "--results", tmp_path / "a")
    assert code == 0, err
    with monkeypatch.context() as m:
        kill_at(m, kill)
        with pytest.raises(Killed):
            bench(m, capsys, *common, "--results", tmp_path / "b")
    variant = "default+checkpoint_every=2+iterations=6" if overrides else "default"
    run_b = tmp_path / "b" / "tiny" / "custom_diffusion" / variant / "dog" / "seed0"
    assert not run_b.exists() and not run_b.with_name("seed0.lock").exists(), "no record, lock released"
    work = run_b.with_name("seed0.partial") / "work"
    assert find_checkpoints(work) == {"train": saved}
    assert_token_row_checkpoint(work / "train" / f"step-{saved:08d}")
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path / "b")
    assert code == 0 and "interrupted" in out and f"iteration {saved}" in out
    code, _, err = bench(monkeypatch, capsys, *common, "--results", tmp_path / "b", "--resume")
    assert code == 0 and "1 done" in err, err
    record = store.read_record(run_b)
    assert record["attempts"] == 2 and record["resumed_from"] == {"train": saved} and record["timing"]["resumed"]
    assert_same_run(tmp_path / "a" / "tiny" / "custom_diffusion" / variant / "dog" / "seed0", run_b)
    assert sorted(p.name for p in run_b.parent.iterdir()) == ["seed0"]
    assert not (run_b / "work").exists() and not (run_b / "attempt.json").exists()


def test_without_resume_an_interrupted_run_starts_over(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    with monkeypatch.context() as m:
        kill_at(m, 3)
        with pytest.raises(Killed):
            bench(m, capsys, *common)
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "1 done" in err
    record = store.read_record(tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0")
    assert record["attempts"] == 1 and record["resumed_from"] is None


def _fake_cmd(results: Path, data: Path, concepts: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.fake_bench", "run", "--method", "fake", "--concepts", concepts,
            "--data", str(data), "--results", str(results), *extra]


def _expected_fake_weight(dreambench_root: Path, concept: str, tmp_path: Path, **config) -> torch.Tensor:
    """The fake method's weights from an uninterrupted training with no checkpoints at all."""
    from bench.data import select_concepts
    from tests.fake_method import FakeConfig, FakeMethod

    cfg = FakeConfig(**{**config, "checkpoint_every": 0, "sleep": 0.0})
    trained = FakeMethod(cfg).train(select_concepts(dreambench_root, concept)[0], None, tmp_path / "x", 0, ListLog())
    return trained.weight


def test_sigkill_mid_training_then_resume(dreambench_root, tmp_path) -> None:
    """A real SIGKILL after the checkpoint at 4 of 8; `--resume` continues from it to the same weights."""
    extra = ["--set", "iterations=8", "--set", "sleep=0.4"]
    proc = subprocess.Popen(_fake_cmd(tmp_path, dreambench_root, "dog", *extra), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "tiny" / "fake" / "default+iterations=8+sleep=0.4" / "dog" / "seed0"
    deadline = time.time() + 120
    while not find_checkpoints(run.with_name("seed0.partial") / "work").get("train", 0) >= 4:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint at 4"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run.with_name("seed0.lock").exists(), "a SIGKILLed owner leaves its lock behind"
    done = subprocess.run(_fake_cmd(tmp_path, dreambench_root, "dog", *extra, "--resume"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 done" in done.stderr, done.stderr
    record = store.read_record(run)
    assert record["resumed_from"]["train"] >= 4 and record["attempts"] == 2
    assert torch.equal(tensors_of(run)["fake.safetensors:weight"],
                       _expected_fake_weight(dreambench_root, "dog", tmp_path, iterations=8))
    rows = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(8)), "one row per iteration after the resume"
    assert sorted(p.name for p in run.parent.iterdir()) == ["seed0"]


# --- killed sweeps -------------------------------------------------------------------------------------------------


def assert_complete_exactly_once(results: Path, method: str, variant: str, concepts: list[str]) -> None:
    """One complete, parseable, done record per run; nothing staged, locked, old or temporary left anywhere."""
    base = results / "tiny" / method / variant
    for concept in concepts:
        assert sorted(p.name for p in (base / concept).iterdir()) == ["seed0"], concept
        record = json.loads((base / concept / "seed0" / "record.json").read_text())
        assert record["status"] == "done" and record["concept"] == concept
    records = list(store.iter_records(results))
    assert len(records) == len(concepts)
    all_files = list(results.rglob("*"))
    leftovers = [p for p in all_files if p.name.endswith((".partial", ".lock", ".tmp", ".takeover", ".failed.json"))
                 or ".old-" in p.name or p.name in ("work", "attempt.json")]
    assert not leftovers, leftovers
    assert len([p for p in all_files if p.name == "record.json"]) == len(concepts)


def kill_and_rerun(cmd: list[str], results: Path, n_runs: int, rng: random.Random, cwd: Path = REPO
                   ) -> subprocess.CompletedProcess:
    """Start the sweep, SIGKILL it (and its children) at a random moment, then run it again to the end.

    The moment: after a random number k < n_runs of runs have been recorded, a random fraction (< 0.8) of the time
    the k-th run took (k = 0: a random 1-8 s, i.e. while importing, loading or in the first run). So kills land in
    every phase (loading, training, checkpointing, sampling, scoring, committing) whatever the machine's speed.
    """
    after, fraction = rng.randrange(n_runs), 0.8 * rng.random()  # < 1: the next run is still going
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    began: dict[str, float] = {}  # run folder -> when its `.partial` (its start) was first seen
    seen = 0
    deadline = start + (1 + 9 * fraction if after == 0 else 1e9)  # 1-8 s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before its kill (after {after} runs + {fraction:.2f} of a run)")
        now = time.time()
        try:
            partials = list(results.rglob("seed*.partial"))
            done = len(list(results.rglob("record.json")))
        except OSError:  # a folder renamed under the walk: look again
            continue
        for partial in partials:
            began.setdefault(str(partial.parent), now)
        if after > 0 and seen < after <= done:  # the after-th run was just recorded: arm the kill once
            starts = sorted(began.values())
            run_time = now - (starts[after - 1] if len(starts) >= after else start)  # how long that run took
            deadline = now + fraction * run_time
        seen = done
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


FAKE_CONCEPTS = ["backpack", "can", "dog", "teapot"]


def test_killed_sweep_redoes_only_unfinished_runs(dreambench_root, tmp_path) -> None:
    """One seeded random SIGKILL of a 4-run sweep, then `--resume`: every run complete exactly once, same bits."""
    extra = ["--set", "sleep=0.2", "--resume"]
    cmd = _fake_cmd(tmp_path, dreambench_root, ",".join(FAKE_CONCEPTS), *extra)
    done = kill_and_rerun(cmd, tmp_path, len(FAKE_CONCEPTS), random.Random(3))
    assert done.returncode == 0, done.stderr
    assert_complete_exactly_once(tmp_path, "fake", "default+sleep=0.2", FAKE_CONCEPTS)
    for concept in FAKE_CONCEPTS:
        run = tmp_path / "tiny" / "fake" / "default+sleep=0.2" / concept / "seed0"
        assert torch.equal(tensors_of(run)["fake.safetensors:weight"],
                           _expected_fake_weight(dreambench_root, concept, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_killed_custom_diffusion_sweep_random_trials(trial, dreambench_root, tmp_path) -> None:
    """Real Custom Diffusion, 3 concepts, SIGKILL at a seeded random moment (loading, training, sampling, scoring
    or committing), then the same command again: every run complete exactly once."""
    concepts = ["can", "dog", "teapot"]
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "custom_diffusion", "--concepts", ",".join(concepts),
           "--data", str(dreambench_root), "--results", str(tmp_path), "--set", "iterations=4",
           "--set", "checkpoint_every=2", *(["--resume"] if trial % 2 == 0 else [])]
    done = kill_and_rerun(cmd, tmp_path, len(concepts), random.Random(1000 + trial))
    assert done.returncode == 0, done.stderr
    assert_complete_exactly_once(tmp_path, "custom_diffusion", "default+checkpoint_every=2+iterations=4", concepts)


def test_rerun_tidies_leftovers_beside_finished_runs(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """A SIGKILL between the commit and the lock's release, or inside a forced re-run's swap, leaves a dead owner's
    lock and an `.old-*` copy beside a finished run: the next sweep skips the run and removes both."""
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, *common)[0] == 0
    run = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.with_name("seed0.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    (run.with_name("seed0.old-123") / "images").mkdir(parents=True)
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "1 skipped" in err
    assert sorted(p.name for p in run.parent.iterdir()) == ["seed0"]


def test_status_shows_a_running_run(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    run = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0"
    lock = store.RunLock(run)
    assert lock.acquire()
    try:
        code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path)
        assert code == 0 and f"running     tiny/fake/default/dog/seed0: host {os.uname().nodename}, pid " \
                             f"{os.getpid()}" in out and out.strip().endswith("1 running")
        code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path, "--method", "fake",
                             "--concepts", "dog,can", "--data", dreambench_root)
        assert code == 0 and "running     tiny/fake/default/dog/seed0" in out and "1 missing, 1 running" in out
        code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                             dreambench_root, "--results", tmp_path)
        assert code == 0 and "1 locked" in err and "another process" in err
    finally:
        lock.release()
