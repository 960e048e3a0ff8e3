"""The `tiny` profile's stand-ins: every component built in code from small seeded configs.

Each one is saved in the real on-disk format of the model it stands for (a diffusers pipeline folder, the
IP-Adapter repository layout, timm safetensors files) so that `bench.models.loading` reads it back with exactly
the code that reads the real weights. Built once into the cache (atomically), then reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_VERSION = 3
"""Bump when a builder below changes: the cache folder name carries it, so stale builds are never reused."""

# Every scheduler here uses SD's training schedule; only the sampler and the prediction target differ.
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
CLIP_SPECIAL = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def tiny_root() -> Path:
    from bench.paths import cache_root

    return cache_root() / f"tiny-v{TINY_VERSION}"


def ensure_built() -> Path:
    """Build every tiny component into the cache unless it is already there; return the cache folder."""
    return build_once(tiny_root(), TINY_VERSION, _build_all)


def build_once(root: Path, version: int, build: Any) -> Path:
    """`build(folder)` into `root` once, atomically: built in a temporary folder beside it and renamed into place, so
    concurrent processes (gpus workers) build at most once each and never see half a folder; the global RNG the
    builders seed is restored afterwards. `root/BUILT` marks a finished build."""
    if (root / "BUILT").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-build-", dir=root.parent))
    import torch

    try:
        with torch.random.fork_rng(devices=[]):  # building seeds the global RNG; the caller's stream is kept
            build(tmp)
        (tmp / "BUILT").write_text(json.dumps({"version": version}))
        try:
            os.rename(tmp, root)  # atomic; fails if another process finished first, which is fine
        except OSError:
            if not (root / "BUILT").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_clip_tokenizer(out: Path, pad_token: str = "!") -> None:
    """The real CLIP BPE tokenizer (vocab.json + merges.txt) from the vocabulary open_clip ships.

    OpenAI's CLIP, OpenCLIP-H (SD 2.x) and SD 1.5 all use this vocabulary; SD 2.x pads with "!", SD 1.5 with
    "<|endoftext|>".
    """
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    vocab = {CLIP_SPECIAL.get(tok, tok): idx for tok, idx in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "pad_token": pad_token}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _build_all(root: Path) -> None:
    from bench.hub import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, TCDScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    def seeded(seed: int, build):
        torch.manual_seed(seed)
        return build()

    def text_encoder(width: int) -> CLIPTextModel:
        return CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=width, hidden_act="gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0))

    # Downsamples by 8 like SD's VAE: 64 px images, 8 x 8 latents (the UNets' sample_size).
    vae = seeded(1, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215))

    def save_pipeline(name: str, unet, scheduler, encoder, pad_token: str) -> None:
        tok_dir = root / "_tok" / name
        write_clip_tokenizer(tok_dir, pad_token)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(root / name, safe_serialization=True)
        # Keep the tokenizer in the files the real SD repositories ship (vocab.json + merges.txt).
        shutil.rmtree(root / name / "tokenizer")
        shutil.copytree(tok_dir, root / name / "tokenizer")

    # SD 2.x family: OpenCLIP-H text encoder (shared by SD-Turbo and SD 2.1), linear projections in attention.
    encoder = seeded(2, lambda: text_encoder(32))
    student_sched = EulerDiscreteScheduler(**_BETAS, prediction_type="epsilon", timestep_spacing="trailing",
                                           steps_offset=1)
    teacher_sched = DDIMScheduler(**_BETAS, prediction_type="v_prediction", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1)
    save_pipeline("sd-turbo", seeded(3, lambda: _unet(32, linear=True)), student_sched, encoder, "!")
    # SD 2.1 768-v samples at a larger native size than it trains at (12 x 12 latents = 96 px against the profile's
    # 64 px), like the real one (768 against 512), so `tiny` exercises the native-size sampling path.
    save_pipeline("sd21", seeded(4, lambda: _unet(32, linear=True, sample_size=12)), teacher_sched, encoder, "!")

    # SD 1.5 family (the hyper-sd15 backbone): CLIP-L-like text encoder, conv projections, epsilon target.
    encoder15 = seeded(5, lambda: text_encoder(24))
    sd15_sched = DDIMScheduler(**_BETAS, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                               steps_offset=1)
    save_pipeline("sd15", seeded(6, lambda: _unet(24, linear=False)), sd15_sched, encoder15, "<|endoftext|>")
    save_pipeline("hyper-sd15", seeded(7, lambda: _unet(24, linear=False)), TCDScheduler(**_BETAS, steps_offset=1),
                  encoder15, "<|endoftext|>")
    shutil.rmtree(root / "_tok")

    _save_ip_adapter(root / "ip-adapter")
    _save_timm(root / "dino1", "vit_small_patch16_224.dino", seed=10,
               img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    _save_timm(root / "dinov2", "vit_large_patch14_dinov2.lvd142m", seed=11,
               img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)


def _unet(cross_dim: int, linear: bool, sample_size: int = 8):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8, use_linear_projection=linear)


def _save_ip_adapter(out: Path) -> None:
    """The h94/IP-Adapter layout: a CLIP vision encoder folder and the projection in IP-Adapter's own keys."""
    import torch
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(8)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=32, hidden_act="gelu"))
    encoder.save_pretrained(out / "models" / "image_encoder", safe_serialization=True)
    torch.manual_seed(9)
    proj = ImageProjection(cross_attention_dim=16, image_embed_dim=32, num_image_text_embeds=4)
    state = {"image_proj.proj.weight": proj.image_embeds.weight, "image_proj.proj.bias": proj.image_embeds.bias,
             "image_proj.norm.weight": proj.norm.weight, "image_proj.norm.bias": proj.norm.bias}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, out / "models" / "ip-adapter_sd15.safetensors")


def _save_timm(out: Path, arch: str, seed: int, **kwargs) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
