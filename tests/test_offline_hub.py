"""Every role loads by hub id from an offline hub cache (HF_HUB_OFFLINE=1), sharded checkpoints included, and "not
in the local hub cache" is said only after the cache was looked at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "acme/sharded-unet"

SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path
from diffusers import UNet2DConditionModel
from bench.api import BenchError
from bench.models.component import Component, from_pretrained
from bench.models.loading import load_component
from bench.models.profiles import get_profile

repo, cache = sys.argv[1], Path(sys.argv[2])
unet = from_pretrained(UNet2DConditionModel, Component("unet", "student", repo, "unet"))
print("loaded", sum(p.numel() for p in unet.parameters()))
profile = get_profile("paper")

def role(source):  # as a run loads a role: the harness's loader and its one-line error
    comps = {**profile.components, "student_unet": replace(profile.components["student_unet"], source=source)}
    try:
        return type(load_component(replace(profile, components=comps), "student_unet", "cpu")).__name__
    except BenchError as err:
        return str(err)

print("role:", role(repo))
print("absent:", role("acme/absent-unet"))
next(cache.rglob("*.safetensors")).unlink()  # in the cache, but one shard is gone
print("broken:", role(repo))
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


def test_a_sharded_model_loads_by_hub_id_from_an_offline_cache(tmp_path):
    params = _cache_with_a_sharded_model(tmp_path / "hub")
    shards = sorted(p.name for p in (tmp_path / "hub").rglob("*.safetensors"))
    assert len(shards) >= 3 and any(p.name.endswith(".index.json") for p in (tmp_path / "hub").rglob("*"))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, REPO_ID, str(tmp_path / "hub")], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["loaded"] == str(params)
    assert lines["role:"] == "UNet2DConditionModel"  # through the harness's loader, by hub id, offline
    assert "not in the local hub cache" in lines["absent:"] and str(tmp_path / "hub") in lines["absent:"]
    broken = lines["broken:"]  # the cache was looked at: the real reason, not "not in the cache"
    assert "cannot load student_unet" in broken and "not in the local hub cache" not in broken
