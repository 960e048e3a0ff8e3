"""CLIP-T, CLIP-I and DINO under a named, recorded metric suite (spec: "Evaluation protocol").

    scorer = load_scorer("paper", device="cuda")
    rows = score_images(scorer, generated, clip_texts, reals)   # per image: clip_t, clip_i, dino, n_real
    summary = aggregate(rows_with_concept_and_seed)   # headline: mean over concepts of per-concept means

Importing this package does not import open_clip or timm (seconds); loading a suite does.
"""

from bench.metrics.scoring import (
    Scorer,
    aggregate,
    ceiling,
    clip_t,
    dino_transform,
    dinov2_pos_embed,
    load_scorer,
    pairwise,
    pairwise_max0,
    pre_resize,
    real_ceiling,
    real_vs_real,
    score_embedded,
    score_images,
)
from bench.metrics.suites import SUITE_VERSION, SUITES, Suite, build_tiny_models, ensure_tiny, get_suite, suite_names

__all__ = [
    "SUITE_VERSION",
    "SUITES",
    "Scorer",
    "Suite",
    "aggregate",
    "ceiling",
    "build_tiny_models",
    "clip_t",
    "dino_transform",
    "dinov2_pos_embed",
    "ensure_tiny",
    "get_suite",
    "load_scorer",
    "pairwise",
    "pairwise_max0",
    "pre_resize",
    "real_ceiling",
    "real_vs_real",
    "score_embedded",
    "score_images",
    "suite_names",
]
