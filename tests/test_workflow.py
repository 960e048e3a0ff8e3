"""The paper-tables workflow: valid against GitHub's workflow schema (check-jsonschema, a dev dependency, with its
vendored SchemaStore schema: offline), and every step calls
the project's script, so what CI does can be run locally."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "paper-tables.yml"


def test_workflow_matches_githubs_workflow_schema(tmp_path):
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(WORKFLOW)], check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"  # the check has teeth: a misspelt key fails it
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:"))
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(broken)], check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 1 and "runs_on" in done.stdout


def test_every_step_calls_the_project_script():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert runs and all(r.startswith(("make setup", ".venv/bin/python tools/paper_tables.py ")) for r in runs), runs
    assert all("\n" not in r.strip() for r in runs)  # one command per step: no shell logic in the workflow
    shard = workflow["jobs"]["shard"]
    assert any("shard" in r and "matrix.shard" in r for r in (s.get("run", "") for s in shard["steps"]))
    assert workflow["jobs"]["merge"]["needs"] == "shard"
