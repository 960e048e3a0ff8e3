"""Tests for echodistill.msswd (MS-SWD, He et al. ECCV 2024). All CPU, all fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echodistill.msswd import gaussian_pyramid, ms_swd, sample_directions, sliced_wasserstein, srgb_to_lab


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_image(b: int = 1, size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A natural-ish image: low-resolution noise upsampled bicubically, values roughly in [0.2, 0.7]."""
    g = _gen(seed)
    low = torch.rand(b, 3, 6, 6, generator=g, dtype=torch.float64)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = 0.2 + 0.5 * (img - img.amin()) / (img.amax() - img.amin())
    return img.to(dtype)


# --- colour conversion ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
        ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
        ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
    ],
)
def test_srgb_to_lab_known_values(rgb, lab):
    x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)
    out = srgb_to_lab(x).view(3)
    assert torch.allclose(out, torch.tensor(lab, dtype=torch.float64), atol=0.1), out


def test_srgb_to_lab_shape_and_dtype():
    x = torch.rand(2, 3, 5, 7)
    out = srgb_to_lab(x)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32


# --- pyramid -------------------------------------------------------------------------------------------------


def test_pyramid_halves_sizes():
    x = torch.rand(2, 3, 64, 48)
    pyr = gaussian_pyramid(x, 5)
    assert [tuple(p.shape) for p in pyr] == [(2, 3, 64, 48), (2, 3, 32, 24), (2, 3, 16, 12), (2, 3, 8, 6), (2, 3, 4, 3)]
    assert pyr[0] is x
    # Odd sizes round up (every second pixel starting at 0).
    assert [p.shape[-1] for p in gaussian_pyramid(torch.rand(1, 3, 25, 25), 3)] == [25, 13, 7]
    # A constant image stays constant (the kernel sums to one, reflect padding).
    c = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    assert all(torch.allclose(p, torch.full_like(p, 0.3)) for p in gaussian_pyramid(c, 3))


def test_pyramid_min_size_stops_levels():
    pyr = gaussian_pyramid(torch.rand(1, 3, 64, 64), 5, min_size=11)
    assert [p.shape[-1] for p in pyr] == [64, 32, 16]


def test_small_image_uses_fewer_levels():
    x, y = _smooth_image(size=16, seed=1), _smooth_image(size=16, seed=2)
    # 16 -> 8 < patch 11: only level 0 is used, so 5 levels equals 1 level with the same directions.
    a = ms_swd(x, y, levels=5, num_projections=8, generator=_gen(3))
    b = ms_swd(x, y, levels=1, num_projections=8, generator=_gen(3))
    assert torch.equal(a, b)


# --- distance properties -------------------------------------------------------------------------------------


def test_zero_for_identical_images():
    x = _smooth_image(b=2, size=32)
    d = ms_swd(x, x.clone(), num_projections=16)
    assert d.shape == (2,)
    assert torch.all(d == 0)


def test_symmetric():
    x, y = _smooth_image(b=2, size=32, seed=1), _smooth_image(b=2, size=32, seed=2)
    dxy = ms_swd(x, y, num_projections=16, generator=_gen(7))
    dyx = ms_swd(y, x, num_projections=16, generator=_gen(7))
    assert torch.allclose(dxy, dyx, rtol=0, atol=1e-6)
    assert torch.all(dxy > 0)


def test_larger_for_larger_colour_shift():
    x = _smooth_image(size=48)
    small = ms_swd(x, x + 0.05, num_projections=32, generator=_gen(0))
    large = ms_swd(x, x + 0.2, num_projections=32, generator=_gen(0))
    assert torch.all(small > 0)
    assert torch.all(large > 2 * small)
    # A channel-wise shift too (changes hue, not just lightness).
    shift = torch.tensor([0.05, -0.05, 0.0]).view(1, 3, 1, 1)
    assert torch.all(ms_swd(x, x + 4 * shift, num_projections=32, generator=_gen(0))
                     > ms_swd(x, x + shift, num_projections=32, generator=_gen(0)))


def test_directions_fresh_every_call():
    x, y = _smooth_image(size=32, seed=1), _smooth_image(size=32, seed=2)
    a = ms_swd(x, y, num_projections=4)
    b = ms_swd(x, y, num_projections=4)
    assert not torch.equal(a, b)


def test_batched_matches_per_sample():
    x, y = _smooth_image(b=3, size=32, seed=1), _smooth_image(b=3, size=32, seed=2)
    batched = ms_swd(x, y, num_projections=8, generator=_gen(5))
    single = torch.cat([ms_swd(x[i : i + 1], y[i : i + 1], num_projections=8, generator=_gen(5)) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize(("input_range", "map_to_unit"), [("unit", True), ("signed", True), ("signed", False)])
def test_finite_gradients(input_range, map_to_unit):
    # Includes exact zeros, values at the gamma threshold and (for signed input) negatives.
    x = _smooth_image(b=2, size=32, seed=1) * 2 - 0.6
    x[:, :, :4, :4] = 0.0
    x[:, :, 4:8, :4] = 0.04045
    x = x.requires_grad_(True)
    y = _smooth_image(b=2, size=32, seed=2)
    d = ms_swd(x, y, num_projections=8, input_range=input_range, map_to_unit=map_to_unit, generator=_gen(0))
    d.sum().backward()
    assert torch.isfinite(d).all()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_signed_mapping_modes():
    # [-1, 1] images: the default maps to [0, 1]; map_to_unit=False (the released code) feeds them raw.
    x, y = _smooth_image(size=32, seed=1) * 2 - 1, _smooth_image(size=32, seed=2) * 2 - 1
    mapped = ms_swd(x, y, num_projections=8, input_range="signed", generator=_gen(0))
    raw = ms_swd(x, y, num_projections=8, input_range="signed", map_to_unit=False, generator=_gen(0))
    as_unit = ms_swd(x, y, num_projections=8, input_range="unit", generator=_gen(0))
    explicit = ms_swd((x + 1) / 2, (y + 1) / 2, num_projections=8, input_range="unit", generator=_gen(0))
    assert not torch.allclose(mapped, raw, rtol=1e-3)
    assert torch.allclose(raw, as_unit)
    assert torch.allclose(mapped, explicit)


def test_dtype_preserved():
    x, y = _smooth_image(size=16, seed=1, dtype=torch.float64), _smooth_image(size=16, seed=2, dtype=torch.float64)
    assert ms_swd(x, y, num_projections=4).dtype == torch.float64


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        ms_swd(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError):
        ms_swd(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# --- agreement with a direct loop-based computation ----------------------------------------------------------


def _ref_lab(rgb: np.ndarray) -> np.ndarray:
    """Scalar-by-scalar sRGB -> Lab (textbook formulas), rgb (3, H, W) -> (3, H, W)."""
    # The sRGB primaries / D65 matrix in exact rational form (the MS-SWD reference's; 0.4124, 0.3576, ... to 4 d.p.).
    m = [
        [10135552 / 24577794, 8788810 / 24577794, 4435075 / 24577794],
        [2613072 / 12288897, 8788810 / 12288897, 887015 / 12288897],
        [1425312 / 73733382, 8788810 / 73733382, 70074185 / 73733382],
    ]
    white = [sum(r) for r in m]
    eps, kappa = 216 / 24389, 24389 / 27
    out = np.zeros_like(rgb)
    for i in range(rgb.shape[1]):
        for j in range(rgb.shape[2]):
            lin = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in rgb[:, i, j]]
            xyz = [sum(m[r][k] * lin[k] for k in range(3)) / white[r] for r in range(3)]
            f = [t ** (1 / 3) if t > eps else (kappa * t + 16) / 116 for t in xyz]
            out[:, i, j] = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return out


def _reflect(i: int, n: int) -> int:
    """Index into a length-n axis with reflect (mirror, edge not repeated) padding."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def _ref_downsample(img: np.ndarray) -> np.ndarray:
    """5x5 binomial blur with reflect padding 2, then every second pixel; img (C, H, W)."""
    k1 = np.array([1, 4, 6, 4, 1], dtype=np.float64)
    k = np.outer(k1, k1) / 256
    c, h, w = img.shape
    out = np.zeros((c, (h + 1) // 2, (w + 1) // 2))
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            acc = np.zeros(c)
            for di in range(-2, 3):
                for dj in range(-2, 3):
                    acc += k[di + 2, dj + 2] * img[:, _reflect(i + di, h), _reflect(j + dj, w)]
            out[:, i // 2, j // 2] = acc
    return out


def _ref_swd(a: np.ndarray, b: np.ndarray, dirs: np.ndarray) -> float:
    """Loop over pixels, extract reflect-padded k x k patches, project, sort, mean |diff|."""
    p, c, k, _ = dirs.shape
    r = k // 2
    h, w = a.shape[1:]
    flat_dirs = dirs.reshape(p, -1)  # (P, C*k*k), C-major like a conv2d filter

    def projections(img):
        proj = np.zeros((p, h * w))
        for i in range(h):
            for j in range(w):
                rows = [_reflect(i + d, h) for d in range(-r, r + 1)]
                cols = [_reflect(j + d, w) for d in range(-r, r + 1)]
                patch = img[:, rows][:, :, cols]  # (C, k, k)
                proj[:, i * w + j] = flat_dirs @ patch.reshape(-1)
        return proj

    pa, pb = np.sort(projections(a), axis=1), np.sort(projections(b), axis=1)
    return float(np.mean(np.abs(pa - pb)))


def test_matches_loop_reference():
    levels, nproj, patch = 2, 4, 11
    x = torch.rand(1, 3, 24, 24, generator=_gen(11), dtype=torch.float64)
    y = (0.8 * torch.rand(1, 3, 24, 24, generator=_gen(12), dtype=torch.float64) + 0.1)
    got = ms_swd(x, y, num_projections=nproj, levels=levels, patch_size=patch, generator=_gen(42))

    # The same directions: ms_swd draws one set per level, level 0 first, from the generator it is given.
    g = _gen(42)
    dirs = [sample_directions(nproj, 3, patch, generator=g, dtype=torch.float64).numpy() for _ in range(levels)]
    for d in dirs:
        assert np.allclose(np.linalg.norm(d.reshape(nproj, -1), axis=1), 1.0)

    xa, ya = x[0].numpy(), y[0].numpy()
    total = 0.0
    for lvl in range(levels):
        if lvl > 0:
            xa, ya = _ref_downsample(xa), _ref_downsample(ya)
        total += _ref_swd(_ref_lab(xa), _ref_lab(ya), dirs[lvl])
    expected = total / levels
    assert math.isclose(got.item(), expected, rel_tol=0, abs_tol=1e-5), (got.item(), expected)


def test_sliced_wasserstein_shapes():
    a, b = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    dirs = sample_directions(5, 3, 11, generator=_gen(0))
    assert dirs.shape == (5, 3, 11, 11)
    out = sliced_wasserstein(a, b, dirs)
    assert out.shape == (2,) and torch.all(out > 0)
    assert torch.all(sliced_wasserstein(a, a, dirs) == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sort_values_matches_torch_sort_in_value_and_gradient(dtype):
    """The fast CPU sort gives torch.sort's values, and the same gradient through the permutation."""
    from echodistill.msswd import sort_values

    x = torch.randn(2, 7, 300, generator=_gen(1), dtype=dtype, requires_grad=True)
    w = torch.randn(2, 7, 300, generator=_gen(2), dtype=dtype)
    ours, ref = sort_values(x), x.sort(dim=-1).values
    assert torch.equal(ours, ref)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.equal(g_ours, g_ref)
    assert torch.equal(sort_values(x.detach()), ref.detach())  # the no-gradient path
    assert torch.equal(sort_values(x.detach().to(torch.bfloat16)), x.detach().to(torch.bfloat16).sort(-1).values)
