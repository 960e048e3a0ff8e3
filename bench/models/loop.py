"""The fine-tuning baselines' training loop, written once: denoise the concept's photos, step, log, checkpoint.

Textual Inversion, Custom Diffusion, DreamBooth, LoRA, Cones 2, DisenBooth and TextBoost differ only in *what*
learns (a token row, cross-attention K/V, the whole UNet, LoRA matrices, a text-encoder copy, an image adapter),
in their recipe's numbers and in a few hooks; the loop itself is this one.
Each iteration, for each of `accumulation` micro-batches, in this order (which fixes every random draw):

    batch = next(batches)                                   # photos, masks, prompts (and cache keys)
    latents = encode(batch.pixels)                          # VAE posterior sample (global torch RNG) x scaling
    noise = randn(latents.shape, generator)                 # the run's CPU generator
    t = draw_timesteps(policy, scheduler, B, generator)     # t999 / four_step / uniform / snr_weighted
    noisy, target = noisy_and_target(scheduler, latents, noise, t)   # epsilon or velocity, from the config
    context, extras = context_fn(batch)                     # the prompts' text states, unless the method says else
    pred = unet(noisy, t, context)
    loss, scalars = loss_fn(Step(pred, target, ...))        # masked MSE unless the method says otherwise
    (loss / accumulation).backward()

The two hooks draw nothing from the run's generator: a method's context hook (Cones 2: its tuned encoder copy;
DisenBooth: text plus the image adapter's vector; TextBoost: its LoRA encoder with a pinned start token) and loss
hook (DisenBooth's second, text-only UNet pass through `Step.denoise`; Cones 2's and TextBoost's preservation
terms; TextBoost's own prompt stream) use only their own inputs and streams, which the checkpoint also keeps.
Then a gradient-norm clip over the `clipped` groups (0 = none, the norm is still logged), the optimiser step, the
method's `after_step` (Custom Diffusion and Textual Inversion put every frozen row of the embedding table back,
TextBoost also caps its new rows' norm), one log line and, every `checkpoint_every` iterations, a checkpoint
(`bench.models.checkpoint`) from which `bench run --resume` continues bit-identically. A non-finite loss raises
`Diverged` (the run is recorded as failed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.api import Diverged, Log, Models
from bench.models import sampling
from bench.models.checkpoint import Checkpointer
from bench.models.speed import autocast
from bench.models.training import Batch, Latents, draw_timesteps, masked_mse, noisy_and_target


@dataclass
class Step:
    """One micro-batch's values, as a loss hook reads them (every tensor on the UNet's device)."""

    pred: torch.Tensor
    """(B, 4, h, w) float32: the UNet's output on (noisy, t, context)."""
    target: torch.Tensor
    """What `pred` is trained towards: the noise or the velocity (`noisy_and_target`)."""
    noisy: torch.Tensor
    t: torch.Tensor
    """(B,) the timesteps drawn."""
    context: torch.Tensor
    """(B, 77, D) what the UNet was conditioned on."""
    extras: dict[str, torch.Tensor]
    """What the context hook computed beside the context (DisenBooth: the text and image parts of it)."""
    batch: Batch
    """The micro-batch, its pixels and masks on the UNet's device."""
    denoise: Callable[[torch.Tensor], torch.Tensor]
    """The UNet once more on (noisy, t) with another context, under the same autocast, float32 (DisenBooth)."""


ContextFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""batch (on the UNet's device) -> (the UNet's context (B, 77, D), further tensors for the loss hook)."""
LossFn = Callable[[Step], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""step -> (loss, extra scalars to log)."""


def mse_loss(normalise: str = "mean") -> LossFn:
    """The baselines' loss: `masked_mse` with the given normalisation, nothing else logged."""

    def loss(step: Step) -> tuple[torch.Tensor, dict]:
        return masked_mse(step.pred, step.target, step.batch.masks, normalise), {}

    return loss


def prompt_context(parts: dict[str, Any], grad: bool) -> ContextFn:
    """The default context: the batch's prompts through the pipeline's text encoder, with gradient only if `grad`."""

    def context(batch: Batch) -> tuple[torch.Tensor, dict]:
        with torch.set_grad_enabled(grad):
            return sampling.encode_text(parts["tokenizer"], parts["text_encoder"], batch.prompts), {}  # (B, 77, D)

    return context


@dataclass
class DenoisingLoop:
    """One baseline's training run; `run` trains in place and returns nothing (the caller wraps the result)."""

    parts: dict[str, Any]
    """The pipeline parts being trained (`models.pipeline_parts()`): unet, scheduler, vae, tokenizer, text_encoder."""
    params: dict[str, torch.Tensor | list[torch.Tensor]]
    """Every trainable tensor (or list of tensors) by a stable name: saved in checkpoints, clipped in this order."""
    optimizer: torch.optim.Optimizer
    batches: Iterator[Batch]
    """The data stream; its `rng` (a `random.Random`) is checkpointed."""
    timestep_policy: str
    """A `bench.models.training.TIMESTEP_POLICIES` key or "snr_weighted" (`draw_timesteps`)."""
    seed: int
    device: Any
    autocast_dtype: str = "none"
    grad_clip: float = 0.0
    """Gradient-norm clip over the `clipped` groups of `params`; 0 = no clip."""
    accumulation: int = 1
    """Micro-batches per optimiser step; their losses are averaged."""
    text_grad: bool = False
    """With the default context: whether the prompts' text states need a gradient (a learning token row); else
    they are computed under no_grad."""
    loss_fn: LossFn = field(default_factory=mse_loss)
    after_step: Callable[[], None] | None = None
    """Run after every optimiser step (e.g. restore the frozen rows of the embedding table)."""
    cache_latents: bool = True
    """Encode each exact photo once (`Latents`, speed switch `latents`)."""
    rows: dict[str, list[int]] = field(default_factory=dict)
    """Checkpoint only these rows of a `params` tensor (a new token's row of the embedding table)."""
    extra_randoms: dict[str, Any] = field(default_factory=dict)
    """Further `random.Random` streams the batches or hooks draw from (DreamBooth's class images, TextBoost's
    knowledge-preservation prompts)."""
    context_fn: ContextFn | None = None
    """The UNet's context for a batch; None = `prompt_context(parts, text_grad)`."""
    clipped: tuple[str, ...] | None = None
    """The `params` groups the gradient clip (and the logged norm) covers; None = all (DisenBooth and TextBoost
    clip only their LoRA, as released)."""

    @classmethod
    def for_recipe(cls, cfg: Any, models: Models, parts: dict[str, Any], params: dict[str, Any],
                   optimizer: torch.optim.Optimizer, batches: Iterator[Batch], seed: int, **hooks: Any
                   ) -> DenoisingLoop:
        """The loop with a baseline config's `timestep_policy`, `autocast_dtype` and `grad_clip`, the models'
        device and latent cache (speed switch `latents`); `hooks`: any further field."""
        return cls(parts, params, optimizer, batches, cfg.timestep_policy, seed, models.device, cfg.autocast_dtype,
                   cfg.grad_clip, **{"cache_latents": models.speed.latents == "cache", **hooks})

    def run(self, iterations: int, out_dir: Path | None, checkpoint_every: int, log: Log, phase: str = "train"
            ) -> None:
        """`iterations` optimiser steps, resumed from the newest checkpoint under `out_dir/phase` if there is one."""
        generator = torch.Generator().manual_seed(self.seed)
        encode = Latents(self.parts["vae"], cache=self.cache_latents)
        context_fn = self.context_fn or prompt_context(self.parts, self.text_grad)
        groups = [self.params[name] for name in (self.clipped or self.params)]
        clipped = [p for group in groups for p in (group if isinstance(group, list) else [group])]
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
                loss, scalars = self._micro_step(encode, generator, context_fn, it)
                (loss / self.accumulation).backward()
                for name, value in {"loss": loss.item(), **scalars}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) / self.accumulation
            grad_norm = torch.nn.utils.clip_grad_norm_(clipped, self.grad_clip or float("inf"))
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step()
            log(it, loss=sums.pop("loss"), grad_norm=float(grad_norm), t_mean=sums.pop("t_mean"), **sums)
            ckpt.maybe_save(it + 1, **state)

    def _micro_step(self, encode: Latents, generator: torch.Generator, context_fn: ContextFn, it: int
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
        parts, device = self.parts, self.device
        batch = next(self.batches)
        pixels = batch.pixels.to(device)
        latents = encode(pixels, batch.keys)  # (B, 4, h, w)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = draw_timesteps(self.timestep_policy, parts["scheduler"], latents.shape[0], generator).to(device)
        noisy, target = noisy_and_target(parts["scheduler"], latents, noise, t)
        on_device = Batch(pixels, batch.masks.to(device), batch.prompts, batch.keys)
        context, extras = context_fn(on_device)

        def denoise(context: torch.Tensor) -> torch.Tensor:
            with autocast(device, self.autocast_dtype):
                return parts["unet"](noisy, t, context).sample.float()

        step = Step(denoise(context), target, noisy, t, context, extras, on_device, denoise)
        loss, scalars = self.loss_fn(step)
        if not torch.isfinite(loss):
            raise Diverged(f"non-finite loss at iteration {it}")
        return loss, {**{k: v.item() for k, v in scalars.items()}, "t_mean": float(t.float().mean())}
