"""Metrics: the protocol on hand-made embeddings with known answers, then the tiny suite end to end, offline."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.api import BenchError
from bench.metrics import (
    aggregate,
    build_tiny_models,
    clip_t,
    ensure_tiny,
    get_suite,
    load_scorer,
    pairwise_max0,
    real_ceiling,
    real_vs_real,
    score_images,
    scoring,
)

R2 = math.sqrt(0.5)  # cos 45 degrees


def t(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- pure functions: known answers ------------------------------------------------------------------------


def test_clip_t_is_rowwise_cosine_not_clipped() -> None:
    img = t((1, 0), (0, 1), (1, 0))
    txt = t((2, 0), (0, -3), (1, 1))  # unnormalised on purpose
    assert torch.allclose(clip_t(img, txt), t(1.0, -1.0, R2).squeeze(0))


def test_pairwise_max0_known_answers() -> None:
    real = t((1, 0, 0), (3, 3, 0), (-1, 0, 0))  # cos with x: 1, 0.7071, -1 -> clipped to 0
    gen = t((2, 0, 0), (0, 0, 5))  # the second is orthogonal to every real image
    got = pairwise_max0(gen, real)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx((1 + R2 + 0) / 3, abs=1e-6)  # not (1 + R2 - 1) / 3
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)


def test_pairwise_max0_identical_is_one_and_negative_is_zero() -> None:
    real = t((0.3, -0.4), (0.3, -0.4))
    assert pairwise_max0(real[:1], real).item() == pytest.approx(1.0, abs=1e-6)
    assert pairwise_max0(-real[:1], real).item() == 0.0


def test_real_ceiling_excludes_self_pairs() -> None:
    real = t((1, 0), (0, 1), (2, 2))  # a-b 0, a-c 0.7071, b-c 0.7071
    got = real_ceiling(real)
    assert torch.allclose(got, t(R2 / 2, R2 / 2, R2).squeeze(0), atol=1e-6)  # with self: (1 + 0 + R2) / 3
    assert torch.equal(real_ceiling(t((1, 0), (-1, 0))), t(0.0, 0.0).squeeze(0))
    assert real_ceiling(t((1, 0))).isnan().all()


def _row(concept: str, seed: int, clip_t: float, clip_i: float, dino: float, n_real: int) -> dict:
    return {"concept": concept, "eval_seed": seed, "clip_t": clip_t, "clip_i": clip_i, "dino": dino, "n_real": n_real}


def test_aggregate_average_over_instances_and_pooled() -> None:
    rows = [  # subject a has 4 real images, b has 6; a has 2 images at seed 0 and 1 at seed 1, b the reverse
        _row("a", 0, 0.30, 0.8, 0.6, 4),
        _row("a", 0, 0.20, 0.6, 0.4, 4),
        _row("b", 0, 0.25, 0.5, 0.3, 6),
        _row("a", 1, 0.10, 0.7, 0.5, 4),
        _row("b", 1, 0.35, 0.4, 0.2, 6),
        _row("b", 1, 0.15, 0.2, 0.0, 6),
    ]
    out = aggregate(rows)
    # headline ("Average over Instances"): per seed and subject the mean, then over seeds, then over subjects.
    # CLIP-I: a = (0.7 + 0.7) / 2 = 0.7, b = (0.5 + 0.3) / 2 = 0.4 -> 0.55 (old pooled headline: 0.5071; old
    # per-subject plain image mean: (2.1/3 + 1.1/3) / 2 = 0.5333)
    assert out["clip_i"] == pytest.approx(0.55)
    assert out["dino"] == pytest.approx(((0.5 + 0.5) / 2 + (0.3 + 0.1) / 2) / 2)  # 0.35
    assert out["clip_t"] == pytest.approx(((0.25 + 0.10) / 2 + (0.25 + 0.25) / 2) / 2)  # 0.2125
    assert out["per_concept"]["b"] == pytest.approx({"clip_t": 0.25, "clip_i": 0.4, "dino": 0.2})
    assert out["per_concept"]["a"] == pytest.approx({"clip_t": 0.175, "clip_i": 0.7, "dino": 0.5})
    # pooled, the second figure: seed 0: (.8*4 + .6*4 + .5*6) / 14 = 8.6/14; seed 1: (.7*4 + .4*6 + .2*6) / 16
    assert out["clip_i_pooled"] == pytest.approx((8.6 / 14 + 0.4) / 2)
    assert out["dino_pooled"] == pytest.approx((5.8 / 14 + 3.2 / 16) / 2)
    assert out["clip_t_pooled"] == pytest.approx((0.75 / 3 + 0.60 / 3) / 2)  # plain mean over images per seed
    assert out["n_images"] == 6
    assert not any(k.endswith("_subject_mean") for k in out)  # now the headline itself


def test_aggregate_of_one_run_is_the_mean_over_eval_seeds_of_seed_means() -> None:
    """A run is one concept: its metric is the mean over eval seeds of each seed's mean, not the image mean."""
    rows = [_row("dog", 0, 0.2, 0.2, 0.2, 3), _row("dog", 0, 0.4, 0.4, 0.4, 3), _row("dog", 1, 0.9, 0.9, 0.9, 3)]
    out = aggregate(rows)
    for k in ("clip_t", "clip_i", "dino"):
        assert out[k] == pytest.approx((0.3 + 0.9) / 2)  # not 1.5 / 3
        assert out[f"{k}_pooled"] == pytest.approx(out[k])  # one concept: the two figures agree


def test_aggregate_reproduces_the_released_script_on_embeddings() -> None:
    """The released eval_dreambooth.py on hand-made embeddings: per seed and instance the mean of max(cos, 0)
    over every (generated, real) pair (CLIP-T: over its images), a seeds x instances table, its mean over seeds,
    then the mean over instances. Instances with 2 and 5 real images, so pooling over pairs would differ."""
    from bench.metrics import score_embedded

    gen_state = torch.Generator().manual_seed(0)
    n_real = {"a": 2, "b": 5}
    reals = {c: torch.randn(n, 6, generator=gen_state) for c, n in n_real.items()}
    rows, table = [], {}
    for seed in (0, 1, 2):
        for concept in ("a", "b"):
            gen = torch.randn(4, 6, generator=gen_state) + reals[concept][0]  # mostly positive cosines
            txt = torch.randn(4, 6, generator=gen_state)
            scored = score_embedded({"clip": gen, "dino": gen * 2}, txt, {"clip": reals[concept],
                                                                          "dino": reals[concept] * 3})
            rows += [{**r, "concept": concept, "eval_seed": seed} for r in scored]
            cos = torch.nn.functional.cosine_similarity(gen[:, None], reals[concept][None], dim=-1)
            table[seed, concept] = (clip_t(gen, txt).mean().item(), torch.maximum(cos, torch.zeros_like(cos))
                                    .flatten().mean().item())
    out = aggregate(rows)
    for k, i in (("clip_t", 0), ("clip_i", 1), ("dino", 1)):
        per_instance = [sum(table[s, c][i] for s in (0, 1, 2)) / 3 for c in ("a", "b")]
        assert out[k] == pytest.approx(sum(per_instance) / 2, abs=1e-6)
    pooled_clip_i = sum(
        sum(table[s, c][1] * 4 * n_real[c] for c in ("a", "b")) / (4 * sum(n_real.values())) for s in (0, 1, 2)) / 3
    assert out["clip_i_pooled"] == pytest.approx(pooled_clip_i, abs=1e-6)
    assert abs(out["clip_i"] - out["clip_i_pooled"]) > 1e-4  # the example tells the two apart


def test_aggregate_rejects_bad_rows() -> None:
    with pytest.raises(BenchError):
        aggregate([])
    with pytest.raises(BenchError, match="n_real"):
        aggregate([{"concept": "a", "eval_seed": 0, "clip_t": 0, "clip_i": 0, "dino": 0}])


# --- suites -------------------------------------------------------------------------------------------------


def test_unknown_suite_says_did_you_mean() -> None:
    with pytest.raises(BenchError, match=r"unknown metric suite 'papr' \(did you mean 'paper'\?\)"):
        get_suite("papr")


def test_env_overrides_and_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_WEIGHTS_METRIC_DINO", "/w/dinov2.safetensors")
    monkeypatch.delenv("BENCH_WEIGHTS_METRIC_CLIP", raising=False)
    suite = get_suite("paper")
    assert (suite.clip_pretrained, suite.dino_weights) == ("openai", "/w/dinov2.safetensors")
    info = get_suite("dreambooth").describe()
    assert info["clip_arch"] == "ViT-B-32" and info["dino_crop"] == 224 and info["timm_version"]
    assert info["version"] == 2 and info["cos_max0"] is False and info["image_size"] is None
    assert get_suite("tiny").dino_weights is None  # tiny is built, never overridden


def test_package_import_does_not_load_backbones() -> None:
    code = "import sys, bench.metrics; assert not {'open_clip', 'timm'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_paper_suite_offline_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants
    import open_clip  # noqa: F401  (imports take seconds; time the load attempt only)
    import timm  # noqa: F401

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached, for sure
    monkeypatch.delenv("BENCH_WEIGHTS_METRIC_CLIP", raising=False)
    start = time.perf_counter()
    with pytest.raises(BenchError) as err:
        load_scorer("paper")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg and "CLIP ViT-L-14-336" in msg and "tiny" in msg and "BENCH_WEIGHTS_METRIC_CLIP" in msg


def test_missing_local_dino_file_names_component() -> None:
    suite = replace(ensure_tiny(), name="mixed", builder=None, dino_weights="/nowhere/model.safetensors")
    with pytest.raises(BenchError, match=r"^metric suite 'mixed': cannot load DINO .*BENCH_WEIGHTS_METRIC_DINO"):
        load_scorer(suite)


# --- the tiny suite end to end ----------------------------------------------------------------------------


def _images(n: int, size: tuple[int, int] = (80, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny() -> scoring.Scorer:
    return load_scorer("tiny")


def test_tiny_embeddings_are_normalised(tiny: scoring.Scorer) -> None:
    emb = tiny.image_embeddings(_images(3))
    assert emb["clip"].shape == (3, 32) and emb["dino"].shape == (3, 32)
    for e in (*emb.values(), tiny.text_embeddings(["a dog", "a cat in the jungle"])):
        assert e.dtype == torch.float32 and e.device.type == "cpu"
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(e)), atol=1e-5)


def test_tiny_weights_survive_save_and_load(tiny: scoring.Scorer) -> None:
    clip, dino = build_tiny_models()
    for loaded, fresh in ((tiny.clip_model, clip), (tiny.dino_model, dino)):
        want, got = fresh.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)


def test_tiny_deterministic_across_loads(tiny: scoring.Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_scorer("tiny") is tiny  # cached per process
    monkeypatch.setattr(scoring, "_SCORERS", {})
    again = load_scorer("tiny")
    assert again is not tiny
    a, b = tiny.image_embeddings(_images(2)), again.image_embeddings(_images(2))
    assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["dino"], b["dino"])


def test_tiny_second_load_uses_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_tiny()
    files = [Path(first.clip_pretrained), Path(first.dino_weights)]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_rebuild() -> None:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr("bench.metrics.suites.build_tiny_models", no_rebuild)
    assert ensure_tiny() == first
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert Path(os.environ["BENCH_CACHE"]) in files[0].parents


def test_tiny_dino_embedding_is_cls_token(tiny: scoring.Scorer) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tiny.dino_model(x), tiny.dino_model.forward_features(x)[:, 0])


def test_tiny_image_against_itself_scores_one(tiny: scoring.Scorer) -> None:
    (im,) = _images(1)
    (row,) = score_images(tiny, [im], ["a dog"], [im])
    assert row["clip_i"] == pytest.approx(1.0, abs=1e-5) and row["dino"] == pytest.approx(1.0, abs=1e-5)
    assert row["n_real"] == 1 and -1 <= row["clip_t"] <= 1
    ceiling = real_vs_real(tiny, [im, im.copy()])
    assert ceiling["clip_i"] == pytest.approx(1.0, abs=1e-5) and (ceiling["n"], ceiling["n_pairs"]) == (2, 2)


def test_tiny_batched_equals_unbatched(tiny: scoring.Scorer) -> None:
    images = _images(5)
    one, all_ = tiny.image_embeddings(images, batch_size=1), tiny.image_embeddings(images, batch_size=64)
    for k in ("clip", "dino"):
        assert torch.allclose(one[k], all_[k], atol=1e-5)


def test_score_images_checks_lengths(tiny: scoring.Scorer) -> None:
    with pytest.raises(BenchError):
        score_images(tiny, _images(2), ["a dog"], _images(1))
    with pytest.raises(BenchError):
        score_images(tiny, _images(1), ["a dog"], [])
