"""Multi-scale sliced Wasserstein distance (MS-SWD) as a differentiable torch loss.

He et al., "Multiscale Sliced Wasserstein Distances as Perceptual Color Difference Measures", ECCV 2024
(arXiv 2407.10181). EchoDistill uses it as one of its alignment losses between the student's image `img_s`
and the teacher's image `img_T` (see ``shared/spec/method.md``, section "MS-SWD").

The measure, per image pair:

1. Build a Gaussian pyramid (level 0 is the image itself; each further level is the previous one blurred with
   the 5x5 binomial kernel, reflect-padded by 2, then subsampled by taking every second pixel).
2. At every level convert sRGB to CIELAB (D65), so that distances are roughly perceptually uniform.
3. Treat every 11x11 patch (reflect-padded, stride 1) as a point in R^(3*11*11) and compare the two images'
   patch distributions with the sliced Wasserstein-1 distance: project on random unit directions (implemented
   as conv2d filters), sort each projection over pixels, take the mean absolute difference of sorted values.
   Directions are redrawn at every call and at every level (as the reference does), and shared by x and y.
4. Average over projections and pixels (inside step 3), then over pyramid levels.

Input convention. The reference implementation expects sRGB in [0, 1]. The released EchoDistill/OPAD training
code feeds decoder outputs in [-1, 1] straight into it. ``ms_swd`` therefore takes ``input_range`` (what the
caller passes) and ``map_to_unit`` (whether to map signed inputs to [0, 1] first, the correct use and the
project's default; ``False`` reproduces the released behaviour). Nothing is clamped: ``img_s`` is not clamped
in the method either, and out-of-range values go through the piecewise-linear branches of the colour
conversion, which keeps them finite and differentiable.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gaussian_pyramid",
    "srgb_to_lab",
    "sample_directions",
    "sliced_wasserstein",
    "sort_values",
    "ms_swd",
]

# --- colour constants ---------------------------------------------------------------------------------------

# linear sRGB -> XYZ (D65). These are the exact rational values derived from the sRGB primaries and the D65
# white point (the same matrix the MS-SWD reference takes from NVIDIA's FLIP); to 4 decimals it is the IEC
# 61966-2-1 matrix [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]].
_RGB_TO_XYZ = (
    (10135552 / 24577794, 8788810 / 24577794, 4435075 / 24577794),
    (2613072 / 12288897, 8788810 / 12288897, 887015 / 12288897),
    (1425312 / 73733382, 8788810 / 73733382, 70074185 / 73733382),
)
# D65 reference white = XYZ of linear RGB (1, 1, 1), i.e. the row sums above (0.950428545, 1, 1.088900371).
# Using the row sums (rather than a separately rounded white) makes sRGB white map to exactly L=100, a=b=0.
_WHITE_D65 = tuple(sum(row) for row in _RGB_TO_XYZ)
# CIE constants for the XYZ -> Lab companding f(t).
_LAB_EPSILON = 216 / 24389  # (6/29)^3: below this f is linear
_LAB_KAPPA = 24389 / 27  # (29/3)^3: slope of the linear part is kappa/116

# 5x5 binomial kernel [1,4,6,4,1]^T [1,4,6,4,1] / 256 (approximates a Gaussian; Burt & Adelson pyramid).
_BINOMIAL_1D = (1.0, 4.0, 6.0, 4.0, 1.0)


def _binomial_kernel(channels: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Depthwise blur kernel, shape (channels, 1, 5, 5), summing to 1 per channel."""
    k1 = torch.tensor(_BINOMIAL_1D, device=device, dtype=dtype)
    k2 = torch.outer(k1, k1) / 256.0
    return k2.expand(channels, 1, 5, 5).contiguous()


def gaussian_pyramid(x: Tensor, levels: int, *, min_size: int = 1) -> list[Tensor]:
    """Gaussian pyramid of ``x``.

    Args:
        x: (B, C, H, W) images.
        levels: maximum number of levels, including level 0 (the input itself).
        min_size: a level whose height or width would be smaller than this is not added, and no further levels
            are built (``ms_swd`` passes its patch size, so every level holds at least one whole patch).

    Returns:
        List of tensors; element ``n`` has shape (B, C, ceil(H / 2^n), ceil(W / 2^n)). Level 0 is ``x`` itself
        (always returned). Each next level: reflect-pad by 2, depthwise 5x5 binomial blur (output the same
        size as its input), then keep every second pixel starting at 0, as in the MS-SWD reference.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    kernel = _binomial_kernel(x.shape[1], device=x.device, dtype=x.dtype)
    pyramid = [x]
    cur = x
    for _ in range(levels - 1):
        h, w = cur.shape[-2:]
        nh, nw = (h + 1) // 2, (w + 1) // 2
        # Reflect padding needs at least 3 pixels per side; also stop once a level would be too small.
        if min(h, w) < 3 or min(nh, nw) < min_size:
            break
        blurred = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="reflect"), kernel, groups=cur.shape[1])  # (B,C,h,w)
        cur = blurred[:, :, ::2, ::2]  # (B, C, ceil(h/2), ceil(w/2))
        pyramid.append(cur)
    return pyramid


def srgb_to_lab(x: Tensor) -> Tensor:
    """sRGB -> CIELAB (D65 white, 2-degree observer).

    Args:
        x: (B, 3, H, W) gamma-encoded sRGB, nominally in [0, 1]. Values outside [0, 1] are allowed (no clamping):
            they take the linear branches of the piecewise functions, which keeps the result finite and
            differentiable (needed for the released code's [-1, 1] convention and for unclamped decoder output).

    Returns:
        (B, 3, H, W) tensor of (L*, a*, b*); L* in [0, 100] for inputs in [0, 1].
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got shape {tuple(x.shape)}")
    # 1. sRGB -> linear RGB (IEC 61966-2-1 piecewise gamma). The pow branch sees a clamped argument so that
    #    torch.where does not back-propagate NaN from a negative base through the unused branch.
    limit = 0.04045
    lin = torch.where(
        x > limit,
        ((x.clamp(min=limit) + 0.055) / 1.055) ** 2.4,
        x / 12.92,
    )
    # 2. linear RGB -> XYZ, then normalise by the white point: (3x3) @ (B, 3, H*W).
    m = torch.tensor(_RGB_TO_XYZ, device=x.device, dtype=x.dtype)
    white = torch.tensor(_WHITE_D65, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / white
    # 3. XYZ -> Lab companding f(t): cube root above epsilon, linear (kappa*t + 16)/116 below. The cube root
    #    sees t >= epsilon only, so its gradient never blows up at 0.
    f = torch.where(
        xyz > _LAB_EPSILON,
        xyz.clamp(min=_LAB_EPSILON) ** (1.0 / 3.0),
        (_LAB_KAPPA * xyz + 16.0) / 116.0,
    )
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    L = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.cat((L, a, b), dim=1)


def sample_directions(
    num_projections: int,
    channels: int,
    patch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random unit directions in R^(channels * patch_size^2), shaped as conv2d filters.

    Drawn from a standard normal and L2-normalised, i.e. uniform on the sphere. When a ``generator`` is given,
    the draw happens on the generator's device (so a seeded CPU generator gives the same directions for CPU and
    GPU inputs) and the result is then moved to ``device``/``dtype``; the draw itself is float32 unless float64
    is asked for.

    Returns:
        (num_projections, channels, patch_size, patch_size).
    """
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    draw_device = generator.device if generator is not None else device
    d = torch.randn(num_projections, channels * patch_size**2, generator=generator, device=draw_device,
                    dtype=draw_dtype)
    d = d / d.norm(dim=1, keepdim=True)
    return d.view(num_projections, channels, patch_size, patch_size).to(device=device, dtype=dtype)


class _SortValues(torch.autograd.Function):
    """CPU `x` sorted along its last dim, differentiable: the gradient goes back through the sorting permutation."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        order = _argsort(x)
        ctx.save_for_backward(order)
        return x.gather(-1, order)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (order,) = ctx.saved_tensors
        return torch.zeros_like(grad).scatter_(-1, order, grad)


def _on_numpy(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _argsort(x: Tensor) -> Tensor:
    return torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1)).to(torch.int64)


def sort_values(x: Tensor) -> Tensor:
    """Sorted values of `x` along the last dim, ascending; differentiable like `x.sort(dim=-1).values`.

    The same values as `torch.sort` (and the same gradient, up to which of several equal values gets which
    position). On CPU (float32/64) the order comes from numpy, whose vectorised sort is
    several times faster there than torch's for the (B, 128, H*W) projections of MS-SWD (the largest share of an
    EchoDistill iteration on the `tiny` profile); on an accelerator torch.sort is used as it is.
    """
    if not _on_numpy(x):
        return x.sort(dim=-1).values
    if not x.requires_grad:
        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    return _SortValues.apply(x)


def sliced_wasserstein(x_lab: Tensor, y_lab: Tensor, directions: Tensor) -> Tensor:
    """Sliced Wasserstein-1 distance between the patch distributions of two images.

    Every pixel's (reflect-padded) k x k neighbourhood is one sample; projecting all of them on a direction is a
    single conv2d with that direction as the filter. In 1-D the W1 distance between two empirical distributions
    with equally many samples is the mean absolute difference of their sorted values.

    Args:
        x_lab, y_lab: (B, C, H, W), same shape (any colour space; ``ms_swd`` passes CIELAB).
        directions: (P, C, k, k) unit directions (see ``sample_directions``), shared by x and y.

    Returns:
        (B,) mean over the P projections and the H*W pixels.
    """
    if x_lab.shape != y_lab.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x_lab.shape)} and {tuple(y_lab.shape)}")
    pad = directions.shape[-1] // 2
    b, p = x_lab.shape[0], directions.shape[0]
    proj_x = F.conv2d(F.pad(x_lab, (pad, pad, pad, pad), mode="reflect"), directions)  # (B, P, H, W)
    proj_y = F.conv2d(F.pad(y_lab, (pad, pad, pad, pad), mode="reflect"), directions)
    proj_x = sort_values(proj_x.reshape(b, p, -1))  # (B, P, H*W)
    proj_y = sort_values(proj_y.reshape(b, p, -1))
    return (proj_x - proj_y).abs().mean(dim=(1, 2))


def ms_swd(
    x: Tensor,
    y: Tensor,
    *,
    num_projections: int = 128,
    levels: int = 5,
    patch_size: int = 11,
    input_range: Literal["signed", "unit"] = "unit",
    map_to_unit: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multi-scale sliced Wasserstein distance (He et al., ECCV 2024), one value per batch element.

    Args:
        x, y: (B, 3, H, W) sRGB images of the same shape, H and W at least ``patch_size``.
        num_projections: random directions per level (the paper: 128).
        levels: pyramid levels, level 0 included (the paper: 5). Levels whose height or width would be smaller
            than ``patch_size`` are not used (e.g. a 64x64 input keeps 64, 32, 16 only); the result is the mean
            over the levels actually used.
        patch_size: side of the square patches (the paper: 11).
        input_range: what the caller passes. ``"unit"``: values in [0, 1] (the reference's convention).
            ``"signed"``: values in [-1, 1] (e.g. VAE decoder output).
        map_to_unit: only read when ``input_range="signed"``. ``True`` (default, the correct use): map
            ``(v + 1) / 2`` to [0, 1] before the colour conversion. ``False``: feed the [-1, 1] values unchanged
            into the [0, 1] colour conversion, which is what the released OPAD/EchoDistill training code does.
        generator: optional ``torch.Generator`` for the random directions (reproducibility/tests). Directions
            are drawn fresh at every call and at every level, level 0 first.

    Returns:
        (B,) tensor in the dtype of ``x``; differentiable with respect to ``x`` and ``y``.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < patch_size:
        raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than the patch size {patch_size}")
    if input_range not in ("signed", "unit"):
        raise ValueError(f"input_range must be 'signed' or 'unit', got {input_range!r}")
    if input_range == "signed" and map_to_unit:
        x = (x + 1.0) / 2.0
        y = (y + 1.0) / 2.0

    pyr_x = gaussian_pyramid(x, levels, min_size=patch_size)
    pyr_y = gaussian_pyramid(y, levels, min_size=patch_size)
    total = x.new_zeros(x.shape[0])
    for lx, ly in zip(pyr_x, pyr_y):
        # Colour conversion per level (after blurring in sRGB), as in the reference.
        dirs = sample_directions(
            num_projections, 3, patch_size, generator=generator, device=x.device, dtype=x.dtype
        )
        total = total + sliced_wasserstein(srgb_to_lab(lx), srgb_to_lab(ly), dirs)
    return total / len(pyr_x)
