"""Evaluation: sample the protocol's prompts x evaluation seeds from a trained model, save the images, score them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench.api import Concept
from bench.config import to_dict
from bench.metrics.declared import NAMES as METRIC_NAMES
from bench.runs.planning import Context


def same_view_sampling(config: Any, donor_config: dict[str, Any]) -> bool:
    """Whether a donor run sampled its views as `config` would: every sampling-only field other than the step
    counts (precision, sampler, guidance) equal; the views' own step counts are compared one by one."""
    from bench.contract import is_sampling_only, is_step_count

    mine = to_dict(config)
    return all(donor_config.get(f.name) == mine[f.name] for f in dataclasses.fields(config)
               if is_sampling_only(f) and not is_step_count(f))


def evaluate(trained: Any, concept: Concept, eval_seeds: tuple[int, ...], image_dir: Path, ctx: Context,
             device: Any) -> dict[str, Any]:
    """Sample the protocol's prompts x seeds, save PNGs, score them; with inference timings."""
    from bench.api import eval_phrase
    from bench.data import load_image
    from bench.metrics import aggregate, load_scorer, real_vs_real, score_images
    from bench.models.sampling import eval_noise_seed
    from bench.timing import Stopwatch

    pairs = [(i, t, s) for i, t in enumerate(concept.prompts) for s in eval_seeds]
    prompts = [concept.prompt(t, trained.identifier, eval_phrase(trained)) for _, t, _ in pairs]
    seeds = [eval_noise_seed(i, s) for i, _, s in pairs]  # each (prompt, eval seed) its own noise, paired
    steps = trained.default_steps
    trained.generate(prompts[:1], seeds[:1], steps)  # warm-up, not timed
    with Stopwatch(device) as single:
        trained.generate(prompts[:1], seeds[:1], steps)
    images = []
    with Stopwatch(device) as batched:
        for start in range(0, len(prompts), ctx.eval_batch_size):
            end = start + ctx.eval_batch_size
            images += trained.generate(prompts[start:end], seeds[start:end], steps)
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [f"p{i:02d}_s{s}.png" for i, _, s in pairs]
    for name, image in zip(names, images):
        image.save(image_dir / name)
    reals = [load_image(p) for p in concept.images]
    scorer = load_scorer(ctx.suite, "cuda" if str(device).startswith("cuda") else "cpu")
    scores = score_images(scorer, images, [concept.clip_text(t) for _, t, _ in pairs], reals)
    rows = [{"file": f"{image_dir.name}/{name}", "prompt_index": i, "eval_seed": s, "noise_seed": n, "prompt": p,
             **sc, "concept": concept.name}
            for (i, _, s), name, p, n, sc in zip(pairs, names, prompts, seeds, scores)]
    summary = aggregate(rows)
    return {
        "steps": steps,
        "metrics": {k: summary[k] for k in METRIC_NAMES},
        "real_vs_real": real_vs_real(scorer, reals),
        "images": [{k: v for k, v in r.items() if k != "concept"} for r in rows],
        "timing": {"infer_s_per_image": single.seconds, "infer_s_per_image_batched": batched.seconds / len(images),
                   "eval_batch_size": ctx.eval_batch_size},
    }
