"""CustomConcept101 as a second dataset: its public layout, `--dataset`, download from a local git mirror (the
photos from a zip, as they are distributed), validation, and the report's reference column."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from bench import cc101, data
from bench.api import BenchError
from bench.record import RunRecord
from tests.helpers import bench, jpeg

ENTRIES = [
    {"instance_prompt": "photo of a <new1> cat", "class_prompt": "cat",
     "instance_data_dir": "./benchmark_dataset/pet_cat1",
     "class_data_dir": "./regularization/pet_cat", "prompt_filename": "prompts/cat.txt"},
    {"instance_prompt": "photo of a <new1> bear", "class_prompt": "bear",
     "instance_data_dir": "./benchmark_dataset/toy_bear",
     "class_data_dir": "./regularization/toy_bear", "prompt_filename": "prompts/toy.txt"},
]
PROMPTS = {"cat.txt": "Photo of a {}.\n{} swimming in a pool.\n\nGeorgia O'Keeffe style {} painting.\n",
           "toy.txt": "a {} on a {wooden} table.\n{} in times square.\n"}


def _layout(root: Path, photos: bool = True) -> Path:
    """The repository's customconcept101/ folder; with `photos`, benchmark_dataset/ unpacked inside it."""
    folder = root / "customconcept101"
    (folder / "prompts").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(ENTRIES, indent=4))
    for name, text in PROMPTS.items():
        (folder / "prompts" / name).write_text(text)
    if photos:
        for e in ENTRIES:
            for i in range(2):
                jpeg(folder / e["instance_data_dir"] / f"{i:02d}.jpg")
    return root


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for e in ENTRIES:
            name = e["instance_data_dir"].removeprefix("./")
            for i in range(2):
                jpg = jpeg(path.parent / "src" / name / f"{i:02d}.jpg")
                zf.write(jpg, f"{name}/{i:02d}.jpg")
        zf.writestr("../escaped.txt", "outside")  # a hostile entry: never written outside the folder
        zf.writestr("__MACOSX/._junk", "junk")
    return path


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=n", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_layout_is_read_as_concepts(tmp_path: Path) -> None:
    root = _layout(tmp_path / "repo")
    concepts = {c.name: c for c in data.load_concepts(root)}  # told apart from DreamBench by its layout
    assert list(concepts) == ["pet_cat1", "toy_bear"]
    cat, bear = concepts["pet_cat1"], concepts["toy_bear"]
    assert cat.class_noun == "cat" and cat.live and not bear.live and len(cat.images) == 2
    assert cat.prompts == ("Photo of a {0} {1}.", "{0} {1} swimming in a pool.",
                           "Georgia O'Keeffe style {0} {1} painting.")
    assert cat.prompt(cat.prompts[1], "<new1>") == "<new1> cat swimming in a pool."
    assert bear.prompt(bear.prompts[0], "<new1>") == "a <new1> bear on a {wooden} table."  # braces kept literally
    assert [c.name for c in data.select_concepts(root / "customconcept101", "toy_bear")] == ["toy_bear"]
    with pytest.raises(BenchError, match="unknown concept 'pet_cat'.*did you mean 'pet_cat1'"):
        data.select_concepts(root, "pet_cat")


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "dataset.json").write_text("{not json"), "cannot read .*dataset.json"),
    (lambda f: (f / "dataset.json").write_text("[]"), "non-empty list"),
    (lambda f: (f / "prompts" / "toy.txt").write_text("no placeholder here\n"), "line 1 .* has no '{}'"),
    (lambda f: (f / "prompts" / "cat.txt").unlink(), "prompt file missing: .*cat.txt"),
    (lambda f: (f / "dataset.json").write_text(json.dumps([{**ENTRIES[0], "instance_data_dir": "../../etc"}])),
     "is not a folder of benchmark_dataset/"),
    (lambda f: (f / "dataset.json").write_text(json.dumps([{**ENTRIES[0], "prompt_filename": "../../x.txt"}])),
     "is not in prompts/"),
])
def test_broken_copies_are_one_line(tmp_path: Path, breakage, message) -> None:
    root = _layout(tmp_path / "repo")
    breakage(root / "customconcept101")
    with pytest.raises(BenchError, match=message):
        cc101.load_customconcept101(root)


def test_download_from_a_local_mirror_with_the_photo_zip(tmp_path: Path, monkeypatch, capsys) -> None:
    origin = _layout(tmp_path / "origin", photos=False)
    (origin / "README.md").write_text("custom diffusion\n")
    _git("init", "-q", cwd=origin)
    _git("add", ".", cwd=origin)
    _git("commit", "-q", "-m", "data", cwd=origin)
    photos = _zip(tmp_path / "benchmark_dataset.zip")
    dest = tmp_path / "cc101"

    code, _, err = bench(monkeypatch, capsys, "data", "download", dest, "--dataset", "customconcept101", "--url",
                         origin.as_uri())
    assert code == 2 and "holds the prompts but not the photos" in err and len(err.strip().splitlines()) == 1
    assert not dest.exists() and not dest.with_name("cc101.partial").exists()

    code, out, err = bench(monkeypatch, capsys, "data", "download", dest, "--dataset", "customconcept101", "--url",
                           origin.as_uri(), "--images", photos)
    assert code == 0, err
    assert "CustomConcept101 ready" in out and (dest / "benchmark_dataset" / "toy_bear" / "01.jpg").is_file()
    assert not (tmp_path / "escaped.txt").exists() and not (dest / "escaped.txt").exists()
    assert not dest.with_name("cc101.clone").exists() and not dest.with_name("cc101.partial").exists()
    code, out, _ = bench(monkeypatch, capsys, "data", "check", dest)
    summary = json.loads(out)
    assert code == 0 and summary["dataset"] == "customconcept101" and summary["concepts"] == 2
    assert summary["images"] == 4 and summary["prompts"] == 5
    code, out, _ = bench(monkeypatch, capsys, "ls", "concepts", "--dataset", "customconcept101", "--data", dest)
    assert code == 0 and out.splitlines() == ["pet_cat1\tcat\tlive\t2 images", "toy_bear\tbear\tobject\t2 images"]
    # valid already: a second download is a no-op even with a dead URL
    assert cc101.download_customconcept101(dest, "file:///nowhere") == dest

    code, _, err = bench(monkeypatch, capsys, "data", "download", tmp_path / "x", "--dataset", "customconcept101",
                         "--url", (tmp_path / "missing").as_uri(), "--images", photos)
    assert code == 2 and "git clone" in err and "failed: fatal:" in err
    code, _, err = bench(monkeypatch, capsys, "data", "download", tmp_path / "y", "--dataset", "cc", "--url", "x")
    assert code == 2 and "unknown dataset 'cc'" in err
    code, _, err = bench(monkeypatch, capsys, "data", "download", tmp_path / "z", "--images", photos)
    assert code == 2 and "--images is for --dataset customconcept101 only" in err


def test_dataset_option_checks_the_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.helpers import tiny_dataset

    dreambench = tiny_dataset(tmp_path / "db")
    code, _, err = bench(monkeypatch, capsys, "ls", "concepts", "--dataset", "customconcept101", "--data", dreambench)
    assert code == 2 and "CustomConcept101 not found" in err
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "lora", "--dataset", "customconcept101", "--data",
                         dreambench)
    assert code == 2 and "CustomConcept101 not found" in err
    code, _, err = bench(monkeypatch, capsys, "report", "--dataset", "customconcept101", "--data", dreambench)
    assert code == 2 and "CustomConcept101 not found" in err
    root = _layout(tmp_path / "repo")
    code, _, err = bench(monkeypatch, capsys, "ls", "concepts", "--dataset", "dreambench", "--data", root)
    assert code == 2 and "DreamBench not found" in err
    monkeypatch.setenv("BENCH_CC101", str(root))
    code, out, _ = bench(monkeypatch, capsys, "ls", "concepts", "--dataset", "customconcept101")
    assert code == 0 and out.startswith("pet_cat1\tcat")


def test_report_grid_takes_reference_photos_from_cc101(tmp_path: Path) -> None:
    from bench.figures import _dataset_folder, qualitative_grid, reference_image

    root = _layout(tmp_path / "repo")
    folder, why = _dataset_folder(root)
    assert why is None and folder == root / "customconcept101"
    assert reference_image(folder, "toy_bear") == folder / "benchmark_dataset" / "toy_bear" / "00.jpg"
    from PIL import Image

    records = []
    for method, variant in (("custom_diffusion", "default"), ("echodistill", "default")):
        run = tmp_path / "results" / method / variant / "toy_bear" / "seed0"
        (run / "images").mkdir(parents=True)
        Image.new("RGB", (16, 16), (9, 9, 9)).save(run / "images" / "p00_s0.png")
        records.append({"status": "done", "run_dir": str(run), "method": method, "variant": variant,
                        "concept": "toy_bear", "seed": 0,
                        "images": [{"prompt_index": 0, "eval_seed": 0, "prompt": "a <new1> bear in times square."}]})
    grid = qualitative_grid([RunRecord.from_json(r) for r in records], "tiny", "tiny", folder, None)
    assert grid is not None and "Figures 11-12 (CustomConcept101)" in grid.caption and grid.png[:4] == b"\x89PNG"
