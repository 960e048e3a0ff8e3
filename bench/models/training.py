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

# Photo templates for training prompts (method.md: "<new1> {class}" inside 25 photo templates), after the
# textual-inversion "imagenet_templates_small" list.
TRAIN_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}",
)


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


def load_pixels(paths: tuple[Path, ...] | list[Path], size: int) -> list[torch.Tensor]:
    """Each image as a (3, size, size) tensor in [-1, 1] (RGB, EXIF honoured, centre-cropped square)."""
    import numpy as np

    from bench.data import load_image

    out = []
    for path in paths:
        arr = np.asarray(load_image(Path(path), size), dtype=np.float32)
        out.append(torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0)
    return out


def custom_diffusion_augment(image: torch.Tensor, size: int, factor: int, rng: random.Random
                             ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Custom Diffusion's random-scale augmentation (method.md, "Data augmentation").

    With p = 0.66 the image is scaled to U[size/3, size] and placed on a mid-grey canvas; the mask is the
    placed region at latent resolution shrunk by one latent pixel, and "a far away"/"very small" is prefixed
    when the scale is under 0.6 * size. Otherwise it is scaled to U[1.2, 1.4] * size and randomly cropped,
    mask all ones, with "zoomed in"/"close up" prefixed. image: (3, S, S) in [-1, 1]. Returns
    (image (3, size, size), mask (1, size/factor, size/factor), prefix).
    """
    import torch.nn.functional as F

    if rng.random() < 0.66:
        scale = rng.randint(size // 3, size)
    else:
        scale = rng.randint(int(1.2 * size), int(1.4 * size))
    resized = F.interpolate(image[None], size=(scale, scale), mode="bilinear", antialias=True,
                            align_corners=False)[0]
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
        prefix = rng.choice(["a far away ", "very small "])
    elif scale > size:
        prefix = rng.choice(["zoomed in ", "close up "])
    else:
        prefix = ""
    return out, mask, prefix


class TrainingBatches:
    """An endless, seeded stream of augmented batches of one concept's photos.

    `phrase` is what stands for the concept in the prompt (`"<new1> dog"`, `"sks dog"`). With `augment=False`
    the photos are used as they are (mask all ones, no prompt prefix); hflip is applied with p = 0.5 if on.
    """

    def __init__(self, images: list[torch.Tensor], phrase: str, batch_size: int, factor: int, seed: int,
                 augment: bool = True, hflip: bool = True, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> None:
        if not images:
            raise ValueError("no training images")
        self.images, self.phrase, self.batch_size, self.factor = images, phrase, batch_size, factor
        self.augment, self.hflip, self.templates = augment, hflip, templates
        self.size = images[0].shape[-1]
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
            if self.augment:
                image, mask, prefix = custom_diffusion_augment(image, self.size, self.factor, self.rng)
            else:
                mask, prefix = torch.ones(1, self.size // self.factor, self.size // self.factor), ""
            pixels.append(image)
            masks.append(mask)
            prompts.append(prefix + self.rng.choice(self.templates).format(self.phrase))
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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the MSE inside each sample's mask (Custom Diffusion's masked loss)."""
    err = ((pred.float() - target.float()) ** 2 * mask).sum(dim=(1, 2, 3))
    count = (mask.expand_as(pred).sum(dim=(1, 2, 3))).clamp_min(1.0)
    return (err / count).mean()
