"""Trials drawn from finished runs: one (concept, training seed, prompt, evaluation seed) per trial, one saved
image per compared method, the candidates in an order fixed per trial, the concept's reference photos beside."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.api import BenchError, Concept
from bench.record import RunRecord
from bench.study.config import StudyConfig


def display_prompt(prompt: str, identifier: str | None, class_noun: str) -> str:
    """The prompt as a participant reads it: the method's identifier replaced by the class noun
    ("a <new1> dog in the jungle" -> "a dog in the jungle")."""
    text = prompt
    if identifier:
        text = text.replace(f"{identifier} {class_noun}", class_noun).replace(identifier, class_noun)
    return re.sub(r"\s+", " ", text).strip()


def _done_runs(results: Path, cfg: StudyConfig) -> dict[tuple[str, str, str, int], RunRecord]:
    from bench.store import iter_run_records

    wanted = set(zip(cfg.methods, cfg.variants))
    runs = {}
    for r in iter_run_records(results, cfg.profile):
        if r.done and (r.method, r.variant) in wanted and r.seed in cfg.seeds:
            runs[(r.method, r.variant, r.concept, r.seed)] = r
    return runs


def _images(record: RunRecord) -> dict[tuple[int, int], tuple[Path, str]]:
    """(prompt index, eval seed) -> (saved image, prompt) for the run's images that exist on disk (an image row
    without a file or its indices is left out)."""
    out = {}
    for image in record.evaluation.images:
        if image.file is None or image.prompt_index is None or image.eval_seed is None:
            continue
        path = Path(record.run_dir or "") / image.file
        if path.is_file():
            out[(int(image.prompt_index), int(image.eval_seed))] = (path, image.prompt or "")
    return out


def draw_trials(results: Path, cfg: StudyConfig, concepts: dict[str, Concept]) -> list[dict[str, Any]]:
    """Every eligible trial (or `cfg.trials` of them, drawn with `cfg.draw_seed`), ready for `create_database`.

    `concepts` maps a concept name to its dataset entry (class noun, reference photos). A (concept, seed) is
    eligible when every compared (method, variant) has a finished run with the same (prompt, eval seed) image."""
    runs = _done_runs(results, cfg)
    pairs = list(zip(cfg.methods, cfg.variants))
    names = cfg.concepts or tuple(sorted({k[2] for k in runs}))
    missing: dict[str, list[str]] = defaultdict(list)
    pool = []
    for concept in names:
        for seed in cfg.seeds:
            recs = [runs.get((m, v, concept, seed)) for m, v in pairs]
            absent = [f"{m}/{v}" for (m, v), r in zip(pairs, recs) if r is None]
            if absent:
                missing[f"{concept}/seed{seed}"] = absent
                continue
            images = [_images(r) for r in recs]
            for key in sorted(set.intersection(*[set(i) for i in images])):
                pool.append((concept, seed, key, recs, images))
    if not pool:
        shown = "; ".join(f"{k} lacks {', '.join(v)}" for k, v in list(missing.items())[:4])
        raise BenchError(f"no trial can be drawn: no concept has a finished run with saved images for every one "
                         f"of {', '.join(f'{m}/{v}' for m, v in pairs)} (profile {cfg.profile}, seeds "
                         f"{','.join(map(str, cfg.seeds))})" + (f"; {shown}" if shown else ""))
    rng = random.Random(cfg.draw_seed)
    if cfg.trials is not None:
        if cfg.trials > len(pool):
            raise BenchError(f"--trials {cfg.trials} is more than the {len(pool)} eligible trials; use at most "
                             f"{len(pool)}, or 'all'")
        pool = [pool[i] for i in sorted(rng.sample(range(len(pool)), cfg.trials))]
    trials = []
    for concept, seed, (p, s), recs, images in pool:
        if concept not in concepts:
            raise BenchError(f"concept '{concept}' is not in the dataset given (--data/--dataset); the study shows "
                             f"its reference photos, so it needs the dataset the runs were trained on")
        entry = concepts[concept]
        order = list(range(len(pairs)))
        random.Random(f"{cfg.draw_seed}/{concept}/{seed}/{p}/{s}").shuffle(order)
        prompt = display_prompt(images[0][(p, s)][1], recs[0].identifier, entry.class_noun)
        trials.append({"concept": concept, "class_noun": entry.class_noun, "seed": seed, "prompt_index": p,
                       "eval_seed": s, "prompt": prompt,
                       "candidates": [(pairs[i][0], pairs[i][1], images[i][(p, s)][0]) for i in order],
                       "references": list(entry.images[: cfg.references])})
    return trials
