"""The sample grid drawn during training (`--sample-every N`): a diverging or collapsing run shows early.

Fixed prompts and fixed noise, as the evaluation draws them: `GRID_PROMPTS` of the concept's evaluation prompts,
evenly spread over its list, times the first `GRID_SEEDS` evaluation seeds, each image with the noise seed the
evaluation gives that (prompt, seed) pair (`bench.models.sampling.eval_noise_seed`). One row per prompt, one
column per seed. The grid is sampled from the model being trained, which the method hands over with
`bench.api.offer_samples` (a method that does not gets no grid), with every random state saved and put back and
without gradient, so a run with samples trains exactly as one without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.tracking.fanout import isolated_rng

GRID_PROMPTS = 4
GRID_SEEDS = 2
PAD = 2
"""Pixels between the grid's cells."""


def grid_pairs(concept: Any, eval_seeds: tuple[int, ...]) -> list[tuple[int, str, int]]:
    """(prompt index, template, evaluation seed) of each cell, row by row."""
    n = len(concept.prompts)
    picks = sorted({round(k * n / GRID_PROMPTS) for k in range(GRID_PROMPTS)} & set(range(n))) if n else []
    return [(i, concept.prompts[i], s) for i in picks for s in tuple(eval_seeds)[:GRID_SEEDS]]


def sample_grid(model: Any, concept: Any, eval_seeds: tuple[int, ...]) -> tuple[Any, list[dict[str, Any]]]:
    """(the grid as one PIL image, one entry per cell: prompt, evaluation seed, noise seed) sampled from `model`
    (a `bench.api.Trained`) at its default step count, leaving every random state as it found it."""
    import torch

    from bench.api import eval_phrase
    from bench.models.sampling import eval_noise_seed

    pairs = grid_pairs(concept, eval_seeds)
    prompts = [concept.prompt(t, model.identifier, eval_phrase(model)) for _, t, _ in pairs]
    seeds = [eval_noise_seed(i, s) for i, _, s in pairs]
    with isolated_rng(), torch.no_grad():
        images = model.generate(prompts, seeds)
    cells = [{"prompt_index": i, "prompt": p, "eval_seed": s, "noise_seed": n}
             for (i, _, s), p, n in zip(pairs, prompts, seeds)]
    return tile(images, columns=min(GRID_SEEDS, len(eval_seeds)) or 1), cells


def tile(images: list[Any], columns: int) -> Any:
    """PIL images (all one size) in rows of `columns`, `PAD` pixels apart on white."""
    from PIL import Image

    if not images:
        return Image.new("RGB", (1, 1), "white")
    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * w + (columns - 1) * PAD, rows * h + (rows - 1) * PAD), "white")
    for k, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((k % columns) * (w + PAD), (k // columns) * (h + PAD)))
    return grid


def save_grid(grid: Any, cells: list[dict[str, Any]], folder: Path, phase: str, iteration: int, step: int) -> Path:
    """Write the grid as `<folder>/<phase>_<iteration>.png` (iterations done in that stage) and list it in
    `<folder>/samples.jsonl` with the run's global step and its cells."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{phase}_{iteration:06d}.png"
    grid.save(path)
    with open(folder / "samples.jsonl", "a") as f:
        f.write(json.dumps({"file": path.name, "phase": phase, "iteration": iteration, "step": step,
                            "cells": cells}) + "\n")
    return path
