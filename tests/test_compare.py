"""Paired comparisons with known answers: planted records where A beats B by a known margin, records with no
difference, Holm's adjustment on a hand-worked example, the exact sign-flip test by hand, and `bench compare`."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench import compare as C
from bench.api import BenchError

CONCEPTS = [f"c{i:02d}" for i in range(30)]


def planted(method: str, concept: str, seed: int, value: float, profile: str = "tiny") -> dict:
    """A finished run whose every image scores `value` on every metric (two eval seeds, two prompts)."""
    images = [{"file": f"p{i}_s{s}.png", "prompt_index": i, "eval_seed": s, "prompt": "a dog",
               "clip_t": value, "clip_i": value, "dino": value, "n_real": 4} for i in range(2) for s in (0, 1)]
    return {"schema": 1, "status": "done", "method": method, "variant": "default", "concept": concept, "seed": seed,
            "profile": profile, "backbone": "sd-turbo", "metric_suite": {"name": "tiny"}, "images": images}


def beats_on_27(margin: float = 0.05) -> tuple[list[dict], float]:
    """B at a random level per concept; A = B + margin on 27 concepts, B - margin on 3 (known mean difference)."""
    rng = random.Random(1)
    records, diffs = [], []
    for i, c in enumerate(CONCEPTS):
        base = 0.3 + 0.2 * rng.random()
        d = margin if i >= 3 else -margin
        diffs.append(d)
        records += [planted("lora", c, 0, base), planted("echodistill", c, 0, base + d)]
    return records, sum(diffs) / len(diffs)


def test_a_beats_b_on_27_of_30_by_a_known_margin() -> None:
    records, known = beats_on_27()
    assert known == pytest.approx(0.05 * 24 / 30)
    [comp] = C.compare_records(records, ["echodistill", "lora"])
    for d in comp.differences:
        assert d.concepts == 30
        assert d.mean == pytest.approx(known, abs=1e-9)
        assert d.lo > 0 and d.hi > d.lo and d.lo <= known <= d.hi
        assert d.p < 0.05 and d.p == d.p_holm  # one comparison: Holm changes nothing
        assert (d.wins, d.losses, d.ties) == (27, 3, 0)
    # Monte Carlo above EXACT_MAX: under the null the mean of +-0.05 over 30 concepts is >= 0.04 in absolute value
    # with probability 2 * P(Binomial(30, 1/2) >= 27) ~ 8e-6, so every one of 20000 draws misses it.
    assert comp.differences[0].p == pytest.approx(1 / (1 + C.PERMUTATIONS))


def test_no_difference_gives_an_interval_covering_zero() -> None:
    # differences of random size whose signs balance: +x on one concept, -x on the next (true mean 0)
    rng = random.Random(2)
    records = []
    for i, c in enumerate(CONCEPTS):
        base = 0.3 + 0.2 * rng.random()
        x = 0.02 * random.Random(i // 2).random()
        records += [planted("lora", c, 0, base), planted("echodistill", c, 0, base + (x if i % 2 else -x))]
    [comp] = C.compare_records(records, ["echodistill", "lora"])
    for d in comp.differences:
        assert d.mean == pytest.approx(0, abs=1e-9)
        assert d.lo < 0 < d.hi
        assert d.p > 0.5
        assert not d.distinguishable and (d.wins, d.losses) == (15, 15)


def test_exact_sign_flip_by_hand() -> None:
    # d = (1, 2, 3): mean 2; of the 8 sign patterns only (+,+,+) and (-,-,-) reach |mean| >= 2 -> p = 2/8.
    assert C.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # d = (1, -1): every pattern has |mean| >= 0 -> p = 1; all zero -> p = 1.
    assert C.sign_flip_p([1.0, -1.0]) == 1.0
    assert C.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    # d = (3, 1, 1): |mean| 5/3 reached by (+,+,+), (-,-,-) and... (+,+,-)/(+,-,+) give 1 -> p = 2/8.
    assert C.sign_flip_p([3.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert math.isnan(C.sign_flip_p([]))


def test_holm_on_a_hand_worked_example() -> None:
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04.
    #   0.005 * 4 = 0.02;  0.01 * 3 = 0.03;  0.03 * 2 = 0.06;  0.04 * 1 = 0.04 -> max(0.06, 0.04) = 0.06 (monotone).
    assert C.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; NaN stays NaN and does not count in m
    adjusted = C.holm([0.6, math.nan, 0.3])
    assert adjusted[0] == pytest.approx(0.6) and adjusted[2] == pytest.approx(0.6) and math.isnan(adjusted[1])
    assert C.holm([0.9, 0.02]) == pytest.approx([0.9, 0.04])  # 0.02 * 2; then max(0.04, 0.9 * 1)
    assert C.holm([0.5, 0.6, 0.7]) == pytest.approx([1.0, 1.0, 1.0])


def test_several_comparisons_are_holm_adjusted_and_pair_only_shared_concepts() -> None:
    records, _ = beats_on_27()
    # a third method that only has 10 of the concepts, and one failed run
    for c in CONCEPTS[:10]:
        records.append(planted("dreambooth", c, 0, 0.1))
    failed = planted("dreambooth", CONCEPTS[10], 0, 0.1)
    failed.update(status="failed", reason="diverged", images=None)
    records.append(failed)
    [comp] = C.compare_records(records, ["echodistill", "lora", "dreambooth"])
    by = {(d.b, d.metric): d for d in comp.differences}
    assert by[("dreambooth", "dino")].concepts == 10 and by[("lora", "dino")].concepts == 30
    for m in ("clip_t", "clip_i", "dino"):
        ps = [by[("lora", m)].p, by[("dreambooth", m)].p]
        assert [by[("lora", m)].p_holm, by[("dreambooth", m)].p_holm] == pytest.approx(C.holm(ps))
    # dreambooth: 10 concepts, all below A -> exact test, p = 2 / 2^10
    assert by[("dreambooth", "clip_i")].p == pytest.approx(2 / 1024)
    text = C.render([comp], "md")
    assert "Missing, dreambooth:" in text and f"{CONCEPTS[10]}/seed0: failed (diverged)" in text
    assert f"{CONCEPTS[29]}/seed0" in text or "more" in text


def test_concept_means_average_training_seeds_first() -> None:
    # concept x: A seeds 0.5, 0.7 (mean 0.6), B 0.5 -> d = 0.1; concept y: A 0.4, B 0.4 and 0.2 (mean 0.3) -> 0.1
    records = [planted("echodistill", "x", 0, 0.5), planted("echodistill", "x", 1, 0.7), planted("lora", "x", 0, 0.5),
               planted("echodistill", "y", 0, 0.4), planted("lora", "y", 0, 0.4), planted("lora", "y", 1, 0.2)]
    [comp] = C.compare_records(records, ["echodistill", "lora"])
    assert comp.differences[0].per_concept == pytest.approx({"x": 0.1, "y": 0.1})


def _write(root: Path, records: list[dict]) -> None:
    for r in records:
        folder = root / r["profile"] / r["method"] / r["variant"] / r["concept"] / f"seed{r['seed']}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "record.json").write_text(json.dumps(r))


def test_bench_compare_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.helpers import bench

    records, known = beats_on_27()
    _write(tmp_path, records)
    code, out, err = bench(monkeypatch, capsys, "compare", "echodistill", "lora", "--results", str(tmp_path))
    assert code == 0, err
    assert "| echodistill | lora | DINO | 30 |" in out and f"{known:+.4f}" in out and "27 / 3 / 0" in out
    code, out, _ = bench(monkeypatch, capsys, "compare", "echodistill", "lora", "--results", str(tmp_path),
                         "--format", "json")
    data = json.loads(out)
    assert data[0]["differences"][0]["mean"] == pytest.approx(known) and data[0]["differences"][0]["wins"] == 27
    code, out, _ = bench(monkeypatch, capsys, "compare", "echodistill", "lora", "--results", str(tmp_path),
                         "--format", "csv")
    assert out.splitlines()[0] == ",".join(C.CSV_COLUMNS) and len(out.splitlines()) == 4
    code, _, err = bench(monkeypatch, capsys, "compare", "echodistil", "lora", "--results", str(tmp_path))
    assert code == 2 and "unknown method 'echodistil'" in err and "did you mean 'echodistill'" in err
    code, _, err = bench(monkeypatch, capsys, "compare", "echodistill", "--results", str(tmp_path))
    assert code == 2 and "at least two methods" in err
    code, _, err = bench(monkeypatch, capsys, "compare", "dreambooth", "lora", "--results", str(tmp_path))
    assert code == 2 and "no runs of dreambooth" in err


def test_bad_format_is_one_line() -> None:
    with pytest.raises(BenchError, match="unknown format 'xml'"):
        C.render([], "xml")


def _table(records: list[dict], against: str | None, compare: str | None):
    from bench import tables as T
    from bench.tables import paired

    [table] = T.build_tables("main", records, compare)
    return table, paired.annotate(table, against, compare is not None)


def _index(table, label: str, method: str) -> int:
    return next(i for i, r in enumerate(table.rows) if r.label == label and r.method == method)


def test_table_against_gives_the_paired_difference_and_marks_ties_with_the_best() -> None:
    from bench.tables import paired

    records, known = beats_on_27()
    # dreambooth equal to echodistill up to balanced noise: not distinguishable from the best
    for i, c in enumerate(CONCEPTS):
        value = next(r for r in records if r["method"] == "echodistill" and r["concept"] == c)["images"][0]["dino"]
        x = 0.01 * random.Random(i // 2).random()
        records.append(planted("dreambooth", c, 0, value + (x if i % 2 else -x)))
        records.append(planted("base", c, 0, value + 0.5))  # the floor is never "best", even when highest
    table, a = _table(records, "lora", None)
    ed, lora = _index(table, "EchoDistill, before echo", "echodistill"), _index(table, "LoRA", "lora")
    db, floor = _index(table, "DreamBooth", "dreambooth"), _index(table, "Base model (no personalization)", "base")
    assert a.reference == lora and table.rows[floor].kind == "measured" and floor == 0
    assert a.diffs[ed]["dino"].mean == pytest.approx(known) and a.diffs[ed]["dino"].lo > 0
    assert a.best["dino"] in (ed, db) and floor not in a.best.values()
    other = db if a.best["dino"] == ed else ed
    assert "dino" in a.tied.get(other, {}) and "dino" not in a.tied.get(lora, {})
    text = paired.render([table], "md", "lora")
    assert f"{known:+.4f} [" in text and "(n=30)" in text and "Holm-adjusted over the column" in text
    csv_text = paired.render([table], "csv", "lora")
    assert "against_dino_ci_low" in csv_text.splitlines()[0]


def test_compare_paper_counts_cells_inside_the_interval() -> None:
    from bench.tables import paired

    # echodistill's main row (paper: CLIP-T 0.252, CLIP-I 0.783, DINO 0.637); values spread around 0.25 per concept:
    # only CLIP-T's paper value can lie inside the interval. LoRA (paper 0.212 / 0.585 / 0.160) far above all three.
    records = []
    for i, c in enumerate(CONCEPTS):
        records.append(planted("echodistill", c, 0, 0.25 + (0.02 if i % 2 else -0.02)))
        records.append(planted("lora", c, 0, 0.9))
    table, a = _table(records, None, "paper")
    ed, lora = _index(table, "EchoDistill, before echo", "echodistill"), _index(table, "LoRA", "lora")
    assert a.agree[ed] == {"clip_t": True, "clip_i": False, "dino": False}
    assert a.agree[lora] == {"clip_t": False, "clip_i": False, "dino": False}
    text = paired.render([table], "md", None)
    assert "1 of" in text and "CLIP-T 1/" in text and "| in |" in text


def test_bench_table_against_and_compare_paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.helpers import bench

    records, known = beats_on_27()
    _write(tmp_path, records)
    code, out, err = bench(monkeypatch, capsys, "table", "main", "--against", "echodistill", "--compare", "paper",
                           "--results", str(tmp_path))
    assert code == 0, err
    assert "Δ DINO vs echodistill" in out and f"{-known:+.4f} [" in out and "Agreement with the paper:" in out
    code, _, err = bench(monkeypatch, capsys, "table", "main", "--against", "echodistil", "--results", str(tmp_path))
    assert code == 2 and "unknown --against method 'echodistil'" in err


def test_report_forest_plot_of_the_main_table() -> None:
    from bench.report_compare import forest_figures

    records, _ = beats_on_27()
    from bench import tables as T

    [figure] = forest_figures(T.build_tables("main", records))
    assert figure.name.endswith("main-forest.png") and figure.png.startswith(b"\x89PNG")
    assert "Paired" not in figure.caption and "difference to EchoDistill, before echo" in figure.caption
    only_lora = [r for r in records if r["method"] == "lora"]
    assert forest_figures(T.build_tables("main", only_lora)) == []  # no EchoDistill row: nothing to compare with
