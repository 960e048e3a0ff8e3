"""`--shard K/N`: a deterministic, cost-balanced partition of a plan into N parts, one per machine.

Every machine computes the partition on its own, from the plan alone, so it must not depend on anything that
differs between machines or between re-runs: not on which runs are done there, not on local perf records, not on
the order of the jobs, not on local weight paths. It depends on:

- the *training group* of each job: jobs that would share one training (`bench.runs.training_hash` without the
  model paths: method, concept, seed, profile, backbone, training config) form one group and always land in the
  same shard, so the shard trains once and samples the others from those weights;
- the *reference cost* of each group (`bench.estimate.reference_cost`: the paper's Table 5 timings scaled by the
  job's iterations and images; the same numbers on every machine).

Assignment: weighted rendezvous (highest-random-weight) hashing with bounded loads. Each group ranks the N shards
by `sha256(group key, shard)`; groups are placed one by one in the order of their own hash, each into its
highest-ranked shard that stays under the capacity `(1 + SLACK) * total cost / N`, else into the least-loaded
shard. What this provides (tested in tests/test_shard.py):

- the same plan and N give the same partition on every machine, whatever the order of the jobs or the state of
  the results folder; the N shards are disjoint and together are the plan;
- jobs sharing a training are in one shard;
- no shard's reference cost exceeds `max((1 + SLACK) * total / N, total / N + largest group)`;
- adding concepts or seeds keeps most existing groups where they were: a group moves only when a shard it
  preferred filled up differently, so a re-run after growing the plan redoes few finished runs elsewhere. This
  is measured, not guaranteed: adding one concept to 30 moved 1-3 % of the existing groups for N = 2..4, and
  doubling the seeds under 3 % (tests/test_shard.py bounds them at 5 % and 15 %).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.api import BenchError

SLACK = 0.05
"""How far above the mean cost a shard may fill before a group goes to its next-preferred shard."""


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1-based: `1/3`, `2/3`, `3/3`) -> (K, N); anything else is one line naming the valid forms."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise BenchError(f"bad --shard '{text}'; expected K/N with 1 <= K <= N, e.g. --shard 1/3")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise BenchError(f"bad --shard '{text}': K must be between 1 and N (N >= 1), e.g. --shard 1/{max(n, 1)}")
    return k, n


@dataclass(frozen=True)
class Group:
    """Jobs that share one training: placed together."""

    key: str
    """The training identity (machine independent), also the group's hashing key."""
    cost: float
    """Reference cost in seconds (training once, sampling each job)."""
    jobs: tuple[Any, ...]


def _score(key: str, salt: int | str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}|{salt}".encode()).digest()[:8], "big")


def assign(groups: list[Group], n: int, slack: float = SLACK) -> dict[str, int]:
    """{group key: shard index 0..n-1}, by bounded-load rendezvous hashing (see the module docstring)."""
    if n < 1:
        raise BenchError(f"the number of shards must be >= 1, got {n}")
    total = sum(g.cost for g in groups)
    capacity = (1 + slack) * total / n
    loads = [0.0] * n
    out: dict[str, int] = {}
    for group in sorted(groups, key=lambda g: (_score(g.key, "order"), g.key)):
        ranked = sorted(range(n), key=lambda s: (-_score(group.key, s), s))
        chosen = next((s for s in ranked if loads[s] + group.cost <= capacity), None)
        if chosen is None:
            chosen = min(ranked, key=lambda s: (loads[s], ranked.index(s)))
        loads[chosen] += group.cost
        out[group.key] = chosen
    return out


def group_jobs(jobs: list[Any], ctx: Any) -> list[Group]:
    """The plan's training groups (of planned runs, `bench.runs.prepare`) with their reference costs (machine
    independent)."""
    return group_pieces([(jobs, ctx)])


def group_pieces(pieces: list[tuple[list[Any], Any]]) -> list[Group]:
    """Training groups over several sweeps at once (each its jobs and their context): a training shared by two
    sweeps (EchoDistill's default run and its `--nfe 1` run) is one group, paid for once."""
    from bench.estimate import job_facts, reference_cost

    members: dict[str, list[Any]] = {}
    facts = {}
    for jobs, _ in pieces:
        for job in jobs:
            facts[job] = job_facts(job)
            members.setdefault(facts[job].group, []).append(job)
    groups = []
    for key, group in members.items():
        cost = sum(reference_cost(facts[job], trains=(i == 0)) for i, job in enumerate(group))
        groups.append(Group(key, cost, tuple(group)))
    return groups


def shard_jobs(jobs: list[Any], ctx: Any, k: int, n: int) -> list[Any]:
    """The jobs of shard `k` (1-based) of `n`, in plan order."""
    return shard_pieces([(jobs, ctx)], k, n)[0]


def shard_pieces(pieces: list[tuple[list[Any], Any]], k: int, n: int) -> list[list[Any]]:
    """Shard `k` of `n` of a plan made of several sweeps, split as one plan (shared trainings together even
    across sweeps): per sweep, its jobs in that shard, in order."""
    if n == 1:
        return [list(jobs) for jobs, _ in pieces]
    groups = group_pieces(pieces)
    where = assign(groups, n)
    mine = {job for g in groups if where[g.key] == k - 1 for job in g.jobs}
    return [[job for job in jobs if job in mine] for jobs, _ in pieces]


def shard_loads(pieces: list[tuple[list[Any], Any]], n: int) -> list[dict[str, Any]]:
    """Per shard: its runs and its reference cost in seconds (for `bench plan --shards N`)."""
    return _loads(group_pieces(pieces), n)


def plan_command(methods: list[str], variants: list[tuple[str, dict[str, Any]]], concepts: str, seeds: list[int],
                 profile: str, backbone: str, data: Path | None, results: Path, suite: str | None,
                 device: str | None, weights: list[str] | None, perf_dirs: list[Path] | None, fmt: str,
                 shard: tuple[int, int] | None = None, shards: int | None = None) -> str:
    """`bench plan`: the estimate of a plan (or of its shard K/N) as Markdown or JSON, with the N shards' loads."""
    from bench.estimate import estimate, render
    from bench.models.loading import default_device
    from bench.runs import SweepRequest, prepare
    from bench.timing import device_name

    if fmt not in ("md", "json"):
        raise BenchError(f"unknown --format '{fmt}'; valid: md, json")
    if shards is not None and shards < 1:
        raise BenchError(f"--shards must be >= 1, got {shards}")
    request = SweepRequest(methods=tuple(methods), variants=tuple(variants), concepts=concepts, seeds=tuple(seeds),
                           profile=profile, backbone=backbone, data=data, results=results, suite=suite,
                           device=device, weights=tuple(weights or ()))
    jobs, ctx = prepare(request, check_images=False)
    loads = shard_loads([(jobs, ctx)], shards) if shards else None
    if shard is not None:
        jobs = shard_jobs(jobs, ctx, *shard)
    folders = perf_dirs if perf_dirs else [Path("results") / "perf", Path(results) / "perf"]
    result = estimate(jobs, ctx, device_name(device or default_device()), folders)
    if shard is not None:
        result["shard"] = f"{shard[0]}/{shard[1]}"
    if loads is not None:
        result["shards"] = loads
    return json.dumps(result, indent=1) + "\n" if fmt == "json" else render(result, loads)


# --- what a shard owns, and what the merge is missing -------------------------------------------------------------


def owned_runs(pieces: list[tuple[list[Any], Any]], k: int, n: int) -> list[str]:
    """The relative run paths (`<profile>/<method>/<variant>/<concept>/seedK`) shard `k` of `n` owns under the
    current plan: what it packs (never a run another shard owns, or one the plan no longer holds)."""
    return sorted({str(job.key.path(Path("."))) for part in shard_pieces(pieces, k, n) for job in part})


def coverage(pieces: list[tuple[list[Any], Any]], n: int, results: Path, packed: dict[int, int] | None
             ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per shard of `n`: its planned runs, how many are done, failed and missing in the merged `results`, and how
    many records it uploaded (`packed[k]`: None when nothing came from it; `packed` None: not known). Totals
    beside."""
    from bench import store

    states: dict[str, str] = {}
    for record in store.iter_run_records(results):
        rel = Path(record.run_dir or "").relative_to(results)
        states[str(rel)] = "done" if record.done else "failed"
    rows = []
    for k in range(1, n + 1):
        runs = owned_runs(pieces, k, n) if n > 1 else sorted({str(j.key.path(Path("."))) for js, _ in pieces
                                                               for j in js})
        done = sum(states.get(r) == "done" for r in runs)
        failed = sum(states.get(r) == "failed" for r in runs)
        rows.append({"shard": f"{k}/{n}", "planned": len(runs), "done": done, "failed": failed,
                     "missing": len(runs) - done - failed,
                     "packed": packed.get(k) if packed is not None else "?"})
    total = {key: sum(r[key] for r in rows) for key in ("planned", "done", "failed", "missing")}
    return rows, total


def render_coverage(rows: list[dict[str, Any]], total: dict[str, int]) -> str:
    """The coverage as Markdown: what the published tables hold of the plan, shard by shard."""
    short = [r for r in rows if r["missing"] or r["packed"] is None]
    lines = ["## Coverage of the plan", "",
             f"{total['done']} of the plan's {total['planned']} runs done, {total['failed']} failed, "
             f"**{total['missing']} missing**"
             + (f" (from shard(s) {', '.join(r['shard'] for r in short)})." if short else "."), "",
             "| shard | planned | done | failed | missing | records uploaded |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        uploaded = "none (timed out or failed before packing?)" if r["packed"] is None else str(r["packed"])
        lines.append(f"| {r['shard']} | {r['planned']} | {r['done']} | {r['failed']} | {r['missing']} | {uploaded} |")
    return "\n".join(lines) + "\n"


JOB_LIMIT_H = 70.0
"""A shard's time limit in hours: the workflow's shard step stops at 4200 min (the job's 72 h, less 2 h to pack and
upload what finished)."""


def fitting_shards(pieces: list[tuple[list[Any], Any]], limit_s: float, gpus: int = 1, most: int = 512
                   ) -> tuple[int, list[dict[str, Any]]] | None:
    """The smallest N whose largest shard, at the paper's timings (`reference_cost`) spread over `gpus` GPUs per
    shard, fits in `limit_s`, and that N's loads; None when even `most` shards do not (one training is longer)."""
    groups = group_pieces(pieces)
    if groups and max(g.cost for g in groups) > limit_s:  # a group never splits (over GPUs either: one run each)
        return None
    for n in range(1, most + 1):
        loads = _loads(groups, n)
        if max(s["reference_s"] for s in loads) / max(gpus, 1) <= limit_s:
            return n, loads
    return None


def _loads(groups: list[Group], n: int) -> list[dict[str, Any]]:
    where = assign(groups, n)
    out = [{"shard": f"{s + 1}/{n}", "runs": 0, "reference_s": 0.0} for s in range(n)]
    for g in groups:
        out[where[g.key]]["runs"] += len(g.jobs)
        out[where[g.key]]["reference_s"] += g.cost
    return out


def cost_summary(pieces: list[tuple[list[Any], Any]], n: int, limit_h: float = JOB_LIMIT_H, gpus: int = 1
                 ) -> dict[str, Any]:
    """The plan's cost at the paper's timings, the N shards' loads (each flagged when over `limit_h` on `gpus`
    GPUs) and the smallest N that fits: what `paper_tables.py estimate` prints and the README quotes."""
    from bench.estimate import job_facts

    groups = group_pieces(pieces)
    loads = _loads(groups, n)
    for s in loads:
        s["hours_per_gpu"] = s["reference_s"] / 3600 / max(gpus, 1)
        s["over_limit"] = s["hours_per_gpu"] > limit_h
    fit = fitting_shards(pieces, limit_h * 3600, gpus)
    extrapolated = sorted({f"{run.job.method}/{run.job.variant}" for runs, _ in pieces for run in runs
                           if _extrapolated(job_facts(run))})
    runs = sum(len(g.jobs) for g in groups)
    return {"runs": runs, "gpu_hours": sum(g.cost for g in groups) / 3600, "shards": loads, "limit_h": limit_h,
            "gpus": gpus, "fits": fit[0] if fit else None,
            "fit_largest_h": max(s["reference_s"] for s in fit[1]) / 3600 / max(gpus, 1) if fit else None,
            "extrapolated": extrapolated}


def _extrapolated(facts: Any) -> bool:
    from bench.estimate import timed_variant

    return timed_variant(facts.method, facts.variant, facts.backbone) is None


def render_cost(summary: dict[str, Any]) -> str:
    """The cost in three sentences (the README's figures are this text) and the shards over the limit."""
    s, n = summary, len(summary["shards"])
    largest = max(x["hours_per_gpu"] for x in s["shards"])
    over = [x["shard"] for x in s["shards"] if x["over_limit"]]
    gpus = f"{s['gpus']} GPU{'s' if s['gpus'] != 1 else ''} per shard"
    text = (f"The plan is {s['runs']} runs, {s['gpu_hours']:.1f} GPU-hours at the paper's A40 timings (a training "
            f"shared by two sweeps counted once). With {n} shard{'s' if n != 1 else ''} and {gpus} the largest "
            f"shard takes {largest:.1f} h")
    text += (f", over the {s['limit_h']:g} h limit (shard{'s' if len(over) > 1 else ''} {', '.join(over)})."
             if over else f", within the {s['limit_h']:g} h limit.")
    if s["fits"] is None:
        text += " No shard count fits: one training alone is longer than the limit."
    else:
        text += (f" The smallest shard count that fits is {s['fits']} (largest shard {s['fit_largest_h']:.1f} h; "
                 f"`matrix auto` picks it).")
    return text + "\n"
