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
    assert workflow["jobs"]["merge"]["needs"] == ["estimate", "shard"]
    assert workflow.get("on", workflow.get(True))["workflow_dispatch"]["inputs"]["shards"]["default"] == "auto"


def test_a_failed_or_timed_out_shard_still_packs_and_the_merge_publishes():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    shard = workflow["jobs"]["shard"]
    steps = {s.get("name", ""): s for s in shard["steps"]}
    run = next(s for n, s in steps.items() if n.startswith("Run shard"))
    pack = next(s for n, s in steps.items() if n.startswith("Pack"))
    upload = next(s for n, s in steps.items() if n.startswith("Upload"))
    assert pack["if"] == upload["if"] == "${{ always() }}"  # `!cancelled()` is skipped by a job timeout
    assert int(run["timeout-minutes"]) < int(shard["timeout-minutes"])  # the run step stops first: packing has time
    assert "--shard" in pack["run"]  # only the runs this shard owns under the current plan
    assert workflow["jobs"]["merge"]["if"] == "${{ always() }}"
    merge = next(s for s in workflow["jobs"]["merge"]["steps"] if "merge" in s.get("run", ""))
    assert "--shards" in merge["run"]


def test_the_runner_layout_is_the_plans_weights_manifest(capsys):
    from tests.helpers import load_script

    assert load_script().main(["--profile", "paper", "manifest"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    text = WORKFLOW.read_text()
    block = text[text.index("# weights-manifest:begin"):text.index("# weights-manifest:end")].splitlines()[1:]
    assert [line.removeprefix("#   ") for line in block] == printed
    for folder in ("FLUX.1-schnell", "OminiControl", "stable-diffusion-xl-base-1.0", "TCD-SDXL-LoRA"):
        assert any(f"$WEIGHTS/{folder}:" in line for line in printed), folder  # every main-table method's weights
