"""`bench score`: score finished runs again from their saved images, every image of the selection in one pass.

A run scores its own images as it finishes (`bench.runs.evaluate`). This module scores many finished runs at
once: every generated image of the selected runs (all views), every real image of their concepts and every
CLIP-T text go through each backbone of the suite in large batches, one pass per backbone. Each run then gets
its scores from its slice of the embeddings, computed as `evaluate` computes them (equal up to float rounding:
on a GPU an embedding can depend on the batch it was computed in).

The use: putting finished runs under another metric suite without training or sampling again
(`bench score --method echodistill --suite dreambooth`). A rescored record is the record `bench run --suite`
would have written (same images, same config hash, scores up to float rounding), plus `rescored` saying from
which suite. Only runs that are done, current and complete are touched; each record is replaced atomically under
the run's lock.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import store
from bench.api import Concept
from bench.metrics.declared import NAMES as METRIC_NAMES
from bench.record import Evaluation, ImageScore, Rescored, RunRecord, set_fields
from bench.runs import Context, Job, PlannedRun, job_hash, load_concept


@dataclass
class _Run:
    """One run to rescore: its record, and the images of each of its evaluations (None = the run's own)."""

    job: Job
    run_dir: Path
    record: RunRecord
    new_hash: str
    concept: Concept
    parts: dict[str | None, list[int]] = field(default_factory=dict)
    """Evaluation (None or a view name) -> indices into the pass's image list, in the record's row order."""


def select(runs: list[PlannedRun], ctx: Context) -> tuple[list[_Run], dict[str, list[str]]]:
    """The planned runs that can be rescored under `ctx.suite`, and the others by reason."""
    todo, skipped = [], {"already": [], "not_done": [], "outdated": [], "missing_images": []}
    concepts: dict[str, Concept] = {}
    for planned in runs:
        job, run_dir, new_hash = planned.job, planned.run_dir, planned.config_hash
        record = store.read_run_record(run_dir)
        label = job.key.label()
        if record is None or not record.done:
            skipped["not_done"].append(label)
            continue
        old_suite = record.metric_suite or {}
        if not old_suite.get("name") or job_hash(job, planned.typed_config(), planned.models, old_suite,
                                                 planned.version) != record.config_hash:
            skipped["outdated"].append(label)  # trained or evaluated with another config: `bench run` redoes it
            continue
        if record.config_hash == new_hash and not ctx.force:  # the hash names the suite
            skipped["already"].append(label)
            continue
        images = [(image, folder) for _, rows, folder in _evaluations(record, run_dir) for image in rows]
        if not all(image.file and image.prompt_index is not None and (folder / image.file).is_file()
                   for image, folder in images):
            skipped["missing_images"].append(label)  # deleted by hand: `bench run --force` samples them again
            continue
        if job.concept not in concepts:
            concepts[job.concept] = load_concept(job, ctx)
        todo.append(_Run(job, run_dir, record, new_hash, concepts[job.concept]))
    return todo, skipped


def rescore(runs: list[PlannedRun], ctx: Context, device: str, batch_size: int | None = None,
            on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score the selected runs' images under `ctx.suite` in one pass per backbone and rewrite their records.

    Returns {"rescored": [labels], "already" | "not_done" | "outdated" | "missing_images" | "changed": [labels],
    "images": N, "embed_s": seconds for the pass}. `on_batch(done, total)` reports progress in images.
    """
    from bench.metrics import aggregate, ceiling, load_scorer, score_embedded

    todo, outcome = select(runs, ctx)
    outcome = {"rescored": [], **outcome, "changed": [], "images": 0, "embed_s": 0.0}
    if not todo:
        return outcome
    files, texts = [], []
    for run in todo:
        for part, rows, folder in _evaluations(run.record, run.run_dir):
            run.parts[part] = list(range(len(files), len(files) + len(rows)))
            files += _files(rows, folder)
            texts += [run.concept.clip_text(run.concept.prompts[int(image.prompt_index)]) for image in rows]
    reals = sorted({p for run in todo for p in run.concept.images})
    scorer = load_scorer(ctx.suite, device)
    total = len(files) + len(reals)
    started = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if on_batch:
            on_batch(done[0], total)

    gen = scorer.image_embeddings(files, batch_size, on_batch=progress)
    real = scorer.image_embeddings(reals, batch_size, on_batch=progress)
    text = scorer.text_embeddings(texts)
    outcome["embed_s"], outcome["images"] = time.perf_counter() - started, total
    real_index = {p: i for i, p in enumerate(reals)}
    suite = ctx.suite_description()
    for run in todo:
        mine = [real_index[p] for p in run.concept.images]
        real_emb = {k: v[mine] for k, v in real.items()}
        record = copy.deepcopy(run.record)
        for part, rows, _ in _evaluations(record, run.run_dir):
            idx = run.parts[part]
            scores = score_embedded({k: v[idx] for k, v in gen.items()}, text[idx], real_emb,
                                    max0=scorer.suite.cos_max0)
            new_rows = [{**image.to_json(), **sc} for image, sc in zip(rows, scores)]
            target: RunRecord | Evaluation = record if part is None else (record.views or {})[part]
            summary = aggregate([{**r, "concept": run.job.concept} for r in new_rows])
            set_fields(target, images=[ImageScore.from_json(r) for r in new_rows],
                       metrics={k: summary[k] for k in METRIC_NAMES},
                       real_vs_real=ceiling(real_emb, max0=scorer.suite.cos_max0))
        set_fields(record, metric_suite=suite, config_hash=run.new_hash,
                   rescored=Rescored(from_suite=run.record.suite.name, at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     pass_images=total, pass_s=outcome["embed_s"]))
        outcome["rescored" if _commit(run, record) else "changed"].append(run.job.key.label())
    return outcome


def _evaluations(record: RunRecord, run_dir: Path) -> list[tuple[str | None, list[ImageScore], Path]]:
    """(None, the run's own images, the folder their `file` is relative to), then the same for each view."""
    out: list[tuple[str | None, list[ImageScore], Path]] = [(None, record.images or [], run_dir)]
    out += [(name, view.images, run_dir / "views") for name, view in (record.views or {}).items()]
    return out


def _files(rows: list[ImageScore], folder: Path) -> list[Path]:
    """The image files of an evaluation's rows (`file` is "images/p00_s0.png", or "<view>/p00_s0.png")."""
    return [folder / str(image.file) for image in rows]


def _commit(run: _Run, record: RunRecord) -> bool:
    """Replace the run's record under its lock, unless the run changed since it was read (then leave it)."""
    lock = store.RunLock(run.run_dir)
    if not lock.acquire():
        return False
    try:
        now = store.read_run_record(run.run_dir)
        if not now or now.config_hash != run.record.config_hash or now.finished_at != run.record.finished_at \
                or not lock.still_held():
            return False
        store.write_json_atomic(run.run_dir / store.RECORD, record.to_json())
        return True
    finally:
        lock.release()
