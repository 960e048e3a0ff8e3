"""CLIP-T, CLIP-I and DINO: loading a suite's backbones, embedding images and texts, and the scores.

The protocol (spec "Evaluation protocol") lives in the pure functions on embeddings (`clip_t`,
`pairwise_max0`, `real_ceiling`, `aggregate`); the rest only turns images and texts into L2-normalised
embeddings. open_clip and timm are imported inside functions: importing them takes seconds.
"""

from __future__ import annotations

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
from bench.metrics.suites import ENV_CLIP, ENV_DINO, IMAGENET_MEAN, IMAGENET_STD, Suite, ensure_tiny, get_suite

# --- pure functions on embeddings: the protocol ----------------------------------------------------------


def clip_t(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,): cosine of each image with its own text (row i with row i)."""
    return (F.normalize(img_emb.float(), dim=-1) * F.normalize(txt_emb.float(), dim=-1)).sum(-1)


def _cos_max0(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) cosines, negatives clipped to 0 before any mean (the released evaluation)."""
    return (F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T).clamp(min=0)


def pairwise_max0(gen_emb: torch.Tensor, real_emb: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N,): per generated image, the mean over all M real images of max(cos, 0)."""
    return _cos_max0(gen_emb, real_emb).mean(dim=1)


def real_ceiling(real_emb: torch.Tensor) -> torch.Tensor:
    """(M, D) -> (M,): per real image, the mean of max(cos, 0) over the OTHER real images (self-pairs excluded).

    The ceiling a generator could reach by copying the references; NaN when M < 2 (no other image)."""
    m = real_emb.shape[0]
    if m < 2:
        return torch.full((m,), float("nan"))
    sim = _cos_max0(real_emb, real_emb)
    return (sim.sum(dim=1) - sim.diagonal()) / (m - 1)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary scores from per-image rows (keys: concept, eval_seed, clip_t, clip_i, dino, n_real).

    Headline numbers as the released evaluation computes them: per eval seed, the pooled mean over every scored
    pair of all subjects (an image's CLIP-I/DINO is a mean over its n_real pairs, so it weighs n_real; CLIP-T
    is one score per image), then the mean over seeds. Beside them, `*_subject_mean`: the mean over subjects of
    each subject's plain mean over its images (all seeds), and `per_concept`.
    """
    import pandas as pd

    need = {"concept", "eval_seed", "clip_t", "clip_i", "dino", "n_real"}
    if not rows:
        raise BenchError("no scored images to aggregate")
    missing = need - set(rows[0])
    if missing:
        raise BenchError(f"score rows lack {', '.join(sorted(missing))}")
    df = pd.DataFrame(rows)
    # An image's CLIP-I/DINO weighs its n_real pairs: the pooled pair mean is sum(mean_i * n_i) / sum(n_i).
    df["clip_i_w"], df["dino_w"] = df.clip_i * df.n_real, df.dino * df.n_real
    seeds = df.groupby("eval_seed")
    per_seed = {
        "clip_t": seeds.clip_t.mean(),
        "clip_i": seeds.clip_i_w.sum() / seeds.n_real.sum(),
        "dino": seeds.dino_w.sum() / seeds.n_real.sum(),
    }
    per_concept = df.groupby("concept")[["clip_t", "clip_i", "dino"]].mean()
    out: dict[str, Any] = {k: float(per_seed[k].mean()) for k in ("clip_t", "clip_i", "dino")}
    out.update({f"{k}_subject_mean": float(per_concept[k].mean()) for k in ("clip_t", "clip_i", "dino")})
    out["per_concept"] = {c: {k: float(v) for k, v in r.items()} for c, r in per_concept.iterrows()}
    out["n_images"] = len(df)
    return out


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

        Every image is first resized to `suite.image_size` square (bicubic), generated and real alike, then goes
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
        size = self.suite.image_size
        square = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
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
                          scorer.image_embeddings(reals))


def score_embedded(gen: dict[str, torch.Tensor], texts: torch.Tensor, real: dict[str, torch.Tensor]
                   ) -> list[dict[str, float]]:
    """`score_images` on embeddings: gen {"clip": (N, Dc), "dino": (N, Dd)}, texts (N, Dc), real {..: (M, D)}.

    Lets a caller embed many runs' images in one pass per backbone and score each run from its slice."""
    ct = clip_t(gen["clip"], texts)
    ci, dn = pairwise_max0(gen["clip"], real["clip"]), pairwise_max0(gen["dino"], real["dino"])
    n_real = real["clip"].shape[0]
    return [{"clip_t": float(ct[i]), "clip_i": float(ci[i]), "dino": float(dn[i]), "n_real": n_real}
            for i in range(len(ct))]


def ceiling(real: dict[str, torch.Tensor]) -> dict[str, float]:
    """The ceiling row from the real images' embeddings: mean CLIP-I and DINO over real-vs-real pairs."""
    n = real["clip"].shape[0]
    return {
        "clip_i": float(real_ceiling(real["clip"]).mean()) if n > 1 else float("nan"),
        "dino": float(real_ceiling(real["dino"]).mean()) if n > 1 else float("nan"),
        "n": n,
        "n_pairs": n * (n - 1),
    }


def real_vs_real(scorer: Scorer, reals: list[Image.Image | Path]) -> dict[str, float]:
    """The ceiling row: mean CLIP-I and DINO over real-vs-real pairs (self excluded); n real images, n_pairs."""
    return ceiling(scorer.image_embeddings(reals))


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
    from torchvision import transforms as T

    def load() -> tuple[Any, Any]:
        overlay = {"file": suite.dino_weights} if suite.dino_weights and not random else None
        model = timm.create_model(
            suite.dino_arch, pretrained=not random, pretrained_cfg_overlay=overlay, num_classes=0,
            **dict(suite.dino_kwargs)
        )
        steps = [T.Resize(suite.dino_resize, interpolation=T.InterpolationMode.BICUBIC)]
        steps += [T.CenterCrop(suite.dino_crop)] if suite.dino_crop else []
        steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return model.to(device).eval(), T.Compose(steps)

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
