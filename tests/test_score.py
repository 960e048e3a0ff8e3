"""`bench score`: finished runs scored again from their saved images, every image in one pass per backbone, give
exactly the record `bench run` would have written under that suite."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.helpers import bench

CONCEPTS = "dog,teapot"


@pytest.fixture
def fake_views(fake, monkeypatch):
    """The fake method (`fake`, tests/conftest.py), with one extra view (as EchoDistill has) so views are rescored
    too."""
    from tests.fake_method import FakeTrained

    monkeypatch.setattr(FakeTrained, "views", property(lambda self: {"dim": FakeTrained(self.weight - 1.0)}),
                        raising=False)


@pytest.fixture
def other_suite(monkeypatch):
    """A second offline suite: the tiny backbones from local files, with a different resize and plain cosines (the
    `dreambooth` suite's rule), so scores differ and rescoring must follow the suite's cosine rule."""
    from bench.metrics import suites

    tiny = suites.ensure_tiny()
    monkeypatch.setitem(suites.SUITES, "tiny48", dataclasses.replace(tiny, name="tiny48", image_size=48,
                                                                     builder=None, cos_max0=False))
    return "tiny48"


def records(results: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in sorted((results / "tiny" / "fake" / "default").glob("*/seed0/record.json"))}


def test_rescoring_equals_a_fresh_run_under_that_suite(fake_views, other_suite, dreambench_root, tmp_path, monkeypatch,
                                                       capsys):
    common = ["--method", "fake", "--concepts", CONCEPTS, "--data", dreambench_root]
    assert bench(monkeypatch, capsys, "run", *common, "--results", tmp_path / "a")[0] == 0
    before = records(tmp_path / "a")
    image = tmp_path / "a" / "tiny" / "fake" / "default" / "dog" / "seed0" / "images" / "p00_s0.png"
    pixels = image.read_bytes()

    code, out, err = bench(monkeypatch, capsys, "score", *common, "--results", tmp_path / "a", "--suite", other_suite,
                           "--batch", "7")
    assert code == 0, err
    from bench.data import select_concepts

    reals = sum(len(c.images) for c in select_concepts(dreambench_root, CONCEPTS))
    assert "2 rescored under suite tiny48" in out
    assert f"({2 * (25 + 25) + reals} images embedded" in out  # each run's 25 images and 25 of its view, the reals
    after = records(tmp_path / "a")
    assert image.read_bytes() == pixels, "the images are never touched"

    # the reference: the same runs trained, sampled and scored under tiny48 from scratch
    assert bench(monkeypatch, capsys, "run", *common, "--results", tmp_path / "b", "--suite", other_suite)[0] == 0
    fresh = records(tmp_path / "b")
    for concept in ("dog", "teapot"):
        got, want = after[concept], fresh[concept]
        assert got["metric_suite"]["name"] == "tiny48" and got["rescored"]["from_suite"] == "tiny"
        assert got["config_hash"] == want["config_hash"] != before[concept]["config_hash"]
        for part_got, part_want in ((got, want), (got["views"]["dim"], want["views"]["dim"])):
            for key in ("clip_t", "clip_i", "dino"):
                assert part_got["metrics"][key] == pytest.approx(part_want["metrics"][key], abs=1e-5)
            assert part_got["real_vs_real"]["dino"] == pytest.approx(part_want["real_vs_real"]["dino"], abs=1e-5)
            rows_got, rows_want = part_got["images"], part_want["images"]
            assert [r["file"] for r in rows_got] == [r["file"] for r in rows_want]
            assert [r["clip_i"] for r in rows_got] == pytest.approx([r["clip_i"] for r in rows_want], abs=1e-5)
        assert got["metrics"] != before[concept]["metrics"], "another suite gives other numbers"


def test_rescored_runs_count_as_done_and_are_not_rescored_twice(fake_views, other_suite, dreambench_root, tmp_path,
                                                                 monkeypatch, capsys):
    from tests.fake_method import FakeMethod

    common = ["--method", "fake", "--concepts", CONCEPTS, "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, "run", *common)[0] == 0
    assert bench(monkeypatch, capsys, "score", *common, "--suite", other_suite)[0] == 0
    trained = []
    monkeypatch.setattr(FakeMethod, "train", lambda *a, **k: trained.append(1))
    code, _, err = bench(monkeypatch, capsys, "run", *common, "--suite", other_suite)
    assert code == 0 and not trained and "2 skipped" in err
    code, out, _ = bench(monkeypatch, capsys, "score", *common, "--suite", other_suite)
    assert code == 0 and "0 rescored" in out and "2 already under it" in out
    # and back: the original suite's scores are reproduced exactly
    code, out, _ = bench(monkeypatch, capsys, "score", *common, "--suite", "tiny")
    assert code == 0 and "2 rescored" in out


def test_unfinished_and_outdated_runs_are_left_alone(fake_views, other_suite, dreambench_root, tmp_path, monkeypatch,
                                                     capsys):
    base = ["--method", "fake", "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, "run", *base, "--concepts", "dog")[0] == 0
    dog = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0" / "record.json"
    record = json.loads(dog.read_text())
    record["config_hash"] = "0" * 16  # as if recorded with another config
    dog.write_text(json.dumps(record))
    code, out, _ = bench(monkeypatch, capsys, "score", *base, "--concepts", CONCEPTS, "--suite", other_suite)
    assert code == 0 and "0 rescored" in out
    assert "1 not finished" in out and "fake/default/teapot/seed0" in out
    assert "1 recorded with another config" in out and "fake/default/dog/seed0" in out
    assert json.loads(dog.read_text()) == record


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be >= 1"),
    (["--suite", "nope"], "unknown metric suite 'nope'"),
    (["--method", "nope"], "unknown method 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(fake_views, dreambench_root, tmp_path, monkeypatch, capsys, args, message):
    argv = ["score", "--method", "fake", "--data", dreambench_root, "--results", tmp_path, *args]
    code, out, err = bench(monkeypatch, capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_run_with_missing_images_is_listed_and_left_alone(fake_views, other_suite, dreambench_root, tmp_path,
                                                             monkeypatch, capsys):
    common = ["--method", "fake", "--concepts", CONCEPTS, "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, "run", *common)[0] == 0
    run = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0"
    before = (run / "record.json").read_text()
    (run / "views" / "dim" / "p03_s0.png").unlink()
    code, out, _ = bench(monkeypatch, capsys, "score", *common, "--suite", other_suite)
    assert code == 0 and "1 rescored" in out
    assert "1 with image files missing" in out and "fake/default/dog/seed0" in out
    assert (run / "record.json").read_text() == before


def test_one_pass_scores_equal_per_run_scores(dreambench_root):
    """score_embedded on slices of one batched pass == score_images per run (the path `bench run` takes)."""
    from PIL import Image

    from bench.data import select_concepts
    from bench.metrics import load_scorer, score_embedded, score_images

    scorer = load_scorer("tiny")
    concept = select_concepts(dreambench_root, "dog")[0]
    images = [Image.new("RGB", (64, 64), (10 * i, 200 - 7 * i, 90)) for i in range(9)]
    texts = [f"a photo of thing {i}" for i in range(9)]
    per_run = score_images(scorer, images[:4], texts[:4], concept.images) + \
        score_images(scorer, images[4:], texts[4:], concept.images)
    gen, txt, real = scorer.image_embeddings(images, batch_size=2), scorer.text_embeddings(texts), \
        scorer.image_embeddings(concept.images, batch_size=3)
    together = score_embedded(gen, txt, real)
    for key in ("clip_t", "clip_i", "dino", "n_real"):
        assert [r[key] for r in together] == pytest.approx([r[key] for r in per_run], abs=1e-6)


def test_rescoring_keeps_a_record_of_an_older_bench_as_it_was(fake_views, other_suite, dreambench_root, tmp_path,
                                                              monkeypatch, capsys):
    """A record lacking keys a newer bench writes (`eval_version`, a view's `real_vs_real`) and holding one this
    bench does not know: rescored, it keeps every other key as it was and gains the scored ones."""
    common = ["--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    assert bench(monkeypatch, capsys, "run", *common)[0] == 0
    path = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0" / "record.json"
    old = json.loads(path.read_text())
    old.pop("eval_version", None)
    del old["views"]["dim"]["real_vs_real"]
    old["legacy_note"] = {"kept": True}
    path.write_text(json.dumps(old))
    code, out, err = bench(monkeypatch, capsys, "score", *common, "--suite", other_suite)
    assert code == 0 and "1 rescored" in out, err
    new = json.loads(path.read_text())
    assert set(new) == set(old) | {"rescored"} and "eval_version" not in new and new["legacy_note"] == {"kept": True}
    assert new["rescored"]["from_suite"] == "tiny" and new["views"]["dim"]["real_vs_real"]["n"] > 0
    changed = {"metrics", "images", "real_vs_real", "metric_suite", "config_hash", "views", "rescored"}
    assert {k: v for k, v in new.items() if k not in changed} == {k: v for k, v in old.items() if k not in changed}
    assert [{k: v for k, v in r.items() if k not in ("clip_t", "clip_i", "dino")} for r in new["images"]] == \
        [{k: v for k, v in r.items() if k not in ("clip_t", "clip_i", "dino")} for r in old["images"]]
