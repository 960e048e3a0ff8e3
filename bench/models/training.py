"""Training batches for personalisation: the concept's photos, Custom Diffusion's augmentation, photo prompts.

Shared by every trainable method so that they all see the same data pipeline (protocol.md, "Baselines").
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function

# The 27 "imagenet_templates_small" photo templates of textual inversion (diffusers' `textual_inversion.py`).
IMAGENET_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
TRAIN_TEMPLATES = tuple(t for t in IMAGENET_TEMPLATES if "close" not in t)
"""The released training templates (method.md, "Prompt for a concept"): the 27 minus the two containing "close",
which would clash with the augmentation's "close up"; 25 templates. The released dataset uses all 27 when the
random-scale augmentation is off (`templates_for`)."""


def templates_for(augment: bool) -> tuple[str, ...]:
    """The released dataset's templates: 25 (no "close") with the random-scale augmentation, all 27 without it."""
    return TRAIN_TEMPLATES if augment else IMAGENET_TEMPLATES


def insert_after_first_word(prompt: str, words: str) -> str:
    """The released augmentation's prompt edit: `words` inserted after the prompt's first word, e.g.
    ("a photo of a <new1> dog", "a far away") -> "a a far away photo of a <new1> dog" (sic: the released lists hold
    "a far away", so the article doubles; reproduced as released)."""
    head, *rest = prompt.split()
    return " ".join([head, words, *rest])


@dataclass
class Batch:
    pixels: torch.Tensor
    """(B, 3, H, W) in [-1, 1]; mid-grey (0) where the augmentation left the canvas empty."""
    masks: torch.Tensor
    """(B, 1, h, w) at latent resolution: 1 where the loss counts."""
    prompts: list[str]
    keys: tuple[tuple[int, int, bool], ...] | None = None
    """Per sample (stream, photo index, mirrored) when the pixels are exactly a photo or its mirror (no random-scale
    augmentation), so its VAE encoding can be reused (`Latents`); None when augmented."""


def load_pixels(paths: tuple[Path, ...] | list[Path], size: int | None = None) -> list[torch.Tensor]:
    """Each image as a (3, S, S) tensor in [-1, 1] (RGB, EXIF honoured, centre-cropped square); S = `size`, or the
    photo's own shorter side when `size` is None (what `TrainingBatches` takes, so it resizes each photo once)."""
    import numpy as np
    from PIL import ImageOps

    from bench.data import load_image

    out = []
    for path in paths:
        image = load_image(Path(path), size)
        if size is None and image.width != image.height:  # the centre square, not resized
            image = ImageOps.fit(image, (min(image.size),) * 2, centering=(0.5, 0.5))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        out.append(pixels.float().div_(127.5).sub_(1.0))  # one float copy: (x / 127.5 - 1) in place, as before
    return out


def resize(image: torch.Tensor, side: int, mode: str = "bilinear") -> torch.Tensor:
    """(3, S, S) -> (3, side, side), bilinear with antialiasing (PIL's `Image.resize(..., BILINEAR)`, which the
    released dataset uses) or `mode="bicubic"` (PIL's BICUBIC, as diffusers' textual_inversion.py resizes; clamped
    to [-1, 1] as 8-bit pixels are); the same tensor when it already has that side."""
    import torch.nn.functional as F

    if image.shape[-1] == side and image.shape[-2] == side:
        return image
    out = F.interpolate(image[None], size=(side, side), mode=mode, antialias=True, align_corners=False)[0]
    return out.clamp(-1.0, 1.0) if mode == "bicubic" else out


def custom_diffusion_augment(image: torch.Tensor, size: int, factor: int, rng: random.Random
                             ) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Custom Diffusion's random-scale augmentation as the released dataset does it (method.md, "Data
    augmentation").

    With p = 0.66 the photo is resized to scale ~ U{size/3 .. size} and placed on a mid-grey canvas at a random
    position; the mask is the placed region at latent resolution shrunk by one latent pixel. Otherwise it is
    resized to U{1.2 size .. 1.4 size - 1} and randomly cropped, mask all ones. image: (3, S, S) in [-1, 1], the
    photo at its own size (resized once, from the original). Returns (image (3, size, size), mask (1, size/factor,
    size/factor), the words to insert into the prompt: "a far away" / "very small" under 0.6 * size, "zoomed in" /
    "close up" above size, else None).
    """
    if rng.random() < 0.66:
        scale = rng.randint(size // 3, size)
    else:
        scale = rng.randrange(int(1.2 * size), int(1.4 * size))
    resized = resize(image, scale)
    m = size // factor
    mask = torch.zeros(1, m, m)
    if scale > size:
        top, left = rng.randint(0, scale - size), rng.randint(0, scale - size)
        out = resized[:, top:top + size, left:left + size]
        mask[:] = 1.0
    else:
        top, left = rng.randint(0, size - scale), rng.randint(0, size - scale)
        out = torch.zeros(3, size, size)
        out[:, top:top + scale, left:left + scale] = resized
        mask[:, top // factor + 1:(top + scale) // factor - 1, left // factor + 1:(left + scale) // factor - 1] = 1.0
    if scale < 0.6 * size:
        words = rng.choice(["a far away", "very small"])
    elif scale > size:
        words = rng.choice(["zoomed in", "close up"])
    else:
        words = None
    return out, mask, words


class TrainingBatches:
    """An endless, seeded stream of augmented batches of one concept's photos.

    `phrase` is what stands for the concept in the prompt (`"<new1> dog"`, `"sks dog"`). `images` are the photos at
    any square size (`load_pixels(paths)`: their own); `size` is the training side (default: the first photo's).
    With `augment=True` each sample resizes its photo once, from that size, to the augmentation's scale; with
    `augment=False` the photos are resized to `size` once, here, and used as they are (mask all ones, no prompt
    edit), with `resample` ("bilinear" or "bicubic"). hflip is applied with p = 0.5 if on.
    """

    def __init__(self, images: list[torch.Tensor], phrase: str, batch_size: int, factor: int, seed: int,
                 augment: bool = True, hflip: bool = True, templates: tuple[str, ...] = TRAIN_TEMPLATES,
                 size: int | None = None, resample: str = "bilinear") -> None:
        if not images:
            raise ValueError("no training images")
        self.size = size or images[0].shape[-1]
        self.phrase, self.batch_size, self.factor = phrase, batch_size, factor
        self.images = images if augment else [resize(image, self.size, resample) for image in images]
        self.augment, self.hflip, self.templates = augment, hflip, templates
        self.rng = random.Random(seed)
        self.stream = next(_STREAMS)  # tells apart the photos of different streams in a `Latents` cache

    def __iter__(self) -> TrainingBatches:
        return self

    def __next__(self) -> Batch:
        pixels, masks, prompts, keys = [], [], [], []
        for _ in range(self.batch_size):
            index = self.rng.randrange(len(self.images))
            image = self.images[index]
            mirrored = self.hflip and self.rng.random() < 0.5
            if mirrored:
                image = image.flip(-1)
            keys.append((self.stream, index, mirrored))
            words = None
            if self.augment:
                image, mask, words = custom_diffusion_augment(image, self.size, self.factor, self.rng)
            else:
                mask = torch.ones(1, self.size // self.factor, self.size // self.factor)
            prompt = self.rng.choice(self.templates).format(self.phrase)
            pixels.append(image)
            masks.append(mask)
            prompts.append(insert_after_first_word(prompt, words) if words else prompt)
        return Batch(torch.stack(pixels), torch.stack(masks), prompts, None if self.augment else tuple(keys))

    def state(self) -> object:
        """The stream's position (for checkpoints)."""
        return self.rng.getstate()

    def set_state(self, state: object) -> None:
        self.rng.setstate(state)


_STREAMS = itertools.count()


class Latents:
    """Training pixels -> VAE latents, a fresh posterior sample times the scaling factor: (B, 4, h, w).

    With `cache` on, each distinct photo of a batch that carries `keys` (no random-scale augmentation: the pixels
    are exactly a photo or its mirror) is encoded once, alone, and its posterior (mean, log-variance) kept; every
    later step only draws the sample, from the same generator as before. The latents are therefore those of
    encoding every batch, up to float rounding. Batches without keys are encoded as they come. The speed switch
    `latents` (`bench.models.speed`) turns the cache on ("cache", default) or off ("encode").
    """

    def __init__(self, vae: Any, cache: bool = True) -> None:
        self.vae, self.cache = vae, cache
        self.posteriors: dict[tuple[int, int, bool], torch.Tensor] = {}
        """key -> (2C, h, w) posterior parameters, as `DiagonalGaussianDistribution` takes them."""

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, keys: tuple | None, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """pixels (B, 3, H, W) in [-1, 1] on the VAE's device -> latents (B, 4, h, w)."""
        with record_function("bench/vae_encode"):  # the phase `bench perf` reports
            return self._posterior(pixels, keys).sample(generator) * self.vae.config.scaling_factor

    def _posterior(self, pixels: torch.Tensor, keys: tuple | None) -> Any:
        """The batch's VAE posterior: encoded now, or assembled from the photos' cached ones."""
        if not (self.cache and keys is not None):
            return self.vae.encode(pixels).latent_dist
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        for i, key in enumerate(keys):
            if key not in self.posteriors:
                self.posteriors[key] = self.vae.encode(pixels[i : i + 1]).latent_dist.parameters[0]
        return DiagonalGaussianDistribution(torch.stack([self.posteriors[k] for k in keys]))


# --- the denoising loss every fine-tuning baseline uses ---------------------------------------------------

TIMESTEP_POLICIES = {"t999": (999,), "four_step": (999, 749, 499, 249), "uniform": None}
"""Which timesteps training sees (paper Table 5's "train NFE"): 1 -> t999, 4 -> four_step, 1000 -> uniform.
A one-step student only ever sees t = 999 at inference, hence the default for one-step baselines."""

TRAIN_NFE_VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "train4": {"timestep_policy": "four_step"},
    "train1000": {"timestep_policy": "uniform"},
}
"""The variants every one-step baseline offers for paper Table 5's train NFE (1, 4, 1000): spread into a method's
own `variants` (`{**TRAIN_NFE_VARIANTS, "prior": {...}}`)."""


def sample_timesteps(policy: str, batch: int, generator: torch.Generator, num_train_timesteps: int = 1000
                     ) -> torch.Tensor:
    """(B,) int64 timesteps drawn under `policy`."""
    if policy not in TIMESTEP_POLICIES:
        raise ValueError(f"unknown timestep policy '{policy}'; valid: {', '.join(TIMESTEP_POLICIES)}")
    choices = TIMESTEP_POLICIES[policy]
    if choices is None:
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    idx = torch.randint(0, len(choices), (batch,), generator=generator)
    return torch.tensor(choices)[idx]


SNR_WEIGHTED = "snr_weighted"
"""TextBoost's further policy (`draw_timesteps`): p(t) proportional to max log-SNR - log-SNR(t)."""


def snr_weighted_timesteps(scheduler: Any, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) timesteps with p(t) proportional to max_t log SNR(t) - log SNR(t) (the paper's SNR-weighted sampling)."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler.from_config(scheduler.config).alphas_cumprod.double()
    logsnr = (ac / (1 - ac)).log()
    weights = logsnr.max() - logsnr
    return torch.multinomial(weights / weights.sum(), batch, replacement=True, generator=generator)


def draw_timesteps(policy: str, scheduler: Any, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) training timesteps: `sample_timesteps` for a `TIMESTEP_POLICIES` key, `snr_weighted_timesteps` for
    `SNR_WEIGHTED` (the scheduler gives the noise schedule)."""
    if policy == SNR_WEIGHTED:
        return snr_weighted_timesteps(scheduler, batch, generator)
    return sample_timesteps(policy, batch, generator)


def noisy_and_target(scheduler: object, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM forward noising at `t` and the target the UNet is trained on, read from `prediction_type`.

    Works for any diffusers scheduler config (Euler, DDIM, TCD): the forward process is the same DDPM one.
    """
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(scheduler.config)
    noisy = ddpm.add_noise(latents, noise, t)
    kind = ddpm.config.prediction_type
    if kind == "epsilon":
        return noisy, noise
    if kind == "v_prediction":
        return noisy, ddpm.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type '{kind}'")


LOSS_NORMALISATIONS = ("mask_sum", "mean")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, normalise: str = "mean"
               ) -> torch.Tensor:
    """Batch mean of each sample's squared error inside its mask. pred, target (B, C, h, w); mask (B, 1, h, w).

    normalise="mask_sum": the sum over the C channels and the masked pixels divided by the one-channel mask sum (the
    released code and diffusers' Custom Diffusion example; C = 4 times the mean, which changes how a gradient clip
    at 1.0 bites). "mean": divided by the masked element count over all channels, a true mean (with an all-ones
    mask, `F.mse_loss`, as diffusers' DreamBooth, LoRA and textual-inversion examples train).
    """
    if normalise not in LOSS_NORMALISATIONS:
        raise ValueError(f"loss normalisation must be one of {', '.join(LOSS_NORMALISATIONS)}, not {normalise!r}")
    err = ((pred.float() - target.float()) ** 2 * mask).sum(dim=(1, 2, 3))
    count = mask.sum(dim=(1, 2, 3)) if normalise == "mask_sum" else mask.expand_as(pred).sum(dim=(1, 2, 3))
    return (err / count.clamp_min(1.0)).mean()
