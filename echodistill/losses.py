"""EchoDistill's losses (method.md, "One training iteration", steps 2, 4, 6 and 8), each a small pure function.

Alignment losses return one value per sample, shape (B,), so the trainer can multiply by w(t') before the batch
mean (step 6). The GAN losses return scalars (batch means), as `nn.CrossEntropyLoss` does in the released code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.models.training import masked_mse
from echodistill.msswd import ms_swd

REAL, FAKE = 1, 0
"""Class indices of the 2-way discriminator heads: index 1 = "real", index 0 = "fake" (released code)."""


# --- step 2: teacher -------------------------------------------------------------------------------------------


def teacher_loss(pred: Tensor, target: Tensor, mask: Tensor, normalise: str = "mask_sum") -> Tensor:
    """Masked MSE of the teacher's prediction per sample, then the batch mean.

    pred, target: (B, C, h, w); mask: (B, 1, h, w) from the random-scale augmentation (1 where the image is).
    "mask_sum" (released code, default): the sum over C channels and masked pixels divided by the mask's
    one-channel sum, C times the mean; "mean": a true mean (`bench.models.training.masked_mse`).
    """
    return masked_mse(pred, target, mask.to(pred.dtype), normalise)


# --- step 6: alignment losses, per sample ----------------------------------------------------------------------


def timestep_weight(alphas_cumprod: Tensor, t: Tensor, kind: str = "alphas_cumprod") -> Tensor:
    """w(t'), shape (B,), for integer timesteps t (B,).

    "alphas_cumprod": alpha_bar[t'] (the released code): ~1 at t' = 0, ~0.0047 at t' = 999 for SD's schedule.
    "sqrt_alphas_cumprod": sqrt(alpha_bar[t']) (ADD's "exponential" weighting): ~0.068 at t' = 999.
    Either way a target from a barely-noised student output (small t') counts most.
    """
    w = alphas_cumprod.to(t.device)[t].float()
    if kind == "alphas_cumprod":
        return w
    if kind == "sqrt_alphas_cumprod":
        return w.sqrt()
    raise ValueError(f"unknown timestep weighting {kind!r}; valid: alphas_cumprod, sqrt_alphas_cumprod")


def latent_mse(x0_s: Tensor, x0_T: Tensor) -> Tensor:
    """0.5 * mean((x0_s - x0_T)^2) per sample: (B, 4, h, w) x 2 -> (B,)."""
    return 0.5 * ((x0_s.float() - x0_T.float()) ** 2).mean(dim=(1, 2, 3))


def identity_features(clip_vision: Any, ip_proj: Any, images: Tensor) -> Tensor:
    """IP-Adapter image tokens P(E(x)): (B, 3, H, W) in [-1, 1] -> (B, 4, D) (D = 768 at paper scale).

    Images are resized bilinearly to the CLIP encoder's input size (224 at paper scale, the config's
    `image_size` so the tiny encoder works too); no mean/std normalisation, as released. E is the CLIP image
    encoder's projected embedding (B, 1024), P the frozen IP-Adapter projection (Linear -> 4 tokens, LayerNorm).
    """
    size = clip_vision.config.image_size
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    embeds = clip_vision(pixel_values=x.to(clip_vision.dtype)).image_embeds  # (B, 1024)
    return ip_proj(embeds)  # (B, 4, 768)


def identity_loss(feat_s: Tensor, feat_T: Tensor) -> Tensor:
    """1 - mean over the 4 tokens of the cosine between student and teacher tokens: (B, 4, D) x 2 -> (B,)."""
    return 1.0 - F.cosine_similarity(feat_s.float(), feat_T.float(), dim=-1).mean(dim=-1)


def msswd_loss(img_s: Tensor, img_T: Tensor, mode: str = "released", generator: torch.Generator | None = None
               ) -> Tensor:
    """MS-SWD between decoded images in [-1, 1], (B, 3, H, W) x 2 -> (B,) (method.md, "MS-SWD").

    mode "released" (default): [-1, 1] fed as is, as the released training code does; "unit": mapped to [0, 1]
    first (the reference's convention).
    Computed in float32 outside autocast: sorting projections in bf16 would blur the distances.
    """
    if mode not in ("unit", "released"):
        raise ValueError(f"unknown msswd mode {mode!r}; valid: unit, released")
    with torch.autocast(img_s.device.type, enabled=False):
        return ms_swd(img_s.float(), img_T.float(), input_range="signed", map_to_unit=mode == "unit",
                      generator=generator)


# --- steps 4 and 8: adversarial losses -----------------------------------------------------------------------


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: 2-class cross-entropy of D(img_s) against "real". (B, 2) -> scalar.

    Equals -mean(log softmax(logits)[:, REAL]); log 2 for logits that cannot tell (all equal).
    """
    labels = torch.full((fake_logits.shape[0],), REAL, dtype=torch.long, device=fake_logits.device)
    return F.cross_entropy(fake_logits.float(), labels)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """0.5 * (CE(D(real), real) + CE(D(stopgrad(img_s)), fake)). (B, 2) x 2 -> scalar. No R1, no DiffAugment."""
    real = torch.full((real_logits.shape[0],), REAL, dtype=torch.long, device=real_logits.device)
    fake = torch.full((fake_logits.shape[0],), FAKE, dtype=torch.long, device=fake_logits.device)
    return 0.5 * (F.cross_entropy(real_logits.float(), real) + F.cross_entropy(fake_logits.float(), fake))


def accuracy(logits: Tensor, label: int) -> float:
    """Fraction of rows whose argmax is `label` (REAL or FAKE): the discriminator accuracy we log."""
    return (logits.argmax(dim=-1) == label).float().mean().item()
