"""`bench merge SRC... --into DEST` (bench.merge): copies finished runs, never a failure over a result, refuses
conflicting results in one line, idempotent. Run folders here are hand-made records (no training needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import store
from bench.api import BenchError
from bench.merge import merge
from tests.helpers import bench

RUN = Path("tiny/lora/default/dog/seed0")


def make_run(root: Path, rel: Path = RUN, status: str = "done", config_hash: str = "h1", clip_t: float = 0.25,
             host: str = "a") -> Path:
    run_dir = root / rel
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    (run_dir / "images" / "p00_s0.png").write_bytes(b"png-" + host.encode())
    profile, method, variant, concept, seed = rel.parts
    store.write_json_atomic(run_dir / "record.json", {
        "schema": 1, "status": status, "config_hash": config_hash, "profile": profile, "method": method,
        "variant": variant, "concept": concept, "seed": int(seed.removeprefix("seed")), "host": host,
        "timing": {"train_s": 1.0 if host == "a" else 2.0}, "metrics": {"clip_t": clip_t}})
    return run_dir


def record(root: Path, rel: Path = RUN) -> dict:
    return json.loads((root / rel / "record.json").read_text())


def test_copies_runs_from_every_source_and_is_idempotent(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    make_run(a)
    other = Path("tiny/lora/default/cat/seed0")
    make_run(b, other, host="b")
    make_run(b, host="b")  # the same run, same result, computed elsewhere: not a conflict
    (a / "tiny/lora/default/teapot/seed0.partial").mkdir(parents=True)  # an unfinished attempt: never copied
    first = merge([a, b], dest)
    assert sorted(first.copied) == sorted([str(RUN), str(other)])
    assert (dest / RUN / "images" / "p00_s0.png").read_bytes() == b"png-a"  # the first source's copy
    assert not (dest / "tiny/lora/default/teapot").exists()
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    second = merge([a, b], dest)
    assert second.copied == [] and sorted(second.already) == sorted([str(RUN), str(other)])
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert not list(dest.rglob("*.merge-*")) and not list(dest.rglob("*.lock"))


def test_conflicting_results_stop_before_anything_is_copied(tmp_path, monkeypatch, capsys):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    make_run(a, clip_t=0.25)
    make_run(b, clip_t=0.31, host="b")
    make_run(b, Path("tiny/lora/default/cat/seed0"), host="b")
    with pytest.raises(BenchError, match="conflict.*config hash.*metrics"):
        merge([a, b], dest)
    assert not dest.exists() or not list(dest.rglob("record.json"))
    code, _out, err = bench(monkeypatch, capsys, "merge", a, b, "--into", dest)
    assert code == 2 and err.count("\n") == 1 and "conflict" in err
    make_run(dest, clip_t=0.4, host="c")  # the destination against a source
    with pytest.raises(BenchError, match="conflict"):
        merge([a], dest)
    assert record(dest)["metrics"]["clip_t"] == 0.4


def test_failures_never_replace_results_and_results_replace_failures(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    make_run(dest, status="done", clip_t=0.2)
    make_run(a, status="failed", host="b")
    out = merge([a], dest)
    assert out.kept_done_over_failed == [str(RUN)] and record(dest)["status"] == "done"
    dest2 = tmp_path / "dest2"
    make_run(dest2, status="failed", host="c")
    make_run(b, status="done", clip_t=0.3, host="b")
    out = merge([b], dest2)
    assert out.replaced_failed == [str(RUN)] and record(dest2)["status"] == "done"
    assert (dest2 / RUN / "images" / "p00_s0.png").read_bytes() == b"png-b"
    assert not list(dest2.rglob("seed0.old-*"))
    dest3 = tmp_path / "dest3"  # two sources: the done one wins whatever the order
    merge([a, b], dest3)
    assert record(dest3)["status"] == "done"


def test_another_config_hash_in_the_destination_is_kept(tmp_path):
    a, dest = tmp_path / "a", tmp_path / "dest"
    make_run(a, config_hash="new")
    make_run(dest, config_hash="old", clip_t=0.1)
    out = merge([a], dest)
    assert out.kept_other_hash == [str(RUN)] and record(dest)["config_hash"] == "old"
    assert "kept with another config hash" in out.summary(dest)


def test_bad_sources_are_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = bench(monkeypatch, capsys, "merge", tmp_path / "missing", "--into", tmp_path / "dest")
    assert code == 2 and "is not a folder" in err and err.count("\n") == 1
    (tmp_path / "dest").mkdir()
    code, _, err = bench(monkeypatch, capsys, "merge", tmp_path / "dest", "--into", tmp_path / "dest")
    assert code == 2 and "destination itself" in err


GOLDEN = Path(__file__).parent / "golden" / "records"


def test_records_of_an_older_bench_merge_byte_for_byte(tmp_path):
    """Records written before `trains`, `timing.prepare_s`, `eval_version` existed: copied as they were, a second
    merge finds them already there, and one differing in a result is a conflict."""
    import shutil

    src, dest = tmp_path / "src", tmp_path / "dest"
    shutil.copytree(GOLDEN / "tiny" / "echodistill" / "default", src / "tiny" / "echodistill" / "default")
    records = sorted(src.rglob("record.json"))
    assert records and all("trains" not in json.loads(p.read_text()) for p in records)
    out = merge([src], dest)
    assert len(out.copied) == len(records)
    for path in records:
        assert (dest / path.relative_to(src)).read_bytes() == path.read_bytes()
    again = merge([src], dest)
    assert again.copied == [] and len(again.already) == len(records)
    rel = records[0].parent.relative_to(src)
    data = json.loads(records[0].read_text())
    data["timing"] = {"train_s": 999.0}  # volatile: the same result
    data["host"] = "elsewhere"
    other = tmp_path / "other"
    store.write_json_atomic(other / rel / "record.json", data)
    assert merge([other], dest).already == [str(rel)]
    data["metrics"] = {**data["metrics"], "clip_t": -1.0}
    store.write_json_atomic(other / rel / "record.json", data)
    with pytest.raises(BenchError, match="conflict.*metrics"):
        merge([other], dest)


def test_numerical_noise_is_not_a_conflict_and_the_owner_shard_wins(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    make_run(a, clip_t=0.25)
    make_run(b, clip_t=0.25 * (1 + 3e-7), host="b")  # the same run on another device: the last digits differ
    store.write_json_atomic(b / "shard.json", {"shard": "2/2", "runs": [str(RUN)]})
    outcome = merge([a, b], dest)
    assert outcome.copied == [str(RUN)] and outcome.noise == [str(RUN)]
    assert record(dest)["host"] == "b"  # the owner's copy, though given second
    assert "numerical noise" in outcome.summary(dest) and "owner" in outcome.summary(dest)
    make_run(tmp_path / "c", clip_t=0.25 * (1 - 2e-7), host="c")
    again = merge([tmp_path / "c"], dest)  # against the destination: its copy stands
    assert again.already == [str(RUN)] and again.noise == [str(RUN)] and record(dest)["host"] == "b"


def test_a_real_conflict_says_what_differs_by_how_much_and_where(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, clip_t=0.25)
    make_run(b, clip_t=0.26, host="b")
    with pytest.raises(BenchError) as err:
        merge([a, b], tmp_path / "dest")
    text = str(err.value)
    assert "metrics.clip_t" in text and "0.25 vs 0.26" in text and "differs by 0.01" in text
    assert "computed on" in text and "delete the other run folder" in text


def test_a_merged_away_unfinished_attempt_is_removed(tmp_path, monkeypatch, capsys):
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_run(src)
    partial = store.partial_dir(dest / RUN)
    (partial / "work").mkdir(parents=True)
    store.write_json_atomic(partial / "attempt.json", {"config_hash": "h1", "attempts": 1, "pid": 1, "host": "x"})
    outcome = merge([src], dest)
    assert outcome.copied == [str(RUN)] and not partial.exists() and outcome.tidied
    code, out, _ = bench(monkeypatch, capsys, "status", "--results", dest)
    assert "interrupted" not in out and "unfinished" not in out


def test_a_dead_merges_lock_and_copy_are_cleaned(tmp_path):
    import subprocess
    import sys

    src, dest = tmp_path / "src", tmp_path / "dest"
    make_run(src)
    make_run(dest, Path("tiny/lora/default/cat/seed0"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    run_dir = dest / "tiny/lora/default/cat/seed0"
    lock = store.RunLock(run_dir)
    assert lock.acquire()
    lock._stop.set()
    owner = json.loads(lock.path.read_text())
    lock.path.unlink()
    lock.path.write_text(json.dumps({**owner, "pid": int(dead)}))  # the lock of a merge that was killed
    leftover = run_dir.with_name(f"seed0.merge-{dead}")
    leftover.mkdir()
    outcome = merge([src], dest)
    assert not lock.path.exists() and not leftover.exists()
    assert len(outcome.tidied) == 2 and "dead merge" in outcome.summary(dest)


def test_a_full_disk_stops_the_merge_with_one_line_suggesting_resume(tmp_path, monkeypatch, capsys):
    import errno

    import bench.merge as merging

    src, dest = tmp_path / "src", tmp_path / "dest"
    make_run(src)
    make_run(src, Path("tiny/lora/default/cat/seed0"))
    calls = []

    def full(src_run, tmp, run_dir):  # the second run's copy fills the disk halfway
        if calls:
            (tmp / "half.png").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))
        calls.append(run_dir)
        return original(src_run, tmp, run_dir)

    original = merging._fill
    monkeypatch.setattr(merging, "_fill", full)
    code, _out, err = bench(monkeypatch, capsys, "merge", src, "--into", dest)
    assert code == 4 and "no space left on device" in err and "--resume" in err and "1 of 2 runs copied" in err
    assert len(list(dest.rglob("record.json"))) == 1 and not list(dest.rglob("*.merge-*"))
