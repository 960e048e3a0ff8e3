"""One dataset per table: a `--concept-dir` run beside DreamBench runs gets a table of its own ("your concepts") and
leaves every DreamBench row, and its denominator, as it was."""

from __future__ import annotations

import shutil

from bench.concept_sets import dataset_of
from tests.helpers import bench


def _dreambench_part(text: str) -> str:
    return text.split("— your concepts")[0].rsplit("###", 1)[0] if "— your concepts" in text else text


def test_a_concept_dir_run_leaves_every_dreambench_row_unchanged(fake, dreambench_root, tmp_path, monkeypatch,
                                                                  capsys):
    results = tmp_path / "results"
    common = ["--method", "fake", "--data", dreambench_root, "--results", results]
    code, _, err = bench(monkeypatch, capsys, "run", *common, "--concepts", "dog")
    assert code == 0, err
    tables = {}
    for fmt in ("md", "csv"):
        code, tables[fmt], err = bench(monkeypatch, capsys, "table", "main", "--results", results, "--format", fmt)
        assert code == 0, err
    folder = tmp_path / "dog"  # the same photos as DreamBench's dog, as a user's folder: `dog@<hash>`
    shutil.copytree(dreambench_root / "dataset" / "dog", folder)
    code, _, err = bench(monkeypatch, capsys, "run", *common, "--concept-dir", folder, "--class-noun", "dog")
    assert code == 0 and "1 done" in err, err
    code, md, _ = bench(monkeypatch, capsys, "table", "main", "--results", results)
    assert "— your concepts" in md and "2 concept" not in md
    assert _dreambench_part(md).rstrip() == tables["md"].rstrip()  # every DreamBench row and caption as before
    code, csv_text, _ = bench(monkeypatch, capsys, "table", "main", "--results", results, "--format", "csv")
    header, *rows = csv_text.splitlines()
    assert header.split(",")[1] == "dataset"
    ours = [r for r in rows if ",dreambench," in r]
    before = tables["csv"].splitlines()[1:]
    assert [r.replace(",dreambench,", ",", 1) for r in ours] == before
    assert any(",yours," in r for r in rows)
    code, only, _ = bench(monkeypatch, capsys, "table", "main", "--results", results, "--dataset", "dreambench")
    assert code == 0 and only == tables["md"]
    code, mine, _ = bench(monkeypatch, capsys, "table", "main", "--results", results, "--dataset", "yours")
    assert code == 0 and "— your concepts" in mine and "1 concept(s)" in mine
    code, _, err = bench(monkeypatch, capsys, "table", "main", "--results", results, "--dataset", "imagenet")
    assert code == 2 and err.count("\n") == 1 and "dreambench" in err


def test_the_dataset_of_a_concept(tmp_path):
    assert dataset_of("dog@3fa29c1b0e", tmp_path) == "yours"
    assert dataset_of("dog", tmp_path) == "dreambench"
    (tmp_path / "prompts").mkdir()
    (tmp_path / "dataset.json").write_text("[]")
    assert dataset_of("pet_cat1", tmp_path) == "customconcept101"


def test_compared_with_the_paper_only_dreambench_is_compared(fake, dreambench_root, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    folder = tmp_path / "dog"
    shutil.copytree(dreambench_root / "dataset" / "dog", folder)
    for extra in (["--concepts", "dog"], ["--concept-dir", folder, "--class-noun", "dog"]):
        code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--data", dreambench_root, "--results",
                             results, *extra)
        assert code == 0, err
    for fmt in ("md", "csv"):
        code, text, err = bench(monkeypatch, capsys, "table", "main", "--results", results, "--compare", "paper",
                                "--format", fmt)
        assert code == 0, err
        assert ("— your concepts" in text) if fmt == "md" else (",yours," in text)
