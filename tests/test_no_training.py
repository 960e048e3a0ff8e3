"""The "does not train" contract (`Method.trains = False`, `prepare`): what the harness records, refuses and prints.

Uses the test-only method `fake_prepared` (tests/fake_method.py) on the real harness path, so it runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import store
from tests.helpers import bench


def _run(monkeypatch, capsys, data: Path, results: Path, *extra: str) -> tuple[int, str, str]:
    return bench(monkeypatch, capsys, "run", "--method", "fake_prepared", "--concepts", "dog,teapot", "--data", data,
                 "--results", results, *extra)


def test_a_run_without_training_records_conditioning_and_no_train_time(fake, dreambench_root, tmp_path,
                                                                         monkeypatch, capsys) -> None:
    code, _, err = _run(monkeypatch, capsys, dreambench_root, tmp_path, "--variant", "default,two")
    assert code == 0, err
    records = {(r["variant"], r["concept"]): r for r in store.iter_records(tmp_path)}
    assert len(records) == 4
    for (variant, concept), r in records.items():
        assert r["status"] == "done" and r["trains"] is False
        photos = sorted(p.name for p in (dreambench_root / "dataset" / concept).iterdir())
        assert r["conditioning"] == photos[:1 if variant == "default" else 2]
        timing = r["timing"]
        assert "train_s" not in timing and "iterations" not in timing and "it_per_s" not in timing
        assert timing["prepare_s"] >= 0 and timing["infer_s_per_image"] > 0
        run_dir = Path(r["run_dir"])
        assert r["loss_log"] is None and not (run_dir / "loss_log.jsonl").exists()
        assert not (run_dir / "work").exists() and (run_dir / "weights" / "fake.safetensors").is_file()
        assert r["trained_from"] is None, "nothing trained, nothing shared between variants"
        assert r["images"][0]["prompt"] == f"a {concept} in the jungle", "no identifier: the class noun alone"
    # the conditioning changes the images: one photo against two
    one, two = records[("default", "dog")], records[("two", "dog")]
    assert one["images"][0]["clip_i"] != two["images"][0]["clip_i"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", ".lock"))]

    code, _, err = _run(monkeypatch, capsys, dreambench_root, tmp_path)
    assert code == 0 and "2 skipped" in err, "a finished run is not redone"
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", tmp_path, "--method", "fake_prepared",
                         "--variant", "default,two", "--concepts", "dog,teapot", "--data", dreambench_root)
    assert code == 0 and out.strip().splitlines()[-1] == "4 done"


def test_variants_of_a_method_without_training_never_wait_for_each_other(dreambench_root, tmp_path) -> None:
    """`default` and `tcd4` differ in a sampling-only field: a training method's two runs would share one
    training (one key, the second waits for the first); these have nothing to share."""
    from bench.runs import SweepRequest, prepare, variants_for

    request = SweepRequest(methods=("ip_adapter_tcd",),
                           variants=tuple(variants_for(["ip_adapter_tcd"], ["default", "tcd4"], {})),
                           concepts="dog", data=dreambench_root, results=tmp_path)
    runs, _ = prepare(request)
    assert len({run.training_hash for run in runs}) == 1, "the sampling-only difference alone"
    assert len({run.training_key for run in runs}) == 2


@pytest.mark.parametrize("extra, message", [(("--resume",), "does not train"),
                                            (("--set", "rounds=3"), "does not train"),
                                            (("--set", "iterations=5"), "unknown config field 'iterations'")])
def test_resume_and_iteration_overrides_are_refused(fake, dreambench_root, tmp_path, monkeypatch, capsys,
                                                    extra, message) -> None:
    """`rounds` is declared `SCHEDULE`: refused by its role; `iterations` is no field of it (a name means
    nothing): refused as any unknown field is."""
    code, _, err = _run(monkeypatch, capsys, dreambench_root, tmp_path / "r", *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "r").exists(), "refused before any work"


def test_a_training_method_in_the_same_sweep_is_refused_too(fake, dreambench_root, tmp_path, monkeypatch,
                                                            capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake,fake_prepared", "--concepts", "dog",
                         "--data", dreambench_root, "--results", tmp_path / "r", "--resume")
    assert code == 2 and "fake_prepared" in err and "--resume" in err
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path / "r", "--resume", "--set", "iterations=2")
    assert code == 0, "a method that trains still resumes and takes iteration overrides"


def test_tables_print_a_slash_for_train_time(fake, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = _run(monkeypatch, capsys, dreambench_root, tmp_path)
    assert code == 0, err
    # the same records as IP-Adapter (TCD)'s: the main table's own row
    for r in store.iter_records(tmp_path):
        path = Path(r["run_dir"]) / "record.json"
        data = json.loads(path.read_text())
        data["method"] = "ip_adapter_tcd"
        target = tmp_path / "as_ip" / "tiny" / "ip_adapter_tcd" / "default" / r["concept"] / "seed0"
        target.mkdir(parents=True)
        (target / "record.json").write_text(json.dumps(data))
    from bench.tables import build_tables, md_rows, render

    for results, label in ((tmp_path, "fake_prepared"), (tmp_path / "as_ip", "IP-Adapter")):
        (table,) = build_tables("main", list(store.iter_records(results)), compare="paper")
        head, body = md_rows(table)
        row = dict(zip(head, next(cells for cells in body if cells[0] == label)))
        assert row["Train (s)"] == "/" and row["Iterations"] == "/" and row["Train NFE"] == "/"
        assert row["Infer (s/img)"] not in ("/", "–") and row["Runs"] == "2/2"
    assert row["Train paper (s)"] == "/" and row["CLIP-I paper"] == "0.628" and row["Infer paper (s/img)"].startswith(
        "0.39")
    text = render([table], "md")
    assert "not in harness" not in next(line for line in text.splitlines() if line.startswith("| IP-Adapter"))
    csv_row = next(line for line in render([table], "csv").splitlines() if ",IP-Adapter," in line)
    assert ",measured,ip_adapter_tcd," in csv_row
