"""`--shard K/N` (bench.shard) and `bench plan` (bench.estimate): partition properties and the cost estimate.

Plans are built with `bench.runs.plan` and `plan_runs` on made-up concept names: neither the partition nor the
estimate reads the dataset, so these tests need no data and no models.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench import registry, store
from bench.ablations import ablation_variants
from bench.api import BenchError
from bench.runs import Context, plan, plan_runs
from bench.shard import SLACK, assign, group_jobs, parse_shard, shard_jobs
from tests.helpers import bench


def concepts(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def paper_plan(n_concepts: int = 30, seeds: list[int] | None = None, ctx: Context | None = None) -> list:
    """A slice of the paper's plan, planned: three baselines, EchoDistill, its NFE sweep (one shared training) and
    two ablations."""
    seeds = seeds or [0]
    names = concepts(n_concepts)
    jobs = plan(["lora", "textual_inversion", "dreambooth", "echodistill"], [("default", {})], names, seeds, "paper")
    jobs += plan(["echodistill"], ablation_variants([], False, None, "1,2,4", "sd-turbo"), names, seeds, "paper")
    jobs += plan(["echodistill"], [("drop_teacher", {}), ("teacher_first", {})], names, seeds, "paper")
    return plan_runs(jobs, ctx or Context(data=Path("data"), results=Path("results"), suite="tiny"))


def planned(ctx: Context, *args) -> list:
    """`plan(*args)`'s jobs, planned in `ctx`."""
    return plan_runs(plan(*args), ctx)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(data=tmp_path / "data", results=tmp_path / "results", suite="tiny")


def test_parse_shard_accepts_k_of_n_and_rejects_the_rest():
    assert parse_shard("1/3") == (1, 3)
    assert parse_shard(" 3 / 3 ") == (3, 3)
    for bad in ("4/3", "0/2", "a/b", "1/0", "2", "-1/2", ""):
        with pytest.raises(BenchError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("spec", ["4/3", "0/2", "a/b"])
def test_bad_shard_is_one_line_and_exit_2(monkeypatch, capsys, spec):
    for command in (["run", "--method", "lora"], ["ablate", "--nfe", "1,2"], ["plan", "--method", "lora"]):
        code, _out, err = bench(monkeypatch, capsys, *command, "--concepts", "dog", "--shard", spec)
        assert code == 2, (command, err)
        assert err.count("\n") == 1 and f"'{spec}'" in err


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_are_disjoint_complete_and_keep_shared_trainings_together(ctx, n):
    jobs = paper_plan(12)
    parts = [shard_jobs(jobs, ctx, k, n) for k in range(1, n + 1)]
    seen = [job for part in parts for job in part]
    assert sorted(seen, key=repr) == sorted(jobs, key=repr) and len(seen) == len(set(seen))
    shard_of = {job: k for k, part in enumerate(parts) for job in part}
    for c in concepts(12):  # nfe1, nfe2, nfe4 share one training (eval_steps is sampling-only)
        nfe = [j for j in jobs if j.job.concept == c and j.job.variant.startswith("nfe")]
        assert len(nfe) == 3 and len({shard_of[j] for j in nfe}) == 1


def test_partition_ignores_job_order_and_the_results_folder(ctx, tmp_path):
    jobs = paper_plan(10, ctx=ctx)
    first = [{run.job for run in shard_jobs(jobs, ctx, k, 3)} for k in (1, 2, 3)]
    other = Context(data=tmp_path / "elsewhere", results=tmp_path / "other-results", suite="tiny",
                    weights={"student": "/somewhere/local/sd-turbo"})  # another machine's paths
    shuffled = paper_plan(10, ctx=other)
    random.Random(1).shuffle(shuffled)
    store.write_json_atomic(jobs[0].key.path(other.results) / "record.json", {"status": "done"})  # its own state
    assert [{run.job for run in shard_jobs(shuffled, other, k, 3)} for k in (1, 2, 3)] == first


def test_balanced_by_cost_not_count(ctx):
    jobs = paper_plan(30)
    groups = group_jobs(jobs, ctx)
    costs = {g.key: g.cost for g in groups}
    for n in (2, 3, 4, 7):
        where = assign(groups, n)
        loads = [sum(costs[k] for k, s in where.items() if s == shard) for shard in range(n)]
        total, largest = sum(costs.values()), max(costs.values())
        assert max(loads) <= max((1 + SLACK) * total / n, total / n + largest) + 1e-6
        assert max(loads) / (total / n) < 1.1  # with hundreds of groups, within a tenth of the mean
    # an EchoDistill training costs ~20 LoRA ones: equal counts would be far off, equal costs are not
    lora = [g for g in groups if g.jobs[0].job.method == "lora"]
    echo = [g for g in groups if g.jobs[0].job.method == "echodistill" and g.jobs[0].job.variant == "default"]
    assert echo[0].cost > 10 * lora[0].cost


def _moved(before: list, after: list, ctx: Context, n: int) -> float:
    """Fraction of the groups of `before` that land in another shard in the plan `after`."""
    old_groups, new_groups = group_jobs(before, ctx), group_jobs(after, ctx)
    old, new = assign(old_groups, n), assign(new_groups, n)
    return sum(old[g.key] != new[g.key] for g in old_groups) / len(old_groups)


def test_adding_concepts_or_seeds_moves_few_finished_groups(ctx):
    base = paper_plan(30)
    for n in (3, 4):
        assert _moved(base, paper_plan(31), ctx, n) < 0.05  # measured: 1-3 %
        assert _moved(base, paper_plan(35), ctx, n) < 0.1
        assert _moved(base, paper_plan(30, [0, 1]), ctx, n) < 0.15  # twice the plan: still most stay


def test_estimate_from_the_papers_timings(ctx, monkeypatch, capsys):
    from bench.estimate import estimate

    jobs = planned(ctx, ["echodistill"], ablation_variants([], False, None, "1,2,4", "sd-turbo"), concepts(3), [0],
                   "paper")
    result = estimate(jobs, ctx, "some GPU", [])
    rows = {r["variant"]: r for r in result["rows"]}
    assert {r["source"] for r in rows.values()} == {"paper, extrapolated"}  # Table 5 times the default run only
    images = 25 * 4  # prompts x evaluation seeds (paper profile)
    # nfe1 trains (Table 5: 3137 s for 1000 iterations) and samples at 0.18 s/image; nfe2/nfe4 only sample
    assert rows["nfe1"]["hours_left"] == pytest.approx(3 * (3137 + 0.18 * images) / 3600)
    assert rows["nfe2"]["hours_left"] == pytest.approx(3 * 0.18 * 2 * images / 3600)
    assert result["total"]["left"] == 9 and result["total"]["done"] == 0


def test_estimate_counts_done_runs_and_uses_matching_perf_records(ctx, tmp_path):
    from bench.estimate import estimate, job_facts

    jobs = planned(ctx, ["lora"], [("default", {})], concepts(2), [0], "paper")
    done = jobs[0]
    store.write_json_atomic(done.run_dir / "record.json", {"status": "done", "config_hash": done.config_hash,
                                                           "schema": 1})
    perf = tmp_path / "perf"
    entry = {"method": "lora", "device": "NVIDIA H100", "train_step_s": 0.5, "infer_s_per_image_batched": 0.1,
             "default_steps": 1, "speed_label": "default"}
    store.write_json_atomic(perf / "a.json", {"kind": "perf", "profile": "paper", "batch": 1,
                                              "created_at": "2026-01-01", "methods": [entry]})
    facts = job_facts(jobs[1])
    matched = estimate(jobs, ctx, "NVIDIA H100", [perf])
    row = matched["rows"][0]
    assert (row["runs"], row["done"], row["left"], row["source"]) == (2, 1, 1, "perf")
    scale = (facts.batch_size or 1) / 1
    assert row["hours_left"] == pytest.approx((0.5 * facts.iterations * scale + 0.1 * facts.images) / 3600)
    other_device = estimate(jobs, ctx, "NVIDIA A40", [perf])
    assert other_device["rows"][0]["source"] == "paper"  # a perf record of another device does not count


def test_estimate_without_any_timing_source_is_one_line_exit_2(monkeypatch, capsys, tmp_path, dreambench_root):
    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    code, _out, err = bench(monkeypatch, capsys, "plan", "--method", "fake", "--concepts", "dog",
                           "--results", tmp_path, "--perf", tmp_path, "--data", dreambench_root)
    assert code == 2 and err.count("\n") == 1
    assert "no timing source for fake" in err and "bench perf --methods fake" in err


def test_plan_command_table_and_json(monkeypatch, capsys, tmp_path, dreambench_root):
    code, out, _ = bench(monkeypatch, capsys, "plan", "--method", "lora,echodistill", "--concepts", "dog,cat",
                         "--profile", "paper", "--results", tmp_path, "--perf", tmp_path, "--shards", "2",
                         "--data", dreambench_root)
    assert code == 0
    assert "| lora | default | 2 | 0 | 0 | 2 |" in out and "| 1/2 |" in out and "paper" in out
    code, out, _ = bench(monkeypatch, capsys, "plan", "--method", "lora", "--concepts", "dog,cat", "--profile",
                         "paper", "--results", tmp_path, "--perf", tmp_path, "--format", "json", "--shard", "1/1",
                         "--data", dreambench_root)
    result = json.loads(out)
    assert code == 0 and result["total"]["runs"] == 2 and result["shard"] == "1/1"
    assert result["rows"][0]["source"] == "paper"


def test_paper_timings_found_by_name_for_methods_without_a_table_label(monkeypatch):
    from bench import registry
    from bench.estimate import paper_label, paper_timing

    assert paper_label("cones2") == "Cones 2" and paper_label("ip_adapter_tcd") == "IP-Adapter"
    monkeypatch.setitem(registry.METHODS, "dreambooth_xl", "tests.fake_method:FakeMethod")  # registered, no label
    assert paper_label("dreambooth_xl") == "DreamBooth" and paper_label("lora_plus") == "LoRA"
    assert paper_label("fake") is None and paper_timing("fake", "sd-turbo", 1) is None
    assert paper_timing("ip_adapter_tcd", "sd-turbo", 1) == (0.0, 0.39)  # encoder-based: no training time
    assert paper_timing("custom_diffusion", "sd-turbo", 25) == (0.541, 1.57)  # the row with the run's steps


def test_a_training_shared_by_two_sweeps_lands_in_one_shard(ctx):
    from bench.shard import shard_pieces

    names = concepts(30)
    main = planned(ctx, ["lora", "textual_inversion", "echodistill"], [("default", {})], names, [0], "paper")
    nfe = planned(ctx, ["echodistill"], ablation_variants([], False, None, "1,2,4", "sd-turbo"), names, [0], "paper")
    for n in (3, 4, 8):
        parts = [shard_pieces([(main, ctx), (nfe, ctx)], k, n) for k in range(1, n + 1)]
        where = {job: k for k, (m, f) in enumerate(parts) for job in m + f}
        assert len(where) == len(main) + len(nfe)
        for c in names:  # EchoDistill's default run and nfe1 (same config) share one training
            shared = [j for j in main + nfe if j.job.method == "echodistill" and j.job.concept == c]
            assert len({where[j] for j in shared}) == 1


def test_bench_run_shard_runs_only_its_part(monkeypatch, capsys, tmp_path, dreambench_root):
    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    ctx = Context(data=dreambench_root, results=tmp_path, suite="tiny")
    jobs = planned(ctx, ["fake"], [("default", {})], ["dog", "cat", "teapot", "can"], [0], "tiny")
    mine = shard_jobs(jobs, ctx, 2, 2)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog,cat,teapot,can",
                         "--results", tmp_path, "--data", dreambench_root, "--shard", "2/2")
    done = sorted(r["concept"] for r in store.iter_records(tmp_path))
    assert code == 0 and done == sorted(j.job.concept for j in mine) and 0 < len(done) < 4
    assert f"shard 2/2: {len(mine)} of the plan's 4 runs" in err


def test_an_empty_shard_of_bench_run_exits_0_with_one_line(monkeypatch, capsys, tmp_path, dreambench_root):
    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    ctx = Context(data=dreambench_root, results=tmp_path, suite="tiny")
    jobs = planned(ctx, ["fake"], [("default", {})], ["dog"], [0], "tiny")
    empty = next(k for k in (1, 2) if not shard_jobs(jobs, ctx, k, 2))
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "fake", "--concepts", "dog", "--results", tmp_path,
                         "--data", dreambench_root, "--shard", f"{empty}/2")
    assert code == 0 and "nothing in this shard" in err, err
    assert not list(store.iter_records(tmp_path))


def test_a_variant_the_paper_times_is_costed_from_its_own_row_and_the_others_are_labelled(ctx):
    from bench.estimate import estimate

    jobs = planned(ctx, ["custom_diffusion"], [("sd21", {}), ("default", {})], concepts(2), [0], "paper")
    jobs += planned(ctx, ["echodistill"], [("drop_teacher", {})], concepts(2), [0], "paper")
    rows = {r["variant"]: r for r in estimate(jobs, ctx, "some GPU", [])["rows"]}
    images = 25 * 4
    assert rows["sd21"]["hours_left"] == pytest.approx(2 * (345 + 2.73 * images) / 3600)  # SD 2.1's row: 618 s
    assert rows["default"]["hours_left"] == pytest.approx(2 * (543 + 0.22 * images) / 3600)  # train 1, infer 1
    assert rows["sd21"]["source"] == rows["default"]["source"] == "paper"
    assert rows["drop_teacher"]["source"] == "paper, extrapolated"  # an ablation the paper does not time


def test_estimate_flags_shards_over_the_job_limit_and_proposes_the_smallest_n(ctx):
    from bench.shard import cost_summary, fitting_shards, render_cost

    pairs = [(paper_plan(), ctx)]
    whole = cost_summary(pairs, 1, limit_h=1e6)["gpu_hours"]
    limit = whole / 3.5  # fits in 4 shards at the earliest (bounded loads), never in 3
    summary = cost_summary(pairs, 2, limit_h=limit)
    assert all(s["over_limit"] for s in summary["shards"])
    n = summary["fits"]
    assert n is not None and n >= 4
    fit = fitting_shards(pairs, limit * 3600)
    assert fit[0] == n and max(s["reference_s"] for s in fit[1]) / 3600 <= limit
    assert max(s["reference_s"] for s in cost_summary(pairs, n - 1, limit_h=limit)["shards"]) / 3600 > limit
    assert cost_summary(pairs, 2, limit_h=limit, gpus=4)["fits"] == 1 if whole / 4 <= limit else True
    text = render_cost(summary)
    assert f"smallest shard count that fits is {n}" in text and "over the" in text
