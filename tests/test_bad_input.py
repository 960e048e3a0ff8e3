"""The bad-input matrix: every mistake a user can make is one line naming the problem (and the valid choices),
exit code 2, and nothing written. Valid but unusual images (CMYK, 16-bit, grayscale, alpha) are converted."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import store
from tests.helpers import bench


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def assert_nothing_written(results: Path) -> None:
    assert not results.exists() or not any(results.rglob("*")), list(results.rglob("*"))


RUN = ["run", "--method", "custom_diffusion", "--concepts", "dog"]


@pytest.mark.parametrize("args, needles", [
    (["run", "--method", "custom_difusion"], ["unknown method 'custom_difusion'", "valid: ", "custom_diffusion"]),
    (["run", "--method", "custom_diffusion", "--concepts", "dog,teapto"], ["unknown concept 'teapto'", "teapot"]),
    ([*RUN, "--variant", "sd12"], ["unknown variant of custom_diffusion 'sd12'", "valid: ", "sd21"]),
    ([*RUN, "--suite", "papr"], ["unknown metric suite 'papr'", "valid: ", "dreambooth"]),
    ([*RUN, "--profile", "huge"], ["unknown profile 'huge'", "valid: ", "tiny"]),
    ([*RUN, "--backbone", "sdxl"], ["unknown backbone 'sdxl'", "valid: "]),
    ([*RUN, "--set", "nope=1"], ["unknown config field 'nope'", "valid: "]),
    ([*RUN, "--set", "checkpoint_every=-1"], ["checkpoint_every must be >= 0"]),
    ([*RUN, "--set", "iterations=2.5"], ["field 'iterations'", "expected an integer, got 2.5"]),
    ([*RUN, "--set", "lr=true"], ["field 'lr'", "expected a number, got True"]),
    ([*RUN, "--seeds", ","], ["no seeds given"]),
    ([*RUN, "--executor", "slurmm"], ["unknown executor 'slurmm'", "valid: local, gpus, slurm"]),
    ([*RUN, "--executor", "slurm", "--cluster", "pbs"], ["unknown cluster 'pbs'", "valid: slurm, local, debug"]),
    ([*RUN, "--workers", "2"], ["--workers applies to --executor gpus"]),
    ([*RUN, "--executor", "gpus", "--workers", "0"], ["--workers must be >= 1"]),
    ([*RUN, "--partition", "gpu"], ["--partition applies to --executor slurm"]),
    ([*RUN, "--slurm-array"], ["--slurm-array applies to --executor slurm"]),
    ([*RUN, "--executor", "slurm", "--mem", "lots"], ["bad --mem 'lots'", "32G"]),
    ([*RUN, "--executor", "slurm", "--sbatch", "=x"], ["bad --sbatch '=x'", "KEY=VALUE"]),
    ([*RUN, "--executor", "slurm", "--time", "0"], ["--time must be >= 1"]),
    ([*RUN, "--weights", "student=/nonexistent/sd-turbo"], ["--weights student", "does not exist"]),
    (["ablate", "--nfe", "3"], ["--nfe 3 is not supported", "valid: 1, 2, 4"]),
    (["status", "--concepts", "dog"], ["pass --method too"]),
    (["status", "--method", "nope"], ["unknown method 'nope'"]),
])
def test_unknown_names_and_bad_flags(args, needles, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    results = tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, *args, "--data", dreambench_root, "--results", results)
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(results)


def test_slurm_without_slurm(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    results = tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, *RUN, "--data", dreambench_root, "--results", results,
                         "--executor", "slurm")
    assert_one_line_error(code, err, "sbatch and srun are not on PATH", "--cluster local")
    assert_nothing_written(results)


def test_empty_folders(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    results = tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, *RUN, "--data", tmp_path / "empty", "--results", results)
    assert_one_line_error(code, err, "DreamBench not found", "prompts_and_classes.txt")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concept-dir",
                         tmp_path / "empty", "--class-noun", "mug", "--data", dreambench_root, "--results", results)
    assert_one_line_error(code, err, "no images", str(tmp_path / "empty"))
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concept-dir",
                         tmp_path / "nowhere", "--class-noun", "mug", "--data", dreambench_root, "--results", results)
    assert_one_line_error(code, err, "concept folder not found")
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concept-dir",
                         tmp_path / "empty", "--data", dreambench_root, "--results", results)
    assert_one_line_error(code, err, "--class-noun")
    assert_nothing_written(results)


# --- images --------------------------------------------------------------------------------------------------------


def _jpeg(mode: str = "RGB", size: int = 96) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _corrupt_png() -> bytes:
    data = bytearray(_png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))))
    idat = data.index(b"IDAT")
    data[idat + 20: idat + 60] = b"\x00" * 40  # scrambles the compressed stream (and its CRC)
    return bytes(data)


BAD_IMAGES = {
    "corrupt": ("02.png", _corrupt_png),
    "truncated": ("02.jpg", lambda: _jpeg()[: len(_jpeg()) // 2]),
    "zero-byte": ("02.jpg", lambda: b""),
    "non-image": ("02.jpg", lambda: b"this is a text file, not a photo\n"),
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_images_are_rejected_with_their_name(kind, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(dreambench_root / "dataset" / "dog" / "00.jpg", folder / "01.jpg")
    name, make = BAD_IMAGES[kind]
    (folder / name).write_bytes(make())
    results = tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concept-dir", folder,
                         "--class-noun", "dog", "--data", dreambench_root, "--results", results)
    assert_one_line_error(code, err, "cannot read image", str(folder / name))
    assert_nothing_written(results)


def _odd_but_valid_images(folder: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    (folder / "cmyk.jpg").write_bytes(_jpeg("CMYK"))
    (folder / "gray16.png").write_bytes(_png(Image.fromarray(rng.integers(0, 65535, (72, 72), dtype=np.uint16))))
    (folder / "gray.png").write_bytes(_png(Image.fromarray(rgb).convert("L")))
    rgba = Image.fromarray(np.dstack([rgb, rng.integers(0, 255, (80, 80), dtype=np.uint8)]), "RGBA")
    (folder / "alpha.png").write_bytes(_png(rgba))
    (folder / "gray_alpha.png").write_bytes(_png(rgba.convert("LA")))


def test_cmyk_16bit_grayscale_and_alpha_images_are_converted(fake, dreambench_root, tmp_path, monkeypatch,
                                                             capsys) -> None:
    from bench.data import load_image

    folder = tmp_path / "mug"
    folder.mkdir()
    _odd_but_valid_images(folder)
    modes = {p.name: Image.open(p).mode for p in folder.iterdir()}
    assert modes == {"cmyk.jpg": "CMYK", "gray16.png": "I;16", "gray.png": "L", "alpha.png": "RGBA",
                     "gray_alpha.png": "LA"}
    for path in folder.iterdir():
        image = load_image(path, 64)
        assert image.mode == "RGB" and image.size == (64, 64)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concept-dir", folder, "--class-noun",
                         "mug", "--data", dreambench_root, "--results", tmp_path / "results")
    assert code == 0 and "1 done" in err, err
    (run_dir,) = (tmp_path / "results" / "tiny" / "fake" / "default").glob("mug@*/seed0")
    record = store.read_record(run_dir)
    assert record["status"] == "done" and record["real_vs_real"]


# --- results folders and records ------------------------------------------------------------------------------------


def test_results_folder_not_writable(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = bench(monkeypatch, capsys, *RUN, "--data", dreambench_root, "--results", blocker / "results")
    assert_one_line_error(code, err, "not writable", "--results")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "readonly"
        locked.mkdir(mode=0o500)
        code, _, err = bench(monkeypatch, capsys, *RUN, "--data", dreambench_root, "--results", locked)
        assert_one_line_error(code, err, "not writable")


def test_record_from_a_newer_schema(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    run = tmp_path / "tiny" / "custom_diffusion" / "default" / "dog" / "seed0"
    store.write_json_atomic(run / "record.json", {"schema": store.SCHEMA_VERSION + 1, "status": "done"})
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for args in (["status"], ["table", "main"], ["ls", "runs"],
                 ["status", "--method", "custom_diffusion", "--concepts", "dog", "--data", dreambench_root],
                 [*RUN, "--data", dreambench_root]):
        code, _, err = bench(monkeypatch, capsys, *args, "--results", tmp_path)
        assert_one_line_error(code, err, "newer than this bench", "upgrade")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# --- weights: safetensors only --------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> Path:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path / "results")
    assert code == 0, err
    return tmp_path / "results" / "tiny" / "fake" / "default" / "dog" / "seed0"


def test_generate_loads_safetensors_only(finished_run, tmp_path, monkeypatch, capsys) -> None:
    generate = ["generate", "--prompt", "a <fake> dog on the moon", "--out", tmp_path / "out.png"]
    code, _, err = bench(monkeypatch, capsys, *generate, "--run", finished_run)
    assert code == 0, err
    cases = {"pickle": {"pytorch_model.bin": b"\x80\x04K\x01."}, "torch-save": {"model.pt": b"PK\x03\x04"},
             "empty": {}}
    for name, files in cases.items():
        run = tmp_path / name / "seed0"
        shutil.copytree(finished_run, run)
        shutil.rmtree(run / "weights")
        (run / "weights").mkdir()
        for file, data in files.items():
            (run / "weights" / file).write_bytes(data)
        code, _, err = bench(monkeypatch, capsys, *generate, "--run", run)
        assert_one_line_error(code, err, "safetensors", str(run / "weights"))
        if files:
            assert "only safetensors are loaded" in err and next(iter(files)) in err
    shutil.rmtree(run / "weights")
    code, _, err = bench(monkeypatch, capsys, *generate, "--run", run)
    assert_one_line_error(code, err, "does not exist")
    (run / "weights").mkdir()
    (run / "weights" / "fake.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # wrong content
    code, _, err = bench(monkeypatch, capsys, *generate, "--run", run)
    assert_one_line_error(code, err, "cannot load the weights")
    assert not (tmp_path / "out2.png").exists()


def test_weights_flag_refuses_pickles(finished_run, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    pickled = tmp_path / "sd-turbo"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "unet" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    (pickled / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    results = tmp_path / "new-results"
    code, _, err = bench(monkeypatch, capsys, *RUN, "--data", dreambench_root, "--results", results,
                         "--weights", f"student={pickled}")
    assert_one_line_error(code, err, "--weights student", "only safetensors are loaded", "pytorch_model.bin")
    assert_nothing_written(results)
    code, _, err = bench(monkeypatch, capsys, *RUN, "--data", dreambench_root, "--results", results,
                         "--weights", f"student={pickled / 'unet' / 'pytorch_model.bin'}")
    assert_one_line_error(code, err, "only safetensors are loaded")
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", finished_run, "--prompt", "a <fake> dog",
                         "--out", tmp_path / "x.png", "--weights", f"student={pickled}")
    assert_one_line_error(code, err, "only safetensors are loaded")
    assert not (tmp_path / "x.png").exists()


def test_mistake_found_mid_sweep_leaves_only_its_line(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """A mistake only the method can see (a token already in the vocabulary) surfaces after the sweep started:
    still one line, exit code 2, no progress display left above it, no run folder behind."""
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "textual_inversion", "--set", "token=dog",
                         "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path)
    assert_one_line_error(code, err, "token 'dog' is already in the tokenizer's vocabulary")
    assert not list(tmp_path.rglob("record.json")) and not list(tmp_path.rglob("*.partial"))
