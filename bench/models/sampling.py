"""Text encoding, seeded noise, few-step student and CFG teacher sampling, VAE decode.

Determinism: the initial noise of each image is drawn from its own CPU generator seeded with the image's seed, and
an ancestral sampler's per-step noise continues that same generator, so the same (prompt, seed) gives the same
image whatever else is in the batch and on whatever device: bit-identical for the same call, and within float
rounding (at most 1/255 per pixel) when the batch around it changes.

Evaluation noise (protocol): image (prompt index p, evaluation seed s) starts from `eval_noise_seed(p, s)`, so every
prompt of a seed has its own noise and the same (p, s) has the same noise for every method and run (paired).

Samplers as the released evaluation: a model whose scheduler is Euler (SD-Turbo) samples with
`EulerAncestralDiscreteScheduler` built from that scheduler's config (identical at one step); DDIM (SD 2.1) and
TCD (Hyper-SD) models keep their own. Every model samples at its native size, `unet.config.sample_size` latents
(SD-Turbo 64 -> 512 px, SD 2.1 768-v 96 -> 768 px); training stays at the profile's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import record_function

from bench.config import SAMPLING_ONLY

# protocol: the student in 1, 2 or 4 steps; trailing spacing gives exactly these timesteps.
STUDENT_TIMESTEPS = {1: (999,), 2: (999, 499), 4: (999, 749, 499, 249)}
TEACHER_STEPS = 25
TEACHER_GUIDANCE = 7.5
SAMPLERS = ("euler_ancestral", "euler")
"""Values of the methods' `sampler` field: what an Euler-scheduled model (SD-Turbo) samples with. "euler_ancestral"
(the released evaluation) or "euler" (the scheduler as loaded). Other schedulers are always kept."""
EVAL_NOISE_STRIDE = 1000
"""Evaluation seed s, prompt index p -> noise seed s * 1000 + p (DreamBench has 25 prompts per concept)."""


@dataclass(frozen=True)
class Numerics:
    """The precision and sampler fields every baseline config has (a baseline's config inherits them and calls
    `check_numerics` in its `__post_init__`). EchoDistill's config has the same fields with its own notes."""

    autocast_dtype: str = "none"
    """Training forward-pass precision (`bench.models.speed.autocast`): "none" = float32, as the released code and
    diffusers' examples train (default), or "bf16" (faster; changes results at bf16 rounding). Weights, optimiser
    state and the loss stay float32."""
    sample_dtype: str = field(default="auto", metadata=SAMPLING_ONLY)
    """Sampling precision: "auto" = fp16 on CUDA and float32 on CPU (the released evaluation samples fp16
    pipelines; default), "none", "fp16" or "bf16". Sampling-only."""
    sampler: str = field(default="euler_ancestral", metadata=SAMPLING_ONLY)
    """What an Euler-scheduled model (SD-Turbo) samples with: "euler_ancestral" (the released evaluation, default;
    identical to "euler" at one step) or "euler". DDIM (SD 2.1) keeps its own. Sampling-only."""


def check_numerics(config: Numerics) -> None:
    """ValueError for an unknown precision or sampler (for the configs' `__post_init__`)."""
    from bench.models.speed import check_autocast

    check_autocast(config.autocast_dtype, config.sample_dtype)
    if config.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not '{config.sampler}'")


def eval_noise_seed(prompt_index: int, eval_seed: int) -> int:
    """The noise seed of evaluation image (prompt index, evaluation seed): its own per prompt, the same for every
    method (a paired comparison). `eval_seed * 1000 + prompt_index`."""
    if not 0 <= prompt_index < EVAL_NOISE_STRIDE:
        raise ValueError(f"prompt index must be in [0, {EVAL_NOISE_STRIDE}), got {prompt_index}")
    return int(eval_seed) * EVAL_NOISE_STRIDE + int(prompt_index)


def native_latent_size(unet: Any) -> int:
    """The latent side a UNet samples at by default (`unet.config.sample_size`), as diffusers' pipelines do."""
    return int(unet.config.sample_size)


def sampling_scheduler(scheduler: Any, sampler: str = "euler_ancestral") -> Any:
    """A fresh scheduler to sample with: Euler -> Euler ancestral from the same config (released evaluation) unless
    `sampler == "euler"`; any other scheduler (DDIM, TCD) is kept as it is."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if sampler == "euler_ancestral" and type(scheduler) is EulerDiscreteScheduler:
        return EulerAncestralDiscreteScheduler.from_config(scheduler.config)
    return type(scheduler).from_config(scheduler.config)


def tokenize(tokenizer: Any, prompts: list[str], device: Any) -> torch.Tensor:
    """(B, 77) token ids, padded to the tokenizer's max length as SD pipelines do."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


def encode_text(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> torch.Tensor:
    """(B, 77, D) last hidden states: the UNet's cross-attention context. Gradient flows if enabled."""
    device = next(text_encoder.parameters()).device
    return text_encoder(tokenize(tokenizer, prompts, device))[0]


def seeded_noise(seeds: list[int], shape: tuple[int, ...], device: Any, dtype: Any = torch.float32,
                 generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """(B, *shape) standard normal noise, image i drawn from a CPU generator seeded with seeds[i] (or from
    `generators[i]`, which then continues where this draw ends)."""
    generators = generators or [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = [torch.randn(shape, generator=g) for g in generators]
    return torch.stack(noise).to(device=device, dtype=dtype)


def timesteps_for(scheduler: Any, steps: int) -> list[int]:
    """The timesteps a scheduler visits for `steps` steps (a fresh copy: the caller's is not changed)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    return [int(t) for t in fresh.timesteps]


@torch.no_grad()
def sample_latents(unet: Any, scheduler: Any, cond: torch.Tensor, seeds: list[int], steps: int,
                   latent_size: int | None = None, uncond: torch.Tensor | None = None, guidance: float = 0.0,
                   sampler: str = "euler_ancestral") -> torch.Tensor:
    """Run `scheduler` (see `sampling_scheduler`) for `steps` steps from seeded noise; classifier-free guidance when
    `guidance > 1`. Each image's generator draws its initial noise and then an ancestral sampler's step noise.

    cond, uncond: (B, 77, D) and (1 or B, 77, D); latent_size None = the UNet's native size. Returns (B, 4, h, w)
    clean latents (VAE-scaled).
    """
    scheduler = sampling_scheduler(scheduler, sampler)  # schedulers keep step state: always a fresh one
    scheduler.set_timesteps(steps, device=cond.device)
    channels, size = unet.config.in_channels, latent_size or native_latent_size(unet)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    latents = seeded_noise(seeds, (channels, size, size), cond.device, cond.dtype, generators)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = _step_noise(scheduler, generators)
    use_cfg = guidance > 1.0 and uncond is not None
    if use_cfg:
        context = torch.cat([uncond.expand_as(cond), cond])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        with record_function("bench/unet"):  # `bench perf` reads these labels for UNet-only latency
            if use_cfg:
                pred_uncond, pred_cond = unet(torch.cat([model_in, model_in]), t, context).sample.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            else:
                pred = unet(model_in, t, cond).sample
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    return latents


def _step_noise(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """`generator=` for schedulers whose step draws noise (ancestral Euler, TCD, DDPM): one per image."""
    import inspect

    return {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}


def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1] (not clamped), (B, 3, H, W). Gradient flows if enabled."""
    with record_function("bench/vae_decode"):
        return vae.decode(latents / vae.config.scaling_factor).sample


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    from PIL import Image

    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


@torch.no_grad()
def generate(unet: Any, scheduler: Any, vae: Any, tokenizer: Any, text_encoder: Any, prompts: list[str],
             seeds: list[int], steps: int, latent_size: int | None = None, guidance: float = 0.0,
             batch_size: int = 16, sampler: str = "euler_ancestral") -> list:
    """PIL images for (prompt, seed) pairs, batched. guidance > 1 adds the empty-prompt branch (CFG).
    latent_size None = the UNet's native size; `sampler`: see `sampling_scheduler`."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images: list = []
    with record_function("bench/generate"):
        uncond = encode_text(tokenizer, text_encoder, [""]) if guidance > 1.0 else None
        for start in range(0, len(prompts), batch_size):
            batch_prompts, batch_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
            cond = encode_text(tokenizer, text_encoder, batch_prompts)
            latents = sample_latents(unet, scheduler, cond, batch_seeds, steps, latent_size, uncond, guidance, sampler)
            images += to_pil(decode(vae, latents))
    return images


def generate_parts(parts: dict[str, Any], prompts: list[str], seeds: list[int], steps: int,
                   latent_size: int | None = None, guidance: float = 0.0, batch_size: int = 16,
                   precision: str = "none", sampler: str = "euler_ancestral") -> list:
    """`generate` with a baseline's parts (`unet`, `scheduler`, `vae`, `tokenizer`, `text_encoder`) under its
    `sample_dtype` precision (`bench.models.speed.autocast`), at the UNet's native size unless told otherwise."""
    from bench.models.speed import autocast

    with autocast(parts["unet"].device, precision):
        return generate(parts["unet"], parts["scheduler"], parts["vae"], parts["tokenizer"], parts["text_encoder"],
                        prompts, seeds, steps, latent_size, guidance=guidance, batch_size=batch_size, sampler=sampler)


def generate_config(parts: dict[str, Any], config: Any, prompts: list[str], seeds: list[int], steps: int | None,
                    guidance: float = 0.0) -> list:
    """`generate_parts` as a baseline's trained model samples: `steps` (None = the config's `sample_steps`) with the
    config's `sample_batch_size`, `sample_dtype` and `sampler`."""
    return generate_parts(parts, prompts, seeds, steps or config.sample_steps, guidance=guidance,
                          batch_size=config.sample_batch_size, precision=config.sample_dtype, sampler=config.sampler)
