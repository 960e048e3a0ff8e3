"""The report's forest plot: each main-table row's paired difference to EchoDistill, per metric, with its 95%
interval (`bench.tables.paired`, the numbers of `bench table main --against echodistill`)."""

from __future__ import annotations

from typing import Any

from bench.tables.building import Table
from bench.tables.definitions import ED, METRIC_LABELS, METRICS

FOREST_REFERENCE = ED
"""The row every other row is compared with in the forest plot: the paper's method (its main-table row)."""


def forest_plot(t: Table, against: str = FOREST_REFERENCE) -> Any:
    """A `bench.figures.Figure`, or None when the table has no row of `against` or nothing to compare with it."""
    from bench.figures import Figure, _plt, _png, _slug
    from bench.tables.paired import annotate

    a = annotate(t, against, False)
    if a.reference is None or not a.diffs:
        return None
    rows = sorted(a.diffs)
    counts: dict[str, int] = {}
    for i in rows:
        counts[t.rows[i].label] = counts.get(t.rows[i].label, 0) + 1
    labels = [t.rows[i].label + (f" [{t.rows[i].variant}]" if counts[t.rows[i].label] > 1 else "") for i in rows]
    plt = _plt()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 0.45 * len(rows) + 1.6), sharey=True, layout="constrained")
    for ax, m in zip(axes, METRICS):
        for y, i in enumerate(rows):
            d = a.diffs[i][m]
            if d.mean != d.mean:
                continue
            color = "#c03030" if d.distinguishable else "#203040"
            if d.lo == d.lo:
                ax.plot([d.lo, d.hi], [y, y], color=color, lw=1.5)
            ax.plot([d.mean], [y], "o", color=color, ms=5)
        ax.axvline(0, color="#888888", lw=1, ls="--")
        ax.set_title(f"Δ {METRIC_LABELS[m]}")
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.locator_params(axis="x", nbins=4)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ref = t.rows[a.reference].label
    fig.suptitle(f"Paired differences to {ref} ({t.profile}, {t.metric_suite})", fontsize=10)
    caption = (f"{t.title}, profile {t.profile}: per row and metric, the mean over shared concepts of the per-concept "
               f"difference to {ref} (dot) and its 95% paired bootstrap interval (line); red where the sign-flip "
               f"test gives p < 0.05 (`bench compare` holds the p-values and win counts).")
    return Figure(_slug(t.profile, t.metric_suite, t.name, "forest") + ".png", caption, _png(fig, tight=True))


def forest_figures(tables: list[Table]) -> list[Any]:
    """The forest plot of each main table among `tables` that has an EchoDistill row and others to compare."""
    return [f for t in tables if t.name == "main" and (f := forest_plot(t)) is not None]
