"""The `paper-random` profile: full-size architectures from the configs shipped in bench/models/configs.

Fast tier: every model is built on the `meta` device (shapes only, no memory, no weights), so the real
parameter counts are checked in seconds. Schedulers hold no parameters and are built normally (their
constructors copy tensors to the CPU, which a meta tensor cannot do).

Expected parameter counts (all reproduced here from first principles or by the identity noted):
- SD 2.1 / SD-Turbo UNet 865,910,724 = SD 1.5's 859,520,964 + the wider cross-attention keys/values:
  (1024 - 768) x 2 (k, v) x (5 x 320 + 5 x 640 + 6 x 1280) = 6,389,760.
- SD 1.5 UNet 859,520,964 and SD VAE 83,653,863: the counts of the released checkpoints.
- CLIP ViT-L/14 text (SD 1.5) 123,060,480 = embeddings (49408 + 77) x 768 + 12 x 7,087,872 + final LN 1,536.
- OpenCLIP ViT-H/14 text, 23 layers (SD 2.x, SD-Turbo) 340,387,840
  = (49408 + 77) x 1024 + 23 x 12,596,224 + final LN 2,048.
- OpenCLIP ViT-H/14 vision + projection (IP-Adapter models/image_encoder) 632,076,800
  = patch 3x14x14x1280 + class 1280 + positions 257x1280 + pre-LN 2,560 + 32 x 19,677,440 + post-LN 2,560
  + projection 1280x1024.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from bench.models.loading import CONFIGS, load_component
from bench.models.profiles import get_profile

UNET_SD2 = 865_910_724
UNET_SD15 = 859_520_964
VAE = 83_653_863
TEXT_OPENCLIP_H = 340_387_840
TEXT_CLIP_L = 123_060_480
VISION_VIT_H = 632_076_800


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build(kind: str, folder: str):
    """Build one component straight from its shipped config, on the meta device."""
    path = CONFIGS / folder
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path))
    if kind == "vae":
        from diffusers import AutoencoderKL

        with torch.device("meta"):
            return AutoencoderKL.from_config(AutoencoderKL.load_config(path))
    if kind == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.device("meta"):
            return CLIPTextModel(CLIPTextConfig.from_pretrained(path))
    if kind == "clip_vision":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        with torch.device("meta"):
            return CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(path))
    raise AssertionError(kind)


def _scheduler(folder: str):
    import diffusers

    config = diffusers.DDIMScheduler.load_config(CONFIGS / folder)
    return getattr(diffusers, config["_class_name"]).from_config(config)


# --- the files ----------------------------------------------------------------------------------------------

CONFIG_FILES = {
    "sd-turbo/unet": "config.json", "sd-turbo/vae": "config.json", "sd-turbo/text_encoder": "config.json",
    "sd-turbo/scheduler": "scheduler_config.json",
    "sd21/unet": "config.json", "sd21/vae": "config.json", "sd21/text_encoder": "config.json",
    "sd21/scheduler": "scheduler_config.json",
    "sd15/unet": "config.json", "sd15/vae": "config.json", "sd15/text_encoder": "config.json",
    "sd15/scheduler": "scheduler_config.json",
    "ip-adapter/image_encoder": "config.json",
    # IP-Adapter (TCD)'s roles: tests/test_ip_adapter_tcd.py checks their parameter counts
    "sdxl/unet": "config.json", "sdxl/vae": "config.json", "sdxl/text_encoder": "config.json",
    "sdxl/text_encoder_2": "config.json", "sdxl/scheduler": "scheduler_config.json",
    "ip-adapter-sdxl/image_encoder": "config.json",
    # OminiControl's FLUX.1 roles: tests/test_ominicontrol.py checks their parameter counts
    "flux-schnell/transformer": "config.json", "flux-schnell/vae": "config.json",
    "flux-schnell/text_encoder": "config.json", "flux-schnell/text_encoder_2": "config.json",
    "flux-schnell/scheduler": "scheduler_config.json",
}


@pytest.mark.parametrize(("folder", "name"), sorted(CONFIG_FILES.items()))
def test_config_file_is_valid_json(folder: str, name: str) -> None:
    data = json.loads((CONFIGS / folder / name).read_text())
    assert isinstance(data, dict) and data


@pytest.mark.parametrize("backbone", ["sd-turbo", "hyper-sd15"])
def test_every_profile_config_is_shipped(backbone: str) -> None:
    from bench.models.profiles import declared_roles

    profile = get_profile("paper-random", backbone)
    assert profile.random_init
    declared = declared_roles("paper-random")
    roles = [*profile.components.values(), *(c for own in declared.values() for c in own.values())]
    folders = {c.config for c in roles if c.config}
    assert {"sdxl/unet", "flux-schnell/transformer"} <= folders  # IP-Adapter TCD's and OminiControl's own roles
    assert folders <= set(CONFIG_FILES)
    for folder in folders:
        assert (CONFIGS / folder / CONFIG_FILES[folder]).is_file(), folder


# --- parameter counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "folder", "expected"),
    [
        ("unet", "sd-turbo/unet", UNET_SD2),
        ("unet", "sd21/unet", UNET_SD2),
        ("unet", "sd15/unet", UNET_SD15),
        ("vae", "sd-turbo/vae", VAE),
        ("vae", "sd21/vae", VAE),
        ("vae", "sd15/vae", VAE),
        ("text_encoder", "sd-turbo/text_encoder", TEXT_OPENCLIP_H),
        ("text_encoder", "sd21/text_encoder", TEXT_OPENCLIP_H),
        ("text_encoder", "sd15/text_encoder", TEXT_CLIP_L),
        ("clip_vision", "ip-adapter/image_encoder", VISION_VIT_H),
    ],
)
def test_parameter_count_matches_released_model(kind: str, folder: str, expected: int) -> None:
    model = _build(kind, folder)
    assert next(model.parameters()).device.type == "meta"
    assert _count(model) == expected


def test_sd_turbo_and_sd21_unets_have_identical_weights_layout() -> None:
    """SD-Turbo is distilled from SD 2.1: same tensors, only sample_size and attention upcasting differ."""
    turbo, sd21 = _build("unet", "sd-turbo/unet"), _build("unet", "sd21/unet")
    assert {k: v.shape for k, v in turbo.state_dict().items()} == {k: v.shape for k, v in sd21.state_dict().items()}


# --- key config fields --------------------------------------------------------------------------------------


def _json(folder: str) -> dict:
    return json.loads((CONFIGS / folder / CONFIG_FILES[folder]).read_text())


@pytest.mark.parametrize(
    ("folder", "sample_size", "upcast"),
    [("sd-turbo/unet", 64, None), ("sd21/unet", 96, True)],
)
def test_sd2_unet_fields(folder: str, sample_size: int, upcast: bool | None) -> None:
    cfg = _json(folder)
    assert cfg["_class_name"] == "UNet2DConditionModel"
    assert cfg["sample_size"] == sample_size
    assert cfg["cross_attention_dim"] == 1024
    assert cfg["attention_head_dim"] == [5, 10, 20, 20]
    assert cfg["use_linear_projection"] is True
    assert cfg["upcast_attention"] is upcast
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["in_channels"] == cfg["out_channels"] == 4


def test_sd15_unet_fields() -> None:
    cfg = _json("sd15/unet")
    assert cfg["sample_size"] == 64
    assert cfg["cross_attention_dim"] == 768
    assert cfg["attention_head_dim"] == 8
    assert cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg.get("use_linear_projection", False) is False  # 1x1 conv projections in the transformer blocks
    model = _build("unet", "sd15/unet")
    assert isinstance(model.down_blocks[0].attentions[0].proj_in, torch.nn.Conv2d)


@pytest.mark.parametrize("folder", ["sd-turbo/vae", "sd21/vae", "sd15/vae"])
def test_vae_fields(folder: str) -> None:
    from diffusers import AutoencoderKL

    cfg = AutoencoderKL.load_config(CONFIGS / folder)
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["latent_channels"] == 4
    assert cfg["layers_per_block"] == 2
    assert cfg.get("scaling_factor", 0.18215) == 0.18215


@pytest.mark.parametrize(
    ("folder", "hidden", "layers", "heads", "inter", "act", "proj"),
    [
        ("sd-turbo/text_encoder", 1024, 23, 16, 4096, "gelu", 512),
        ("sd21/text_encoder", 1024, 23, 16, 4096, "gelu", 512),
        ("sd15/text_encoder", 768, 12, 12, 3072, "quick_gelu", 768),
    ],
)
def test_text_encoder_fields(folder, hidden, layers, heads, inter, act, proj) -> None:
    from transformers import CLIPTextConfig

    cfg = CLIPTextConfig.from_pretrained(CONFIGS / folder)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (hidden, layers, heads)
    assert (cfg.intermediate_size, cfg.hidden_act, cfg.projection_dim) == (inter, act, proj)
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (49408, 77)


def test_image_encoder_fields() -> None:
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig.from_pretrained(CONFIGS / "ip-adapter/image_encoder")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1280, 32, 16)
    assert (cfg.intermediate_size, cfg.hidden_act) == (5120, "gelu")
    assert (cfg.patch_size, cfg.image_size, cfg.projection_dim) == (14, 224, 1024)
    # The IP-Adapter SD1.5 projection takes these 1024-d image embeddings (profiles: image_embed_dim 1024).
    assert get_profile("paper-random", "hyper-sd15").components["ip_proj"].options["image_embed_dim"] == 1024


# --- schedulers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "cls", "prediction", "spacing"),
    [
        ("sd-turbo/scheduler", "EulerDiscreteScheduler", "epsilon", "trailing"),
        ("sd21/scheduler", "DDIMScheduler", "v_prediction", "leading"),
        ("sd15/scheduler", "PNDMScheduler", "epsilon", "leading"),
    ],
)
def test_scheduler_class_and_prediction(folder: str, cls: str, prediction: str, spacing: str) -> None:
    sched = _scheduler(folder)
    assert type(sched).__name__ == cls
    assert sched.config.prediction_type == prediction
    assert sched.config.timestep_spacing == spacing
    assert sched.config.num_train_timesteps == 1000
    assert (sched.config.beta_schedule, sched.config.beta_start, sched.config.beta_end) == (
        "scaled_linear", 0.00085, 0.012)
    assert sched.config.steps_offset == 1


def test_sd_turbo_one_step_starts_at_the_last_timestep() -> None:
    sched = _scheduler("sd-turbo/scheduler")
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [999]


# --- the profile's own loader -------------------------------------------------------------------------------

EXPECTED_ROLES = {
    "sd-turbo": {
        "student_unet": ("UNet2DConditionModel", UNET_SD2), "teacher_unet": ("UNet2DConditionModel", UNET_SD2),
        "student_text_encoder": ("CLIPTextModel", TEXT_OPENCLIP_H),
        "teacher_text_encoder": ("CLIPTextModel", TEXT_OPENCLIP_H),
        "vae": ("AutoencoderKL", VAE), "clip_vision": ("CLIPVisionModelWithProjection", VISION_VIT_H),
        "student_scheduler": ("EulerDiscreteScheduler", "epsilon"),
        "teacher_scheduler": ("DDIMScheduler", "v_prediction"),
    },
    "hyper-sd15": {
        "student_unet": ("UNet2DConditionModel", UNET_SD15), "teacher_unet": ("UNet2DConditionModel", UNET_SD15),
        "student_text_encoder": ("CLIPTextModel", TEXT_CLIP_L), "teacher_text_encoder": ("CLIPTextModel", TEXT_CLIP_L),
        "vae": ("AutoencoderKL", VAE), "clip_vision": ("CLIPVisionModelWithProjection", VISION_VIT_H),
        "student_scheduler": ("TCDScheduler", "epsilon"),  # the profile's override of the SD 1.5 config's class
        "teacher_scheduler": ("PNDMScheduler", "epsilon"),
    },
}


@pytest.mark.parametrize("backbone", sorted(EXPECTED_ROLES))
def test_load_component_builds_every_config_backed_role_on_meta(backbone: str) -> None:
    profile = get_profile("paper-random", backbone)
    roles = {role for role, c in profile.components.items() if c.config and not c.methods}  # the shared roles
    assert roles == set(EXPECTED_ROLES[backbone])
    for role in sorted(roles):
        cls, expected = EXPECTED_ROLES[backbone][role]
        is_scheduler = profile.components[role].kind == "scheduler"
        with contextlib.nullcontext() if is_scheduler else torch.device("meta"):
            obj = load_component(profile, role, "meta")
        assert type(obj).__name__ == cls, role
        if is_scheduler:
            assert obj.config.prediction_type == expected, role
        else:
            assert next(obj.parameters()).device.type == "meta", role
            assert not any(p.requires_grad for p in obj.parameters()), role
            assert not obj.training, role
            assert _count(obj) == expected, role
