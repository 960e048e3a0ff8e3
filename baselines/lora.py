"""LoRA (Hu et al., ICLR 2022) DreamBooth-style on SD-Turbo: the DreamBooth-LoRA recipe.

Low-rank adapters (peft, rank 4, alpha = rank unless set) on the attention projections `to_q`, `to_k`, `to_v`,
`to_out.0` of every self- and cross-attention layer of the student UNet; everything else frozen. Identifier
`sks` as in DreamBooth. Recipe (diffusers `train_dreambooth_lora.py`): lr 1e-4, batch 1, AdamW (weight decay
1e-2), gradient clip 1, Gaussian init of A (B = 0), constant lr; paper: 800 iterations, no augmentation.

Trained at t = 999 by default (a one-step student only sees t = 999 at inference); `train4` / `train1000` use
the four-step set and uniform timesteps. After training (and after loading) the adapter is fused into the
base weights and the peft layers removed, so sampling -- and its timing -- runs a plain UNet.
Saved in diffusers' LoRA format (`pytorch_lora_weights.safetensors`, with the LoRA config as metadata), so
`StableDiffusionPipeline.load_lora_weights(dir)` loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import Concept, Log, Models, offer_samples
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_STEPS, SCHEDULE
from bench.models import personalize, sampling
from bench.models.loop import DenoisingLoop
from bench.models.recipe import check_lora, check_recipe, check_word, concept_batches, scaled_lr
from bench.models.sampling import Numerics
from bench.models.training import TRAIN_NFE_VARIANTS


@dataclass(frozen=True)
class LoRAConfig(Numerics):
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1), "four_step" (train NFE 4) or "uniform" (train NFE 1000)."""
    iterations: int = field(default=800, metadata=SCHEDULE)
    """Optimiser steps (paper: 800)."""
    batch_size: int = field(default=1, metadata=BATCH_SIZE)
    """Images per step (diffusers recipe: 1)."""
    lr: float = 1e-4
    """Learning rate (paper: 1e-4); multiplied by the batch size when `scale_lr`."""
    scale_lr: bool = False
    """Scale `lr` by the batch size (off in the DreamBooth-LoRA recipe)."""
    weight_decay: float = 1e-2
    """AdamW weight decay on the LoRA matrices (diffusers' default)."""
    grad_clip: float = 1.0
    """Gradient norm clip (diffusers' default); 0 turns it off."""
    rank: int = 4
    """LoRA rank r (paper: 4)."""
    alpha: float | None = None
    """LoRA alpha; the update is scaled by alpha / rank. None -> alpha = rank (scale 1, diffusers' default)."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """UNet submodules that get an adapter (matched by name suffix, self- and cross-attention alike)."""
    identifier: str = "sks"
    """The rare token that stands for the concept (DreamBooth-LoRA recipe); no new token is added."""
    augment: bool = False
    """Custom Diffusion's random-scale augmentation; off, as in the DreamBooth-LoRA recipe."""
    hflip: bool = False
    """Random horizontal flip; off, as in the DreamBooth-LoRA recipe (`--random_flip` unset)."""
    fuse: bool = True
    """Fuse the adapter into the base weights before sampling (protocol: "fuse before timing"). Off keeps the
    peft layers (same images up to float rounding, slower): for inspecting the unfused model."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=200, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (the LoRA matrices, their AdamW moments, RNG states) every this many iterations
    and at the end, in the run's work folder; `bench run --resume` continues a killed run from it, bit-identically.
    0 = off. Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self)
        check_lora(self, "to_q")
        check_word("identifier", self.identifier)


class LoRA:
    name: ClassVar[str] = "lora"
    label: ClassVar[str] = "LoRA"
    version: ClassVar[int] = 2
    """2: the released 25 templates, photos resized once (bilinear), fp32 training, Euler ancestral / fp16
    sampling (README, "Fidelity")."""
    resumable: ClassVar[bool] = True  # checkpoint_every, through bench.models.loop
    Config: ClassVar[type] = LoRAConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {**TRAIN_NFE_VARIANTS}

    def __init__(self, config: LoRAConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> LoRAModel:
        cfg = self.config
        torch.manual_seed(seed)  # also seeds the Gaussian init of the A matrices
        parts = models.pipeline_parts()
        unet = parts["unet"]

        # 1. The adapters: W x + (alpha / r) B A x on every target projection; only A and B learn.
        trainable = personalize.add_unet_lora(unet, cfg.rank, cfg.alpha, cfg.target_modules)  # lora_A / lora_B
        params = list(trainable.values())
        optimizer = torch.optim.AdamW(params, lr=scaled_lr(cfg, cfg.batch_size), weight_decay=cfg.weight_decay)

        # 2. Data: the concept's photos with "a photo of a sks dog".
        batches = concept_batches(models, concept.images, f"{cfg.identifier} {concept.class_noun}", cfg, seed,
                                  augment=cfg.augment)
        # 3. The shared denoising loop (`bench.models.loop`); the text encoder is frozen (no gradient to the prompt).
        loop = DenoisingLoop.for_recipe(cfg, models, parts, trainable, optimizer, batches, seed)
        # The live model for `--sample-every` grids: the peft layers unfused, so a grid sees the adapter as it trains.
        offer_samples(log, LoRAModel(dataclasses.replace(cfg, fuse=False), parts))
        unet.train()
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)
        unet.eval()
        for p in params:
            p.requires_grad_(False)
        return LoRAModel(cfg, parts)

    def load(self, weights_dir: Path, models: Models) -> LoRAModel:
        parts = models.pipeline_parts()
        personalize.load_unet_lora(parts["unet"], weights_dir)  # what `pipe.load_lora_weights(dir)` runs
        return LoRAModel(self.config, parts)


class LoRAModel:
    """The personalised model: SD-Turbo with the adapter fused in; saves the adapter in diffusers' LoRA format."""

    def __init__(self, config: LoRAConfig, parts: dict[str, Any]) -> None:
        self.config, self.parts = config, parts
        self.identifier = config.identifier
        self.default_steps = config.sample_steps
        # What `save` writes, taken before fusing (`fuse`: a plain UNet for sampling).
        self.lora = personalize.take_unet_lora(parts["unet"], config.fuse)

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        self.lora.save(out_dir)
