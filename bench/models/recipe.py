"""What the fine-tuning baselines' configs and setups share, written once (the loop itself is `bench.models.loop`).

- `check_recipe`: the checks of the fields every baseline config has (timestep policy, counts, checkpoint_every,
  learning rate, weight decay and clip), for its `__post_init__`; `check_lora` for a LoRA's rank, alpha and
  targets; `check_word` for a one-word identifier or token;
- `scaled_lr`: the learning rate after a recipe's `scale_lr`;
- `concept_batches`: the concept's photos as the harness's training stream (`TrainingBatches`) at the profile's
  resolution;
- `ALL_PHOTOS`: the variant that trains on every photo instead of TextBoost's one-shot split.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.api import Models
from bench.models.sampling import check_numerics
from bench.models.training import TIMESTEP_POLICIES, TRAIN_TEMPLATES, TrainingBatches, load_pixels

COUNTS = ("iterations", "batch_size", "sample_steps", "sample_batch_size")
"""The integer fields every baseline config has that must be >= 1."""

ALL_PHOTOS = {"all_photos": {"reference_set": "all"}}
"""The variant of the methods trained on TextBoost's one-shot split by default (`reference_set`): every photo."""


def check_recipe(cfg: Any, counts: Iterable[str] = (), non_negative: Iterable[str] = (),
                 policies: Iterable[str] = TIMESTEP_POLICIES) -> None:
    """ValueError for a bad common field: precision and sampler (`check_numerics`), `timestep_policy` not in
    `policies`, a count (`COUNTS` and `counts`) below 1, `checkpoint_every` below 0, `lr` not above 0, or
    `weight_decay`, `grad_clip` or one of `non_negative` below 0."""
    check_numerics(cfg)
    policies = tuple(policies)
    if cfg.timestep_policy not in policies:
        raise ValueError(f"timestep_policy must be one of {', '.join(policies)}, not '{cfg.timestep_policy}'")
    for name in (*COUNTS[:2], *counts, *COUNTS[2:]):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, not {getattr(cfg, name)}")
    if cfg.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0 = off), not {cfg.checkpoint_every}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, not {cfg.lr}")
    for name in ("weight_decay", "grad_clip", *non_negative):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, not {getattr(cfg, name)}")


def check_lora(cfg: Any, example: str) -> None:
    """ValueError for a LoRA `rank` that is not a positive integer, an `alpha` not above 0 (None = rank), or empty
    `target_modules` (`example`: a module to name in the message)."""
    if not isinstance(cfg.rank, int) or cfg.rank < 1:
        raise ValueError(f"rank must be a positive integer (the recipes: 4), not {cfg.rank}")
    if cfg.alpha is not None and cfg.alpha <= 0:
        raise ValueError(f"alpha must be > 0 (or unset for alpha = rank), not {cfg.alpha}")
    if not cfg.target_modules:
        raise ValueError(f"target_modules must name at least one module, e.g. {example}")


def check_word(name: str, value: str) -> None:
    """ValueError unless `value` (an identifier or a token) is one word without spaces."""
    if not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be one word without spaces, not '{value}'")


def scaled_lr(cfg: Any, *factors: int) -> float:
    """`cfg.lr`, multiplied by each of `factors` in turn when `cfg.scale_lr` (the batch, and the accumulation)."""
    lr = cfg.lr
    if cfg.scale_lr:
        for factor in factors:
            lr = lr * factor
    return lr


def concept_batches(models: Models, photos: Iterable[Path], phrase: str, cfg: Any, seed: int, augment: bool = False,
                    templates: tuple[str, ...] = TRAIN_TEMPLATES) -> TrainingBatches:
    """The photos (each centre-cropped, resized once) as `TrainingBatches` of `cfg.batch_size` at the profile's
    resolution, with `cfg.hflip`, Custom Diffusion's random-scale augmentation if `augment`, and the resize
    `cfg.resample` where the recipe has one (else bilinear)."""
    return TrainingBatches(load_pixels(tuple(photos)), phrase, cfg.batch_size, models.resolution // models.latent_size,
                           seed, augment=augment, hflip=cfg.hflip, templates=templates, size=models.resolution,
                           resample=getattr(cfg, "resample", "bilinear"))
