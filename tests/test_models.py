"""Profiles, loading through the real formats, sampling determinism, and the paper profile's clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import BenchError
from bench.models import sampling
from bench.models.loading import Models
from bench.models.profiles import get_profile, parse_weights

REPO = Path(__file__).resolve().parents[1]


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
        tokenizer = root / pipe / "tokenizer"
        assert (tokenizer / "vocab.json").exists() and (tokenizer / "merges.txt").exists()
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
        _ = models.student_unet
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


# --- dino1 / dinov2 from a local folder: timm snapshots only -------------------------------------------------------


def _transformers_folder(folder, model_type: str, weights: bool):
    """A hand-made transformers-format ViT repository: config.json with a model_type, transformers' key names."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["Dinov2Model"],
                                                    "hidden_size": 32}))
    if weights:
        save_file({"embeddings.cls_token": torch.zeros(1, 1, 32),
                   "embeddings.patch_embeddings.projection.weight": torch.zeros(32, 3, 8, 8),
                   "encoder.layer.0.norm1.weight": torch.ones(32)}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("group, model_type, repo, weights", [
    ("dinov2", "dinov2", "timm/vit_large_patch14_dinov2.lvd142m", True),
    ("dino1", "vit", "timm/vit_small_patch16_224.dino", False),
])
def test_transformers_format_dino_folder_is_one_line_naming_the_timm_repo(group, model_type, repo, weights,
                                                                          tmp_path) -> None:
    folder = _transformers_folder(tmp_path / f"hf-{group}", model_type, weights)
    for name in ("paper", "tiny"):
        with pytest.raises(BenchError) as err:
            getattr(Models(get_profile(name, weights={group: str(folder)}), "cpu"), group)
        message = str(err.value)
        assert "\n" not in message
        assert f'"model_type": "{model_type}"' in message and "transformers-format" in message
        assert repo in message and f"--weights {group}=" in message and str(folder) in message


def test_timm_snapshot_with_a_config_still_loads(tmp_path) -> None:
    """A timm snapshot (model.safetensors with timm's key names, timm's config.json) is read as before."""
    from bench.models.tiny import ensure_built

    folder = tmp_path / "vit_small_patch16_224.dino"
    shutil.copytree(ensure_built() / "dino1", folder)
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 0}))
    dino = Models(get_profile("tiny", weights={"dino1": str(folder)}), "cpu").dino1
    assert dino(torch.zeros(1, 3, 32, 32)).shape == (1, 32)


def test_transformers_format_dino_via_the_cli_exits_2(tmp_path, monkeypatch, capsys) -> None:
    from tests.helpers import bench, mini_dreambench

    folder = _transformers_folder(tmp_path / "dinov2-large", "dinov2", weights=True)
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "echodistill", "--concepts", "dog", "--data",
                         mini_dreambench(tmp_path / "data"), "--results", tmp_path / "results",
                         "--weights", f"dinov2={folder}")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "timm/vit_large_patch14_dinov2.lvd142m" in err


# --- offline with an empty (or half-filled) hub cache: the harness's one line, nothing else -----------------------


def _offline_env(tmp_path, cache: str) -> dict:
    home = tmp_path / "hf-home"
    hub = home / "hub"
    hub.mkdir(parents=True)
    if cache == "refs-only":  # a download that never finished: huggingface_hub then logs "Could not reach the Hub"
        for repo in ("models--stabilityai--sd-turbo", "models--h94--IP-Adapter",
                     "models--timm--vit_small_patch16_224.dino"):
            (hub / repo / "refs").mkdir(parents=True)
            (hub / repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(hub),
            "PYTHONWARNINGS": "default"}


@pytest.mark.parametrize("cache", ["empty", "refs-only"])
def test_paper_run_offline_prints_only_the_harness_line(cache, tmp_path) -> None:
    """`bench run --profile paper` with nothing cached: exit 2 and exactly one stderr line (no library
    UserWarning, no "Could not reach the Hub")."""
    from tests.helpers import mini_dreambench

    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--method", "custom_diffusion", "--concepts",
                           "dog", "--profile", "paper", "--data", str(mini_dreambench(tmp_path / "data")),
                           "--results", str(tmp_path / "results")],
                          cwd=REPO, env=_offline_env(tmp_path, cache), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "student_unet" in lines[0] and "stabilityai/sd-turbo" in lines[0]


@pytest.mark.parametrize("cache", ["empty", "refs-only"])
def test_every_paper_loader_fails_quietly_offline(cache, tmp_path) -> None:
    """Each loading path (diffusers, transformers, a single hub file, timm) fails with the harness's one-line
    BenchError and writes nothing to stderr; the tokenizer is refused rather than built empty."""
    roles = ["student_unet", "student_scheduler", "student_tokenizer", "student_text_encoder", "clip_vision",
             "ip_proj", "dino1"]
    script = (
        "from bench.api import BenchError\n"
        "from bench.models.loading import Models\n"
        "from bench.models.profiles import get_profile\n"
        "models = Models(get_profile('paper'), 'cpu')\n"
        f"for role in {roles!r}:\n"
        "    try:\n"
        "        getattr(models, role)\n"
        "        print('loaded', role)\n"
        "    except BenchError as err:\n"
        "        print('error', role, len(str(err).splitlines()))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_offline_env(tmp_path, cache),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [f"error {role} 1" for role in roles]
