"""Textual Inversion (Gal et al., ICLR 2023) on SD-Turbo.

Only one thing learns: the embedding row of a new token `<new1>`, initialised from a descriptive word for the
class. The embedding matrix is handed to the optimiser (as diffusers' `textual_inversion.py` does), gradients
of every other row are masked, and every other row is copied back after each step, so nothing else moves.
Recipe (diffusers example): lr 5e-4 scaled by batch x accumulation, batch 1 x gradient accumulation 4, AdamW
with weight decay 1e-2, constant lr, no gradient clipping; paper: 4000 iterations (optimiser steps).

Trained at t = 999 by default, since a one-step student only ever sees t = 999 at inference (protocol.md,
"Baselines"); `train4` / `train1000` use the four-step set and uniform timesteps.
Saved as a textual-inversion embedding: `pipe.load_textual_inversion(dir / "<new1>.safetensors")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import BenchError, Concept, Log, Models, offer_samples
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_STEPS, SCHEDULE
from bench.models import personalize, sampling
from bench.models.loop import DenoisingLoop
from bench.models.recipe import check_recipe, check_word, concept_batches, scaled_lr
from bench.models.sampling import Numerics
from bench.models.training import TRAIN_NFE_VARIANTS, templates_for

PHRASES = {"token": "{identifier}", "token_class": "{identifier} {class_noun}"}
"""What stands for the concept in training and evaluation prompts (`phrase`)."""


@dataclass(frozen=True)
class TextualInversionConfig(Numerics):
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1), "four_step" (train NFE 4) or "uniform" (train NFE 1000)."""
    iterations: int = field(default=4000, metadata=SCHEDULE)
    """Optimiser steps (paper: 4000); each step accumulates `grad_accumulation` batches."""
    batch_size: int = field(default=1, metadata=BATCH_SIZE)
    """Images per forward pass (diffusers recipe: 1)."""
    grad_accumulation: int = 4
    """Forward/backward passes per optimiser step (diffusers recipe: 4)."""
    lr: float = 5e-4
    """Base learning rate; multiplied by batch_size x grad_accumulation when `scale_lr`."""
    scale_lr: bool = True
    """Scale `lr` by the effective batch, as diffusers' `textual_inversion.py` does by default (-> 2e-3)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (diffusers' default); it only reaches the token's row, the others are restored."""
    grad_clip: float = 0.0
    """Gradient norm clip; 0 turns it off (the diffusers recipe does not clip)."""
    token: str = "<new1>"
    """The new token that stands for the concept; it must not already be a word of the tokenizer."""
    init_word: str = ""
    """Word whose embedding initialises the token; empty -> `personalize.init_word(class noun)`."""
    phrase: str = "token"
    """What stands for the concept in prompts: "token" = the placeholder alone, trained on "a photo of a <new1>"
    and evaluated on "a <new1> in the jungle" (the textual-inversion recipe, and the authors' evaluation format
    for it; default), or "token_class" = "<new1> dog" in both (inflates CLIP-T with the class noun)."""
    augment: bool = False
    """Custom Diffusion's random-scale augmentation; off, as in the textual-inversion recipe (plain photos)."""
    hflip: bool = True
    """Random horizontal flip (the textual-inversion recipe's flip_p = 0.5)."""
    resample: str = "bicubic"
    """How each photo is resized once to the training size: "bicubic" (diffusers' `textual_inversion.py`, PIL
    BICUBIC; default) or "bilinear" (the other baselines' resize)."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=500, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (the token's row, its AdamW moments, RNG states) every this many iterations and
    at the end, in the run's work folder; `bench run --resume` continues a killed run from it, bit-identically.
    0 = off. Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self, counts=("grad_accumulation",))
        if self.phrase not in PHRASES:
            raise ValueError(f"phrase must be one of {', '.join(PHRASES)}, not '{self.phrase}'")
        check_word("token", self.token)
        if self.resample not in ("bicubic", "bilinear"):
            raise ValueError(f"resample must be one of bicubic, bilinear, not '{self.resample}'")


def check_new_token(tokenizer: Any, token: str) -> None:
    """A clear error when `token` is a word the tokenizer already has (e.g. "dog" or "sks").

    "Already there" means an exact vocabulary entry, or text the BPE turns into one existing token ("dog" ->
    "dog</w>"): adding it would silently change what that word means in every prompt.
    """
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if token in tokenizer.get_vocab() or len(ids) == 1:
        raise BenchError(f"textual_inversion: token '{token}' is already in the tokenizer's vocabulary; "
                         f"choose a new one such as '<new1>' (--set token='<new2>')")


class TextualInversion:
    name: ClassVar[str] = "textual_inversion"
    label: ClassVar[str] = "Textual Inversion"
    version: ClassVar[int] = 3
    """2: the placeholder alone in prompts, the 27 templates, photos resized once (bilinear), fp32 training,
    Euler ancestral / fp16 sampling (README, "Fidelity"); 3: photos resized bicubic, as the recipe."""
    resumable: ClassVar[bool] = True  # checkpoint_every, through bench.models.loop
    Config: ClassVar[type] = TextualInversionConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {**TRAIN_NFE_VARIANTS}

    def __init__(self, config: TextualInversionConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> TextualInversionModel:
        cfg = self.config
        torch.manual_seed(seed)
        parts = models.pipeline_parts()
        tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]

        # 1. The new token, initialised from a descriptive word; the only row of the embedding matrix that learns.
        check_new_token(tokenizer, cfg.token)
        init = cfg.init_word or personalize.init_word(concept.class_noun)
        token_id = personalize.add_token(tokenizer, text_encoder, cfg.token, init)
        restore_rows = personalize.keep_other_rows(text_encoder, keep=[token_id])
        token_weight = personalize.train_token_row(text_encoder, [token_id])
        lr = scaled_lr(cfg, cfg.batch_size, cfg.grad_accumulation)
        optimizer = torch.optim.AdamW([token_weight], lr=lr, weight_decay=cfg.weight_decay)

        # 2. Data: the concept's photos (no random-scale augmentation), the recipe's 27 templates (25 without
        #    "close" if augmenting) with the placeholder alone: "a photo of a <new1>".
        phrase = PHRASES[cfg.phrase].format(identifier=cfg.token, class_noun=concept.class_noun)
        batches = concept_batches(models, concept.images, phrase, cfg, seed, augment=cfg.augment,
                                  templates=templates_for(cfg.augment))
        # 3. The shared denoising loop (`bench.models.loop`), `grad_accumulation` batches per step; gradients reach
        #    the row through the frozen UNet and text encoder, and every other row is put back after each step.
        loop = DenoisingLoop.for_recipe(cfg, models, parts, {"token_embedding": token_weight}, optimizer, batches, seed,
                                        accumulation=cfg.grad_accumulation, text_grad=True, after_step=restore_rows,
                                        rows={"token_embedding": [token_id]})
        text_encoder.train()
        offer_samples(log, TextualInversionModel(self.config, parts))  # the live model, for `--sample-every` grids
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)
        text_encoder.eval()
        token_weight.requires_grad_(False)
        return TextualInversionModel(self.config, parts)

    def load(self, weights_dir: Path, models: Models) -> TextualInversionModel:
        parts = models.pipeline_parts()
        weights = weights_dir / f"{self.config.token}.safetensors"
        personalize.load_token(parts["tokenizer"], parts["text_encoder"], weights)
        return TextualInversionModel(self.config, parts)


class TextualInversionModel:
    """The personalised model: SD-Turbo with one new word; saved as a textual-inversion embedding."""

    def __init__(self, config: TextualInversionConfig, parts: dict[str, Any]) -> None:
        self.config, self.parts = config, parts
        self.identifier = config.token
        self.eval_phrase = PHRASES[config.phrase]
        self.default_steps = config.sample_steps

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        personalize.save_token(self.parts["tokenizer"], self.parts["text_encoder"], self.config.token,
                               out_dir / f"{self.config.token}.safetensors")
