"""The CLI end to end on the tiny profile, re-runs that skip finished work, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import bench

FAST = ["--set", "iterations=3"]


@pytest.fixture(scope="module")
def two_concepts(dreambench_root, tmp_path_factory):
    """One sweep of Custom Diffusion over two concepts, shared by the tests that read its results."""
    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--method", "custom_diffusion", "--concepts",
                           "dog,teapot", "--data", str(dreambench_root), "--results", str(results), *FAST],
                          capture_output=True, text=True, timeout=600)
    mp.undo()
    assert proc.returncode == 0, proc.stderr
    return results, proc


def _run_dir(results: Path, concept: str) -> Path:
    return results / "tiny" / "custom_diffusion" / "default+iterations=3" / concept / "seed0"


def test_run_writes_complete_records(two_concepts) -> None:
    results, proc = two_concepts
    assert "2 done" in proc.stderr
    for concept in ("dog", "teapot"):
        run = _run_dir(results, concept)
        record = json.loads((run / "record.json").read_text())
        assert record["status"] == "done"
        assert record["config"]["iterations"] == 3
        assert len(record["images"]) == 25 == len(list((run / "images").glob("*.png")))  # tiny: one seed
        assert set(record["metrics"]) == {"clip_t", "clip_i", "dino"}
        assert record["metric_suite"]["name"] == "tiny"
        assert record["timing"]["iterations"] == 3 and record["timing"]["train_s"] > 0
        assert record["versions"]["torch"] and record["config_hash"]
        assert (run / "weights" / "pytorch_custom_diffusion_weights.safetensors").exists()
        assert len((run / "loss_log.jsonl").read_text().splitlines()) == 3
        assert not list(run.parent.glob("*.partial")) and not list(run.parent.glob("*.lock"))


def test_rerun_skips_finished_runs_and_force_recomputes(two_concepts, dreambench_root, monkeypatch, capsys) -> None:
    results, _ = two_concepts
    record = _run_dir(results, "dog") / "record.json"
    before = record.stat().st_mtime_ns
    start = time.perf_counter()
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog,teapot",
                         "--data", dreambench_root, "--results", results, *FAST)
    assert code == 0 and "2 skipped" in err
    assert record.stat().st_mtime_ns == before
    assert time.perf_counter() - start < 30
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog",
                         "--data", dreambench_root, "--results", results, "--force", *FAST)
    assert code == 0 and "1 done" in err
    assert record.stat().st_mtime_ns != before


def test_table_status_ls_and_generate(two_concepts, monkeypatch, capsys, tmp_path) -> None:
    results, _ = two_concepts
    code, out, _ = bench(monkeypatch, capsys, "table", "main", "--results", results)
    assert code == 0 and "Custom Diffusion" in out and "SD Turbo" in out
    code, out, _ = bench(monkeypatch, capsys, "table", "main", "--results", results, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("table,")
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", results)
    assert code == 0 and "done" in out
    code, out, _ = bench(monkeypatch, capsys, "ls", "runs", "--results", results)
    assert code == 0 and "custom_diffusion" in out and "dog" in out
    image = tmp_path / "moon.png"
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", _run_dir(results, "dog"), "--prompt",
                         "a <new1> dog on the moon", "--seed", "3", "--out", image)
    assert code == 0, err
    from PIL import Image

    assert Image.open(image).size == (64, 64)


def test_help_is_fast() -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "run" in proc.stdout
    assert elapsed < 1.5, f"bench --help took {elapsed:.2f} s"


@pytest.mark.parametrize("args, needle", [
    (["run", "--method", "custom_difusion", "--concepts", "dog"], "did you mean 'custom_diffusion'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dgo"], "did you mean 'dog'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--variant", "sd12"], "did you mean 'sd21'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--profile", "tinny"], "did you mean 'tiny'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--set", "iteratons=3"], "did you mean 'iterations'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--set", "iterations=0"], "iterations must be"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--suite", "papr"], "did you mean 'paper'"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--seeds", "a"], "--seeds"),
    (["run", "--method", "custom_diffusion", "--concepts", "dog", "--weights", "studnt=/x"], "did you mean 'student'"),
    (["ls", "metods"], "did you mean 'methods'"),
    (["table", "mian"], "did you mean 'main'"),
])
def test_bad_input_is_one_line_exit_2(args, needle, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, *args, "--data", dreambench_root, "--results", tmp_path) \
        if args[0] == "run" else bench(monkeypatch, capsys, *args, "--results", tmp_path)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not list(tmp_path.rglob("record.json"))


def test_bad_data_folders(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    # a dataset folder without prompts_and_classes.txt
    (tmp_path / "nodata").mkdir()
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--data", tmp_path / "nodata",
                         "--results", tmp_path / "r")
    assert code == 2 and "prompts_and_classes.txt" in err and len(err.splitlines()) == 1
    # an own concept folder with no images
    (tmp_path / "empty").mkdir()
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concept-dir",
                         tmp_path / "empty", "--class-noun", "dog", "--data", dreambench_root,
                         "--results", tmp_path / "r")
    assert code == 2 and "no images" in err.lower() and len(err.splitlines()) == 1
    # a corrupt image in a concept folder
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(dreambench_root / "dataset" / "dog" / "00.jpg", folder / "00.jpg")
    (folder / "01.jpg").write_bytes(b"not a jpeg at all")
    code, _, err = bench(monkeypatch, capsys, "data", "check", folder)
    assert code == 2 and "01.jpg" in err and len(err.splitlines()) == 1
    (folder / "01.jpg").unlink()
    code, out, _ = bench(monkeypatch, capsys, "data", "check", folder)
    assert code == 0 and '"images": 1' in out


def test_data_check_dreambench(dreambench_root, monkeypatch, capsys) -> None:
    code, out, _ = bench(monkeypatch, capsys, "data", "check", dreambench_root)
    summary = json.loads(out)
    folders = [p for p in (dreambench_root / "dataset").iterdir() if p.is_dir()]  # 30 and 158 on DreamBench
    assert code == 0 and summary["concepts"] == len(folders) >= 5
    assert summary["images"] == sum(len(list(f.glob("*.jpg"))) for f in folders)


def test_unwritable_results(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog",
                         "--data", dreambench_root, "--results", blocker / "sub", *FAST)
    assert code == 2 and "not writable" in err


def test_integer_fields_spelt_otherwise_are_the_same_variant() -> None:
    """`--set iterations=1e1` (JSON: 10.0) is `iterations=10`, one variant, not a separate `...=10.0`; a float
    field keeps its value, and a non-integer for an int field is still refused when the config is built."""
    from bench.ablations import ablation_variants
    from bench.runs import variants_for

    as_int = variants_for(["custom_diffusion"], ["default"], {"iterations": 10})
    for spelt in (1e1, 10.0):
        assert variants_for(["custom_diffusion"], ["default"], {"iterations": spelt}) == as_int
    assert as_int[0][1]["iterations"] == 10 and isinstance(as_int[0][1]["iterations"], int)
    assert variants_for(["custom_diffusion"], ["default"], {"lr": 1.0})[0][1]["lr"] == 1.0
    assert ablation_variants(["echo"], False, None, None, "sd-turbo", {"iterations": 1e1}) == \
        ablation_variants(["echo"], False, None, None, "sd-turbo", {"iterations": 10})
