"""The metric suites against the authors' released evaluation (eval_dreambooth.py) and the original DreamBooth
protocol: the 512 pre-resize and the DINO resize (bilinear, as torchvision's `Resize` on a PIL image), DINOv2's
own position-embedding interpolation at 224 px, and the `dreambooth` suite's plain cosines without pre-resize.
Everything on hand-made images, tensors and small models: offline, no weights."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from bench.metrics import (
    SUITE_VERSION,
    dino_transform,
    dinov2_pos_embed,
    get_suite,
    pre_resize,
    score_embedded,
    scoring,
)
from bench.metrics.suites import IMAGENET_MEAN, IMAGENET_STD, SUITES, Suite


def _photo(w: int = 700, h: int = 900, seed: int = 0) -> Image.Image:
    """A non-square image with detail at every scale (noise on a gradient), so resampling filters differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8))


def _pixels(x: Image.Image | torch.Tensor) -> np.ndarray:
    return np.asarray(x) if isinstance(x, Image.Image) else x.numpy()


def _capture(suite: Suite) -> scoring.Scorer:
    """A scorer whose 'preprocessing' returns the image it is given: what reaches each backbone's transform."""
    def grab(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(im))
    return scoring.Scorer(suite, "cpu", None, grab, None, None, grab)


# --- (c) bilinear resizes, as torchvision's Resize on a PIL image --------------------------------------------


@pytest.mark.parametrize("size", [(700, 900), (300, 200)], ids=["shrink", "enlarge"])
def test_pre_resize_is_torchvision_resize_on_pil(size: tuple[int, int]) -> None:
    im = _photo(*size)
    ours = np.asarray(pre_resize(im, 512))
    assert ours.shape == (512, 512, 3)
    assert np.array_equal(ours, np.asarray(v2.Resize((512, 512))(im)))  # the released script's v2.Resize
    assert np.array_equal(ours, np.asarray(T.Resize((512, 512))(im)))
    bicubic = np.asarray(im.resize((512, 512), Image.Resampling.BICUBIC))  # the old pre-resize
    assert np.abs(ours.astype(int) - bicubic).max() > 10


def test_scorer_feeds_both_backbones_the_bilinear_512_square() -> None:
    im = _photo()
    clip_in, dino_in = _capture(get_suite("paper"))._prepare(im)
    want = np.asarray(v2.Resize((512, 512))(im))
    assert np.array_equal(clip_in.numpy(), want) and np.array_equal(dino_in.numpy(), want)


def test_paper_dino_input_is_the_released_preprocessing() -> None:
    """eval_dreambooth.py dino_score: v2.Resize((512, 512)), v2.Resize((224, 224)), ToTensor, ImageNet Normalize."""
    im = _photo()
    suite = get_suite("paper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v2.ToTensor is deprecated; the released script uses it
        released = v2.Compose([v2.Resize((512, 512)), v2.Resize((224, 224)), v2.ToTensor(),
                               v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(im)
    ours = dino_transform(suite)(pre_resize(im, suite.image_size))
    assert ours.shape == (3, 224, 224) and torch.equal(ours, released)
    old = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(im.resize((512, 512), Image.Resampling.BICUBIC))
    assert (ours - old).abs().max() > 0.1


# --- (d) the dreambooth suite: the original protocol ---------------------------------------------------------


def test_dreambooth_suite_has_no_pre_resize_and_dino_eval_transform() -> None:
    suite = get_suite("dreambooth")
    im = _photo(333, 250)
    clip_in, dino_in = _capture(suite)._prepare(im)
    assert np.array_equal(clip_in.numpy(), np.asarray(im)) and dino_in.shape == (250, 333, 3)  # untouched
    dino = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(dino_transform(suite)(im), dino(im))
    assert suite.dino_input == 224 and suite.dino_pos_embed == "timm" and suite.cos_max0 is False


class _SignScorer(scoring.Scorer):
    """Embeds a bright image as (1, 0) and a dark one as (-1, 0): cosines of +1 and -1 on purpose."""

    def image_embeddings(self, images, batch_size=None, on_batch=None):  # type: ignore[override]
        e = torch.tensor([[1.0 if np.asarray(im).mean() > 127 else -1.0, 0.0] for im in images])
        return {"clip": e, "dino": e.clone()}

    def text_embeddings(self, texts, batch_size=256):  # type: ignore[override]
        return torch.tensor([[1.0, 0.0]] * len(texts))


@pytest.mark.parametrize("name,expect", [("dreambooth", -1.0), ("paper", 0.0)])
def test_dreambooth_cosines_are_plain_paper_clipped(name: str, expect: float) -> None:
    scorer = _SignScorer(get_suite(name), "cpu", None, None, None, None, None)
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    (row,) = scoring.score_images(scorer, [white], ["a dog"], [black])
    assert row["clip_i"] == pytest.approx(expect) and row["dino"] == pytest.approx(expect)
    ceiling = scoring.real_vs_real(scorer, [white, black])
    assert ceiling["clip_i"] == pytest.approx(expect) and ceiling["dino"] == pytest.approx(expect)


def test_score_embedded_and_ceiling_take_the_suite_rule() -> None:
    gen, real = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [1.0, 1.0]])
    emb = {"clip": gen, "dino": gen}
    plain = score_embedded(emb, gen, {"clip": real, "dino": real}, max0=False)[0]
    assert plain["clip_i"] == pytest.approx((-1 + 0.5 ** 0.5) / 2)
    assert score_embedded(emb, gen, {"clip": real, "dino": real})[0]["clip_i"] == pytest.approx(0.5 ** 0.5 / 2)
    assert scoring.ceiling({"clip": real, "dino": real}, max0=False)["dino"] == pytest.approx(-(0.5 ** 0.5))


# --- (b) DINOv2's position-embedding interpolation -----------------------------------------------------------


def _released(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding, written out for a square grid x grid input (w0 = h0 = grid)."""
    n = pos.shape[1] - 1
    m, dim = int(n ** 0.5), pos.shape[-1]
    patch = F.interpolate(pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2),
                          scale_factor=((grid + 0.1) / m, (grid + 0.1) / m), mode="bicubic")
    return torch.cat((pos[:, 0].unsqueeze(0), patch.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)


def _hand_made(m: int = 37, dim: int = 5) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(m, dtype=torch.float32), torch.arange(m, dtype=torch.float32), indexing="ij")
    patch = torch.stack([torch.sin(0.3 * i + 0.1 * k) * torch.cos(0.2 * j - k) + 0.01 * k * i * j
                         for k in range(dim)], dim=-1).reshape(1, m * m, dim)
    cls = torch.arange(dim, dtype=torch.float32).reshape(1, 1, dim) + 100
    return torch.cat((cls, patch), dim=1)


def test_dinov2_pos_embed_is_dinov2s_formula_37_to_16() -> None:
    pos = _hand_made()
    got = dinov2_pos_embed(pos, 16)
    assert got.shape == (1, 1 + 16 * 16, 5)
    assert torch.equal(got, _released(pos, 16))
    assert torch.equal(got[:, 0], pos[:, 0])  # the class embedding is kept
    assert dinov2_pos_embed(pos, 37) is pos  # the native grid: untouched, as DINOv2 returns it


def _bicubic_1d(values: list[float], scale: float, n_out: int, a: float = -0.75) -> list[float]:
    """Cubic convolution (Keys, a = -0.75 as PyTorch) by hand: output k samples the input at the half-pixel
    source coordinate (k + 0.5) / scale - 0.5, taps at floor - 1 .. floor + 2 clamped to the border."""
    def w(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0
    out = []
    for k in range(n_out):
        src = (k + 0.5) / scale - 0.5
        i0 = int(np.floor(src))
        t = src - i0
        taps = [(i0 - 1, w(t + 1)), (i0, w(t)), (i0 + 1, w(1 - t)), (i0 + 2, w(2 - t))]
        out.append(sum(wt * values[min(max(i, 0), len(values) - 1)] for i, wt in taps))
    return out


def test_dinov2_pos_embed_known_answer_by_hand() -> None:
    """A field that varies along one axis only: the 2-D bicubic is the 1-D cubic convolution written out above,
    at scale (16 + 0.1) / 37. Without the +0.1 (scale 16 / 37, what `size=16` gives) every value moves."""
    m = 37
    rows = [float((i % 7) ** 2 - 3 * i) for i in range(m)]  # rough on purpose: no filter reproduces it exactly
    cols = [float(np.sin(0.7 * j)) for j in range(m)]
    i, j = torch.meshgrid(torch.tensor(rows), torch.tensor(cols), indexing="ij")
    pos = torch.cat((torch.tensor([[[7.0, -7.0]]]), torch.stack([i, j], dim=-1).reshape(1, m * m, 2)), dim=1)
    got = dinov2_pos_embed(pos, 16)
    assert got[0, 0].tolist() == [7.0, -7.0]
    got = got[0, 1:].reshape(16, 16, 2).double()
    want_rows = torch.tensor(_bicubic_1d(rows, 16.1 / m, 16), dtype=torch.float64)
    want_cols = torch.tensor(_bicubic_1d(cols, 16.1 / m, 16), dtype=torch.float64)
    assert torch.allclose(got[:, :, 0], want_rows[:, None].expand(16, 16), atol=1e-4)  # every column
    assert torch.allclose(got[:, :, 1], want_cols[None, :].expand(16, 16), atol=1e-5)  # every row
    without_offset = torch.tensor(_bicubic_1d(rows, 16 / m, 16), dtype=torch.float64)
    assert (got[:, 5, 0] - without_offset).abs().max() > 0.1


def test_dinov2_pos_embed_is_not_timms_load_time_resample() -> None:
    from timm.layers import resample_abs_pos_embed

    pos = _hand_made()
    ours = dinov2_pos_embed(pos, 16)
    timm_old = resample_abs_pos_embed(pos, new_size=(16, 16), num_prefix_tokens=1)  # antialiased, size=16
    assert (ours - timm_old).abs().max() > 1e-2
    no_antialias = resample_abs_pos_embed(pos, new_size=(16, 16), num_prefix_tokens=1, antialias=False)
    assert (ours - no_antialias).abs().max() > 1e-3  # the +0.1 offset alone matters too


def _small_dino(tmp_path: Path) -> tuple[torch.nn.Module, Suite]:
    """A small timm ViT at a 'native' 37 x 37 grid (74 px, patch 2) saved as a local checkpoint, and a suite
    that feeds it 32 px inputs (a 16 x 16 grid): the paper suite's DINOv2 geometry at toy size."""
    import timm
    from safetensors.torch import save_file

    kwargs = {"img_size": 74, "patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    native = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        native.pos_embed.copy_(_hand_made(37, 16))
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, file)
    suite = replace(SUITES["tiny"], name="toy-dinov2", builder=None, dino_weights=str(file),
                    dino_kwargs=tuple(kwargs.items()), dino_resize=32, dino_pos_embed="dinov2")
    return native, suite


def test_loader_applies_dinov2_rule_not_timm_resample(tmp_path: Path) -> None:
    native, suite = _small_dino(tmp_path)
    model, _ = scoring._load_dino(suite, "cpu")
    assert tuple(model.patch_embed.grid_size) == (16, 16)
    assert torch.equal(model.pos_embed.detach(), _released(native.pos_embed.detach(), 16))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    # the old recipe: built at the input size, timm resamples the checkpoint while loading it
    old_suite = replace(suite, dino_pos_embed="timm", dino_kwargs=(("img_size", 32), *suite.dino_kwargs[1:]))
    old, _ = scoring._load_dino(old_suite, "cpu")
    assert old.pos_embed.shape == model.pos_embed.shape
    assert (old.pos_embed - model.pos_embed).abs().max() > 1e-2


def test_paper_suite_uses_dinov2_rule_at_its_native_grid() -> None:
    import timm

    suite = get_suite("paper")
    assert suite.dino_pos_embed == "dinov2" and "img_size" not in dict(suite.dino_kwargs)
    assert suite.dino_input == 224 and suite.dino_interpolation == "bilinear" and suite.image_size == 512
    cfg = timm.get_pretrained_cfg(suite.dino_arch.split(".")[0]).to_dict()  # the default tag: lvd142m
    assert cfg["input_size"][-1] // 14 == 37 and suite.dino_input // 14 == 16


def test_suite_version_is_recorded_and_bumped() -> None:
    assert SUITE_VERSION == 2
    for name in SUITES:
        assert get_suite(name).describe()["version"] == SUITE_VERSION


def test_timm_position_embedding_is_a_named_suite(tmp_path: Path) -> None:
    """`dino_pos_embed="timm"` is reachable: `--suite paper-timm` is the paper suite with DINOv2 built at 224 px
    and its checkpoint's position embedding resampled by timm while loading (the only differences)."""
    paper, timm_suite = get_suite("paper").describe(), get_suite("paper-timm").describe()
    differ = {k for k in paper if paper[k] != timm_suite[k]}
    assert differ == {"name", "dino_kwargs", "dino_pos_embed"}
    assert timm_suite["dino_pos_embed"] == "timm" and timm_suite["dino_kwargs"] == {"img_size": 224}
    assert timm_suite["dino_input"] == 224
    # The loader builds it at the input grid (a small model standing in for DINOv2, as above).
    native, small = _small_dino(tmp_path)
    as_suite = replace(small, dino_pos_embed=get_suite("paper-timm").dino_pos_embed,
                       dino_kwargs=(("img_size", 32), *small.dino_kwargs[1:]))
    model, _ = scoring._load_dino(as_suite, "cpu")
    assert tuple(model.patch_embed.grid_size) == (16, 16)
