"""The report's figures: bar charts with intervals (one panel per declared metric), CLIP-I vs CLIP-T scatters, each
method's loss curves, and qualitative grids in the style of the paper's Figure 3, as PNG bytes (`Figure`).

They read records, `loss_log.jsonl` files and saved PNGs only; `bench.report` arranges them into the report.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.contract import recorded_by_method
from bench.record import RunRecord
from bench.tables import CD, ED, METRIC_LABELS, METRICS, Table

GRID_COLUMNS = ((CD, "sd21", "Custom Diffusion (SD 2.1)"), (CD, "default", "Custom Diffusion"),
                ("textual_inversion", "default", "Textual Inversion"), ("cones2", "default", "Cones 2"),
                ("dreambooth", "default", "DreamBooth"), ("textboost", "default", "TextBoost"),
                ("disenbooth", "default", "DisenBooth"), ("lora", "default", "LoRA"),
                ("ip_adapter_tcd", "default", "IP-Adapter (TCD)"), ("ominicontrol", "default", "OminiControl (Flux)"),
                (ED, "default", "EchoDistill"))
"""Methods in the qualitative grid, left to right after the reference image (the paper's Figure 3 order: data)."""
GRID_CONCEPTS = 6
LOSS_KEYS = ("loss_student", "loss_teacher", "mse", "id", "msswd", "adv_dino1", "adv_dino2", "adv_clip",
             "disc_dino1", "disc_dino2", "disc_clip", "loss")
"""Loss-log scalars plotted, in this order, for any method logging them (a log may hold others: gradient norms)."""
MAX_LOSS_PANELS = 12
MAX_LOSS_VARIANTS = 8


@dataclass
class Figure:
    name: str
    """File name under figures/ (PNG)."""
    caption: str
    png: bytes


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, tight: bool = False) -> bytes:
    """PNG bytes; figures use constrained layout, so `tight` (a second draw) only where text sits outside axes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight" if tight else None)
    _plt().close(fig)
    return buf.getvalue()


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-")


# --- figures -------------------------------------------------------------------------------------------------


def bar_chart(t: Table) -> Figure | None:
    """One panel per metric; bars are the table's cells, lines their 95% bootstrap intervals over concepts, x the
    paper's number where there is one."""
    rows = [r for r in t.measured if r.stats and any(r.stats.mean[m] == r.stats.mean[m] for m in METRICS)]
    if not rows:
        return None
    plt = _plt()
    counts = defaultdict(int)
    for r in rows:
        counts[r.label] += 1
    labels = [f"{r.label} [{r.variant}]" if counts[r.label] > 1 else r.label for r in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 0.45 * len(rows) + 1.4), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], METRICS, strict=True):  # one panel per declared metric (`bench.metrics.declared`)
        ys = list(range(len(rows)))
        means = [r.stats.mean[m] for r in rows]
        ax.barh(ys, [0 if v != v else v for v in means], color="#8fb3d9")
        for y, r in zip(ys, rows):
            lo, hi = r.stats.lo[m], r.stats.hi[m]
            if lo == lo:
                ax.errorbar([(lo + hi) / 2], [y], xerr=[[(hi - lo) / 2], [(hi - lo) / 2]], fmt="none",
                            ecolor="#203040", capsize=3)
            paper = (r.paper or {}).get(m, math.nan)
            if paper == paper:
                ax.plot([paper], [y], "x", color="#c03030")
        ax.set_title(METRIC_LABELS[m])
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{t.title} ({t.profile}, {t.metric_suite})", fontsize=10)
    caption = (f"{t.title}, profile {t.profile}: bars are the cells (mean over concepts of per-concept means); "
               f"lines their "
               f"95% bootstrap interval over concepts (of the mean of per-concept means); x the paper's number"
               + (" (different hardware and weights)" if t.profile != "paper" else "") + ".")
    return Figure(_slug(t.profile, t.metric_suite, t.name, "bars") + ".png", caption, _png(fig))


def scatter(records: list[RunRecord], profile: str, suite: str) -> Figure | None:
    """CLIP-I against CLIP-T, one panel per method, one point per finished run, coloured by variant."""
    by_method: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        m = r.metrics or {}
        if r.status == "done" and m.get("clip_t") is not None and m.get("clip_i") is not None:
            by_method[r.method][r.variant].append((m["clip_t"], m["clip_i"]))
    if not by_method:
        return None
    plt = _plt()
    methods = sorted(by_method)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), squeeze=False, layout="constrained")
    for ax, method in zip(axes[0], methods):
        variants = sorted(by_method[method], key=lambda v: (v != "default", v))
        for i, v in enumerate(variants):
            pts = by_method[method][v]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.7, color=f"C{i % 10}",
                       label=v if i < 10 else None)
            ax.scatter([sum(p[0] for p in pts) / len(pts)], [sum(p[1] for p in pts) / len(pts)], s=90, marker="X",
                       color=f"C{i % 10}", edgecolors="black")
        ax.set_title(recorded_by_method(records)[method].label)
        ax.set_xlabel("CLIP-T")
        ax.set_ylabel("CLIP-I")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    caption = (f"CLIP-I vs CLIP-T per method (profile {profile}, suite {suite}): one point per run (a concept and "
               f"training seed), the run's scores (mean over evaluation seeds of the per-seed mean over its images "
               f"or image-real pairs); crosses mark each variant's mean over its runs.")
    return Figure(_slug(profile, suite, "scatter") + ".png", caption, _png(fig))


def read_loss_log(run_dir: Path, name: str = "loss_log.jsonl") -> list[dict[str, Any]]:
    """The run's per-iteration log (JSON lines: phase, iteration, scalars); unreadable lines are skipped."""
    rows = []
    try:
        lines = (Path(run_dir) / name).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def loss_figures(records: list[RunRecord], profile: str, suite: str) -> list[Figure]:
    """`loss_curves` for every method whose finished runs logged losses, in name order."""
    methods = sorted({r.method for r in records if r.status == "done" and r.run_dir})
    return [f for m in methods if (f := loss_curves([r for r in records if r.method == m], profile, suite, m))]


def loss_curves(records: list[RunRecord], profile: str, suite: str, method: str) -> Figure | None:
    """A method's logged losses (`LOSS_KEYS` in its logs) per iteration: a panel per loss, a line per variant (mean
    over runs, range shaded); its phases (`Log.begin`: train, distill then echo, ...) follow each other along x."""
    runs: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.method == method and r.status == "done" and r.run_dir:
            runs[r.variant].append(r)
    by_variant: dict[str, list[list[dict[str, Any]]]] = {}
    for variant in sorted(runs, key=lambda v: (v != "default", v)):  # logs are read only for the variants drawn
        logs = [log for r in runs[variant] if (log := read_loss_log(Path(r.run_dir), r.loss_log or "loss_log.jsonl"))]
        if logs:
            by_variant[variant] = logs
        if len(by_variant) == MAX_LOSS_VARIANTS:
            break
    variants = list(by_variant)
    keys = [k for k in LOSS_KEYS if any(k in row for v in variants for log in by_variant[v] for row in log)]
    keys = keys[:MAX_LOSS_PANELS]
    if not keys:
        return None
    plt = _plt()
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 2.9 * nrows), squeeze=False, layout="constrained")
    boundaries = _phase_boundaries(by_variant[variants[0]][0])
    for ax, key in zip(axes.flat, keys):
        for i, variant in enumerate(variants):
            series = [[row.get(key, math.nan) for row in log] for log in by_variant[variant]]
            n = max(len(s) for s in series)
            columns = [[s[j] for s in series if j < len(s)] for j in range(n)]
            mean = [_nanmean(c) for c in columns]
            if all(m != m for m in mean):
                continue
            xs = list(range(n))
            ax.plot(xs, mean, lw=1.2, color=f"C{i}", label=f"{variant} ({len(series)})")
            if len(series) > 1:
                lo = [min((x for x in c if x == x), default=math.nan) for c in columns]
                hi = [max((x for x in c if x == x), default=math.nan) for c in columns]
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
        for x, phase in boundaries:
            ax.axvline(x, ls=":", color="grey")
            ax.text(x, 0.98, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration (phases in order)", fontsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6, title="variant (runs)", title_fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    caption = (f"{recorded_by_method(records)[method].label} losses per iteration (profile {profile}, suite "
               f"{suite}), from each run's loss_log.jsonl: per variant the mean over its runs, shaded from the "
               f"lowest to the highest run; dotted lines mark where a phase begins (in the first variant's log).")
    return Figure(_slug(profile, suite, method, "losses") + ".png", caption, _png(fig))


def _phase_boundaries(log: list[dict[str, Any]]) -> list[tuple[int, str]]:
    out, last = [], None
    for i, row in enumerate(log):
        if row.get("phase") != last:
            last = row.get("phase")
            out.append((i, str(last)))
    return out


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, (int, float)) and x == x]
    return sum(xs) / len(xs) if xs else math.nan


def reference_image(data_root: Path | None, concept: str) -> Path | None:
    """The concept's first real image in the dataset, or None (dataset absent, or not a DreamBench concept)."""
    if data_root is None:
        return None
    from bench.data import image_files

    folder = Path(data_root) / concept
    if not folder.is_dir():  # CustomConcept101 keeps its photos under benchmark_dataset/
        folder = Path(data_root) / "benchmark_dataset" / concept
    try:
        files = image_files(folder) if folder.is_dir() else []
    except Exception:  # noqa: BLE001 - an unreadable folder only costs the reference tile
        files = []
    return files[0] if files else None


def _dataset_folder(data: Path | None) -> tuple[Path | None, str | None]:
    """(folder holding the subjects, None) or (None, why the reference column is skipped)."""
    from bench.api import BenchError
    from bench.cc101 import find_cc101
    from bench.data import find_dataset
    from bench.paths import data_root

    root = data_root(data)
    try:
        return find_dataset(root), None
    except BenchError:
        if find_cc101(root) is not None:
            return find_cc101(root), None
        return None, (f"reference column skipped: no DreamBench dataset at {root} (pass --data DIR or set "
                      f"BENCH_DATA)")


def qualitative_grid(records: list[RunRecord], profile: str, suite: str, dataset: Path | None,
                     why_no_reference: str | None) -> Figure | None:
    """Figure 3 style: one row per concept (a reference photo, then each method's sample for the same prompt
    index and evaluation seed, from the lowest training seed that has every column's run)."""
    runs: dict[tuple[str, str, str], dict[int, RunRecord]] = defaultdict(dict)
    for r in records:
        if r.status == "done" and r.run_dir:
            runs[(r.method, r.variant, r.concept)][r.seed] = r
    columns = [c for c in GRID_COLUMNS if any((c[0], c[1], k[2]) in runs for k in runs)]
    if not columns:
        return None
    concepts = sorted({k[2] for k in runs},
                      key=lambda c: (-sum((m, v, c) in runs for m, v, _ in columns), c))[:GRID_CONCEPTS]
    concepts.sort()
    plt = _plt()
    from PIL import Image

    from bench.data import load_image  # upright per EXIF, square, small: photos are up to 2048 px

    ref_col = 1 if dataset is not None else 0
    ncols = ref_col + len(columns)
    fig, axes = plt.subplots(len(concepts), ncols, figsize=(1.9 * ncols, 2.1 * len(concepts)), squeeze=False)
    for row, concept in enumerate(concepts):
        chosen = _grid_choice(runs, columns, concept, row)
        prompt = chosen[2] if chosen else ""
        if ref_col:
            path = reference_image(dataset, concept)
            _tile(axes[row][0], load_image(path, size=256) if path else None, "no reference image")
            axes[row][0].set_ylabel(concept, fontsize=8)
            if row == 0:
                axes[row][0].set_title("Reference", fontsize=8)
        for j, (method, variant, label) in enumerate(columns):
            ax = axes[row][ref_col + j]
            image = None
            if chosen:
                seed, (p, s), _ = chosen
                rec = runs.get((method, variant, concept), {}).get(seed)
                path = Path(rec.run_dir) / "images" / f"p{p:02d}_s{s}.png" if rec else None
                if path is not None and path.is_file():
                    image = Image.open(path).convert("RGB")
            _tile(ax, image, "missing")
            if row == 0:
                ax.set_title(label, fontsize=8)
            if j == 0 and not ref_col:
                ax.set_ylabel(concept, fontsize=8)
        last = axes[row][ncols - 1]
        last.text(1.04, 0.5, textwrap.fill(prompt, 28), transform=last.transAxes, fontsize=7, va="center")
    figure = ("Figures 11-12 (CustomConcept101)" if dataset is not None and (Path(dataset) / "dataset.json").is_file()
              else "Figure 3")
    caption = (f"Qualitative comparison (profile {profile}, suite {suite}), as in the paper's {figure}: per concept, "
               f"a reference photo and each method's sample for the same prompt index and evaluation seed "
               f"(training seed, prompt index and eval seed shared by the row; the prompt is printed at its end).")
    if why_no_reference:
        caption += f" Note: {why_no_reference}."
    return Figure(_slug(profile, suite, "grid") + ".png", caption, _png(fig, tight=True))


def _grid_choice(runs: dict, columns: list[tuple[str, str, str]], concept: str, row: int
                 ) -> tuple[int, tuple[int, int], str] | None:
    """(training seed, (prompt index, eval seed), prompt text) shared by the most columns of this concept."""
    present = [runs[(m, v, concept)] for m, v, _ in columns if (m, v, concept) in runs]
    if not present:
        return None
    seeds = sorted(set.intersection(*[set(p) for p in present])) or sorted(present[0])
    seed = seeds[0]
    recs = [p[seed] for p in present if seed in p]
    keys = [{(i.prompt_index, i.eval_seed): i.prompt or "" for i in (r.images or [])} for r in recs]
    common = sorted(set.intersection(*[set(k) for k in keys])) if keys else []
    if not common:
        return None
    zero = [k for k in common if k[1] == min(c[1] for c in common)]
    pick = zero[(row * 7) % len(zero)]  # a different prompt per row, deterministically
    return seed, pick, keys[-1][pick]


def _tile(ax: Any, image: Any, missing: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("#dddddd")
        ax.text(0.5, 0.5, missing, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(image)


# --- the report ---------------------------------------------------------------------------------------------
