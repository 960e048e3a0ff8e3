"""The ensemble of three discriminators (method.md, "Discriminators"): frozen backbone + trainable 2-way head.

Each backbone is frozen and in eval mode, but gradients flow *through* it into the student's image `img_s`
(step 4). Inputs are images in [-1, 1], resized with area interpolation to the backbone's input size and not
mean/std normalised (as released). Because the backbone is frozen and deterministic, the features of `img_s`
are computed once per iteration and shared: the generator loss uses them as they are, the discriminator update
(step 8) uses them detached. A dropped discriminator is never built, so its backbone is never even loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Models

HEAD_WIDTH = 512


def head(dim: int) -> nn.Sequential:
    """Linear(d, 512) - ReLU - Linear(512, 2): logits (B, 2), index 1 = real, 0 = fake."""
    return nn.Sequential(nn.Linear(dim, HEAD_WIDTH), nn.ReLU(), nn.Linear(HEAD_WIDTH, 2))


class Discriminator(nn.Module):
    """One member of the ensemble. `features` (with gradient to the image) and `head` are used separately."""

    def __init__(self, name: str, backbone: Callable[[Tensor], Tensor], dim: int, input_size: int,
                 frozen: list[nn.Module]) -> None:  # the head is initialised from torch's global RNG
        super().__init__()
        self.name, self.input_size, self.dim = name, input_size, dim
        # Plain attributes, not submodules: the frozen backbone stays out of `parameters()`, `state_dict()` and
        # `.to()` (it is the process-wide read-only copy), so only the head is trained, saved and moved.
        object.__setattr__(self, "_backbone", backbone)
        object.__setattr__(self, "_frozen", tuple(frozen))
        self.head = head(dim)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, d). Differentiable with respect to `images`; the backbone is frozen."""
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="area")
        return self._backbone(x)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> logits (B, 2)."""
        return self.head(self.features(images))

    def backbones(self) -> list[nn.Module]:
        """The frozen modules behind `features` (for tests: they must never change)."""
        return list(self._frozen)


def _timm(models: Models, role: str) -> tuple:
    """disc_dino1 (DINO ViT-S/16, pooled CLS, d = 384, 224 px) / disc_dino2 (DINOv2 ViT-L/14, CLS, d = 1024,
    518 px). timm models are built with num_classes=0, so calling them returns the pooled CLS token (B, d)."""
    backbone = models.get_pristine(role)  # frozen and read-only: the shared process-wide copy is enough
    size = int(models.profile.components[role].options["input_size"])
    return backbone, backbone.num_features, size, [backbone]


def _clip(models: Models) -> tuple:
    """disc_clip: CLIP image encoder's projected embedding -> frozen IP-Adapter projection -> flattened 4 x 768
    = 3072 features, at the encoder's input size (224 at paper scale)."""
    clip_vision, ip_proj = models.get_pristine("clip_vision"), models.get_pristine("ip_proj")

    def features(x: Tensor) -> Tensor:
        tokens = ip_proj(clip_vision(pixel_values=x.to(clip_vision.dtype)).image_embeds)  # (B, 4, D)
        return tokens.flatten(1)  # (B, 4 * D)

    dim = ip_proj.num_image_text_embeds * ip_proj.norm.normalized_shape[0]
    return features, dim, clip_vision.config.image_size, [clip_vision, ip_proj]


def build_discriminators(models: Models, names: tuple[str, ...], device: Any, seed: int = 0
                         ) -> dict[str, Discriminator]:
    """The discriminators named in `names` (a subset of disc_dino1, disc_dino2, disc_clip), heads on `device`.

    Backbones are resolved first (loading one may draw from torch's global RNG), then each head is initialised
    from `seed` and its own name alone: a run's heads do not depend on what this process had loaded before, nor
    on which other discriminators are dropped.
    """
    builders = {"disc_dino1": lambda: _timm(models, "dino1"), "disc_dino2": lambda: _timm(models, "dinov2"),
                "disc_clip": lambda: _clip(models)}
    for name in names:
        if name not in builders:
            raise ValueError(f"unknown discriminator {name!r}; valid: {', '.join(builders)}")
    parts = {name: builders[name]() for name in names}
    out = {}
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * len(builders) + list(builders).index(name))
            out[name] = Discriminator(name, *parts[name]).to(device)
    return out


@torch.no_grad()
def real_features(disc: Discriminator, images: Tensor) -> Tensor:
    """Features of real images (B, d): no gradient needed, only the head learns from them."""
    return disc.features(images)
