"""The typed run record: every record ever written reads and writes back unchanged, results/README.md's schema
tables name exactly its fields, and variant names and suites are parsed once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import store
from bench.record import (
    DONE_KEYS,
    EVERY_RECORD,
    FAILED_KEYS,
    NO_TRAINING_KEYS,
    SCHEMA_VERSION,
    Evaluation,
    RunRecord,
    SuiteRef,
    VariantName,
)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "records"


def _golden() -> list[Path]:
    return sorted(GOLDEN.rglob("*.json"))


@pytest.mark.parametrize("path", _golden(), ids=lambda p: str(p.relative_to(GOLDEN)))
def test_records_written_before_round_trip_unchanged(path: Path) -> None:
    data = json.loads(path.read_text())
    record = RunRecord.from_json(data)
    assert record.to_json() == data
    assert record.method and record.concept and record.status in ("done", "failed")
    if record.done:
        assert set(record.metrics) >= {"clip_t", "clip_i", "dino"}
        assert all(set(image.scores) >= {"clip_t", "clip_i", "dino"} for image in record.images)
        assert record.evaluation.metrics == record.metrics
        assert all(isinstance(view, Evaluation) for view in record.views.values())


def test_unknown_and_missing_keys() -> None:
    data = {"schema": 1, "status": "done", "method": "m", "variant": "default", "concept": "dog", "seed": 0,
            "profile": "tiny", "future_key": {"x": 1}, "timing": {"train_s": 1.0, "new_timer": 2.0},
            "images": [{"file": "images/p00_s0.png", "clip_t": 0.25, "new_metric": 0.5, "note": "kept"}]}
    record = RunRecord.from_json(data)
    assert record.extra == {"future_key": {"x": 1}} and record.timing.extra == {"new_timer": 2.0}
    assert record.images[0].scores == {"clip_t": 0.25, "new_metric": 0.5} and record.images[0].extra == {"note": "kept"}
    assert record.config_hash is None and "config_hash" in record.absent
    assert record.to_json() == data


def test_parts_built_in_code_write_flat_scores() -> None:
    from bench.record import ImageScore

    image = ImageScore(file="images/p00_s0.png", prompt_index=0, scores={"clip_t": 0.3})
    assert image.to_json() == {"file": "images/p00_s0.png", "prompt_index": 0, "eval_seed": None,
                               "noise_seed": None, "prompt": None, "n_real": None, "clip_t": 0.3}
    assert ImageScore.from_json(image.to_json()).scores == {"clip_t": 0.3}


def _readme_keys(table_title: str) -> list[str]:
    text = (REPO / "results" / "README.md").read_text()
    block = text[text.index(table_title):]
    rows = re.findall(r"^\| (`[^|]+`) \|", block.split("\n\n", 2)[1], re.M)
    return [key for row in rows for key in re.findall(r"`([^`]+)`", row)]


def test_results_readme_schema_tables_match_the_record() -> None:
    assert _readme_keys("Every key, in every record:") == list(EVERY_RECORD)
    assert _readme_keys("Finished runs (`status: done`) add:") == list(DONE_KEYS)
    text = (REPO / "results" / "README.md").read_text()
    failed = re.search(r"Failed runs \(`status: failed`\) add (.*?)\.", text, re.S).group(1)
    assert re.findall(r"`(\w+)`", failed) == list(FAILED_KEYS)
    assert f"record schema version ({SCHEMA_VERSION})" in text and store.SCHEMA_VERSION == SCHEMA_VERSION


@pytest.mark.parametrize("text, base, parts", [
    ("default", "default", ()),
    ("default+iterations=500", "default", ("iterations=500",)),
    ("drop_disc_clip+disc_dino1", "drop_disc_clip+disc_dino1", ()),
    ("drop_ste+iterations=2+lr=1e-05", "drop_ste", ("iterations=2", "lr=1e-05")),
    ("nfe2+drop=ste,echo", "nfe2", ("drop=ste,echo",)),
])
def test_variant_names_parse_once(text: str, base: str, parts: tuple[str, ...]) -> None:
    name = VariantName.parse(text)
    assert (name.base, name.parts, str(name)) == (base, parts, text)


def test_suite_ref() -> None:
    assert SuiteRef.of({"name": "paper", "version": 2}) == SuiteRef("paper", 2)
    assert str(SuiteRef.of(None)) == "unknown v1"


def test_a_fresh_run_writes_exactly_the_typed_record(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """What `bench run` writes is what RunRecord declares (no unknown key, nothing missing but the optional
    `rescored` and the failure keys), it reads back typed, lists, and a re-run skips it as done."""
    from bench import registry
    from tests.helpers import bench

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0, err
    run_dir = tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0"
    data = json.loads((run_dir / "record.json").read_text())
    record = RunRecord.from_json(data)
    assert record.extra == {} and record.absent == {"rescored", *FAILED_KEYS, *NO_TRAINING_KEYS}
    assert record.to_json() == data and record.done and record.timing.train_s is not None
    assert store.read_run_record(run_dir).run_dir == str(run_dir)
    assert [r.label() for r in store.iter_run_records(tmp_path)] == ["tiny/fake/default/dog/seed0"]
    code, out, _ = bench(monkeypatch, capsys, "ls", "runs", "--results", tmp_path)
    assert code == 0 and out.startswith("done    tiny/fake/default/dog/seed0  clip_t=")
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "1 skipped" in err


def test_a_record_built_in_code_writes_what_was_set_and_refuses_unknown_fields() -> None:
    from bench.record import Timing, set_fields

    record = RunRecord.start(status="running", method="m", variant="default", concept="dog", seed=0, profile="tiny")
    assert record.to_json() == {"status": "running", "method": "m", "variant": "default", "concept": "dog",
                                "seed": 0, "profile": "tiny"}
    set_fields(record, status="failed", reason="ValueError: x", diverged=False,
               timing=Timing.from_json({"load_s": 1.0}))
    assert record.to_json()["reason"] == "ValueError: x" and record.to_json()["timing"] == {"load_s": 1.0}
    assert "identifier" not in record.to_json() and "run_dir" not in record.to_json()
    with pytest.raises(TypeError, match="RunRecord has no field traceback_txt"):
        set_fields(record, traceback_txt="traceback.txt")  # a misspelt key is an error, never a stray key
    evaluation = Evaluation.from_json({"steps": 1, "metrics": {}, "images": []})
    set_fields(evaluation, real_vs_real={"clip_i": 0.9})  # a part the record read lacked is written from now on
    assert evaluation.to_json()["real_vs_real"] == {"clip_i": 0.9}
