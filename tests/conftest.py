"""Shared fixtures: the DreamBench copy beside the project, a per-session model cache, a fake SLURM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dreambench() -> Path:
    env = os.environ.get("BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "dreambench"


@pytest.fixture(scope="session")
def dreambench_root() -> Path:
    root = _dreambench()
    if not (root / "dataset" / "prompts_and_classes.txt").exists() and not (root / "prompts_and_classes.txt").exists():
        pytest.skip(f"DreamBench not found at {root} (set BENCH_DATA)")
    return root


@pytest.fixture(scope="session", autouse=True)
def _bench_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session builds its tiny models once, in its own cache, unless BENCH_CACHE is set."""
    if "BENCH_CACHE" not in os.environ:
        os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))


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
