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

from bench.api import BenchError, Concept, Diverged, Log
from bench.config import SAMPLING_ONLY
from bench.models import personalize, sampling
from bench.models.speed import autocast, check_autocast
from bench.models.training import (TIMESTEP_POLICIES, Latents, TrainingBatches, load_pixels, masked_mse,
                                   noisy_and_target, sample_timesteps)


@dataclass(frozen=True)
class TextualInversionConfig:
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1), "four_step" (train NFE 4) or "uniform" (train NFE 1000)."""
    iterations: int = 4000
    """Optimiser steps (paper: 4000); each step accumulates `grad_accumulation` batches."""
    batch_size: int = 1
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
    augment: bool = False
    """Custom Diffusion's random-scale augmentation; off, as in the textual-inversion recipe (plain photos)."""
    hflip: bool = True
    """Random horizontal flip (the textual-inversion recipe's flip_p = 0.5)."""
    sample_steps: int = field(default=1, metadata=SAMPLING_ONLY)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    autocast_dtype: str = "auto"
    """Forward-pass precision (`bench.models.speed.autocast`): "auto" = bf16 on CUDA and none on CPU, "none",
    "bf16". Weights, optimiser state and the loss stay float32."""

    def __post_init__(self) -> None:
        check_autocast(self.autocast_dtype)
        if self.timestep_policy not in TIMESTEP_POLICIES:
            raise ValueError(f"timestep_policy must be one of {', '.join(TIMESTEP_POLICIES)}, "
                             f"not '{self.timestep_policy}'")
        for name in ("iterations", "batch_size", "grad_accumulation", "sample_steps", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not self.token.strip() or any(c.isspace() for c in self.token):
            raise ValueError(f"token must be one word without spaces, not '{self.token}'")


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
    Config: ClassVar[type] = TextualInversionConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "train4": {"timestep_policy": "four_step"},
        "train1000": {"timestep_policy": "uniform"},
    }

    def __init__(self, config: TextualInversionConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Any, out_dir: Path, seed: int, log: Log) -> TextualInversionModel:
        cfg = self.config
        torch.manual_seed(seed)
        parts = models.pipeline_parts()
        unet, tokenizer, text_encoder, vae = parts["unet"], parts["tokenizer"], parts["text_encoder"], parts["vae"]
        device = models.device

        # 1. The new token, initialised from a descriptive word; the only row of the embedding matrix that learns.
        check_new_token(tokenizer, cfg.token)
        init = cfg.init_word or personalize.init_word(concept.class_noun)
        token_id = personalize.add_token(tokenizer, text_encoder, cfg.token, init)
        original_rows = text_encoder.get_input_embeddings().weight.detach().clone()  # (V+1, D)
        token_weight = personalize.train_token_row(text_encoder, [token_id])
        lr = cfg.lr * cfg.batch_size * cfg.grad_accumulation if cfg.scale_lr else cfg.lr
        optimizer = torch.optim.AdamW([token_weight], lr=lr, weight_decay=cfg.weight_decay)

        # 2. Data: the concept's photos (no random-scale augmentation), prompts "a photo of a <new1> dog".
        factor = models.resolution // models.latent_size
        batches = TrainingBatches(load_pixels(concept.images, models.resolution), f"{cfg.token} {concept.class_noun}",
                                  cfg.batch_size, factor, seed, augment=cfg.augment, hflip=cfg.hflip)
        generator = torch.Generator().manual_seed(seed)
        encode = Latents(vae, cache=models.speed.latents == "cache")  # each photo encoded once where valid

        # 3. The denoising loop; gradients reach the row through the frozen UNet and text encoder.
        text_encoder.train()
        log.begin("train", cfg.iterations)
        for it in range(cfg.iterations):
            optimizer.zero_grad(set_to_none=True)
            step_loss, t_sum = 0.0, 0.0
            for _ in range(cfg.grad_accumulation):
                batch = next(batches)
                latents = encode(batch.pixels.to(device), batch.keys)  # (B, 4, h, w)
                noise = torch.randn(latents.shape, generator=generator).to(device)
                t = sample_timesteps(cfg.timestep_policy, latents.shape[0], generator).to(device)
                noisy, target = noisy_and_target(parts["scheduler"], latents, noise, t)
                context = sampling.encode_text(tokenizer, text_encoder, batch.prompts)  # (B, 77, D)
                with autocast(device, cfg.autocast_dtype):
                    pred = unet(noisy, t, context).sample.float()
                loss = masked_mse(pred, target, batch.masks.to(device))
                if not torch.isfinite(loss):
                    raise Diverged(f"non-finite loss at iteration {it}")
                (loss / cfg.grad_accumulation).backward()
                step_loss += loss.item() / cfg.grad_accumulation
                t_sum += float(t.float().mean()) / cfg.grad_accumulation
            grad_norm = torch.nn.utils.clip_grad_norm_([token_weight], cfg.grad_clip or float("inf"))
            optimizer.step()
            personalize.restore_rows(text_encoder, original_rows, keep=[token_id])
            log(it, loss=step_loss, grad_norm=float(grad_norm), t_mean=t_sum)
        text_encoder.eval()
        token_weight.requires_grad_(False)
        return TextualInversionModel(self.config, parts, models.latent_size)

    def load(self, weights_dir: Path, models: Any) -> TextualInversionModel:
        parts = models.pipeline_parts()
        weights = weights_dir / f"{self.config.token}.safetensors"
        personalize.load_token(parts["tokenizer"], parts["text_encoder"], weights)
        return TextualInversionModel(self.config, parts, models.latent_size)


class TextualInversionModel:
    """The personalised model: SD-Turbo with one new word; saved as a textual-inversion embedding."""

    def __init__(self, config: TextualInversionConfig, parts: dict[str, Any], latent_size: int) -> None:
        self.config, self.parts, self.latent_size = config, parts, latent_size
        self.identifier = config.token
        self.default_steps = config.sample_steps

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_parts(self.parts, prompts, seeds, steps or self.default_steps, self.latent_size,
                                       batch_size=self.config.sample_batch_size, precision=self.config.autocast_dtype)

    def save(self, out_dir: Path) -> None:
        personalize.save_token(self.parts["tokenizer"], self.parts["text_encoder"], self.config.token,
                               out_dir / f"{self.config.token}.safetensors")
