"""The model roles of IP-Adapter with TCD: SDXL, the TCD LoRA, the SDXL IP-Adapter and its image encoder.

The TCD authors' IP-Adapter practice (`jabir-zheng/TCD`, README "Compatibility with IP-Adapter"): SDXL base 1.0
with `TCDScheduler` from its scheduler config, the TCD LoRA `h1t/TCD-SDXL-LoRA` fused into the UNet, and the
SDXL IP-Adapter of `h94/IP-Adapter` (`sdxl_models/ip-adapter_sdxl`, image encoder `sdxl_models/image_encoder`:
OpenCLIP ViT-bigG/14 vision with a 1280-d projection). Three profiles, one loading path:

- `paper`: those hub ids; `--weights sdxl=DIR` (a diffusers SDXL folder), `--weights tcd_lora=DIR_OR_FILE`,
  `--weights ip_adapter_sdxl=DIR` (a copy of h94/IP-Adapter holding `sdxl_models/`).
- `tiny`: small seeded stand-ins built here, saved in the same layouts (a `StableDiffusionXLPipeline` folder, the
  h94 layout with the IP-Adapter's own key names, a diffusers-format LoRA file), read back by the same loaders.
- `paper-random`: the full-size SDXL, text encoders and image encoder from `bench/models/configs/{sdxl,
  ip-adapter-sdxl}`; no LoRA file (random weights either way) and a random IP-Adapter in the real layout.

The roles are declared by the method (`IPAdapterTCD.model_roles = MODEL_ROLES`) and join its profile only
(`Profile.for_method`): other methods' records and hashes never see them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.models.component import Component, ModelRoles

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
TCD_LORA = "h1t/TCD-SDXL-LoRA"
IP_ADAPTER = "h94/IP-Adapter"
IP_ADAPTER_FILE = "sdxl_models/ip-adapter_sdxl.safetensors"
METHODS = ("ip_adapter_tcd",)
TINY_TCD_VERSION = 2
"""Bump when the tiny builder below changes (the cache folder carries it)."""
TINY_IP_GAIN = 8.0
"""Scale of the tiny IP-Adapter's image keys and values: at 1 (nn.Linear's scale) the random stand-in's photos
move its one-step latents by about 1% and its images by rounding only."""
TCD_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
"""The UNet modules diffusers' consistency-distillation LoRA scripts adapt (the tiny TCD LoRA uses them too)."""


def tcd_roles(tiny: bool) -> dict[str, Component]:
    """The roles of `ip_adapter_tcd` for the paper profiles or (`tiny`) the tiny one."""
    root = tiny_tcd_root() if tiny else None
    sdxl = str(root / "sdxl") if root else SDXL
    adapter = str(root / "ip-adapter") if root else IP_ADAPTER
    lora = str(root / "tcd-lora") if root else TCD_LORA

    def role(kind: str, group: str, source: str, subfolder: str | None = None, config: str | None = None,
             **kwargs: Any) -> Component:
        return Component(kind, group, source, subfolder, config=config, methods=METHODS, **kwargs)

    return {
        "sdxl_unet": role("unet", "sdxl", sdxl, "unet", "sdxl/unet"),
        "sdxl_vae": role("vae", "sdxl", sdxl, "vae", "sdxl/vae"),
        "sdxl_text_encoder": role("text_encoder", "sdxl", sdxl, "text_encoder", "sdxl/text_encoder"),
        "sdxl_text_encoder_2": role("clip_text_proj", "sdxl", sdxl, "text_encoder_2", "sdxl/text_encoder_2"),
        "sdxl_tokenizer": role("sdxl_tokenizer", "sdxl", sdxl, "tokenizer", options={"pad_token": "<|endoftext|>"}),
        "sdxl_tokenizer_2": role("sdxl_tokenizer", "sdxl", sdxl, "tokenizer_2", options={"pad_token": "!"}),
        # TCD's practice: TCDScheduler built from SDXL's own scheduler config.
        "sdxl_scheduler": role("scheduler", "sdxl", sdxl, "scheduler", "sdxl/scheduler",
                               options={"_class_name": "TCDScheduler"}),
        "tcd_lora": role("lora", "tcd_lora", lora, file="pytorch_lora_weights.safetensors"),
        "ip_adapter_sdxl": role("ip_adapter", "ip_adapter_sdxl", adapter, file=IP_ADAPTER_FILE),
        "sdxl_image_encoder": role("clip_vision", "ip_adapter_sdxl", adapter, "sdxl_models/image_encoder",
                                   "ip-adapter-sdxl/image_encoder"),
    }


# --- loaders of the kinds these roles add -------------------------------------------------------------------


def _clip_text_proj(comp: Component, random_init: bool) -> Any:
    """SDXL's second text encoder (OpenCLIP ViT-bigG/14 text with its projection)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from bench.models.component import CONFIGS, from_pretrained

    if random_init:
        return CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(CONFIGS / comp.config))
    return from_pretrained(CLIPTextModelWithProjection, comp)


def _sdxl_tokenizer(comp: Component, random_init: bool) -> Any:
    """The CLIP BPE tokenizer; SDXL's first pads with <|endoftext|>, its second with "!"."""
    from transformers import CLIPTokenizer

    from bench.models.component import pretrained_tokenizer

    if not random_init:
        return pretrained_tokenizer(comp)
    from bench.models.tiny import write_clip_tokenizer

    pad = comp.options["pad_token"]
    out = tiny_tcd_root().parent / f"clip-tokenizer-{'eos' if pad != '!' else 'bang'}"
    if not (out / "merges.txt").exists():
        write_clip_tokenizer(out, pad)
    return CLIPTokenizer.from_pretrained(out)


def _ip_adapter(comp: Component, random_init: bool) -> Path | None:
    """The IP-Adapter weights file (applied by the method through diffusers' `load_ip_adapter`); None on
    paper-random, where the method builds a random one in the same layout (`ip_adapter_state`)."""
    if random_init:
        return None
    from safetensors import safe_open

    from bench.models.component import hub_file

    path = hub_file(comp)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if not any(k.startswith("image_proj.") for k in keys) or not any(k.startswith("ip_adapter.") for k in keys):
        raise ValueError(f"{path} is not an IP-Adapter weights file (no image_proj.* / ip_adapter.* tensors)")
    return path


LOADERS = {"clip_text_proj": _clip_text_proj, "sdxl_tokenizer": _sdxl_tokenizer, "ip_adapter": _ip_adapter}
"""Loader functions of the kinds above, merged into `bench.models.loading`'s table."""


# --- the IP-Adapter's weights layout -------------------------------------------------------------------------


def ip_adapter_state(unet: Any, image_embed_dim: int, seed: int, gain: float = 1.0) -> dict[str, Any]:
    """Seeded random IP-Adapter weights for `unet` in h94's layout (`image_proj.proj/norm` and
    `ip_adapter.<k>.to_k_ip/to_v_ip`, k = 1, 3, 5, ... over the cross-attention layers in `attn_processors`
    order, as the adapter numbers them), as `{name: tensor}`. `gain` scales the image keys and values (the tiny
    stand-in uses a large one, so that its photos visibly steer its images)."""
    import torch
    from diffusers.models.embeddings import ImageProjection

    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim, num_image_text_embeds=4)
    state = {"image_proj.proj.weight": proj.image_embeds.weight, "image_proj.proj.bias": proj.image_embeds.bias,
             "image_proj.norm.weight": proj.norm.weight, "image_proj.norm.bias": proj.norm.bias}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        inner = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):  # nn.Linear's default scale, 1 / sqrt(fan_in)
            weight = gain * (torch.rand(inner, cross, generator=generator) * 2 - 1) / cross ** 0.5
            state[f"ip_adapter.{key}.{part}.weight"] = weight
        key += 2
    return {k: v.detach().contiguous().float() for k, v in state.items()}


def nested_ip_state(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`ip_adapter_state`'s flat names as the nested dict `load_ip_adapter` takes in place of a file."""
    out: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in flat.items():
        head, _, rest = name.partition(".")
        out[head][rest] = tensor
    return out


# --- tiny stand-ins ------------------------------------------------------------------------------------------


def tiny_tcd_root() -> Path:
    from bench.paths import cache_root

    return cache_root() / f"tiny-tcd-v{TINY_TCD_VERSION}"


def ensure_tiny() -> Path:
    """Build the tiny SDXL, TCD LoRA and IP-Adapter into the cache unless there; return their folder."""
    from bench.models.tiny import build_once

    return build_once(tiny_tcd_root(), TINY_TCD_VERSION, _build_tiny)


def tiny_sdxl_unet() -> Any:
    """An SDXL-shaped UNet in miniature: text-time added conditioning, linear projections, a cross-attention
    width equal to the two text encoders' widths together (16 + 32), 8 x 8 latents (64 px)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=48, norm_num_groups=8)


def _build_tiny(root: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
    )
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from bench.hub import quiet_libraries
    from bench.models.tiny import write_clip_tokenizer

    quiet_libraries()

    def text_config(width: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
                              num_hidden_layers=2, max_position_embeddings=77, projection_dim=width, hidden_act=act,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

    torch.manual_seed(20)
    encoder = CLIPTextModel(text_config(16, "quick_gelu"))  # CLIP ViT-L/14 text, as SDXL's first
    torch.manual_seed(21)
    encoder_2 = CLIPTextModelWithProjection(text_config(32, "gelu"))  # OpenCLIP bigG text, as SDXL's second
    torch.manual_seed(22)
    unet = tiny_sdxl_unet()
    torch.manual_seed(23)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64,
                        scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading", interpolation_type="linear")
    toks = {}
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        write_clip_tokenizer(root / "_tok" / name, pad)
        toks[name] = CLIPTokenizer.from_pretrained(root / "_tok" / name)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2,
                                     tokenizer=toks["tokenizer"], tokenizer_2=toks["tokenizer_2"], unet=unet,
                                     scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(root / "sdxl", safe_serialization=True)
    for name in toks:  # the files the real repository ships (vocab.json + merges.txt)
        shutil.rmtree(root / "sdxl" / name)
        shutil.copytree(root / "_tok" / name, root / "sdxl" / name)
    shutil.rmtree(root / "_tok")

    # h94/IP-Adapter's layout: sdxl_models/image_encoder/ and sdxl_models/ip-adapter_sdxl.safetensors.
    torch.manual_seed(24)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=32, hidden_act="gelu"))
    vision.save_pretrained(root / "ip-adapter" / "sdxl_models" / "image_encoder", safe_serialization=True)
    save_file(ip_adapter_state(unet, 32, seed=25, gain=TINY_IP_GAIN), root / "ip-adapter" / IP_ADAPTER_FILE)

    # The TCD LoRA in diffusers' LoRA format (`save_lora_weights`: `unet.<module>.lora_A/B.weight`), small updates.
    _save_tiny_lora(unet, root / "tcd-lora")


def _save_tiny_lora(unet: Any, out: Path) -> None:
    import copy

    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(26)
    model = copy.deepcopy(unet)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=list(TCD_LORA_TARGETS)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # gaussian init leaves B = 0: give the tiny LoRA a small, visible effect
                param.normal_(0.0, 0.05)
    layers = get_peft_model_state_dict(model)  # peft's names (`lora_A` / `lora_B`), as diffusers saves today
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)


# --- the declaration ------------------------------------------------------------------------------------------


def roles(profile: str) -> dict[str, Component]:
    """SDXL, the TCD LoRA and the SDXL IP-Adapter with its image encoder for `profile` (hub ids, or on `tiny` the
    built stand-ins)."""
    return tcd_roles(tiny=profile == "tiny")


MODEL_ROLES = ModelRoles(roles, LOADERS, ensure_tiny)
"""What `IPAdapterTCD.model_roles` declares."""
