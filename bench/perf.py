"""`bench perf`: per-method training-step cost, phase shares, FLOPs, peak memory and inference latency.

Timed the way nanoGPT's bench.py does: warm-up iterations excluded, the device synchronised around every
measurement. One measured iteration runs under the PyTorch profiler (phase shares, from the `record_function`
labels the methods and `bench.models.sampling` put around their phases) and under `FlopCounterMode` (model FLOPs,
hence the achieved fraction of the device's peak). The FLOPs are those of a steady-state iteration: where a method
caches its photos' VAE latents (`bench.models.training.Latents`, speed switch `latents=cache`), a photo's
first-time encode in the counted iteration is counted apart (`flops_cache_fill`) and left out, as in every later
iteration once each photo has been seen. Results go to `results/perf/` as JSON and Markdown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.api import BenchError, eval_phrase
from bench.contract import MethodInfo

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for the achieved fraction.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A40": 149.7e12, "L40S": 362e12, "A6000": 154.8e12}
PERF_DIR = Path("results") / "perf"


def device_peak(name: str) -> float | None:
    """The device's dense bf16 peak, matched by name (`NVIDIA H100 80GB HBM3` -> H100); None on a CPU."""
    for key, flops in PEAK_BF16.items():
        if key in name:
            return flops
    return None


class PerfLog:
    """A `bench.api.Log` that timestamps every iteration and profiles exactly one after the warm-up."""

    def __init__(self, device: Any, warmup: int) -> None:
        from bench.timing import synchronize

        self.sync = lambda: synchronize(device)
        self.device, self.warmup = device, warmup
        self.stamps: list[float] = []
        self.phase_totals: dict[str, float] = {}
        self.flops: int | None = None
        """Model FLOPs of one steady-state iteration: the counted iteration's, less `cache_fill_flops`."""
        self.cache_fill_flops = 0
        """FLOPs of first-time VAE encodes into a latents cache during the counted iteration (not steady state)."""
        self._profiler: Any = None
        self._flop_counter: Any = None
        self.sync()
        self._start = time.perf_counter()

    def begin(self, phase: str, total: int) -> None:
        self.sync()
        self.stamps = []
        self._start = time.perf_counter()

    def __call__(self, iteration: int, **scalars: float) -> None:
        # Iteration `warmup` runs under the profiler, `warmup + 1` under the FLOP counter (never both: the
        # counter's dispatch mode would dominate the profile); neither is timed.
        self.sync()
        self.stamps.append(time.perf_counter())
        n = len(self.stamps)
        if n == self.warmup:
            self._profiler = _profiler()
            self._profiler.__enter__()
        elif n == self.warmup + 1 and self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.phase_totals = labelled_totals(self._profiler)
            from torch.utils.flop_counter import FlopCounterMode

            self._flop_counter = FlopCounterMode(display=False)
            self._flop_counter.__enter__()
        elif n == self.warmup + 2 and self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self.flops = int(self._flop_counter.get_total_flops()) - self.cache_fill_flops
            self._flop_counter = None

    @contextlib.contextmanager
    def steady_state_flops(self) -> Iterator[None]:
        """While training runs inside, a cached-latents encode of a photo not seen before, in the FLOP-counted
        iteration, has its FLOPs booked in `cache_fill_flops` (and left out of `flops`): the cache is filled once
        per run, so a steady-state iteration only draws the posterior sample."""
        from bench.models.training import Latents

        original = Latents._posterior
        log = self

        def posterior(latents: Any, pixels: Any, keys: Any) -> Any:
            counter = log._flop_counter
            filling = (counter is not None and latents.cache and keys is not None
                       and any(key not in latents.posteriors for key in keys))
            if not filling:
                return original(latents, pixels, keys)
            before = counter.get_total_flops()
            try:
                return original(latents, pixels, keys)
            finally:
                log.cache_fill_flops += int(counter.get_total_flops() - before)

        Latents._posterior = posterior
        try:
            yield
        finally:
            Latents._posterior = original

    def iteration_seconds(self) -> list[float]:
        """Seconds of each iteration after the warm-up, the profiled and FLOP-counted ones excluded."""
        times = [b - a for a, b in zip([self._start] + self.stamps, self.stamps)]
        return [t for i, t in enumerate(times) if i >= self.warmup + 2]


def _profiler() -> Any:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=activities)


def labelled_totals(prof: Any) -> dict[str, float]:
    """Seconds per phase label: the `bench/...` record_function labels and the optimiser steps.

    Device time on CUDA, CPU time otherwise; labels nest (a loss inside a phase), so shares are of their sum.
    """
    out: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("bench/") or event.key.startswith("Optimizer.step"):
            device_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
            out[event.key] = (device_us or event.cpu_time_total) / 1e6
    return out


def perf_overrides(cls: type, iterations: int, batch: int) -> dict[str, Any]:
    """The config overrides that time `iterations` of a method's main training stage, each read from the field
    roles (`bench.contract`), never from a field's name: the `MAIN_SCHEDULE` field (else the first `SCHEDULE`
    one) to `iterations` and every other `SCHEDULE` field to 1, the `BATCH_SIZE` field to `batch`, the method's
    own `perf_overrides`, then the `CHECKPOINT_EVERY` field to 0 (checkpoint writes are not an iteration's cost)."""
    from bench.contract import batch_field, checkpoint_field, main_schedule_field, schedule_fields

    info = MethodInfo.of(cls)
    overrides: dict[str, Any] = {}
    if info.trains:
        overrides = {field: 1 for field in schedule_fields(cls.Config)}  # other stages: one iteration
        main = main_schedule_field(cls.Config)
        if main is not None:
            overrides[main] = iterations
    if (field := batch_field(cls.Config)) is not None:
        overrides[field] = batch
    overrides.update(info.perf_overrides)  # the method's own shortcuts (EchoDistill: no echo stage)
    if (field := checkpoint_field(cls.Config)) is not None:
        overrides[field] = 0
    return overrides


def measure_method(name: str, profile: Any, device: str | None, concept: Any, warmup: int, iterations: int,
                   batch: int, sweep_batch: int, latency_repeats: int = 5, speed: Any = None) -> dict[str, Any]:
    """Train `name` for warmup + 1 profiled + `iterations` steps and time its sampling."""
    import torch

    from bench.config import build
    from bench.models.loading import Models
    from bench.registry import get_method
    from bench.timing import Stopwatch, peak_memory, reset_peak_memory

    cls = get_method(name)
    trains = MethodInfo.of(cls).trains  # a method without training is timed preparing and sampling only
    config = build(cls.Config, perf_overrides(cls, warmup + 2 + iterations, batch))
    models = Models(profile.for_method(cls), device, speed)
    log = PerfLog(models.device, warmup)
    reset_peak_memory(models.device)
    torch.manual_seed(0)
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=f"bench-perf-{name}-"))
    try:
        with log.steady_state_flops(), Stopwatch(models.device) as prep:
            method = cls(config)
            trained = method.train(concept, models, work, 0, log) if trains else method.prepare(concept, models,
                                                                                                 work, 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step_s = statistics.median(log.iteration_seconds()) if log.iteration_seconds() else float("nan")
    memory = peak_memory(models.device)

    prompt = concept.prompt(concept.prompts[0], trained.identifier, eval_phrase(trained))
    trained.generate([prompt], [0])  # warm-up
    singles = []
    for k in range(latency_repeats):
        with Stopwatch(models.device) as sw:
            trained.generate([prompt], [k])
        singles.append(sw.seconds)
    prof = _profiler()
    with prof:
        trained.generate([prompt], [0])
    labels = labelled_totals(prof)
    # UNet-only latency: the UNet's share of the profiled end-to-end call, applied to the unprofiled latency.
    unet_share = labels.get("bench/unet", 0.0) / max(labels.get("bench/generate", 0.0), 1e-12)
    unet_s = min(unet_share, 1.0) * statistics.median(singles) if "bench/generate" in labels else None
    with Stopwatch(models.device) as sw:
        trained.generate([prompt] * sweep_batch, list(range(sweep_batch)))
    from bench.tracking.samples import sample_grid

    with Stopwatch(models.device) as grid:  # what one `--sample-every` grid costs (bench.tracking.samples)
        sample_grid(trained, concept, profile.eval_seeds)
    share_total = sum(log.phase_totals.values()) or 1.0
    from bench.timing import device_name

    dev = device_name(models.device)
    peak = device_peak(dev)
    achieved = (log.flops / step_s) if log.flops and step_s == step_s and step_s > 0 else None
    return {
        "method": name, "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        **({} if trains else {"trains": False, "prepare_s": max(prep.seconds - models.load_seconds, 0.0)}),
        "train_step_s": step_s, "iterations_timed": len(log.iteration_seconds()),
        "phases_s": dict(sorted(log.phase_totals.items(), key=lambda kv: -kv[1])[:25]),
        "phase_share": {k: v / share_total for k, v in sorted(log.phase_totals.items(), key=lambda kv: -kv[1])[:25]},
        "flops_per_iteration": log.flops, "flops_cache_fill": log.cache_fill_flops, "achieved_flops": achieved,
        "fraction_of_peak_bf16": (achieved / peak) if achieved and peak else None,
        "peak_memory": memory,
        "infer_s_per_image_b1": statistics.median(singles), "infer_unet_s_per_image_b1": unet_s,
        "infer_s_per_image_batched": sw.seconds / sweep_batch, "sweep_batch": sweep_batch,
        "default_steps": trained.default_steps, "device": dev, "speed": models.speed.resolved(models.device),
        "sample_grid_s": grid.seconds,
    }


def measure_scoring(profile: Any, device: str | None, concept: Any, n: int) -> dict[str, Any]:
    """Seconds to score `n` generated images as `bench score` does: every image (and its CLIP-T text) through
    each backbone of the profile's suite in one batched pass, against the concept's real images.

    `paper-random` uses the paper suite's architectures with random weights (`random_scorer`): the same work, no
    download. The images are 32 distinct seeded noise images at the profile's resolution, repeated to `n`."""
    import numpy as np
    import torch
    from PIL import Image

    from bench.metrics import load_scorer, score_images
    from bench.metrics.scoring import random_scorer
    from bench.models.loading import default_device
    from bench.runs import default_suite
    from bench.timing import Stopwatch

    device = device or default_device()
    suite = default_suite(profile.name)
    scorer = random_scorer(suite, device) if profile.random_init else load_scorer(suite, device)
    rng = np.random.default_rng(0)
    size = profile.resolution
    distinct = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(32)]
    images = [distinct[i % len(distinct)] for i in range(n)]
    texts = [concept.clip_text(concept.prompts[i % len(concept.prompts)]) for i in range(n)]
    score_images(scorer, images[:8], texts[:8], list(concept.images))  # warm-up: kernels, allocator
    with Stopwatch(device) as sw:
        score_images(scorer, images, texts, list(concept.images))
    out = {"suite": suite, "weights": "random" if profile.random_init else "real", "images": n,
           "seconds": sw.seconds, "images_per_s": n / sw.seconds if sw.seconds > 0 else None,
           "batch": scorer.batch_size, "device": str(device)}
    del scorer
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()  # the methods' peak memory is measured next
    return out


def run_perf(methods: list[str], profile_name: str, resolution: int | None, batch: int, warmup: int, iterations: int,
             sweep_batch: int, device: str | None, data: Path, out_dir: Path, weights: dict[str, str] | None = None,
             speed: Any = None, speed_sweep: bool = False, score_images: int | None = 0) -> tuple[Path, str]:
    """Measure each method; write `<out_dir>/<profile>-<device>-<time>.{json,md}`; return (json path, table).

    With `speed_sweep`, each method is measured under the default speed settings and then with each switch
    flipped on its own (`bench.models.speed.sweep_settings`), in this one process; every row then carries
    `speed_label` and its ratios to the default row (`vs_default`: step time, latency at batch 1). With
    `score_images` > 0 (None: 3000 on a GPU, 0 on a CPU), also the time to score that many images in one pass
    (`measure_scoring`), measured first so that a suite that cannot load fails before any method is timed."""
    from bench.data import select_concepts
    from bench.models.profiles import get_profile
    from bench.models.speed import Speed, sweep_settings
    from bench.naming import unknown
    from bench.registry import method_names
    from bench.runs import git_commit, versions

    for name in methods:
        if name not in method_names():
            raise unknown("method", name, method_names())
    if score_images is None:  # the 3000 images of a method's evaluation, where it is quick
        from bench.models.loading import default_device

        score_images = 3000 if (device or default_device()).startswith("cuda") else 0
    if score_images < 0:
        raise BenchError(f"--score-images must be >= 0, got {score_images}")
    profile = get_profile(profile_name, weights=weights)
    from bench.threads import apply_threads, choose_threads

    threads = apply_threads(choose_threads(1, profile_name))  # on a CPU: all usable cores, 1 on tiny, or --threads
    if resolution:
        if resolution % 8:
            raise BenchError(f"--resolution must be a multiple of 8, got {resolution}")
        profile = dataclasses.replace(profile, resolution=resolution)
    concept = select_concepts(data, "dog")[0]
    scoring = measure_scoring(profile, device, concept, score_images) if score_images else None
    settings = sweep_settings() if speed_sweep else [("", speed or Speed())]
    rows = []
    for m in methods:
        base = None
        for label, setting in settings:
            row = measure_method(m, profile, device, concept, warmup, iterations, batch, sweep_batch, speed=setting)
            if speed_sweep:
                base = base or row
                row["speed_label"] = label
                row["vs_default"] = {k: row[k] / base[k] if row[k] and base[k] else None
                                     for k in ("train_step_s", "infer_s_per_image_b1")}
            rows.append(row)
    record = {"schema": 1, "kind": "perf", "profile": profile_name, "resolution": profile.resolution, "batch": batch,
              "warmup": warmup, "iterations": iterations, "threads": threads, "versions": versions(),
              "git_commit": git_commit(),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "methods": rows, "scoring": scoring}
    table = perf_table(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = rows[0]["device"].split(" (")[0].replace(" ", "-").lower() if rows else "none"
    stem = out_dir / f"{profile_name}-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    from bench.store import write_json_atomic

    write_json_atomic(stem.with_suffix(".json"), record)
    stem.with_suffix(".md").write_text(table)
    return stem.with_suffix(".json"), table


def perf_table(record: dict[str, Any]) -> str:
    """One Markdown row per method: step time, FLOPs, fraction of peak, memory, latencies."""
    def fmt(v: Any, scale: float = 1.0, digits: int = 3) -> str:
        return "–" if v is None or v != v else f"{v * scale:.{digits}f}"

    lines = [f"**bench perf: profile {record['profile']}, {record['resolution']} px, batch {record['batch']}, "
             f"device {record['methods'][0]['device'] if record['methods'] else '?'}**", "",
             "| method | s / iteration | s / 1000 it | GFLOP / it | % peak bf16 | peak memory (GiB) | "
             "infer s/img (b1) | UNet s/img (b1) | infer s/img (batched) | top phases |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in record["methods"]:
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(m["phase_share"].items())[:3])
        name = m["method"]
        step = (f"{fmt(m['train_step_s'])} | {fmt(m['train_step_s'], 1000, 1)}" if m.get("trains", True)
                else f"/ (prepare {fmt(m.get('prepare_s'), 1, 2)} s) | /")
        if m.get("speed_label"):  # --speed-sweep: which switch, and its effect as a ratio to the default row
            ratio = m["vs_default"]
            name += (f" [{m['speed_label']}: step x{fmt(ratio['train_step_s'], 1, 2)}, latency "
                     f"x{fmt(ratio['infer_s_per_image_b1'], 1, 2)}]")
        lines.append(
            f"| {name} | {step} | "
            f"{fmt(m['flops_per_iteration'], 1e-9, 1)} | {fmt(m['fraction_of_peak_bf16'], 100, 1)} | "
            f"{fmt(m['peak_memory']['bytes'], 1 / 2**30, 2)} | {fmt(m['infer_s_per_image_b1'], 1, 4)} | "
            f"{fmt(m['infer_unet_s_per_image_b1'], 1, 4)} | {fmt(m['infer_s_per_image_batched'], 1, 4)} | {top} |")
    grids = [m for m in record["methods"] if m.get("sample_grid_s") is not None and m.get("trains", True)]
    if grids:  # `--sample-every N` adds one grid per N iterations
        lines += ["", "Sample grid during training (`--sample-every N`, one grid of the fixed prompts x seeds): "
                      + ", ".join(f"{m['method']} {fmt(m['sample_grid_s'], 1, 3)} s"
                                  + (f" (+{m['sample_grid_s'] / (100 * m['train_step_s']):.1%} of training at N = "
                                     f"100)" if m["train_step_s"] and m["train_step_s"] == m["train_step_s"] else "")
                                  for m in grids)]
    sc = record.get("scoring")
    if sc:
        lines += ["", f"Scoring {sc['images']} images in one pass (suite {sc['suite']}, {sc['weights']} weights, "
                      f"batch {sc['batch']}, {sc['device']}): {fmt(sc['seconds'], 1, 1)} s, "
                      f"{fmt(sc['images_per_s'], 1, 1)} images/s"]
    return "\n".join(lines) + "\n"
