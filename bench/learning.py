"""Does each method learn? A check on the `tiny` profile that a method's training (or conditioning) reaches its
samples, and that can fail.

The measure, declared once (`MEASURE`): MS-SWD (`echodistill.msswd.ms_swd`, He et al. 2024: multi-scale sliced
Wasserstein distance of 11x11 CIELAB patches, 128 directions drawn from a fixed generator, so every image is
measured along the same directions) between a sample and each of the concept's photos *as the model's own
autoencoder renders them* (`reachable`: decode(encode(photo)) at the sample's size, through the VAE the method
samples with), averaged over the (sample, photo) pairs; lower is closer. It reads pixels, so it needs no trained
network: the tiny suite's CLIP and DINO are random stand-ins whose similarities barely separate images. The photos
go through the VAE because a model can only produce what its decoder draws: tiny's VAE is random, and on the
committed fixture its renderings of teapot's and backpack's photos are farther from the raw photos (MS-SWD 11.9,
13.8) than the untrained model's samples are (9.9, 10.5), so against raw photos a method that learned perfectly would
score as moving away. With a trained VAE (paper scale) the rendering is the photo, up to reconstruction error.

- A method that trains: train it on the concept (tiny, `iterations` per training stage), and sample `PROMPTS` of
  the concept's prompts with their evaluation noise; train it again for `START` iteration per stage (its own
  initialization: added tokens, zero-initialized adapters, one step) and sample the same prompts -- its own prompt
  text, identifier included -- with the same noise. The concept passes when the trained samples are closer to the
  photos than the start's (by more than `TOLERANCE`, relative). Only the training differs between the two, so a
  method whose trained weights are not used at sampling gives the start's samples and fails (the negative control
  in `tests/test_learning.py`). The reference is not the backbone as loaded (`baselines.base`): a method that adds
  a token (Custom Diffusion's and EchoDistill's `<new1>`) draws other images from its first step, since the
  backbone reads the identifier as characters; measured on the real DreamBench, after one step Custom Diffusion's
  samples of backpack, clock and vase were already farther from the photos than the backbone's (8.42 against 8.18
  for backpack), and training brought them closer (8.39 at 10 iterations, 8.13 at 100); against the backbone 12
  (Custom Diffusion) and 11 (EchoDistill) of 30 concepts read as moving away, while training moved all 30 closer.
- A method that does not train: condition it on the concept's photos and, separately, on another concept's photos
  (`OTHER`), same prompts and noise; it passes when conditioning on the concept's own photos gives samples closer
  to them.

A method passes when at least `SHARE` of the checked concepts pass (`LearningReport.passed`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEASURE = "ms_swd"
"""The declared measure: mean MS-SWD between samples and the concept's photos as the model's VAE renders them
(lower = closer)."""
PROMPTS = 4
"""Prompts of the concept sampled (its first ones, evaluation seed 0)."""
ITERATIONS = 10
"""Iterations per training stage (the tiny profile's cap)."""
START = 1
"""Iterations per training stage of the reference: the method's initialization after one step (no method trains
zero iterations)."""
TOLERANCE = 0.0
"""A concept passes when the distance drops by more than this fraction (identical images never pass)."""
SHARE = 2 / 3
"""The share of checked concepts that must pass (the fast tier checks 3: at least 2)."""
OTHER = {"dog": "cat"}
"""The other concept whose photos condition a non-training method (default: the next concept in the dataset)."""


@dataclass(frozen=True)
class ConceptResult:
    method: str
    concept: str
    learned: float
    """Distance of the trained (or own-photo-conditioned) samples to the photos."""
    reference: float
    """Distance of the start's (`START` iterations; or the other-photo-conditioned) samples to the photos."""

    @property
    def passed(self) -> bool:
        return self.learned < self.reference * (1 - TOLERANCE)


@dataclass(frozen=True)
class LearningReport:
    method: str
    results: tuple[ConceptResult, ...]

    @property
    def share(self) -> float:
        return sum(r.passed for r in self.results) / len(self.results) if self.results else 0.0

    @property
    def passed(self) -> bool:
        return bool(self.results) and self.share >= SHARE - 1e-9

    def line(self) -> str:
        n = sum(r.passed for r in self.results)
        per = ", ".join(f"{r.concept} {r.learned:.4f}/{r.reference:.4f}" for r in self.results)
        return f"{self.method}: {n}/{len(self.results)} concepts closer ({per})"


def distance(images: list[Any], photos: list[Any]) -> float:
    """Mean MS-SWD over (sample, photo) pairs, photos resized to the samples' size, fixed directions."""
    import numpy as np
    import torch

    from echodistill.msswd import ms_swd

    size = images[0].size

    def tensor(ims: list[Any]) -> torch.Tensor:
        arrays = [np.asarray(im.convert("RGB").resize(size), dtype=np.float32) / 255.0 for im in ims]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    x, y = tensor(images), tensor(photos)
    total = 0.0
    for i in range(len(x)):  # one call per sample against every photo: the same directions for all of them
        generator = torch.Generator().manual_seed(0)
        total += float(ms_swd(x[i:i + 1].expand(len(y), -1, -1, -1), y, generator=generator).mean())
    return total / len(x)


def _photos(concept: Any) -> list[Any]:
    from bench.data import load_image

    return [load_image(p) for p in concept.images]


def vae_role(cls: Any) -> str:
    """The autoencoder a method samples with: the `vae` role its declared model roles bring (SDXL's, FLUX.1's), else
    the backbone's."""
    from bench.contract import MethodInfo

    roles = MethodInfo.of(cls).model_roles
    declared = roles.roles("tiny") if roles is not None else {}
    return next((role for role, comp in declared.items() if comp.kind == "vae"), "vae")


def reachable(photos: list[Any], vae: Any, size: int) -> list[Any]:
    """The photos as this autoencoder renders them: each resized to `size`, encoded (the posterior's mean) and
    decoded; what a model decoding through `vae` could draw of them at best."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(p.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
              for p in photos]
    param = next(vae.parameters())
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(param.device, param.dtype)
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    pixels = ((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in pixels]


def _targets(concept: Any, models: Any, role: str, size: int) -> list[Any]:
    return reachable(_photos(concept), getattr(models, role), size)


def _prompts(concept: Any, identifier: str, phrase: str) -> tuple[list[str], list[int]]:
    from bench.models.sampling import eval_noise_seed

    templates = list(concept.prompts[:PROMPTS])
    return [concept.prompt(t, identifier, phrase) for t in templates], [eval_noise_seed(i, 0)
                                                                          for i in range(len(templates))]


def _models(method: str, backbone: str = "sd-turbo") -> Any:
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    return Models(get_profile("tiny", backbone).for_method(method), "cpu")


def _config(cls: type, method: str, concept: str, iterations: int) -> Any:
    from bench.models.profiles import TINY_STEP_CAP
    from bench.runs import Job, resolve_config

    return resolve_config(cls, Job(method, "default", concept, 0, "tiny"), iteration_cap=iterations,
                          step_cap=TINY_STEP_CAP)


def _trained_samples(cls: Any, name: str, concept: Any, iterations: int) -> tuple[list[Any], list[str]]:
    """`cls` (registered as `name`, for its config) trained `iterations` per stage on `concept`: its samples of
    the concept's first prompts (evaluation noise), and those prompts."""
    from bench.api import eval_phrase
    from bench.contract_check import ListLog

    method = cls(_config(cls, name, concept.name, iterations))
    with tempfile.TemporaryDirectory(prefix=f"bench-learning-{name}-") as tmp:
        trained = method.train(concept, _models(name), Path(tmp), 0, ListLog())
        prompts, seeds = _prompts(concept, trained.identifier, eval_phrase(trained))
        return trained.generate(prompts, seeds), prompts


def check_trained(cls: Any, name: str, concept: Any, iterations: int = ITERATIONS) -> ConceptResult:
    """Train `cls` (registered as `name`) on `concept`: samples after `iterations` against those after `START`."""
    learned, prompts = _trained_samples(cls, name, concept, iterations)
    start, same = _trained_samples(cls, name, concept, START)
    if same != prompts:
        raise AssertionError(f"{name}: its start and its trained model read different prompts ({same[0]!r}, "
                             f"{prompts[0]!r})")
    photos = _targets(concept, _models(name), vae_role(cls), learned[0].size[0])
    return ConceptResult(name, concept.name, distance(learned, photos), distance(start, photos))


def check_conditioned(cls: Any, name: str, concept: Any, other: Any) -> ConceptResult:
    """Condition `cls` (no training) on `concept`'s photos and on `other`'s; which samples are closer to `concept`'s."""
    from bench.api import eval_phrase

    method = cls(_config(cls, name, concept.name, ITERATIONS))
    with tempfile.TemporaryDirectory(prefix=f"bench-learning-{name}-") as tmp:
        own = method.prepare(concept, _models(name), Path(tmp) / "own", 0)
        prompts, seeds = _prompts(concept, own.identifier, eval_phrase(own))
        near = own.generate(prompts, seeds)
        far = method.prepare(other, _models(name), Path(tmp) / "other", 0).generate(prompts, seeds)
    photos = _targets(concept, _models(name), vae_role(cls), near[0].size[0])
    return ConceptResult(name, concept.name, distance(near, photos), distance(far, photos))


def check_method(name: str, concepts: list[Any], all_concepts: list[Any] | None = None, cls: Any = None,
                 iterations: int = ITERATIONS) -> LearningReport:
    """The learning check of `name` (or of `cls`, a method class standing in under `name`'s config) on `concepts`;
    `all_concepts` supplies the other concept for a method without training."""
    from bench.contract import MethodInfo
    from bench.registry import get_method

    cls = cls or get_method(name)
    results = []
    pool = all_concepts or concepts
    for concept in concepts:
        if MethodInfo.of(cls).trains:
            results.append(check_trained(cls, name, concept, iterations))
        else:
            wanted = OTHER.get(concept.name)
            others = [c for c in pool if c.name != concept.name]
            other = next((c for c in others if c.name == wanted), None) or others[0]
            results.append(check_conditioned(cls, name, concept, other))
    return LearningReport(name, tuple(results))
