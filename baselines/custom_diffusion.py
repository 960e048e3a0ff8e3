"""Custom Diffusion (Kumari et al., CVPR 2023) on SD-Turbo, and on SD 2.1 as the multi-step reference.

Trains the key/value projections of every cross-attention layer plus a new token `<new1>`, with Custom
Diffusion's random-scale augmentation and masked denoising loss. Read top to bottom: config, train, sample, save.

Paper Table 5 grid: the train NFE is the timestep policy (1 -> t = 999 only, 4 -> the four-step set, 1000 ->
uniform), the infer NFE is the number of sampling steps; `sd21` is the SD 2.1 reference (25 DDIM steps, CFG 7.5,
sampled at SD 2.1's native size: 768 px for the 768-v model; trained at 512).
Weights are saved in diffusers' formats: `unet.load_attn_procs(dir, weight_name=CD_WEIGHTS)` and
`pipe.load_textual_inversion(dir / "<new1>.safetensors")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import Concept, Log, Models, offer_samples
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_ONLY, SAMPLING_STEPS, SCHEDULE
from bench.models import personalize, sampling
from bench.models.loop import DenoisingLoop, mse_loss
from bench.models.recipe import check_recipe, concept_batches, scaled_lr
from bench.models.sampling import Numerics
from bench.models.training import LOSS_NORMALISATIONS, templates_for


@dataclass(frozen=True)
class CustomDiffusionConfig(Numerics):
    base: str = "student"
    """Which model is personalised: "student" (SD-Turbo, one step) or "teacher" (SD 2.1, multi-step)."""
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1), "four_step" (train NFE 4) or "uniform" (train NFE 1000)."""
    iterations: int = field(default=1000, metadata=SCHEDULE)
    """Optimiser steps (paper: 1000)."""
    batch_size: int = field(default=2, metadata=BATCH_SIZE)
    """Images per step (paper: 2)."""
    lr: float = 1e-5
    """Base learning rate; multiplied by the batch size when `scale_lr` (Custom Diffusion's recipe)."""
    scale_lr: bool = True
    """Scale `lr` by the batch size, as the Custom Diffusion training script does."""
    weight_decay: float = 1e-2
    """AdamW weight decay (applied to K/V; the token's other rows are restored after every step)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    token: str = "<new1>"
    """The new token that stands for the concept."""
    init: str = "released"
    """How the token is initialised: "released" (default): the released code's per-instance word looked up raw in
    the vocabulary (one row; unknown -> `<|endoftext|>`); "class": a descriptive word per class, BPE-tokenised,
    mean of its pieces (`bench.models.personalize`)."""
    kv_detach_first_token: bool = True
    """Block the gradient through the key and value of cross-attention token 0, as diffusers'
    `CustomDiffusionAttnProcessor2_0(train_kv=True)` does (default); False lets it through."""
    loss_normalisation: str = "mask_sum"
    """Masked loss: "mask_sum" = sum over channels and masked pixels / one-channel mask sum (diffusers' Custom
    Diffusion example and the released code, 4x the mean; default); "mean" = a true mean."""
    augment: bool = True
    """Custom Diffusion's random-scale augmentation with its loss mask and prompt words (after the first word)."""
    hflip: bool = True
    """Random horizontal flip of training images."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (infer NFE). Sampling-only: the train1-infer{1,4,25} variants share one
    training."""
    guidance: float = field(default=0.0, metadata=SAMPLING_ONLY)
    """Classifier-free guidance at sampling; 0 for SD-Turbo, 7.5 for the SD 2.1 reference. Sampling-only."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=100, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (K/V, token row, AdamW moments, RNG states) every this many iterations and at the
    end, in the run's work folder; `bench run --resume` continues a killed run from it, bit-identically. 0 = off.
    Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self)
        for name, value, valid in (("init", self.init, personalize.INIT_SOURCES),
                                   ("loss_normalisation", self.loss_normalisation, LOSS_NORMALISATIONS)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, not '{value}'")
        if self.base not in ("student", "teacher"):
            raise ValueError(f"base must be 'student' or 'teacher', not '{self.base}'")


def _grid() -> dict[str, dict[str, Any]]:
    """Paper Table 5: SD-Turbo trained with 1, 4 or 1000 train NFEs and sampled with 1, 4 or 25 steps."""
    policy = {1: "t999", 4: "four_step", 1000: "uniform"}
    return {f"train{t}-infer{i}": {"timestep_policy": policy[t], "sample_steps": i}
            for t in (1, 4, 1000) for i in (1, 4, 25)}


class CustomDiffusion:
    name: ClassVar[str] = "custom_diffusion"
    label: ClassVar[str] = "Custom Diffusion"
    version: ClassVar[int] = 2
    """2: first-token K/V detach, released init token, templates and augmentation, mask-sum loss, fp32 training,
    Euler ancestral / native-size / fp16 sampling (README, "Fidelity")."""
    Config: ClassVar[type] = CustomDiffusionConfig
    resumable: ClassVar[bool] = True
    """Checkpoints every `checkpoint_every` iterations; `bench run --resume` continues from the last one."""
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "sd21": {"base": "teacher", "timestep_policy": "uniform", "sample_steps": 25, "guidance": 7.5},
        **_grid(),
    }

    def __init__(self, config: CustomDiffusionConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> CustomDiffusionModel:
        cfg = self.config
        torch.manual_seed(seed)
        parts = models.pipeline_parts(self.config.base)
        unet, tokenizer, text_encoder = parts["unet"], parts["tokenizer"], parts["text_encoder"]

        # 1. The new token, initialised as the released code does (or per class); only its embedding row learns.
        word, lookup = personalize.init_for(concept.name, concept.class_noun, cfg.init, in_dataset=concept.dataset)
        token_id = personalize.add_token(tokenizer, text_encoder, cfg.token, word, lookup=lookup)
        restore_rows = personalize.keep_other_rows(text_encoder, keep=[token_id])
        token_weight = personalize.train_token_row(text_encoder, [token_id])
        kv = personalize.cross_attention_kv(unet, cfg.kv_detach_first_token)
        optimizer = torch.optim.AdamW([{"params": kv}, {"params": [token_weight], "weight_decay": 0.0}],
                                      lr=scaled_lr(cfg, cfg.batch_size), weight_decay=cfg.weight_decay)

        # 2. Data: the concept's photos with Custom Diffusion's augmentation; prompts "... <new1> dog".
        batches = concept_batches(models, concept.images, f"{cfg.token} {concept.class_noun}", cfg, seed,
                                  augment=cfg.augment, templates=templates_for(cfg.augment))

        # 3. The shared denoising loop (`bench.models.loop`): masked MSE against the scheduler's own target, the
        #    token's other rows put back after every step; checkpoints keep only the token's row of the table.
        loop = DenoisingLoop.for_recipe(cfg, models, parts, {"kv": kv, "token_embedding": token_weight}, optimizer,
                                        batches, seed, text_grad=True, loss_fn=mse_loss(cfg.loss_normalisation),
                                        after_step=restore_rows, rows={"token_embedding": [token_id]})
        text_encoder.train()
        offer_samples(log, CustomDiffusionModel(cfg, parts))  # the live model, for `--sample-every` grids
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)
        text_encoder.eval()
        for p in kv + [token_weight]:
            p.requires_grad_(False)
        return CustomDiffusionModel(cfg, parts)

    def load(self, weights_dir: Path, models: Models) -> CustomDiffusionModel:
        parts = models.pipeline_parts(self.config.base)
        token_file = weights_dir / f"{self.config.token}.safetensors"
        personalize.load_token(parts["tokenizer"], parts["text_encoder"], token_file)
        personalize.load_custom_diffusion(parts["unet"], weights_dir / personalize.CD_WEIGHTS)
        return CustomDiffusionModel(self.config, parts)


class CustomDiffusionModel:
    """The personalised model: sample with the config's steps and guidance; save in diffusers' formats."""

    def __init__(self, config: CustomDiffusionConfig, parts: dict[str, Any]) -> None:
        self.config, self.parts = config, parts
        self.identifier = config.token
        self.default_steps = config.sample_steps

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps, guidance=self.config.guidance)

    def save(self, out_dir: Path) -> None:
        personalize.save_custom_diffusion(self.parts["unet"], out_dir)
        personalize.save_token(self.parts["tokenizer"], self.parts["text_encoder"], self.config.token,
                               out_dir / f"{self.config.token}.safetensors")
