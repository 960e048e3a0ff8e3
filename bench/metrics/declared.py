"""The metrics, declared once: a new metric is its scorer (`bench.metrics.scoring.score_embedded`), its suite entry
(`bench.metrics.suites`) and one line here. Aggregation, records, tables, CSV columns and the report read this
list; nothing else spells the metrics out. Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    """Key in a score row, a record's `metrics` and the CSV columns (`clip_t`)."""
    label: str
    """Column heading in the tables (`CLIP-T`)."""
    per_pair: bool
    """True: an image's value is already the mean over its (image, real image) pairs, so it weighs `n_real` in every
    mean over images, and the real-vs-real ceiling has it; False: one value per image (its prompt), no ceiling."""


METRICS = (
    Metric("clip_t", "CLIP-T", per_pair=False),
    Metric("clip_i", "CLIP-I", per_pair=True),
    Metric("dino", "DINO", per_pair=True),
)
NAMES = tuple(m.name for m in METRICS)
"""The metric keys, in table order."""
LABELS = {m.name: m.label for m in METRICS}
"""Key -> column heading."""
PER_PAIR = tuple(m.per_pair for m in METRICS)
"""Per metric, in `NAMES` order: weighed by the image's pairs."""


def accumulate(acc: list[float], values: tuple[float, ...], n_real: float) -> None:
    """Add one scored image to `acc` = [images, one sum per metric (per-pair metrics times n_real), pairs]."""
    acc[0] += 1
    for i, (value, per_pair) in enumerate(zip(values, PER_PAIR)):
        acc[1 + i] += value * n_real if per_pair else value
    acc[-1] += n_real


def empty() -> list[float]:
    """A fresh accumulator for `accumulate`."""
    return [0, *([0.0] * len(METRICS)), 0]


def means(acc: list[float]) -> dict[str, float]:
    """An accumulator's means: per image for per-image metrics, per pair for per-pair ones."""
    return {m.name: acc[1 + i] / (acc[-1] if m.per_pair else acc[0]) for i, m in enumerate(METRICS)}
