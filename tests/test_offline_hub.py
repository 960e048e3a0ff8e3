"""Every role loads by hub id from an offline hub cache (HF_HUB_OFFLINE=1), sharded checkpoints included, and "not
in the local hub cache" is said only after the cache was looked at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "acme/sharded-unet"

LOAD = """
import sys
from diffusers import UNet2DConditionModel
from bench.models.component import Component, from_pretrained
unet = from_pretrained(UNet2DConditionModel, Component("unet", "student", sys.argv[1], "unet"))
print("loaded", sum(p.numel() for p in unet.parameters()))
"""
ROLE = """
import sys
from dataclasses import replace
from bench.models.loading import load_component
from bench.models.profiles import get_profile
profile = get_profile("paper")
profile = replace(profile, components={**profile.components, "student_unet": replace(
    profile.components["student_unet"], source=sys.argv[1])})
print("role", type(load_component(profile, "student_unet", "cpu")).__name__)
"""


def _cache_with_a_sharded_model(hub: Path) -> int:
    """`hub` laid out as huggingface_hub's cache holding REPO_ID with its UNet split into several shard files."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    unet.save_pretrained(snapshot / "unet", max_shard_size="200KB")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return sum(p.numel() for p in unet.parameters())


def _load(hub: Path, repo_id: str, script: str = LOAD) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script, repo_id], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_a_sharded_model_loads_by_hub_id_from_an_offline_cache(tmp_path):
    params = _cache_with_a_sharded_model(tmp_path / "hub")
    shards = sorted(p.name for p in (tmp_path / "hub").rglob("*.safetensors"))
    assert len(shards) >= 3 and any(p.name.endswith(".index.json") for p in (tmp_path / "hub").rglob("*"))
    done = _load(tmp_path / "hub", REPO_ID)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"loaded {params}" in done.stdout
    role = _load(tmp_path / "hub", REPO_ID, ROLE)  # through the harness's loader, as a run loads a role
    assert role.returncode == 0 and "role UNet2DConditionModel" in role.stdout, role.stderr[-2000:]


def test_not_in_the_cache_is_said_only_after_looking(tmp_path):
    _cache_with_a_sharded_model(tmp_path / "hub")
    absent = _load(tmp_path / "hub", "acme/absent-unet", ROLE)
    assert "not in the local hub cache" in absent.stderr and str(tmp_path / "hub") in absent.stderr
    snapshots = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots"
    json.loads(next(snapshots.rglob("*.index.json")).read_text())
    next(p for p in snapshots.rglob("*.safetensors")).unlink()  # in the cache, but a shard is gone
    present = _load(tmp_path / "hub", REPO_ID, ROLE)
    assert present.returncode != 0 and "not in the local hub cache" not in present.stderr
    assert "cannot load student_unet" in present.stderr
