"""The fine-tuning baselines' training loop, written once: denoise the concept's photos, step, log, checkpoint.

Textual Inversion, Custom Diffusion, DreamBooth and LoRA differ only in *what* learns (a token row, cross-attention
K/V, the whole UNet, LoRA matrices), in their recipe's numbers and in a few hooks; the loop itself is this one.
Each iteration, for each of `accumulation` micro-batches, in this order (which fixes every random draw):

    batch = next(batches)                                   # photos, masks, prompts (and cache keys)
    latents = encode(batch.pixels)                          # VAE posterior sample (global torch RNG) x scaling
    noise = randn(latents.shape, generator)                 # the run's CPU generator
    t = sample_timesteps(policy, B, generator)              # t999 / four_step / uniform
    noisy, target = noisy_and_target(scheduler, latents, noise, t)   # epsilon or velocity, from the config
    context = encode_text(prompts)                          # with gradient only where the text side learns
    pred = unet(noisy, t, context)
    loss, scalars = loss_fn(pred, target, batch)            # masked MSE unless the method says otherwise
    (loss / accumulation).backward()

then a gradient-norm clip (0 = none, the norm is still logged), the optimiser step, the method's `after_step`
(Custom Diffusion and Textual Inversion put every frozen row of the embedding table back), one log line and, every
`checkpoint_every` iterations, a checkpoint (`bench.models.checkpoint`) from which `bench run --resume` continues
bit-identically. A non-finite loss raises `Diverged` (the run is recorded as failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.api import Diverged, Log
from bench.models import sampling
from bench.models.checkpoint import Checkpointer
from bench.models.speed import autocast
from bench.models.training import Batch, Latents, masked_mse, noisy_and_target, sample_timesteps

LossFn = Callable[[torch.Tensor, torch.Tensor, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(pred, target, batch) -> (loss, extra scalars to log): `batch.masks` is on the UNet's device."""


def mse_loss(normalise: str = "mean") -> LossFn:
    """The baselines' loss: `masked_mse` with the given normalisation, nothing else logged."""

    def loss(pred: torch.Tensor, target: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict]:
        return masked_mse(pred, target, batch.masks, normalise), {}

    return loss


@dataclass
class DenoisingLoop:
    """One baseline's training run; `run` trains in place and returns nothing (the caller wraps the result)."""

    parts: dict[str, Any]
    """The pipeline parts being trained (`models.pipeline_parts()`): unet, scheduler, vae, tokenizer, text_encoder."""
    params: dict[str, torch.Tensor | list[torch.Tensor]]
    """Every trainable tensor (or list of tensors) by a stable name: clipped in this order, saved in checkpoints."""
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    """The data stream; its `rng` (a `random.Random`) is checkpointed."""
    timestep_policy: str
    seed: int
    device: Any
    autocast_dtype: str = "none"
    grad_clip: float = 0.0
    """Gradient-norm clip over `params`; 0 = no clip."""
    accumulation: int = 1
    """Micro-batches per optimiser step; their losses are averaged."""
    text_grad: bool = False
    """Whether the prompt context needs a gradient (a learning token row); else it is computed under no_grad."""
    loss_fn: LossFn = field(default_factory=mse_loss)
    after_step: Callable[[], None] | None = None
    """Run after every optimiser step (e.g. restore the frozen rows of the embedding table)."""
    cache_latents: bool = True
    """Encode each exact photo once (`Latents`, speed switch `latents`)."""
    rows: dict[str, list[int]] = field(default_factory=dict)
    """Checkpoint only these rows of a `params` tensor (a new token's row of the embedding table)."""
    extra_randoms: dict[str, Any] = field(default_factory=dict)
    """Further `random.Random` streams the batches draw from (DreamBooth's class-image stream)."""

    def run(self, iterations: int, out_dir: Path | None, checkpoint_every: int, log: Log, phase: str = "train"
            ) -> None:
        """`iterations` optimiser steps, resumed from the newest checkpoint under `out_dir/phase` if there is one."""
        generator = torch.Generator().manual_seed(self.seed)
        encode = Latents(self.parts["vae"], cache=self.cache_latents)
        params = [p for group in self.params.values() for p in (group if isinstance(group, list) else [group])]
        ckpt = Checkpointer(out_dir / phase if out_dir is not None else None, every=checkpoint_every,
                            total=iterations, rows=self.rows)
        state = dict(tensors=self.params, stateful={"optimizer": self.optimizer}, generators={"noise": generator},
                     randoms={"batches": self.batches.rng, **self.extra_randoms})
        start = ckpt.restore(**state)
        log.begin(phase, iterations)
        for it in range(start, iterations):
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for _ in range(self.accumulation):
                loss, scalars = self._micro_step(encode, generator, it)
                (loss / self.accumulation).backward()
                for name, value in {"loss": loss.item(), **scalars}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) / self.accumulation
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step()
            log(it, loss=sums.pop("loss"), grad_norm=float(grad_norm), t_mean=sums.pop("t_mean"), **sums)
            ckpt.maybe_save(it + 1, **state)

    def _micro_step(self, encode: Latents, generator: torch.Generator, it: int
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        parts, device = self.parts, self.device
        batch = next(self.batches)
        latents = encode(batch.pixels.to(device), batch.keys)  # (B, 4, h, w)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = sample_timesteps(self.timestep_policy, latents.shape[0], generator).to(device)
        noisy, target = noisy_and_target(parts["scheduler"], latents, noise, t)
        with torch.set_grad_enabled(self.text_grad):
            context = sampling.encode_text(parts["tokenizer"], parts["text_encoder"], batch.prompts)  # (B, 77, D)
        with autocast(device, self.autocast_dtype):
            pred = parts["unet"](noisy, t, context).sample.float()
        on_device = Batch(batch.pixels, batch.masks.to(device), batch.prompts, batch.keys)
        loss, scalars = self.loss_fn(pred, target, on_device)
        if not torch.isfinite(loss):
            raise Diverged(f"non-finite loss at iteration {it}")
        return loss, {**{k: v.item() for k, v in scalars.items()}, "t_mean": float(t.float().mean())}
