"""Paper tables from records: golden outputs, honest aggregation, paper mapping, CLI, and speed on a full sweep.

Golden files live in tests/golden/tables/; after a deliberate change, regenerate them with
`UPDATE_GOLDEN=1 pytest tests/test_tables.py` and review the diff. The records they render are the hand-made
tree in tests/golden/records/ (see tests/golden/make_records.py for what it holds: a failed run, missing runs,
an ad-hoc override, a variant no table lists, two profiles).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import pytest

from bench import tables as T
from bench.api import BenchError
from bench.record import RunRecord

GOLDEN = Path(__file__).parent / "golden"
RECORDS = GOLDEN / "records"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

CASES = [(name, fmt, None) for name in T.TABLES for fmt in T.FORMATS]
CASES += [("main", "md", "paper"), ("main", "csv", "paper"), ("ablation", "md", "paper"), ("echo", "md", "paper")]


@pytest.fixture(scope="module")
def records() -> list[RunRecord]:
    return T.load_records(RECORDS)


@pytest.mark.parametrize("name,fmt,compare", CASES, ids=[f"{n}-{f}{'-paper' if c else ''}" for n, f, c in CASES])
def test_golden(records: list[RunRecord], name: str, fmt: str, compare: str | None) -> None:
    text = T.render(T.build_tables(name, records, compare), fmt)
    path = GOLDEN / "tables" / f"{name}{'-paper' if compare else ''}.{fmt}"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{path} differs; if the change is deliberate, UPDATE_GOLDEN=1"


def _row(tables: list[T.Table], profile: str, label: str, variant: str | None = None) -> T.Row:
    for t in tables:
        for r in t.rows:
            if t.profile == profile and r.label == label and (variant is None or r.variant == variant):
                return r
    raise AssertionError(f"no row {label!r} in profile {profile}")


def test_failed_and_missing_runs_are_shown_in_the_cell(records: list[RunRecord]) -> None:
    main = T.build_tables("main", records)
    sd21 = _row(main, "tiny", "Custom Diffusion", "sd21")
    assert (sd21.stats.done, sd21.stats.expected, sd21.stats.failed, sd21.stats.missing) == (3, 4, 1, 0)
    assert T.metric_cell(sd21, "clip_i").endswith("(3/4, 1 failed)")
    echo = _row(main, "tiny", "EchoDistill, after echo")
    assert (echo.stats.done, echo.stats.missing) == (3, 1)
    assert "(3/4, 1 missing)" in T.metric_cell(echo, "dino")
    text = T.render(main, "md")
    assert "teapot/seed1: failed (Diverged" in text  # the reason is shown, not only the count
    complete = _row(main, "tiny", "Custom Diffusion", "default")
    assert complete.stats.complete and "(" not in T.metric_cell(complete, "clip_t")


def test_cells_match_the_released_aggregation(records: list[RunRecord]) -> None:
    """The cell is `bench.metrics.aggregate`'s headline: per run the mean over eval seeds of per-seed means, per
    concept the mean over its training seeds, then the mean over concepts; `pooled` is aggregate's `*_pooled`."""
    from bench.metrics import aggregate

    main = T.build_tables("main", records)
    row = _row(main, "tiny", "Custom Diffusion", "sd21")  # teapot seed 1 failed: dog has 2 runs, teapot 1
    runs = [r for r in records if r.profile == "tiny" and r.method == "custom_diffusion"
            and r.variant == "sd21" and r.status == "done"]
    per_run = {(r.concept, r.seed): aggregate([{**img.to_json(), "concept": r.concept} for img in r.images])
               for r in runs}
    for r in runs:  # the run's own metric, as `bench run` records it
        assert T.summarize_run(r).values == pytest.approx({m: r.metrics[m] for m in T.METRICS}, abs=1e-12)
    seeds = sorted({r.seed for r in runs})
    per_seed = []
    for seed in seeds:
        images = [{**img.to_json(), "concept": r.concept} for r in runs if r.seed == seed for img in r.images]
        per_seed.append(aggregate(images))
        assert T.pooled([T.summarize_run(r) for r in runs if r.seed == seed]) == pytest.approx(
            {m: per_seed[-1][f"{m}_pooled"] for m in T.METRICS}, abs=1e-12)
    for m in T.METRICS:
        concept = {c: [v[m] for (cc, _), v in per_run.items() if cc == c] for c in ("dog", "teapot")}
        per_concept = {c: sum(v) / len(v) for c, v in concept.items()}
        assert row.stats.per_concept["dog"][m] == pytest.approx(per_concept["dog"], abs=1e-12)
        assert row.stats.mean[m] == pytest.approx(sum(per_concept.values()) / 2, abs=1e-12)
        values = [s[m] for s in per_seed]  # each training seed's mean over its concepts
        mean = sum(values) / 2
        assert row.stats.std[m] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values)), abs=1e-12)
        pooled_values = [s[f"{m}_pooled"] for s in per_seed]
        assert row.stats.pooled[m] == pytest.approx(sum(pooled_values) / 2, abs=1e-12)
        assert row.stats.mean[m] != pytest.approx(row.stats.pooled[m], abs=1e-6)  # the fixture tells them apart
    # the interval is over concepts, of the mean of per-concept means
    assert set(row.stats.per_concept) == {"dog", "teapot"}
    for m in T.METRICS:
        concept_means = [c[m] for c in row.stats.per_concept.values()]
        assert min(concept_means) - 1e-12 <= row.stats.lo[m] <= row.stats.hi[m] <= max(concept_means) + 1e-12


def _run(concept: str, seed: int, images: list[tuple[int, float, int]]) -> dict:
    """A done record with images (eval seed, score for all three metrics, n_real)."""
    rows = [{"eval_seed": e, "clip_t": v, "clip_i": v, "dino": v, "n_real": n} for e, v, n in images]
    return {"status": "done", "concept": concept, "seed": seed, "images": rows}


def test_pooling_weighs_pairs_not_concepts() -> None:
    """The pooled figure pools over (image, real) pairs: a concept with more real images weighs more, as the
    released script prints per seed."""
    pooled = T.pooled([T.summarize_run(_run("a", 0, [(0, 1.0, 3)])), T.summarize_run(_run("b", 0, [(0, 0.0, 1)]))])
    assert pooled["clip_i"] == pytest.approx(0.75)


def test_headline_weighs_concepts_equally() -> None:
    """The headline is the mean over concepts ("Average over Instances"), whatever their real-image counts."""
    stats = T.cell_stats([_run("a", 0, [(0, 1.0, 3)]), _run("b", 0, [(0, 0.0, 1)])], "metrics", ["a", "b"], [0])
    for m in T.METRICS:
        assert stats.mean[m] == pytest.approx(0.5)  # pooled over pairs: 0.75
        assert stats.pooled[m] == pytest.approx(0.75 if m != "clip_t" else 0.5)


def test_headline_is_mean_over_concepts_of_their_training_seed_means() -> None:
    """Concept a has runs on training seeds 0 (1.0) and 1 (0.0); b only on seed 0 (1.0): a = 0.5, b = 1.0, so the
    headline is 0.75 (a mean over seeds of each seed's pooled value would be (1.0 + 0.0) / 2)."""
    records = [_run("a", 0, [(0, 1.0, 2)]), _run("a", 1, [(0, 0.0, 2)]), _run("b", 0, [(0, 1.0, 2)])]
    stats = T.cell_stats(records, "metrics", ["a", "b"], [0, 1])
    assert stats.per_concept == {"a": pytest.approx(dict.fromkeys(T.METRICS, 0.5)),
                                 "b": pytest.approx(dict.fromkeys(T.METRICS, 1.0))}
    assert stats.mean["clip_i"] == pytest.approx(0.75) and stats.pooled["clip_i"] == pytest.approx(0.5)
    assert stats.std["clip_i"] == pytest.approx(math.sqrt(0.5))  # seed 0: 1.0, seed 1: 0.0
    assert (stats.done, stats.missing) == (3, 1)


def test_run_value_is_mean_over_eval_seeds_of_seed_means() -> None:
    """Eval seed 0 has two images (0.2, 0.4), seed 1 one (0.9): the run scores (0.3 + 0.9) / 2 = 0.6, not the
    image mean 0.5."""
    record = _run("a", 0, [(0, 0.2, 3), (0, 0.4, 3), (1, 0.9, 3)])
    assert T.summarize_run(record).values == pytest.approx(dict.fromkeys(T.METRICS, 0.6))
    stats = T.cell_stats([record], "metrics", ["a"], [0])
    assert stats.per_concept["a"]["clip_t"] == pytest.approx(0.6) and stats.mean["dino"] == pytest.approx(0.6)


def test_csv_carries_the_pooled_figure(records: list[RunRecord]) -> None:
    text = T.render(T.build_tables("main", records), "csv")
    head = text.splitlines()[0].split(",")
    assert {"clip_t_pooled", "clip_i_pooled", "dino_pooled"} <= set(head)
    assert "mean over concepts of per-concept means" in T.render(T.build_tables("main", records), "md")


def test_bootstrap_is_deterministic_and_brackets_the_mean() -> None:
    rng = random.Random(1)
    values = [rng.random() for _ in range(30)]
    lo, hi = T.bootstrap_interval(values)
    assert (lo, hi) == T.bootstrap_interval(values)
    assert lo < sum(values) / len(values) < hi
    assert T.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(x) for x in T.bootstrap_interval([0.5]))


def test_real_vs_real_ceiling_row(records: list[RunRecord]) -> None:
    row = _row(T.build_tables("main", records), "tiny", "Real vs real (ceiling)")
    # dog: 5 real images (20 pairs, clip_i 0.95), teapot: 3 (6 pairs, 0.93): the mean over concepts, like every
    # other row; pooled over pairs beside it
    assert row.stats.mean["clip_i"] == pytest.approx((0.95 + 0.93) / 2)
    assert row.stats.pooled["clip_i"] == pytest.approx((0.95 * 20 + 0.93 * 6) / 26)
    assert math.isnan(row.stats.mean["clip_t"])


def test_echo_table_reads_views_and_the_final_student(records: list[RunRecord]) -> None:
    echo = [t for t in T.build_tables("echo", records) if t.profile == "paper"][0]
    rec = [r for r in records if r.profile == "paper" and r.method == "echodistill"][0]
    expect = {"Teacher, before echo": rec.views["teacher_before_echo"].metrics,
              "Teacher, after echo": rec.views["teacher"].metrics,
              "Student, before echo": rec.views["student_before_echo"].metrics,
              "Student, after echo": rec.metrics}
    for row in echo.rows:
        for m in T.METRICS:
            assert row.stats.mean[m] == pytest.approx(expect[row.label][m], abs=1e-9), (row.label, m)


def test_every_run_lands_in_some_table(records: list[RunRecord]) -> None:
    shown = {(r.method, r.variant) for t in T.build_tables("all", records) for r in t.rows if r.kind == "measured"}
    assert {(r.method, r.variant) for r in records} <= shown


def test_paper_rows_resolve_and_the_shipped_csv_is_the_reference() -> None:
    for d in T.DEFS.values():
        for spec in d.rows:
            if spec.paper is not None:
                assert spec.paper in T.paper_rows(), f"{d.name}: {spec.label} -> {spec.paper}"
    shared = Path("/work/shared/reference/paper_tables.csv")
    shipped = Path(T.__file__).parents[1] / "reference" / "paper_tables.csv"
    if shared.exists():
        assert shipped.read_text() == shared.read_text()


def test_variant_names() -> None:
    assert T.split_variant("default") == ("default", "")
    assert T.split_variant("default+iterations=500") == ("default", "iterations=500")
    assert T.split_variant("drop_disc_clip+disc_dino1+lr=1e-05") == ("drop_disc_clip+disc_dino1", "lr=1e-05")


def test_compare_caption_says_when_hardware_and_weights_differ(records: list[RunRecord]) -> None:
    tables = T.build_tables("main", records, "paper")
    by_profile = {t.profile: t.caption for t in tables}
    assert "different hardware and weights" in by_profile["tiny"]
    assert "different hardware and weights" not in by_profile["paper"]
    assert "metric suite tiny" in by_profile["tiny"] and "Profile `tiny`" in by_profile["tiny"]


def test_user_errors_are_one_line(tmp_path: Path, records: list[RunRecord]) -> None:
    with pytest.raises(BenchError, match="unknown table 'mian'.*did you mean 'main'"):
        T.build_tables("mian", records)
    with pytest.raises(BenchError, match="unknown --compare target"):
        T.build_tables("main", records, "arxiv")
    with pytest.raises(BenchError, match="no run records found"):
        T.table_command("main", tmp_path, None, "md", None, None)
    with pytest.raises(BenchError, match="unknown format"):
        T.table_command("main", RECORDS, None, "html", None, None)


def test_cli_table_writes_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["table", "all", "--format", "csv", "--results", str(RECORDS), "--profile",
                                      "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.csv" for n in T.TABLES)
    main = (tmp_path / "main.csv").read_text()
    assert main.splitlines()[0].startswith("table,profile,metric_suite,row")
    assert all(",tiny," in line for line in main.splitlines()[1:])
    assert result.output.startswith("table,profile")


# --- speed: a full sweep's records ----------------------------------------------------------------------------


def synthetic_records(n: int = 2000, concepts: int = 30) -> list[dict]:
    """`n` schema-true records over every table's variants: 25 prompts x 4 eval seeds per run, EchoDistill
    runs with their three views, about 2% failed; each records how it is shown, as a run writes it."""
    variants = [("custom_diffusion", v) for v in ["default", "sd21"] + [f"train{t}-infer{i}" for t in (1, 4, 1000)
                                                                         for i in (1, 4, 25)]]
    variants += [(m, "default") for m in ("textual_inversion", "dreambooth", "lora")]
    variants += [("echodistill", v) for v in ["default", "teacher_first", "shots1", "nfe1", "nfe2", "nfe4",
                                              "backbone_hyper-sd15"] + [f"drop_{d}" for d in T_DROPS]]
    rng = random.Random(0)

    def evaluation(n_real: int) -> dict:
        images = [{"file": f"images/p{p:02d}_s{s}.png", "prompt_index": p, "eval_seed": s, "prompt": "a <new1> dog",
                   "clip_t": rng.random(), "clip_i": rng.random(), "dino": rng.random(), "n_real": n_real}
                  for p in range(25) for s in range(4)]
        return {"steps": 1, "metrics": {"clip_t": 0.2, "clip_i": 0.5, "dino": 0.3}, "images": images,
                "real_vs_real": {"clip_i": 0.9, "dino": 0.8, "n": n_real, "n_pairs": n_real * (n_real - 1)},
                "timing": {"infer_s_per_image": 0.1}}

    out: list[dict] = []
    seed = 0
    while len(out) < n:
        for method, variant in variants:
            for c in range(concepts):
                if len(out) == n:
                    return out
                failed = rng.random() < 0.02
                rec = {"schema": 1, "status": "failed" if failed else "done", "method": method, "variant": variant,
                       "concept": f"concept{c:02d}", "seed": seed, "profile": "tiny", "backbone": "sd-turbo",
                       "metric_suite": {"name": "tiny"}, "config": {}, "views": {},
                       "presentation": {"label": method, "table_view": "student_before_echo" if method ==
                                        "echodistill" else None, "table_view_note": "", "model": "SD Turbo"}}
                if failed:
                    rec["reason"] = "Diverged: nan"
                else:
                    rec.update(evaluation(3 + c % 4), timing={"train_s": 10.0, "iterations": 40,
                                                              "infer_s_per_image": 0.1})
                    if method == "echodistill" and variant not in ("teacher_first", "drop_echo"):
                        rec["views"] = {v: evaluation(3 + c % 4) for v in
                                        ("teacher", "student_before_echo", "teacher_before_echo")}
                out.append(rec)
        seed += 1
    return out


T_DROPS = ("teacher", "discriminators", "disc_dino1", "disc_dino2", "disc_clip", "id_loss", "mse_loss",
           "msswd_loss", "ste", "echo")


def test_all_tables_from_2000_records_render_under_2s() -> None:
    """CPU time of the render (process time: this machine's other jobs must not fail the test), from typed records:
    converting the dicts (`RunRecord.from_json`, timed apart here) is part of reading them, which the on-disk test
    below times whole."""
    records = synthetic_records()
    cpu = time.process_time()
    records = T.as_records(records)
    print(f"\n2000 synthetic records typed (RunRecord.from_json): {time.process_time() - cpu:.2f} s CPU")
    T.build_tables("main", records[:10])  # imports (numpy) outside the timed part
    cpu, wall = time.process_time(), time.perf_counter()
    tables = T.build_tables("all", records, "paper")
    md, csv = T.render(tables, "md"), T.render(tables, "csv")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"bench table all, 2000 records in memory: {cpu:.2f} s CPU, {wall:.2f} s wall")
    assert cpu < 2.0
    assert md.count("### ") == len(T.TABLES) and csv.count("\n") > 40


@pytest.mark.slow
def test_all_tables_from_2000_records_on_disk(tmp_path: Path) -> None:
    """From disk: reading 2000 full records (~100 MB of JSON) dominates; the render itself stays as above."""
    for r in synthetic_records():
        d = tmp_path / r["profile"] / r["method"] / r["variant"] / r["concept"] / f"seed{r['seed']}"
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(r))
    cpu, wall = time.process_time(), time.perf_counter()
    text = T.table_command("all", tmp_path, None, "md", None, None)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"bench table all, 2000 records from disk: {cpu:.2f} s CPU, {wall:.2f} s wall")
    assert text.count("### ") == len(T.TABLES)
    assert cpu < 10.0


def test_a_bad_table_name_is_reported_before_reading_results(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="did you mean 'main'"):
        T.table_command("mian", tmp_path / "empty", None, "md", None, None)


def test_a_run_on_another_backbone_gets_its_own_row(records: list[RunRecord]) -> None:
    other = [dataclasses.replace(r, backbone="hyper-sd15") for r in records
             if r.profile == "paper" and r.method == "echodistill" and r.variant == "default"]
    tables = T.build_tables("all", records + other)
    rows = [(t.name, r.variant) for t in tables if t.profile == "paper" for r in t.rows if r.kind == "measured"]
    assert ("backbone", "default@hyper-sd15") in rows
    assert ("main", "default@hyper-sd15") not in rows


PLUG_SHOWN = {"label": "Plug-in Method (test)", "table_view": "early",
              "table_view_note": "the early model where the run has one", "model": "Plug-XL"}
"""What a plug-in's runs record of how they are shown (`RunRecord.presentation`)."""


def test_a_plugin_method_is_shown_as_its_records_say(tmp_path: Path, monkeypatch) -> None:
    """No registry, no `--include`, no source: a plug-in's runs carry its label, table view and base model. Its
    rows are a section of their own, labelled once, with its own model; a method whose (older) records carry
    nothing shows by its name, on its backbone, reading its own evaluation."""
    from bench import plugins, registry

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # "plug" is registered nowhere
    monkeypatch.setattr(plugins, "_discovered", {"entry_points"})
    monkeypatch.delenv(plugins.INCLUDE_ENV, raising=False)

    def run(method: str, variant: str, concept: str, final: float, early: float) -> dict:
        rec = {**_run(concept, 0, [(0, final, 2)]), "method": method, "variant": variant, "profile": "tiny",
               "metric_suite": {"name": "tiny"}, "backbone": "sd-turbo"}
        if method == "plug":
            rec["presentation"] = PLUG_SHOWN
        return {**rec, "views": {"early": {"images": _run(concept, 0, [(0, early, 2)])["images"]}}}

    records = [run("plug", v, c, 0.9, 0.1) for v in ("default", "drop_x", "nfe2") for c in ("a", "b")]
    records += [run("unloaded", "default", c, 0.9, 0.1) for c in ("a", "b")]
    records += [run("custom_diffusion", "default", c, 0.5, 0.5) for c in ("a", "b")]
    tables = {t.name: t for t in T.build_tables("all", records)}
    main = {r.label: r for r in tables["main"].rows if r.kind == "measured"}
    assert set(main) == {"Plug-in Method (test)", "unloaded", "Custom Diffusion"}
    assert main["Plug-in Method (test)"].stats.mean["clip_i"] == pytest.approx(0.1)  # the declared view
    assert main["unloaded"].stats.mean["clip_i"] == pytest.approx(0.9)  # no declaration: its own
    assert (main["Plug-in Method (test)"].model, main["unloaded"].model) == ("Plug-XL", "SD Turbo")
    assert [r.section for r in tables["main"].rows][-2:] == ["Other methods"] * 2  # after the paper's rows
    assert "Plug-in Method (test) rows: the early model where the run has one." in tables["main"].caption
    assert [r.label for r in tables["ablation"].rows if r.kind == "measured"] == ["Plug-in Method (test) w/o x"]
    assert [r.label for r in tables["nfe"].rows if r.kind == "measured"] == ["Plug-in Method (test) (nfe2)"]
    md = T.to_markdown(tables["main"])
    assert md.index("| Custom Diffusion |") < md.index("#### Other methods") < md.index("| Plug-in Method (test) |")
    assert "(test) (default)" not in md and "| Plug-in Method (test) | default | Plug-XL |" in md


def test_tables_read_how_runs_are_shown_from_their_records_only(tmp_path) -> None:
    """`bench table` on records that carry their presentation imports no method and needs no registration of the
    plug-in that made them."""
    import json
    import subprocess
    import sys

    for concept in ("a", "b"):
        rec = {**_run(concept, 0, [(0, 0.5, 2)]), "method": "plug", "variant": "default", "profile": "tiny",
               "metric_suite": {"name": "tiny"}, "backbone": "sd-turbo", "presentation": PLUG_SHOWN}
        folder = tmp_path / "tiny" / "plug" / "default" / concept / "seed0"
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(rec))
    code = ("import json, sys; from bench.tables import table_command; "
            f"text = table_command('main', {str(tmp_path)!r}, None, 'md', None, None); "
            "print(json.dumps([text, [m for m in sys.modules if m.startswith(('baselines', 'echodistill'))]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "BENCH_INCLUDE": ""}).stdout
    text, methods = json.loads(out)
    assert not methods
    assert "| Plug-in Method (test) | default | Plug-XL |" in text and "#### Other methods" in text
