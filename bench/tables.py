"""Paper tables from run records only (they never train or score), as Markdown and CSV.

Aggregation: per training seed, the released evaluation's pooled mean over every scored image / pair of every
concept (`bench.metrics.aggregate`); then mean (and std when there are several) over training seeds. Each row
counts its done and failed runs, so nothing is silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.api import BenchError

TABLES = ("main",)
METHOD_LABELS = {"custom_diffusion": "Custom Diffusion", "echodistill": "EchoDistill",
                 "textual_inversion": "Textual Inversion", "dreambooth": "DreamBooth", "lora": "LoRA"}
TRAIN_NFE = {"t999": 1, "four_step": 4, "uniform": 1000}


def row_labels(record: dict[str, Any]) -> dict[str, Any]:
    """Method, model and NFE columns, derived from what the record says about its config and models."""
    config = record.get("config", {})
    if record.get("backbone") == "hyper-sd15":
        model = "Hyper-SD1.5"
    else:
        model = "SD 2.1" if config.get("base") == "teacher" else "SD Turbo"
    return {
        "method": METHOD_LABELS.get(record["method"], record["method"]),
        "variant": record["variant"],
        "model": model,
        "train_nfe": TRAIN_NFE.get(config.get("timestep_policy", "t999"), 1),
        "infer_nfe": record.get("steps", config.get("sample_steps", 1)),
    }


def records_frame(records: list[dict[str, Any]]) -> Any:
    """One row per run: labels, status, metrics and timings."""
    import pandas as pd

    rows = []
    for r in records:
        timing = r.get("timing", {})
        rows.append({**row_labels(r), "profile": r["profile"], "suite": r.get("metric_suite", {}).get("name"),
                     "concept": r["concept"], "seed": r["seed"], "status": r["status"],
                     **{k: r.get("metrics", {}).get(k) for k in ("clip_t", "clip_i", "dino")},
                     "train_time_s": timing.get("train_s"), "infer_time_s": timing.get("infer_s_per_image"),
                     "iterations": timing.get("iterations"), "images": r.get("images", [])})
    return pd.DataFrame(rows)


def main_table(records: list[dict[str, Any]]) -> Any:
    """Paper Tables 1/5: one row per (method, variant) with metrics, train/infer time, iterations, run counts."""
    import pandas as pd

    from bench.metrics import aggregate

    if not records:
        raise BenchError("no run records found; run `bench run ...` first, or pass --results DIR")
    frame = records_frame(records)
    keys = ["method", "model", "variant", "train_nfe", "infer_nfe"]
    out = []
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        done = group[group.status == "done"]
        per_seed = []
        for _, seed_group in done.groupby("seed"):
            rows = [{**img, "concept": c} for c, imgs in zip(seed_group.concept, seed_group.images) for img in imgs]
            per_seed.append(aggregate(rows))
        row = dict(zip(keys, key))
        for metric in ("clip_t", "clip_i", "dino"):
            values = pd.Series([s[metric] for s in per_seed], dtype=float)
            row[metric] = values.mean() if len(values) else float("nan")
            row[f"{metric}_std"] = values.std() if len(values) > 1 else float("nan")
        row["train_time_s"] = done.train_time_s.mean()
        row["infer_time_s"] = done.infer_time_s.mean()
        row["iterations"] = done.iterations.max()
        row["concepts"] = done.concept.nunique()
        row["seeds"] = done.seed.nunique()
        row["done"] = len(done)
        row["failed"] = int((group.status == "failed").sum())
        out.append(row)
    table = pd.DataFrame(out)
    table.attrs["caption"] = (f"Main table; profile {', '.join(sorted(frame.profile.unique()))}; "
                              f"metric suite {', '.join(sorted(map(str, frame.suite.unique())))}")
    return table


def render(table: Any, fmt: str) -> str:
    """Markdown (with its caption) or CSV."""
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if fmt != "md":
        raise BenchError(f"unknown format '{fmt}'; valid: md, csv")
    cols = list(table.columns)
    lines = [f"**{table.attrs.get('caption', '')}**", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3f}"
    return str(value)


def build_table(name: str, results: Path, profile: str | None) -> Any:
    from bench.store import iter_records

    if name not in TABLES:
        from bench.registry import unknown

        raise unknown("table", name, TABLES)
    return main_table(list(iter_records(results, profile)))
