"""Profiles, loading through the real formats, sampling determinism, and the paper profile's clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.api import BenchError
from bench.models import sampling
from bench.models.loading import Models
from bench.models.profiles import get_profile, parse_weights


@pytest.fixture(scope="module")
def tiny() -> Models:
    return Models(get_profile("tiny"), "cpu")


def test_tiny_components_are_saved_in_real_formats(tiny) -> None:
    from bench.models.tiny import ensure_built

    root = ensure_built()
    for pipe in ("sd-turbo", "sd21", "sd15", "hyper-sd15"):
        index = json.loads((root / pipe / "model_index.json").read_text())
        assert index["_class_name"] == "StableDiffusionPipeline"
        assert (root / pipe / "unet" / "diffusion_pytorch_model.safetensors").exists()
        assert (root / pipe / "tokenizer" / "vocab.json").exists() and (root / pipe / "tokenizer" / "merges.txt").exists()
    assert (root / "ip-adapter" / "models" / "ip-adapter_sd15.safetensors").exists()
    assert not list(root.rglob("*.bin")), "safetensors only"


def test_roles_load_frozen_and_fresh(tiny) -> None:
    unet = tiny.student_unet
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training
    assert tiny.student_scheduler.config.prediction_type == "epsilon"
    assert tiny.teacher_scheduler.config.prediction_type == "v_prediction"
    other = Models(get_profile("tiny"), "cpu")
    with torch.no_grad():
        unet.conv_in.weight.add_(1.0)  # one run's changes never reach another run's copy
    assert not torch.equal(other.student_unet.conv_in.weight, unet.conv_in.weight)
    assert tiny.latent_size == 8 and tiny.resolution == 64  # an 8x VAE, as SD's
    feats = tiny.dino1(torch.zeros(1, 3, 32, 32))
    assert feats.shape == (1, 32)
    assert tiny.ip_proj(tiny.clip_vision(pixel_values=torch.zeros(1, 3, 32, 32)).image_embeds).shape == (1, 4, 16)


def test_real_clip_tokenizer(tiny) -> None:
    ids = tiny.student_tokenizer("a photo of a corgi dog").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 31320, 1929, 49407]  # OpenAI CLIP's BPE ids
    assert tiny.student_tokenizer.model_max_length == 77


def test_student_timesteps(tiny) -> None:
    for steps, expected in sampling.STUDENT_TIMESTEPS.items():
        assert tuple(sampling.timesteps_for(tiny.student_scheduler, steps)) == expected
    assert len(sampling.timesteps_for(tiny.teacher_scheduler, 25)) == 25


def _student(tiny, prompts, seeds, steps=1, batch_size=16):
    return sampling.generate(tiny.student_unet, tiny.student_scheduler, tiny.vae, tiny.student_tokenizer,
                             tiny.student_text_encoder, prompts, seeds, steps, tiny.latent_size, batch_size=batch_size)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_sampling_is_seeded(tiny, steps) -> None:
    prompts = ["a dog in the snow", "a teapot", "a dog in the snow"]
    first = _student(tiny, prompts, [0, 0, 1], steps)
    repeat = _student(tiny, prompts, [0, 0, 1], steps)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, repeat)), "bit-identical repeat"
    # Another batch composition changes only float summation order in the batched kernels: at most 1/255.
    second = _student(tiny, prompts[::-1], [1, 0, 0], steps, batch_size=1)
    for a, b in ((first[0], second[2]), (first[2], second[0])):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1
    assert np.abs(np.asarray(first[0]).astype(int) - np.asarray(first[2]).astype(int)).max() > 10, "another seed"


def test_teacher_sampling_uses_cfg(tiny) -> None:
    args = (tiny.teacher_unet, tiny.teacher_scheduler, tiny.vae, tiny.teacher_tokenizer, tiny.teacher_text_encoder,
            ["a dog"], [0], 25, tiny.latent_size)
    guided, again, unguided = (sampling.generate(*args, guidance=7.5)[0], sampling.generate(*args, guidance=7.5)[0],
                               sampling.generate(*args, guidance=0.0)[0])
    assert np.array_equal(np.asarray(guided), np.asarray(again))
    assert not np.array_equal(np.asarray(guided), np.asarray(unguided))


def test_paper_profile_without_weights_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    models = Models(get_profile("paper"), "cpu")
    with pytest.raises(BenchError) as err:
        models.student_unet
    message = str(err.value)
    assert "\n" not in message
    assert "student_unet" in message and "stabilityai/sd-turbo" in message
    assert "--profile tiny" in message and "--weights student=" in message


def test_paper_profile_local_path_override(tmp_path) -> None:
    """A local snapshot given with --weights is read from disk by the same loader (here: the tiny student)."""
    from bench.models.tiny import ensure_built

    local = ensure_built() / "sd-turbo"
    profile = get_profile("paper", weights={"student": str(local)})
    assert profile.components["student_unet"].source == str(local)
    unet = Models(profile, "cpu").student_unet
    assert unet.config.cross_attention_dim == 32
    with pytest.raises(BenchError, match="did you mean 'teacher'"):
        get_profile("paper", weights={"teachr": "/x"})
    assert parse_weights(["student=/a,teacher=/b", "dino1=/c"]) == {"student": "/a", "teacher": "/b", "dino1": "/c"}
    with pytest.raises(BenchError, match="GROUP=PATH"):
        parse_weights("student")
