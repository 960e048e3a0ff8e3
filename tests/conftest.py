"""Shared fixtures: the DreamBench copy (or the committed mini copy), a per-session model cache, a fake SLURM.

Test tiers (markers declared in pyproject.toml):
- fast (the default, `make test`, `pytest -q`): CPU only, offline, seconds per test. It never skips for want of
  data: `dreambench_root` is the DreamBench copy at $BENCH_DATA or ../shared/dreambench when one is there, else
  the committed five-concept fixture `tests/fixtures/dreambench-mini` (backpack, can, cat, dog, teapot: DreamBench's
  layout and prompt lists, small drawn photos). Every fast test uses only those five concepts, so both give the
  same verdicts; a test that reads the real photos' pixels or counts the real dataset belongs to the slow tier.
- slow (`make test-slow`, `pytest -m slow`): minutes on a CPU: learning checks and full sweeps. Tests that need
  the real 30-concept DreamBench take `real_dreambench_root`, which skips (with the reason) when it is absent.
- gpu (`pytest -m gpu`): needs CUDA; skips without it (tests/test_gpu.py: a few bf16 iterations on paper-random).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# CPU threads per test process (and per `bench` process a test starts), by the harness's own rule
# (`bench.threads`): the tests run the tiny profile, whose models are fastest on 1 thread; torch's default of one
# thread per core oversubscribes a shared machine and runs them tens of times slower. Set before torch loads.
from bench.threads import ENV as THREADS_ENV  # noqa: E402 - after the docstring, before anything imports torch
from bench.threads import choose_threads  # noqa: E402

os.environ.setdefault(THREADS_ENV, str(choose_threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), "tiny")))
os.environ.setdefault("OMP_NUM_THREADS", os.environ[THREADS_ENV])
os.environ.setdefault("MKL_NUM_THREADS", os.environ[THREADS_ENV])

REPO = Path(__file__).resolve().parents[1]
MINI_DREAMBENCH = REPO / "tests" / "fixtures" / "dreambench-mini"
"""The committed fixture dataset, written by tests/fixtures/make_dreambench_mini.py."""


def _has_prompts(root: Path) -> bool:
    return (root / "dataset" / "prompts_and_classes.txt").exists() or (root / "prompts_and_classes.txt").exists()


def _real_dreambench() -> Path:
    env = os.environ.get("BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "dreambench"


@pytest.fixture(scope="session")
def dreambench_root() -> Path:
    """The real DreamBench copy when present, else the committed mini fixture: never a skip."""
    root = _real_dreambench()
    return root if _has_prompts(root) else MINI_DREAMBENCH


@pytest.fixture(scope="session")
def real_dreambench_root() -> Path:
    """The real 30-concept DreamBench copy, for slow tests that need all of it; skips when absent."""
    root = _real_dreambench()
    if not _has_prompts(root):
        pytest.skip(f"the real DreamBench is not at {root} (set BENCH_DATA)")
    return root


@pytest.fixture(scope="session")
def concept(dreambench_root):
    """DreamBench's `dog` (real or fixture), the concept the method tests train on; a test module may define its
    own `concept` instead."""
    from bench.data import select_concepts

    return select_concepts(dreambench_root, "dog")[0]


@pytest.fixture(scope="session", autouse=True)
def _bench_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session builds its tiny models once, in its own cache, unless BENCH_CACHE is set."""
    if "BENCH_CACHE" not in os.environ:
        os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))


@pytest.fixture
def fake(monkeypatch):
    """The test-only methods of tests/fake_method.py registered for this test: `fake` (trains, resumable, in a
    fraction of a second on the real harness path) and `fake_prepared` (no training stage)."""
    from bench import registry

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    monkeypatch.setitem(registry.METHODS, "fake_prepared", "tests.fake_method:FakePrepared")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` and `srun` on PATH: sbatch keeps each submission file and answers `Submitted batch job 4242`."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch-files"
    bin_dir.mkdir()
    kept.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(cat {kept}/count 2>/dev/null || echo 4241); n=$((n + 1)); echo $n > {kept}/count
cp "$1" {kept}/submission-$n.sh
echo "$@" > {kept}/args-$n
echo "Submitted batch job $n"
""")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """A study's world: a results folder with finished tiny runs of the study's methods, and their dataset."""
    from tests.study_helpers import make_dataset, make_runs

    results = tmp_path / "results"
    make_runs(results)
    return results, make_dataset(tmp_path / "data")
