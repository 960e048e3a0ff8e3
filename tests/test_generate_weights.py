"""`bench generate` rebuilds a run with the weights it was trained with (`--weights` recorded in `record.models`),
and its identifier hint names the run's own class noun."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import bench, mini_dreambench


@pytest.fixture
def student_sources(monkeypatch) -> list[str]:
    """The student UNet source of every `Models` built from here on (what `bench generate` loads from)."""
    from bench.models import loading

    seen: list[str] = []

    class Spy(loading.Models):
        def __init__(self, profile, *args, **kwargs) -> None:
            seen.append(profile.components["student_unet"].source)
            super().__init__(profile, *args, **kwargs)

    monkeypatch.setattr(loading, "Models", Spy)
    return seen


def test_generate_uses_the_weights_the_run_was_trained_with(tmp_path, monkeypatch, capsys, student_sources) -> None:
    from bench.models.tiny import ensure_built

    default = ensure_built() / "sd-turbo"
    mine = tmp_path / "models" / "my-sd-turbo"  # a local snapshot, as `--weights student=/models/sd-turbo` is
    shutil.copytree(default, mine)
    data, results = mini_dreambench(tmp_path / "data"), tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "custom_diffusion", "--concepts", "dog", "--data",
                         data, "--results", results, "--set", "iterations=2", "--weights", f"student={mine}")
    assert code == 0, err
    run = results / "tiny" / "custom_diffusion" / "default+iterations=2" / "dog" / "seed0"
    record = json.loads((run / "record.json").read_text())
    assert record["models"]["components"]["student_unet"]["source"] == str(mine)
    student_sources.clear()
    out = tmp_path / "moon.png"
    generate = ["generate", "--run", run, "--prompt", "a <new1> dog on the moon", "--out", out]
    code, stdout, err = bench(monkeypatch, capsys, *generate)
    assert code == 0, err
    assert out.exists() and stdout.strip() == str(out)
    assert student_sources == [str(mine)], "no --weights needed: the run's own student is loaded"

    student_sources.clear()  # a --weights given still overrides the record, group by group
    code, _, err = bench(monkeypatch, capsys, *generate, "--weights", f"student={default}")
    assert code == 0, err
    assert student_sources == [str(default)]
    from bench.generate import recorded_weights
    from bench.record import RunRecord

    # the tiny profile's own models are not carried
    assert recorded_weights(RunRecord.from_json(record)) == {"student": str(mine)}

    shutil.rmtree(mine)  # the recorded copy is gone: one line naming it and the way out
    student_sources.clear()
    code, _, err = bench(monkeypatch, capsys, *generate)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"--weights student={mine}" in err and "does not exist" in err and "pass --weights student=" in err
    assert student_sources == [], "nothing is loaded"
    code, _, err = bench(monkeypatch, capsys, *generate, "--weights", f"student={default}")
    assert code == 0, err


def test_recorded_weights_of_a_paper_run_and_a_moved_tiny_cache(tmp_path) -> None:
    from bench.generate import recorded_weights
    from bench.models.profiles import get_profile
    from bench.models.tiny import tiny_root
    from bench.record import RunRecord

    paper = RunRecord(profile="paper", backbone="sd-turbo", models=get_profile("paper").describe())
    assert recorded_weights(paper) == {}, "hub ids are the profile's defaults: nothing to carry over"
    local = {"student": "/models/sd-turbo", "dino1": "/models/vit_small_patch16_224.dino"}
    paper.models = get_profile("paper", weights=local).describe()
    assert recorded_weights(paper) == local
    older = RunRecord.from_json({"profile": "paper", "models": paper.models})  # before records named a backbone
    assert older.backbone is None and recorded_weights(older) == local
    # a tiny run recorded under another $BENCH_CACHE: its built models are still the profile's own
    tiny = get_profile("tiny").describe()
    for entry in tiny["components"].values():
        entry["source"] = entry["source"].replace(str(tiny_root().parent), str(tmp_path / "old-cache"))
    assert recorded_weights(RunRecord(profile="tiny", backbone="sd-turbo", models=tiny)) == {}


@pytest.mark.parametrize("concept, noun", [("teapot", "teapot"), ("dog", "dog")])
def test_identifier_hint_names_the_runs_class_noun(concept, noun, fake, tmp_path, monkeypatch, capsys) -> None:
    data, results = mini_dreambench(tmp_path / "data"), tmp_path / "results"
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", concept, "--data", data,
                         "--results", results)
    assert code == 0, err
    run = results / "tiny" / "fake" / "default" / concept / "seed0"
    out = tmp_path / "x.png"
    monkeypatch.setenv("BENCH_DATA", str(data))  # the dataset `bench generate` reads the noun from (or --data)
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", f"a {noun} on the moon",
                         "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"identifier '<fake>', e.g. \"a <fake> {noun} on the moon\"" in err
    assert not out.exists()
    # no dataset at hand to read the class noun from: the hint leaves the noun out rather than guess one
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "no-data"))
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", "a teapot on the moon",
                         "--out", out)
    assert code == 2 and 'e.g. "a <fake> on the moon"' in err, err
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", "a teapot on the moon",
                         "--out", out, "--data", data)  # --data wins over $BENCH_DATA
    assert code == 2 and f'e.g. "a <fake> {noun} on the moon"' in err, err


def test_identifier_hint_of_a_user_concept_has_no_guessed_noun(fake, tmp_path, monkeypatch, capsys) -> None:
    data, results = mini_dreambench(tmp_path / "data"), tmp_path / "results"
    folder = tmp_path / "mug"
    shutil.copytree(data / "dataset" / "teapot", folder)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concept-dir", folder, "--class-noun",
                         "mug", "--data", data, "--results", results)
    assert code == 0, err
    (run,) = (results / "tiny" / "fake" / "default").glob("mug@*/seed0")
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", "a mug on the moon",
                         "--out", tmp_path / "x.png", "--data", data)
    assert code == 2 and 'e.g. "a <fake> on the moon"' in err and "dog" not in err, err
