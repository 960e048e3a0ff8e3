"""The workflow's script (tools/paper_tables.py) run locally on `tiny`: N = 3 shards as three processes with their
own results folders, merged, give the same tables as one unsharded run of the same plan.

The fast version uses the test-only method `fake` (tests/fake_bench.py, run as `bench` through $BENCH_MODULE);
the slow one uses LoRA, a real method. Timing columns are left out of the comparison (they are measured)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "paper_tables.py"
CONCEPTS = "dog,cat,teapot"


def script(method: str, results: Path, data: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_MODULE": "tests.fake_bench", "BENCH_DATA": str(data)}
    argv = [sys.executable, str(SCRIPT), "--profile", "tiny", "--concepts", CONCEPTS, "--seeds", "0",
            "--pieces", "main", "--methods", method, "--results", str(results), "--data", str(data), *args]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out
    return out


def measured_tables(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Every CSV table, without the columns that hold measured times."""
    tables = {}
    for path in sorted(folder.glob("*.csv")):
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        tables[path.stem] = [{k: v for k, v in r.items() if "time" not in k} for r in rows]
    return tables


def check_sharded_equals_unsharded(method: str, tmp_path: Path, data: Path) -> None:
    shards = [tmp_path / f"shard{k}" for k in (1, 2, 3)]
    procs = [script(method, folder, data, "shard", str(k), "3", "--executor", "local")
             for k, folder in enumerate(shards, start=1)]
    logs = [finish(p) for p in procs]
    runs = [int(log.split(" of the plan's")[0].rsplit(" ", 1)[-1]) for log in logs]  # "shard k/3: M of ..."
    assert sum(runs) == 3 and max(runs) < 3, logs  # every run exactly once, spread over more than one shard
    finish(script(method, tmp_path / "merged", data, "merge", *map(str, shards), "--into",
                  str(tmp_path / "merged"), "--out", str(tmp_path / "published"), "--no-report"))
    finish(script(method, tmp_path / "whole", data, "shard", "1", "1", "--executor", "local"))
    finish(script(method, tmp_path / "whole", data, "merge", str(tmp_path / "whole"), "--into",
                  str(tmp_path / "whole-merged"), "--out", str(tmp_path / "published-whole"), "--no-report"))
    sharded = measured_tables(tmp_path / "published" / "tables")
    whole = measured_tables(tmp_path / "published-whole" / "tables")
    assert sharded and sharded == whole
    measured = [r for t in sharded.values() for r in t if r.get("method") == method and r.get("kind") != "not_run"]
    assert measured and all(r["clip_t"] for r in measured), sharded  # the method's row holds measured scores


def test_three_shards_merged_equal_one_run_fake(tmp_path, dreambench_root):
    check_sharded_equals_unsharded("fake", tmp_path, dreambench_root)


@pytest.mark.slow
def test_three_shards_merged_equal_one_run_lora(tmp_path, dreambench_root):
    check_sharded_equals_unsharded("lora", tmp_path, dreambench_root)


def test_estimate_of_the_whole_plan_pays_a_shared_training_once(capsys, tmp_path, dreambench_root, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)  # no perf records here: the paper's timings
    code = load_script().main(["--profile", "paper", "--concepts", "dog,cat", "--pieces", "main,nfe", "--methods",
                               "echodistill", "--results", str(tmp_path), "--data", str(dreambench_root),
                               "estimate", "--format", "json", "--shards", "2"])
    result = json.loads(capsys.readouterr().out)
    rows = {r["variant"]: r for r in result["rows"]}
    assert code == 0 and set(rows) == {"default", "nfe1", "nfe2", "nfe4"}
    assert rows["default"]["hours_left"] == pytest.approx(2 * (3137 + 0.18 * 100) / 3600)
    assert rows["nfe1"]["hours_left"] == pytest.approx(2 * 0.18 * 100 / 3600)  # sampled from default's training
    assert sum(s["runs"] for s in result["shards"]) == 8


def test_pack_copies_records_and_loss_logs_only(tmp_path, capsys):
    from bench import store

    run = tmp_path / "results" / "paper" / "lora" / "default" / "dog" / "seed0"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "lora.safetensors").write_bytes(b"w")
    (run / "loss_log.jsonl").write_text("{}\n")
    store.write_json_atomic(run / "record.json", {"status": "done", "schema": 1})
    (run.parent / "seed1.partial").mkdir()
    code = load_script().main(["--profile", "paper", "--results", str(tmp_path / "results"), "pack",
                               str(tmp_path / "packed")])
    packed = sorted(p.relative_to(tmp_path / "packed").as_posix() for p in (tmp_path / "packed").rglob("*")
                    if p.is_file())
    assert code == 0 and packed == ["paper/lora/default/dog/seed0/loss_log.jsonl",
                                    "paper/lora/default/dog/seed0/record.json"]


def test_every_shard_runs_every_piece_even_after_an_empty_one(tmp_path, dreambench_root, monkeypatch, capsys):
    """Two pieces with one training each, two shards: each shard has nothing in one piece and still runs the
    other (the shard used to stop at its first empty piece, with exit 2)."""
    from bench import registry
    from tests.fake_method import FakeMethod

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    monkeypatch.setattr(FakeMethod, "variants", {**FakeMethod.variants, "longer": {"iterations": 7}})
    module = load_script()
    monkeypatch.setattr(module, "pieces", lambda methods: [module.Piece("main", "run", ("fake",)),
                                                           module.Piece("longer", "run", ("fake",), ("longer",))])
    common = ["--profile", "tiny", "--concepts", "dog", "--methods", "fake", "--data", str(dreambench_root)]
    outs = []
    for k in (1, 2):
        code = module.main([*common, "--results", str(tmp_path / f"s{k}"), "shard", str(k), "2", "--executor",
                            "local"])
        outs.append(capsys.readouterr().out)
        assert code == 0, outs[-1]
    assert all(out.count("nothing in this shard") == 1 for out in outs), outs  # each shard skipped one piece
    variants = sorted(p.parents[2].name for k in (1, 2) for p in (tmp_path / f"s{k}").rglob("record.json"))
    assert variants == ["default", "longer"]


def test_pack_keeps_only_the_runs_the_shard_owns_and_the_merge_says_what_is_missing(tmp_path, dreambench_root,
                                                                                     monkeypatch, capsys):
    """Records left in a shard's folder by another plan or another N are not packed; a shard that uploaded
    nothing is named in the coverage, with its missing runs, in the tables and in coverage.md."""
    import json

    from bench import registry, store
    from bench.shard import owned_runs

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    module = load_script()
    common = ["--profile", "tiny", "--concepts", "dog,cat,teapot", "--pieces", "main", "--methods", "fake",
              "--data", str(dreambench_root)]
    args = module.parser().parse_args([*common, "--results", str(tmp_path / "s1"), "pack", "x"])
    pairs = [(jobs, ctx) for _, jobs, ctx in module.build_plan(args, check_images=False)]
    mine, theirs = owned_runs(pairs, 1, 2), owned_runs(pairs, 2, 2)
    assert mine and theirs and not set(mine) & set(theirs)
    assert module.main([*common, "--results", str(tmp_path / "s1"), "shard", "1", "2", "--executor", "local"]) == 0
    stray = tmp_path / "s1" / theirs[0]  # a run shard 2 owns now (left by an earlier plan)
    stray.mkdir(parents=True)
    store.write_json_atomic(stray / "record.json", {"status": "done", "schema": 1})
    capsys.readouterr()
    assert module.main([*common, "--results", str(tmp_path / "s1"), "pack", str(tmp_path / "p1"), "--shard",
                        "1/2"]) == 0
    assert "1 not owned by shard 1/2" in capsys.readouterr().out
    packed = sorted(str(p.parent.relative_to(tmp_path / "p1")) for p in (tmp_path / "p1").rglob("record.json"))
    assert packed == mine
    assert json.loads((tmp_path / "p1" / "shard.json").read_text())["runs"] == mine
    monkeypatch.setenv("BENCH_MODULE", "tests.fake_bench")
    code = module.main([*common, "--results", str(tmp_path / "m"), "merge", str(tmp_path / "p1"), "--into",
                        str(tmp_path / "m"), "--out", str(tmp_path / "pub"), "--no-report", "--shards", "2"])
    coverage = (tmp_path / "pub" / "coverage.md").read_text()
    assert code == 0 and f"**{len(theirs)} missing**" in coverage and "from shard(s) 2/2" in coverage
    assert "| 2/2 | " in coverage and "none (timed out" in coverage
    assert coverage in (tmp_path / "pub" / "tables" / "main.md").read_text()


def test_a_shard_run_again_with_resume_continues_its_interrupted_run(tmp_path, dreambench_root, monkeypatch,
                                                                     capsys):
    """`shard --resume` (the workflow's shard step, a requeued SLURM task): the run killed mid-training continues
    from its last checkpoint, and a method without training in the same piece is run, not refused."""
    from bench import registry, store, timing
    from tests.helpers import Killed, kill_at

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    monkeypatch.setitem(registry.METHODS, "fake_prepared", "tests.fake_method:FakePrepared")
    monkeypatch.setattr(timing, "TICK_S", 0.0)
    module = load_script()
    argv = ["--profile", "tiny", "--concepts", "dog", "--pieces", "main", "--methods", "fake,fake_prepared",
            "--data", str(dreambench_root), "--results", str(tmp_path), "shard", "1", "1", "--executor", "local"]
    with monkeypatch.context() as m:
        kill_at(m, 3)  # checkpoints every 2 iterations: killed after logging 3, saved at 2
        with pytest.raises(Killed):
            module.main(argv)
    assert module.main([*argv, "--resume"]) == 0, capsys.readouterr()
    record = store.read_run_record(tmp_path / "tiny" / "fake" / "default" / "dog" / "seed0")
    assert [a["resumed_from"] for a in record.timing.attempts] == [None, {"train": 2}]
    assert record.timing.iterations == 6
    assert store.read_run_record(tmp_path / "tiny" / "fake_prepared" / "default" / "dog" / "seed0").status == "done"


DREAMBENCH_CLASSES = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal", "berry_bowl": "bowl",
    "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat", "clock": "clock", "colorful_sneaker": "sneaker",
    "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog",
    "duck_toy": "toy", "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon", "robot_toy": "toy",
    "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase", "wolf_plushie": "stuffed animal"}
"""DreamBench's 30 subjects and their classes (its `prompts_and_classes.txt`): the plan's size needs only these."""


def thirty_concepts(root: Path, fixture: Path) -> Path:
    """DreamBench's layout with its 30 subjects, each holding the fixture dog's photos (the cost of a plan depends
    on its concepts and prompts, not on the photos' pixels), so the README's figures are checked without the real
    copy too."""
    prompts = (fixture / "dataset" / "prompts_and_classes.txt").read_text()
    head, tail = prompts.split("subject_name,class\n", 1)
    tail = tail[tail.index("\nPrompts"):]
    rows = "".join(f"{name},{cls}\n" for name, cls in DREAMBENCH_CLASSES.items())
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "prompts_and_classes.txt").write_text(head + "subject_name,class\n" + rows + tail)
    for name in DREAMBENCH_CLASSES:
        (root / "dataset" / name).mkdir()
        for photo in sorted((fixture / "dataset" / "dog").iterdir()):
            (root / "dataset" / name / photo.name).write_bytes(photo.read_bytes())
    return root


def test_the_readmes_cost_figures_are_what_the_script_prints(dreambench_root, tmp_path, capsys, monkeypatch):
    import re

    from tests.conftest import MINI_DREAMBENCH

    real_dreambench_root = (dreambench_root if dreambench_root != MINI_DREAMBENCH
                            else thirty_concepts(tmp_path / "dreambench", MINI_DREAMBENCH))
    monkeypatch.chdir(tmp_path)  # no perf records here: the paper's timings, as the README says
    code = load_script().main(["--profile", "paper", "--concepts", "all", "--seeds", "0", "--pieces", "all",
                               "--results", str(tmp_path / "none"), "--data", str(real_dreambench_root),
                               "--job-limit-h", "70", "--gpus-per-shard", "1", "estimate", "--shards", "4",
                               "--summary"])
    printed = capsys.readouterr().out.strip()
    readme = (REPO / "README.md").read_text()
    quoted = re.search(r"<!-- cost:begin -->\n> (.*?)\n<!-- cost:end -->", readme, re.S).group(1)
    assert code == 0 and printed == quoted


def test_check_names_every_role_without_weights_before_any_run(tmp_path, capsys):
    """The weights manifest comes from the methods and profiles: a weights folder without FLUX.1 fails `check`,
    naming OminiControl's roles and the folders expected; `--weights` flags cover every group the plan uses."""
    from bench.manifest import manifest

    module = load_script()
    groups = manifest([(("ominicontrol", "ip_adapter_tcd", "echodistill"), "sd-turbo")])
    for entry in groups:  # every role's files, but FLUX.1's
        if entry.folder == "FLUX.1-schnell":
            continue
        for inside in entry.roles.values():
            (tmp_path / "w" / entry.folder / inside).mkdir(parents=True, exist_ok=True)
    (tmp_path / "w" / "metrics" / "dinov2").mkdir(parents=True)
    (tmp_path / "w" / "metrics" / "open_clip_model.safetensors").write_bytes(b"")
    (tmp_path / "w" / "metrics" / "dinov2" / "model.safetensors").write_bytes(b"")
    argv = ["--profile", "paper", "--weights", str(tmp_path / "w"), "--pieces", "main", "--methods",
            "ominicontrol,ip_adapter_tcd,echodistill"]
    code = module.main([*argv, "check"])
    err = capsys.readouterr().err
    expected = tmp_path / "w" / "FLUX.1-schnell" / "transformer"
    assert code == 1 and "role flux_transformer" in err and str(expected) in err
    assert "sdxl" not in err and "tcd_lora" not in err
    (tmp_path / "w" / "FLUX.1-schnell").mkdir()
    for inside in next(g for g in groups if g.folder == "FLUX.1-schnell").roles.values():
        (tmp_path / "w" / "FLUX.1-schnell" / inside).mkdir(parents=True, exist_ok=True)
    assert module.main([*argv, "check"]) == 0
    piece = module.Piece("main", "run", ("ominicontrol", "ip_adapter_tcd"))
    flags = module.weight_flags(str(tmp_path / "w"), "paper", piece)
    named = {f.split("=")[0] for f in flags if "=" in f}
    assert {"flux", "omini", "sdxl", "tcd_lora", "ip_adapter_sdxl"} <= named
