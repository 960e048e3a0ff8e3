"""A test-only method that takes a fraction of a second to train, on the real harness path (train, checkpoint,
save, sample, score, record), so the executor, kill and resume tests run in seconds instead of minutes.

Training is a seeded AdamW fit of an 8-vector to random targets drawn from every RNG a real method uses (a torch
Generator, the global torch RNG, a `random.Random` stream), checkpointed with `bench.models.checkpoint`, so a
resumed run is bit-identical to an uninterrupted one only if everything is restored. `sleep` gives a kill window;
`fail_on` / `diverge_on` make one concept raise or produce a NaN loss.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import Concept, Diverged, Log
from bench.config import CHECKPOINT_EVERY, SAMPLING_STEPS, SCHEDULE
from bench.models.checkpoint import Checkpointer


@dataclass(frozen=True)
class FakeConfig:
    iterations: int = field(default=6, metadata=SCHEDULE)
    """Optimiser steps."""
    sleep: float = 0.0
    """Seconds to sleep in each step (a window to kill the process in)."""
    checkpoint_every: int = field(default=2, metadata=CHECKPOINT_EVERY)
    """Checkpoint period in iterations; 0 = off."""
    fail_on: str = ""
    """A concept name whose training raises RuntimeError."""
    diverge_on: str = ""
    """A concept name whose loss becomes NaN."""
    steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps (sampling-only: variants differing only here share one training). Brightens the images."""


class FakeMethod:
    name: ClassVar[str] = "fake"
    resumable: ClassVar[bool] = True
    Config: ClassVar[type] = FakeConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "steps2": {"steps": 2}, "steps4": {"steps": 4}}

    def __init__(self, config: FakeConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Any, out_dir: Path, seed: int, log: Log) -> FakeTrained:
        cfg = self.config
        torch.manual_seed(seed)
        weight = torch.zeros(8, requires_grad=True)
        optimizer = torch.optim.AdamW([weight], lr=0.1)
        generator = torch.Generator().manual_seed(seed)
        stream = random.Random(seed)
        ckpt = Checkpointer(out_dir / "train", cfg.checkpoint_every, cfg.iterations)
        state = dict(tensors={"weight": weight}, stateful={"optimizer": optimizer}, generators={"g": generator},
                     randoms={"stream": stream})
        start = ckpt.restore(**state)
        log.begin("train", cfg.iterations)
        for it in range(start, cfg.iterations):
            if cfg.sleep:
                time.sleep(cfg.sleep)
            target = torch.randn(8, generator=generator) + 0.1 * torch.randn(8) + stream.random()
            loss = ((weight - target) ** 2).mean()
            if concept.name == cfg.diverge_on:
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                raise Diverged(f"non-finite loss at iteration {it}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            log(it, loss=loss.item())
            ckpt.maybe_save(it + 1, **state)
        if concept.name == cfg.fail_on:
            raise RuntimeError(f"fake failure on {concept.name}")
        return FakeTrained(weight.detach().clone(), cfg.steps)

    def load(self, weights_dir: Path, models: Any) -> FakeTrained:
        from safetensors.torch import load_file

        return FakeTrained(load_file(Path(weights_dir) / "fake.safetensors")["weight"], self.config.steps)


class FakeTrained:
    identifier = "<fake>"
    default_steps = 1

    def __init__(self, weight: torch.Tensor, steps: int = 1) -> None:
        self.weight, self.default_steps = weight, steps

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        from PIL import Image

        images = []
        for prompt, seed in zip(prompts, seeds):
            g = torch.Generator().manual_seed(seed * 1000 + len(prompt))
            base = float(torch.sigmoid(self.weight.mean())) * 127 + 8 * ((steps or self.default_steps) - 1)
            pixels = (torch.rand(64, 64, 3, generator=g) * 128 + base).clamp(0, 255).to(torch.uint8)
            images.append(Image.fromarray(pixels.numpy()))
        return images

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous()}, out_dir / "fake.safetensors")


@dataclass(frozen=True)
class FakePreparedConfig:
    photos: int = 1
    """How many of the concept's photos condition the model (the first ones by file name)."""
    rounds: int = field(default=1, metadata=SCHEDULE)
    """A schedule length, for the test that a method without training refuses to have one set."""


class FakePrepared:
    """A test-only method without a training stage (`trains = False`): `prepare` reads the conditioning photos'
    mean colour, and the images are tinted by it."""

    name: ClassVar[str] = "fake_prepared"
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = FakePreparedConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "two": {"photos": 2}}

    def __init__(self, config: FakePreparedConfig) -> None:
        self.config = config

    def prepare(self, concept: Concept, models: Any, out_dir: Path, seed: int) -> FakeConditioned:
        import numpy as np

        from bench.data import load_image

        photos = concept.images[:self.config.photos]
        colour = np.mean([np.asarray(load_image(p, size=16), dtype=np.float32).mean() for p in photos])
        return FakeConditioned(torch.full((8,), float(colour) / 255), [p.name for p in photos])

    def load(self, weights_dir: Path, models: Any) -> FakeConditioned:
        from safetensors import safe_open

        with safe_open(str(Path(weights_dir) / "fake.safetensors"), framework="pt") as f:
            return FakeConditioned(f.get_tensor("weight"), f.metadata()["conditioning"].split(","))


class FakeConditioned(FakeTrained):
    identifier = ""
    eval_phrase = "{class_noun}"

    def __init__(self, weight: torch.Tensor, conditioning: list[str]) -> None:
        super().__init__(weight)
        self.conditioning = conditioning

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous()}, out_dir / "fake.safetensors",
                  metadata={"conditioning": ",".join(self.conditioning)})
