"""CLIP-T, CLIP-I and DINO: loading a suite's backbones, embedding images and texts, and the scores.

The protocol (spec "Evaluation protocol") lives in the pure functions on embeddings (`clip_t`, `pairwise`,
`real_ceiling`, `aggregate`) and in the preprocessing (`pre_resize`, `dino_transform`, `dinov2_pos_embed`); the
rest only turns images and texts into L2-normalised embeddings. open_clip and timm are imported inside
functions: importing them takes seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from bench.api import BenchError
from bench.hub import hub_offline, offline_mode
from bench.metrics.declared import NAMES, accumulate, empty, means
from bench.metrics.suites import ENV_CLIP, ENV_DINO, IMAGENET_MEAN, IMAGENET_STD, Suite, ensure_tiny, get_suite

# --- pure functions on embeddings: the protocol ----------------------------------------------------------


def clip_t(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,): cosine of each image with its own text (row i with row i)."""
    return (F.normalize(img_emb.float(), dim=-1) * F.normalize(txt_emb.float(), dim=-1)).sum(-1)


def _cos(a: torch.Tensor, b: torch.Tensor, max0: bool = True) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) cosines; with `max0`, negatives clipped to 0 before any mean (the released
    evaluation); without, plain cosines (the original DreamBooth protocol)."""
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    return sim.clamp(min=0) if max0 else sim


def pairwise(gen_emb: torch.Tensor, real_emb: torch.Tensor, max0: bool = True) -> torch.Tensor:
    """(N, D), (M, D) -> (N,): per generated image, the mean over all M real images of max(cos, 0) (or of cos)."""
    return _cos(gen_emb, real_emb, max0).mean(dim=1)


def pairwise_max0(gen_emb: torch.Tensor, real_emb: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N,): per generated image, the mean over all M real images of max(cos, 0)."""
    return pairwise(gen_emb, real_emb, max0=True)


def real_ceiling(real_emb: torch.Tensor, max0: bool = True) -> torch.Tensor:
    """(M, D) -> (M,): per real image, the mean of max(cos, 0) (or cos) over the OTHER real images (self-pairs
    excluded). The ceiling a generator could reach by copying the references; NaN when M < 2 (no other image)."""
    m = real_emb.shape[0]
    if m < 2:
        return torch.full((m,), float("nan"))
    sim = _cos(real_emb, real_emb, max0)
    return (sim.sum(dim=1) - sim.diagonal()) / (m - 1)


METRIC_KEYS = NAMES  # the declared metrics (bench.metrics.declared)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary scores from per-image rows (keys: concept, eval_seed, clip_t, clip_i, dino, n_real).

    Headline `clip_t`, `clip_i`, `dino`: as the released evaluation writes its result ("Average over Instances"):
    per eval seed and concept, the mean over the concept's images (CLIP-T) or over all its (generated, real) pairs
    (CLIP-I, DINO: an image's score is already the mean over its n_real pairs, so it weighs n_real); per concept,
    the mean over eval seeds (`per_concept`); then the mean over concepts, each concept weighing the same. For one
    run (one concept) that is the mean over eval seeds of the seed's mean.

    Beside them, `*_pooled`: per eval seed, the pooled mean over every image / pair of all concepts (what the
    released script prints per seed; a concept with more real images weighs more), then the mean over seeds.
    """
    if not rows:
        raise BenchError("no scored images to aggregate")
    missing = {"concept", "eval_seed", *METRIC_KEYS, "n_real"} - set(rows[0])
    if missing:
        raise BenchError(f"score rows lack {', '.join(sorted(missing))}")
    # per (concept, eval seed) and per eval seed: [images, sum per metric (per-pair ones x n_real), pairs]
    cells: dict[tuple[Any, Any], list[float]] = {}
    seeds: dict[Any, list[float]] = {}
    for r in rows:
        values = tuple(r[k] for k in METRIC_KEYS)
        accumulate(cells.setdefault((r["concept"], r["eval_seed"]), empty()), values, r["n_real"])
        accumulate(seeds.setdefault(r["eval_seed"], empty()), values, r["n_real"])
    per_cell = {key: means(acc) for key, acc in cells.items()}
    by_concept: dict[Any, list[dict[str, float]]] = {}
    for (concept, _), values in per_cell.items():
        by_concept.setdefault(concept, []).append(values)
    per_concept = {c: {k: _mean([v[k] for v in vs]) for k in METRIC_KEYS} for c, vs in sorted(by_concept.items())}
    per_seed = [means(acc) for acc in seeds.values()]
    out: dict[str, Any] = {k: _mean([v[k] for v in per_concept.values()]) for k in METRIC_KEYS}
    out.update({f"{k}_pooled": _mean([v[k] for v in per_seed]) for k in METRIC_KEYS})
    out["per_concept"] = per_concept
    out["n_images"] = len(rows)
    return out


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs))


# --- preprocessing and the DINOv2 position embedding --------------------------------------------------------


def pre_resize(image: Image.Image, size: int | None) -> Image.Image:
    """The square resize every image gets before each backbone's own preprocessing: PIL bilinear (antialiased when
    shrinking), which is what torchvision's `Resize((size, size))` does to a PIL image. None: RGB, unresized."""
    image = image.convert("RGB")
    return image if size is None else image.resize((size, size), Image.Resampling.BILINEAR)


def dino_transform(suite: Suite) -> Callable[[Image.Image], torch.Tensor]:
    """The suite's DINO preprocessing of a (pre-resized) PIL image: resize, optional centre crop, ImageNet norm."""
    from torchvision import transforms as T

    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    steps = [T.Resize(suite.dino_resize, interpolation=modes[suite.dino_interpolation])]
    steps += [T.CenterCrop(suite.dino_crop)] if suite.dino_crop else []
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


def dinov2_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M*M, D) position embedding (class + M x M patches) -> (1, 1 + grid*grid, D), as DINOv2's own
    `interpolate_pos_encoding` computes it at forward time for a grid x grid input: the patch part bicubic with
    scale factor (grid + 0.1) / M (the +0.1 against float error; no antialias; float32), the class part kept.
    timm's load-time resample (`size=`, antialiased) gives other values."""
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    if grid == m:
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / m
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic")
    if tuple(patch.shape[-2:]) != (grid, grid):  # pragma: no cover - the +0.1 is there to prevent this
        raise ValueError(f"interpolated grid {tuple(patch.shape[-2:])} != ({grid}, {grid})")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat((pos_embed[:, :1], patch), dim=1)


def use_dinov2_pos_embed(model: Any, size: int) -> Any:
    """Make a timm ViT built at its native size take `size` px inputs, its position embedding interpolated by
    `dinov2_pos_embed` once (the same values DINOv2 computes at every forward pass for that size)."""
    patch = model.patch_embed.patch_size[0]
    if size % patch:
        raise ValueError(f"DINO input {size} px is not a multiple of the patch size {patch}")
    if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "no_embed_class", False):
        raise ValueError("DINOv2's position-embedding rule needs one class token that has a position embedding")
    grid = size // patch
    new = dinov2_pos_embed(model.pos_embed.detach(), grid)
    pe = model.patch_embed
    if hasattr(pe, "set_input_size"):
        pe.set_input_size(img_size=(size, size))
    else:  # pragma: no cover - older timm
        pe.img_size, pe.grid_size, pe.num_patches = (size, size), (grid, grid), grid * grid
    model.pos_embed = torch.nn.Parameter(new, requires_grad=False)
    return model


# --- the scorer: images and texts -> embeddings ----------------------------------------------------------


@dataclass
class Scorer:
    """A loaded suite. `suite` has its weight paths resolved; record `scorer.suite.describe()` with results."""

    suite: Suite
    device: str
    clip_model: Any
    clip_preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    dino_model: Any
    dino_preprocess: Callable[[Image.Image], torch.Tensor]

    @torch.inference_mode()
    def image_embeddings(self, images: list[Image.Image | Path], batch_size: int | None = None,
                         on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
        """{"clip": (N, Dc), "dino": (N, Dd)}, L2-normalised float32 on CPU, for images or image files.

        Every image is first resized to `suite.image_size` square (`pre_resize`: bilinear, as torchvision's
        `Resize` on a PIL image; none when the suite has no pre-resize), generated and real alike, then goes
        through each backbone's own preprocessing. Decoding and preprocessing run in a thread pool one batch
        ahead of the backbones, so a GPU is not left waiting on PIL; each backbone sees every image once.
        `on_batch(n)` is called after each batch of n images.
        """
        batch_size = batch_size or self.batch_size
        dims = {"clip": self.clip_model.visual.output_dim, "dino": self.dino_model.num_features}
        out: dict[str, list[torch.Tensor]] = {"clip": [], "dino": []}
        for x_clip, x_dino in self._batches(images, batch_size):
            out["clip"].append(self.clip_model.encode_image(self._to_device(x_clip)).float().cpu())
            # timm with num_classes=0: forward == forward_features(x)[:, 0], the normed CLS token (B, Dd)
            out["dino"].append(self.dino_model(self._to_device(x_dino)).float().cpu())
            if on_batch:
                on_batch(len(x_clip))
        return {k: F.normalize(torch.cat(v), dim=-1) if v else torch.empty(0, dims[k]) for k, v in out.items()}

    @property
    def batch_size(self) -> int:
        """Images per backbone call: large on a GPU (3000 images are about a dozen calls), modest on a CPU."""
        return 256 if self.device.startswith("cuda") else 64

    def _prepare(self, image: Image.Image | Path) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (or image file) -> (CLIP input (3, S, S), DINO input (3, s, s)): the suite's whole recipe."""
        if not isinstance(image, Image.Image):
            from bench.data import load_image

            image = load_image(Path(image))  # as `bench run` reads them: EXIF, alpha, one-line errors
        square = pre_resize(image, self.suite.image_size)
        return self.clip_preprocess(square), self.dino_preprocess(square)

    def _batches(self, images: list[Image.Image | Path], batch_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stacked (CLIP, DINO) inputs per batch, in order; the pool prepares batch k + 1 while k is embedded."""
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=_prep_threads()) as pool:
            ahead = [pool.submit(self._prepare, im) for im in chunks[0]]
            for k in range(len(chunks)):
                current = ahead
                ahead = [pool.submit(self._prepare, im) for im in chunks[k + 1]] if k + 1 < len(chunks) else []
                pairs = [f.result() for f in current]
                yield torch.stack([c for c, _ in pairs]), torch.stack([d for _, d in pairs])

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.startswith("cuda"):
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(N, Dc) CLIP text embeddings, L2-normalised float32 on CPU (the arch's own open_clip tokenizer)."""
        chunks = [
            self.clip_model.encode_text(self.tokenizer(texts[i : i + batch_size]).to(self.device)).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return F.normalize(torch.cat(chunks), dim=-1) if chunks else torch.empty(0, self.clip_model.visual.output_dim)


def score_images(
    scorer: Scorer, generated: list[Image.Image | Path], texts: list[str], reals: list[Image.Image | Path]
) -> list[dict[str, float]]:
    """Per generated image {clip_t, clip_i, dino, n_real}; `texts[i]` is image i's CLIP-T text. Reals embedded once."""
    if len(generated) != len(texts):
        raise BenchError(f"{len(generated)} generated images but {len(texts)} texts")
    if not reals:
        raise BenchError("no real images to score against")
    return score_embedded(scorer.image_embeddings(generated), scorer.text_embeddings(texts),
                          scorer.image_embeddings(reals), max0=scorer.suite.cos_max0)


def score_embedded(gen: dict[str, torch.Tensor], texts: torch.Tensor, real: dict[str, torch.Tensor],
                   max0: bool = True) -> list[dict[str, float]]:
    """`score_images` on embeddings: gen {"clip": (N, Dc), "dino": (N, Dd)}, texts (N, Dc), real {..: (M, D)}.

    Lets a caller embed many runs' images in one pass per backbone and score each run from its slice. `max0`:
    the suite's `cos_max0` (False for `dreambooth`: plain cosines)."""
    ct = clip_t(gen["clip"], texts)
    ci, dn = pairwise(gen["clip"], real["clip"], max0), pairwise(gen["dino"], real["dino"], max0)
    n_real = real["clip"].shape[0]
    return [{"clip_t": float(ct[i]), "clip_i": float(ci[i]), "dino": float(dn[i]), "n_real": n_real}
            for i in range(len(ct))]


def ceiling(real: dict[str, torch.Tensor], max0: bool = True) -> dict[str, float]:
    """The ceiling row from the real images' embeddings: mean CLIP-I and DINO over real-vs-real pairs (`max0`: the
    suite's `cos_max0`)."""
    n = real["clip"].shape[0]
    return {
        "clip_i": float(real_ceiling(real["clip"], max0).mean()) if n > 1 else float("nan"),
        "dino": float(real_ceiling(real["dino"], max0).mean()) if n > 1 else float("nan"),
        "n": n,
        "n_pairs": n * (n - 1),
    }


def real_vs_real(scorer: Scorer, reals: list[Image.Image | Path]) -> dict[str, float]:
    """The ceiling row: mean CLIP-I and DINO over real-vs-real pairs (self excluded); n real images, n_pairs."""
    return ceiling(scorer.image_embeddings(reals), max0=scorer.suite.cos_max0)


# --- loading ---------------------------------------------------------------------------------------------

_SCORERS: dict[tuple[Suite, str], Scorer] = {}


def load_scorer(suite: str | Suite, device: str = "cpu") -> Scorer:
    """The suite's backbones, loaded once per process per (suite, device)."""
    suite = get_suite(suite) if isinstance(suite, str) else suite
    key = (suite, str(device))
    if key not in _SCORERS:
        resolved = ensure_tiny() if suite.builder == "tiny" else suite
        clip, clip_pre, tokenizer = _load_clip(resolved, str(device))
        dino, dino_pre = _load_dino(resolved, str(device))
        _SCORERS[key] = Scorer(resolved, str(device), clip, clip_pre, tokenizer, dino, dino_pre)
    return _SCORERS[key]


def random_scorer(suite: str | Suite, device: str = "cpu") -> Scorer:
    """The suite's backbones at full size with seeded random weights and its exact preprocessing: what `bench perf`
    times scoring with on a machine without the weights (`paper-random`). Its scores mean nothing."""
    suite = get_suite(suite) if isinstance(suite, str) else suite
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip, clip_pre, tokenizer = _load_clip(suite, str(device), random=True)
        dino, dino_pre = _load_dino(suite, str(device), random=True)
    return Scorer(suite, str(device), clip, clip_pre, tokenizer, dino, dino_pre)


def _load_clip(suite: Suite, device: str, random: bool = False) -> tuple[Any, Any, Any]:
    import open_clip

    def load() -> tuple[Any, Any, Any]:
        model, _, preprocess = open_clip.create_model_and_transforms(
            suite.clip_arch, pretrained=None if random else suite.clip_pretrained,
            force_quick_gelu=suite.clip_quick_gelu, device=device
        )
        return model.eval(), preprocess, open_clip.get_tokenizer(suite.clip_arch)

    if random:
        return load()

    source = suite.clip_pretrained or ""
    local = source if (os.sep in source or source.endswith((".safetensors", ".bin", ".pt", ".pth"))) else None
    what = f"CLIP {suite.clip_arch} ({source})"
    return _load(suite, what, local, ENV_CLIP, "open_clip_model.safetensors", load)


def _load_dino(suite: Suite, device: str, random: bool = False) -> tuple[Any, Any]:
    import timm

    def load() -> tuple[Any, Any]:
        overlay = {"file": suite.dino_weights} if suite.dino_weights and not random else None
        model = timm.create_model(
            suite.dino_arch, pretrained=not random, pretrained_cfg_overlay=overlay, num_classes=0,
            **dict(suite.dino_kwargs)
        )
        if suite.dino_pos_embed == "dinov2":  # built at its native size; DINOv2's rule for the input's grid
            use_dinov2_pos_embed(model, suite.dino_input)
        elif suite.dino_pos_embed != "timm":
            raise ValueError(f"unknown dino_pos_embed {suite.dino_pos_embed!r}")
        return model.to(device).eval(), dino_transform(suite)

    if random:
        return load()
    what = f"DINO {suite.dino_arch}" + (f" ({suite.dino_weights})" if suite.dino_weights else "")
    return _load(suite, what, suite.dino_weights, ENV_DINO, "model.safetensors", load)


def _load(suite: Suite, what: str, local: str | None, env: str, filename: str, load: Callable[[], Any]) -> Any:
    """Run `load`, turning a failure into one line that names the component and the way out."""
    head = f"metric suite '{suite.name}': cannot load {what}"
    if local is not None:  # a local file: no hub involved
        if not os.path.isfile(local):
            raise BenchError(f"{head}: {local} is not a file; set {env} to an existing {filename}")
        try:
            return load()
        except Exception as e:
            raise BenchError(f"{head}: {_first_line(e)}") from e
    offline = hub_offline()
    try:
        with offline_mode(offline):  # cached weights still load; missing ones fail at once instead of retrying
            return load()
    except Exception as e:
        why = "weights are not cached and the hub is unreachable" if offline else f"download failed ({_first_line(e)})"
        raise BenchError(f"{head}: {why}; use --suite tiny, or set {env}=/path/to/{filename}") from e


def _prep_threads() -> int:
    """Threads that decode and preprocess images: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS has no affinity
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
