"""Metric suites: which backbones score CLIP-T, CLIP-I and DINO, with which weights and preprocessing.

Preprocessing alone moves scores by about 0.02 (protocol, "Evaluation protocol"), so a suite is the whole recipe
and `Suite.describe()` goes into every run record. `tiny` is built in code (seeded) so tests run offline; it is
saved in the real on-disk formats and loaded back through the same loader as `paper`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.naming import unknown
from bench.paths import cache_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Environment overrides: local files that replace a suite's weights (machines without hub access).
ENV_CLIP = "BENCH_WEIGHTS_METRIC_CLIP"
ENV_DINO = "BENCH_WEIGHTS_METRIC_DINO"

SUITE_VERSION = 2
"""Version of every suite's recipe (`Suite.version`, in `describe()` and so in every run record). v1: bicubic
pre-resize and DINO resize, timm's load-time position-embedding resample, max(cos, 0) in every suite."""


@dataclass(frozen=True)
class Suite:
    """One named, recorded recipe for the three metrics."""

    name: str
    """Registry name (`"paper"`)."""
    clip_arch: str
    """open_clip model name (`"ViT-L-14-336"`); CLIP-T and CLIP-I use this model."""
    clip_pretrained: str | None
    """open_clip pretrained tag (`"openai"`) or a local checkpoint file (`open_clip_model.safetensors`)."""
    clip_quick_gelu: bool
    """OpenAI CLIP was trained with QuickGELU; open_clip 3 warns but does not switch it on from the tag."""
    dino_arch: str
    """timm model name with its pretrained tag (`"vit_large_patch14_dinov2.lvd142m"`)."""
    dino_weights: str | None
    """None: timm's hub weights for `dino_arch`; else a local timm state dict (`model.safetensors`)."""
    dino_kwargs: tuple[tuple[str, Any], ...] = ()
    """Extra `timm.create_model` kwargs, as pairs so the suite stays hashable (`(("img_size", 32),)`)."""
    dino_resize: int = 224
    """DINO input: shorter side resized to this (with `dino_interpolation`) ..."""
    dino_crop: int | None = None
    """... then centre-cropped to this (None: no crop), then ImageNet mean/std normalisation."""
    dino_interpolation: str = "bilinear"
    """`"bilinear"` (torchvision `Resize` on a PIL image: PIL bilinear, antialiased; the released evaluation) or
    `"bicubic"` (DINO's own evaluation transform, `Resize(256, interpolation=3)`)."""
    dino_pos_embed: str = "timm"
    """`"timm"`: the model is built at `dino_kwargs`' size and timm resamples the checkpoint's position embedding
    when it loads it (bicubic, antialiased); `"dinov2"`: built at its native size, then the patch position
    embedding is interpolated to the DINO input's grid as DINOv2's own `interpolate_pos_encoding` does at forward
    time (bicubic, no antialias, scale factor (grid + 0.1) / native grid; the class embedding kept)."""
    image_size: int | None = 512
    """Every image (generated and real) is first resized to this square (bilinear, as torchvision `Resize` on a
    PIL image), before each backbone's own preprocessing: the released evaluation's `Resize((512, 512))`, done to
    real images too (as released). None: no pre-resize (the original DreamBooth protocol)."""
    cos_max0: bool = True
    """CLIP-I and DINO (and the real-vs-real ceiling) average max(cos, 0): negative cosines clipped to 0 before any
    mean (the released evaluation). False: plain cosines (the original DreamBooth protocol)."""
    version: int = SUITE_VERSION
    """The recipe's version, recorded with every result: bumped when the code changes what a suite computes
    (v2: bilinear pre-resize, DINOv2's position-embedding rule, plain cosines and no pre-resize for `dreambooth`)."""
    builder: str | None = None
    """`"tiny"`: weights are built in code into the cache at load time, and the fields above point there."""

    @property
    def dino_input(self) -> int:
        """Side of the (square) DINO input in pixels: the crop, else the resize (of a square pre-resized image)."""
        return self.dino_crop or self.dino_resize

    def describe(self) -> dict[str, Any]:
        """Everything that defines the scores, for run records (all fields, plus library versions)."""
        out = asdict(self)
        out["dino_kwargs"] = dict(self.dino_kwargs)
        out["dino_embedding"] = "CLS token after the final norm (timm num_classes=0 forward)"
        out["dino_input"] = self.dino_input
        for package in ("open_clip_torch", "timm", "torch"):
            try:
                out[f"{package}_version"] = metadata.version(package)
            except metadata.PackageNotFoundError:  # pragma: no cover - the venv has all three
                out[f"{package}_version"] = None
        return out


SUITES: dict[str, Suite] = {
    # What the authors' evaluation used (eval_dreambooth.py): everything resized to 512 x 512 (bilinear) first;
    # CLIP ViT-L/14 at 336 px; DINOv2 ViT-L/14 (native 518 px, 37 x 37 patches) fed 224 px (16 x 16 patches), its
    # position embedding interpolated as DINOv2's own code does at forward time; max(cos, 0).
    "paper": Suite(
        name="paper",
        clip_arch="ViT-L-14-336",
        clip_pretrained="openai",
        clip_quick_gelu=True,
        dino_arch="vit_large_patch14_dinov2.lvd142m",
        dino_weights=None,
        dino_resize=224,
        dino_pos_embed="dinov2",
    ),
    # The original DreamBooth protocol, which most of the literature reports: no pre-resize, each backbone's own
    # preprocessing (DINO's evaluation transform: Resize 256 bicubic, CenterCrop 224), plain cosines.
    "dreambooth": Suite(
        name="dreambooth",
        clip_arch="ViT-B-32",
        clip_pretrained="openai",
        clip_quick_gelu=True,
        dino_arch="vit_small_patch16_224.dino",
        dino_weights=None,
        dino_resize=256,
        dino_crop=224,
        dino_interpolation="bicubic",
        image_size=None,
        cos_max0=False,
    ),
    # Seeded random backbones built in code: offline tests and smoke runs; its numbers mean nothing.
    "tiny": Suite(
        name="tiny",
        clip_arch="bench-tiny-clip",
        clip_pretrained=None,
        clip_quick_gelu=False,
        dino_arch="vit_tiny_patch16_224",
        dino_weights=None,
        dino_kwargs=(("img_size", 32), ("patch_size", 8), ("embed_dim", 32), ("depth", 2), ("num_heads", 2)),
        dino_resize=32,
        image_size=64,  # the tiny profile samples at 64 px; resizing through 512 would only cost time
        builder="tiny",
    ),
}


# The paper suite with timm's own position-embedding rule: DINOv2 built at 224 px, its 37 x 37 checkpoint embedding
# resampled by timm at load time (bicubic, antialiased; about 7% apart from DINOv2's forward-time rule), for
# comparison with evaluations that load DINOv2 through timm at the input size. `--suite paper-timm`.
SUITES["paper-timm"] = replace(SUITES["paper"], name="paper-timm", dino_kwargs=(("img_size", 224),),
                               dino_pos_embed="timm")


def suite_names() -> list[str]:
    return list(SUITES)


def get_suite(name: str) -> Suite:
    """The suite called `name`, with `BENCH_WEIGHTS_METRIC_CLIP/_DINO` (local files) replacing its weights."""
    if name not in SUITES:
        raise unknown("metric suite", name, suite_names())
    suite = SUITES[name]
    if suite.builder:  # built weights are the suite's definition; nothing to override
        return suite
    clip, dino = os.environ.get(ENV_CLIP), os.environ.get(ENV_DINO)
    return replace(suite, clip_pretrained=clip or suite.clip_pretrained, dino_weights=dino or suite.dino_weights)


# --- the tiny suite ------------------------------------------------------------------------------------------

TINY_VERSION = "v1"  # bump when the tiny architectures or the seed change, so old caches are not reused
TINY_SEED = 0
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_models() -> tuple[Any, Any]:
    """Fresh seeded (open_clip CLIP, timm ViT) for the tiny suite; the same weights on every call."""
    import open_clip
    import timm
    import torch

    tiny = SUITES["tiny"]
    with torch.random.fork_rng(devices=[]):  # seed without disturbing the caller's RNG
        torch.manual_seed(TINY_SEED)
        clip = open_clip.CLIP(**TINY_CLIP_CONFIG)
        dino = timm.create_model(tiny.dino_arch, pretrained=False, num_classes=0, **dict(tiny.dino_kwargs))
    return clip.eval(), dino.eval()


def tiny_dir() -> Path:
    return cache_root() / "tiny" / "metrics" / TINY_VERSION


def ensure_tiny() -> Suite:
    """The tiny suite with its weight paths filled in; builds and saves them once per cache.

    Built in a temporary folder and renamed into place, so the folder exists only when complete and
    concurrent processes never read half-written files (the loser of the rename discards its copy).
    """
    import open_clip

    root = tiny_dir()
    if not root.is_dir():
        from safetensors.torch import save_file

        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            clip, dino = build_tiny_models()
            (tmp / "clip").mkdir()
            (tmp / "dino").mkdir()
            (tmp / f"{SUITES['tiny'].clip_arch}.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
            # the files open_clip and timm look for by name, as safetensors state dicts
            for model, file in ((clip, "clip/open_clip_model.safetensors"), (dino, "dino/model.safetensors")):
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / file)
            try:
                os.rename(tmp, root)
            except OSError:
                if not root.is_dir():  # not a lost race: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    config = root / f"{SUITES['tiny'].clip_arch}.json"
    if open_clip.get_model_config(SUITES["tiny"].clip_arch) is None:
        open_clip.add_model_config(config)  # makes the arch name known to create_model and get_tokenizer
    return replace(
        SUITES["tiny"],
        clip_pretrained=str(root / "clip" / "open_clip_model.safetensors"),
        dino_weights=str(root / "dino" / "model.safetensors"),
    )
