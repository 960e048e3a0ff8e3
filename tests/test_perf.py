"""`bench perf` on the tiny profile, on the CPU: a record and a table with every figure it promises."""

from __future__ import annotations

import json

from tests.helpers import bench


def test_perf_tiny_cpu(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, out, err = bench(monkeypatch, capsys, "perf", "--methods", "custom_diffusion", "--profile", "tiny",
                           "--warmup", "1", "--iterations", "2", "--sweep-batch", "4", "--device", "cpu",
                           "--data", dreambench_root, "--out", tmp_path, "--score-images", "40")
    assert code == 0, err
    assert "custom_diffusion" in out and "s / iteration" in out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    row = record["methods"][0]
    assert row["train_step_s"] > 0 and row["iterations_timed"] == 2
    assert row["flops_per_iteration"] > 0
    assert row["fraction_of_peak_bf16"] is None  # no known peak for a CPU: left unclaimed, never guessed
    assert row["infer_s_per_image_b1"] > 0 and 0 < row["infer_unet_s_per_image_b1"] <= row["infer_s_per_image_b1"]
    assert any(k.startswith("Optimizer.step") for k in row["phase_share"])
    assert record["versions"]["torch"]
    assert record["threads"] == 1  # bench.threads: one intra-op thread on tiny (the tests' BENCH_THREADS too)
    scoring = record["scoring"]
    assert scoring["images"] == 40 and scoring["seconds"] > 0 and scoring["suite"] == "tiny"
    assert "Scoring 40 images in one pass (suite tiny" in out
    assert row["sample_grid_s"] > 0 and "Sample grid during training (`--sample-every N`" in out  # its cost


def test_random_scorer_builds_the_suite_architecture_without_weights() -> None:
    """paper-random's scoring figure: the paper suite's backbones at full size, random weights, no download."""
    import torch
    from PIL import Image

    from bench.metrics.scoring import random_scorer
    from bench.metrics.suites import get_suite

    scorer = random_scorer("dreambooth")  # the smaller real suite (ViT-B/32, ViT-S/16): same code path as paper
    assert scorer.suite == get_suite("dreambooth")
    assert scorer.clip_model.visual.output_dim == 512 and scorer.dino_model.num_features == 384
    emb = scorer.image_embeddings([Image.new("RGB", (64, 64), (200, 10, 10))] * 3)
    assert emb["clip"].shape == (3, 512) and torch.allclose(emb["clip"].norm(dim=-1), torch.ones(3))


def test_perf_bad_method(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "perf", "--methods", "lorra", "--out", tmp_path)
    assert code == 2 and "did you mean 'lora'" in err
    code, _, err = bench(monkeypatch, capsys, "perf", "--methods", "lora", "--score-images", "-1", "--out", tmp_path)
    assert code == 2 and "--score-images must be >= 0" in err


def _photo_concept(folder, n: int):
    """A self-contained concept: `n` distinct seeded noise photos (64 px) of a 'teapot'."""
    import numpy as np
    from PIL import Image

    from bench.api import Concept

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    return Concept("teapot", "teapot", tuple(paths), ("a {0} {1} on a table",))


def test_perf_flops_are_those_of_a_steady_state_iteration(tmp_path) -> None:
    """With cached latents (LoRA: no random-scale augmentation), a photo seen for the first time in the counted
    iteration is encoded once, never again: its encode is counted apart, and the FLOP figure is that of a later
    iteration, when every photo is cached (no first-time encode at all)."""
    from bench.models.profiles import get_profile
    from bench.perf import measure_method

    concept = _photo_concept(tmp_path / "photos", 8)  # 16 (photo, mirror) keys: the cache fills slowly
    profile = get_profile("tiny")
    early = measure_method("lora", profile, "cpu", concept, warmup=1, iterations=1, batch=2, sweep_batch=1,
                           latency_repeats=1)
    assert early["flops_cache_fill"] > 0, "the counted iteration encodes photos it sees for the first time"
    late = measure_method("lora", profile, "cpu", concept, warmup=60, iterations=1, batch=2, sweep_batch=1,
                          latency_repeats=1)
    assert late["flops_cache_fill"] == 0, "after 60 warm-up iterations every photo is cached"
    assert early["flops_per_iteration"] == late["flops_per_iteration"] > 0
