"""OminiControl (Tan et al., 2024) on FLUX.1-schnell, one step: subject-driven generation without training.

The reference photo conditions the Flux transformer directly. It is VAE-encoded, packed into 2 x 2 patch tokens
like the image being generated, and appended to the sequence (text, image, condition) of every block, where all
tokens attend to all. The condition tokens get their own modulation, at timestep 0 (guidance 1 where the
transformer has a guidance input), and rotary positions shifted by `position_delta` (0, 32): the photo sits
beside the image, 32 tokens to the right at 512 px. OminiControl's subject LoRA (`Yuanshi/OminiControl`,
`omini/subject_512.safetensors`, rank 16 on the patch embedder and every block's modulation, attention and MLP
layers) acts on the condition tokens only: text and image tokens go through the frozen FLUX.1 layers. This is
the released `omini/pipeline/flux_omini.py` (`Condition(image, "subject", position_delta=(0, 32))`), which the
README pairs with FLUX.1-schnell at 512 x 512.

The LoRA loads through diffusers' own `FluxPipeline.load_lora_weights` into a peft adapter named "subject"; the
joint forward below calls each adapted layer with its adapter for condition tokens and its `base_layer` for the
others. `save` writes the adapter in diffusers' LoRA format (`pytorch_lora_weights.safetensors`) and the
condition tokens (`conditioning.safetensors`), so `load` rebuilds the model without the concept's photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from baselines import flux_models
from bench.api import Concept, Models
from bench.config import SAMPLING_ONLY, SAMPLING_STEPS
from bench.models.component import ModelRoles

CONDITIONING = ("first", "each")
"""Which reference photo conditions an image: "first" (the concept's first photo, by file name) or "each" (the
photos in turn: the image with noise seed s takes photo s mod n, so a (prompt, seed) pair always has the same)."""
ADAPTER = "subject"
LORA_FILE = "pytorch_lora_weights.safetensors"
CONDITION_FILE = "conditioning.safetensors"


@dataclass(frozen=True)
class OminiControlConfig:
    conditioning: str = "first"
    """Which reference photo(s) condition the model: "first" (default; the paper does not say, and OminiControl
    takes one photo) or "each" (every photo in turn across the evaluation images). "mean" is refused: the
    condition is the photo's VAE tokens, and an average of two photos' latents is a blend of both, not the subject."""
    lora_file: str = "omini/subject_512.safetensors"
    """The subject LoRA of `Yuanshi/OminiControl`: "omini/subject_512.safetensors" (default: the current release,
    which the repository's subject example loads; "fine-tuned on a larger dataset") or
    "experimental/subject.safetensors" (the README: "the model used in the paper"; variant `paper_lora`, with its
    position shift (0, -32)). Both are read from the `--weights omini=` source."""
    position_delta: tuple[int, int] | None = None
    """(row, column) shift of the condition tokens' rotary positions; None = (0, width in tokens), the released
    (0, 32) of `omini/subject_512` at 512 px (the paper's earlier `experimental/subject` LoRA used (0, -32))."""
    lora_scale: float = 1.0
    """Scale of the subject LoRA on the condition tokens (released: 1); 0 leaves only the frozen FLUX.1 layers."""
    condition_timestep: float = 0.0
    """The timestep (0 clean .. 1 noise) of the condition tokens' modulation; released: 0, a clean image."""
    eval_phrase: str = field(default="{class_noun}", metadata=SAMPLING_ONLY)
    """What stands for the concept in evaluation prompts ("a dog in the jungle"): a format of `class_noun` (and
    `identifier`, empty here). OminiControl's README suggests "this item"; "this {class_noun}" follows it.
    Sampling-only."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Flow-matching Euler steps (the paper: 1; the released examples: 8). Sampling-only."""
    guidance: float = field(default=3.5, metadata=SAMPLING_ONLY)
    """Distilled guidance, only for a transformer with a guidance input (FLUX.1-dev); FLUX.1-schnell has none."""
    max_sequence_length: int = field(default=512, metadata=SAMPLING_ONLY)
    """T5 prompt tokens (the released `generate` and FluxPipeline: 512). Sampling-only."""
    sample_dtype: str = field(default="auto", metadata=SAMPLING_ONLY)
    """Sampling precision: "auto" = bf16 autocast on CUDA (the released examples; FLUX overflows in fp16), none on
    CPU; "none" (no autocast: each model computes in the dtype it loaded in, the FLUX.1 transformer and T5 in bf16
    on `paper`, everything in float32 on `tiny`) or "bf16" (autocast on any device). Inputs are cast to each
    model's dtype where they cross from one model to the next, so every value works on every device.
    Sampling-only."""
    sample_batch_size: int = 8
    """Images per transformer call."""

    def __post_init__(self) -> None:
        from baselines.flux_models import OMINI_LORA_FILES

        if self.lora_file not in OMINI_LORA_FILES:
            raise ValueError(f"lora_file must be one of {', '.join(OMINI_LORA_FILES)}, not '{self.lora_file}'")
        if self.conditioning == "mean":
            raise ValueError("conditioning 'mean' is not meaningful for OminiControl: it conditions on one photo's "
                             "VAE tokens, and averaging photos' latents blends them; valid: first, each")
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONING)}, not '{self.conditioning}'")
        if self.position_delta is not None and (len(self.position_delta) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in self.position_delta)):
            raise ValueError(f"position_delta must be two integers [row, column], not {self.position_delta}")
        if not 0.0 <= self.condition_timestep <= 1.0:
            raise ValueError(f"condition_timestep must be in [0, 1], not {self.condition_timestep}")
        if self.lora_scale < 0:
            raise ValueError(f"lora_scale must be >= 0, not {self.lora_scale}")
        try:
            self.eval_phrase.format(identifier="", class_noun="dog")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"eval_phrase may name only {{class_noun}} and {{identifier}}, not "
                             f"'{self.eval_phrase}'") from None
        if self.sample_dtype not in ("auto", "none", "bf16"):
            raise ValueError(f"sample_dtype must be one of auto, none, bf16, not '{self.sample_dtype}'")
        for name in ("sample_steps", "max_sequence_length", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")


class OminiControl:
    name: ClassVar[str] = "ominicontrol"
    label: ClassVar[str] = "OminiControl"
    base_model: ClassVar[str] = "Flux"
    model_roles: ClassVar[ModelRoles] = flux_models.MODEL_ROLES  # FLUX.1-schnell + OminiControl LoRA
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = OminiControlConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {}, "each": {"conditioning": "each"},
        "paper_lora": {"lora_file": "experimental/subject.safetensors", "position_delta": (0, -32)}}

    def __init__(self, config: OminiControlConfig) -> None:
        self.config = config

    def prepare(self, concept: Concept, models: Models, out_dir: Path, seed: int) -> OminiModel:
        from bench.data import load_image

        photos = sorted(concept.images, key=lambda p: p.name)
        photos = photos[:1] if self.config.conditioning == "first" else photos
        from baselines.flux_models import omini_lora_path

        lora = omini_lora_path(models, self.config.lora_file)  # first: a missing file is named before FLUX loads
        pipe = _pipeline(models)
        if lora is None:  # paper-random: a random adapter of the released shape
            from peft import LoraConfig

            from baselines.flux_models import OMINI_RANK, OMINI_TARGETS

            torch.manual_seed(seed)
            pipe.transformer.add_adapter(LoraConfig(r=OMINI_RANK, lora_alpha=OMINI_RANK, target_modules=OMINI_TARGETS,
                                                    init_lora_weights="gaussian"), adapter_name=ADAPTER)
        else:
            _load_adapter(pipe, lora.parent, lora.name)
        size = models.resolution
        pixels = torch.stack([_to_tensor(load_image(p, size)) for p in photos]).to(models.device)
        with torch.no_grad():
            tokens = _encode_condition(pipe, pixels)
        return OminiModel(self.config, pipe, tokens, [p.name for p in photos], size)

    def load(self, weights_dir: Path, models: Models) -> OminiModel:
        from safetensors import safe_open

        pipe = _pipeline(models)
        _load_adapter(pipe, Path(weights_dir), LORA_FILE)
        with safe_open(str(Path(weights_dir) / CONDITION_FILE), framework="pt") as f:
            meta = f.metadata()
            tokens = f.get_tensor("tokens").to(models.device)
        return OminiModel(self.config, pipe, tokens, json.loads(meta["photos"]), int(meta["resolution"]))


class OminiModel:
    """FLUX.1 with the subject LoRA and the condition tokens of the chosen photo(s)."""

    def __init__(self, config: OminiControlConfig, pipe: Any, tokens: torch.Tensor, photos: list[str],
                 resolution: int) -> None:
        self.config, self.pipe, self.tokens, self.resolution = config, pipe, tokens, resolution
        self.conditioning = photos
        """File names of the reference photos that condition the model."""
        self.identifier = ""
        self.eval_phrase = config.eval_phrase
        self.default_steps = config.sample_steps
        pipe.transformer.set_adapters([ADAPTER], weights=[config.lora_scale])

    def photo_for(self, seed: int) -> int:
        """Index (into `conditioning`) of the photo that conditions the image with noise seed `seed`."""
        return int(seed) % len(self.conditioning)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        from bench.models.sampling import to_pil

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        device = self.pipe.transformer.device
        dtype = {"bf16": torch.bfloat16, "auto": torch.bfloat16 if device.type == "cuda" else None}.get(
            self.config.sample_dtype)
        images: list = []
        size = self.config.sample_batch_size
        with record_function("bench/generate"), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, len(prompts), size):
                pixels = self.sample(prompts[start:start + size], seeds[start:start + size],
                                     steps or self.default_steps)
                images += to_pil(pixels)
        return images

    def sample(self, prompts: list[str], seeds: list[int], steps: int, condition: bool = True) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1]; `condition=False` samples FLUX.1 alone (no condition tokens)."""
        import numpy as np
        from diffusers import FluxPipeline
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        from bench.models.sampling import seeded_noise

        pipe, cfg = self.pipe, self.config
        transformer, device = pipe.transformer, pipe.transformer.device
        text, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                    max_sequence_length=cfg.max_sequence_length)
        side, batch = self.resolution // pipe.vae_scale_factor, len(seeds)
        channels = transformer.config.in_channels // 4
        noise = seeded_noise(seeds, (channels, side, side), device, text.dtype)  # FluxPipeline's unpacked shape
        latents = FluxPipeline._pack_latents(noise, batch, channels, side, side)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, side // 2, side // 2, device, text.dtype)
        cond = cond_ids = None
        if condition:
            cond = self.tokens[[self.photo_for(s) for s in seeds]].to(device, text.dtype)
            dy, dx = cfg.position_delta or (0, side // 2)
            cond_ids = image_ids + torch.tensor([0.0, dy, dx], device=device, dtype=image_ids.dtype)
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # step state: a fresh one per call
        sc = scheduler.config
        mu = calculate_shift(latents.shape[1], sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                             sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, mu=mu)
        guidance = torch.full([batch], cfg.guidance, device=device) if transformer.config.guidance_embeds else None
        for t in scheduler.timesteps:
            with record_function("bench/unet"):  # `bench perf`'s label for the denoiser's share
                velocity = condition_forward(transformer, latents, text, pooled, t.expand(batch) / 1000, image_ids,
                                             text_ids, cond, cond_ids, guidance, cfg.condition_timestep)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        latents = FluxPipeline._unpack_latents(latents, self.resolution, self.resolution, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        with record_function("bench/vae_decode"):
            return pipe.vae.decode(latents.to(pipe.vae.dtype)).sample

    def save(self, out_dir: Path) -> None:
        from diffusers import FluxPipeline
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        transformer = self.pipe.transformer
        FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(
            transformer, adapter_name=ADAPTER), safe_serialization=True)
        save_file({"tokens": self.tokens.detach().float().cpu().contiguous()}, out_dir / CONDITION_FILE,
                  metadata={"photos": json.dumps(self.conditioning), "resolution": str(self.resolution)})


# --- building blocks -----------------------------------------------------------------------------------------


def _pipeline(models: Models) -> Any:
    """A FluxPipeline over this run's copies of the FLUX.1 roles (the pipeline's prompt encoding and latent
    packing are used as they are; its denoising loop is replaced by `OminiModel.sample`)."""
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=models.flux_scheduler, vae=models.flux_vae, text_encoder=models.flux_text_encoder,
                        tokenizer=models.flux_tokenizer, text_encoder_2=models.flux_text_encoder_2,
                        tokenizer_2=models.flux_tokenizer_2, transformer=models.flux_transformer)


def _load_adapter(pipe: Any, folder: Path, weight_name: str) -> None:
    """diffusers' own loader, as the released examples call it (`pipe.load_lora_weights(..., adapter_name=
    "subject")`); the adapter stays unfused, since it must act on the condition tokens only."""
    from bench.models.lora_check import check_lora_complete

    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=ADAPTER)
    check_lora_complete(Path(folder) / weight_name, {"transformer": pipe.transformer}, ADAPTER)
    pipe.transformer.requires_grad_(False)


def _to_tensor(image: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def _encode_condition(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(n, 3, S, S) photos in [-1, 1] -> (n, S/16 * S/16, 64) packed condition tokens. The posterior mean (the
    released code draws one sample; the VAE's posterior spread is small), so the tokens are deterministic."""
    from diffusers import FluxPipeline

    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    return FluxPipeline._pack_latents(latents, *latents.shape).float()


def _layer(module: Any, x: torch.Tensor, adapter: bool) -> torch.Tensor:
    """A linear layer with its LoRA (condition tokens) or without it (`base_layer`: text and image tokens)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.base_layer(x) if not adapter and isinstance(module, BaseTunerLayer) else module(x)


def _modulate(norm: Any, x: torch.Tensor, temb: torch.Tensor, adapter: bool, chunks: int) -> tuple:
    """diffusers' AdaLayerNormZero(Single): the normalised `x` shifted and scaled, and the remaining gates."""
    shift, scale, *rest = _layer(norm.linear, F.silu(temb), adapter).chunk(chunks, dim=1)
    return (norm.norm(x) * (1 + scale[:, None]) + shift[:, None], *rest)


def _joint_attention(attn: Any, qkv: list[tuple], rope: Any) -> list[torch.Tensor]:
    """Attention over the concatenated streams (each a (q, k, v) of (B, S_i, H, D)); outputs split back."""
    from diffusers.models.embeddings import apply_rotary_emb

    q, k, v = (torch.cat([s[i] for s in qkv], dim=1) for i in range(3))
    q, k = apply_rotary_emb(q, rope, sequence_dim=1), apply_rotary_emb(k, rope, sequence_dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)
    return list(out.split([s[0].shape[1] for s in qkv], dim=1))


def _double_block(block: Any, streams: list[list], rope: Any) -> None:
    """One FluxTransformerBlock over streams [hidden, temb, adapter, is_text], updated in place; text streams use
    the block's context layers."""
    attn, qkv, mods = block.attn, [], []
    for x, temb, adapter, text in streams:
        h, *mod = _modulate(block.norm1_context if text else block.norm1, x, temb, adapter, 6)
        proj = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if text else (attn.to_q, attn.to_k, attn.to_v)
        norms = (attn.norm_added_q, attn.norm_added_k) if text else (attn.norm_q, attn.norm_k)
        q, k, v = (_layer(p, h, adapter).unflatten(-1, (-1, attn.head_dim)) for p in proj)
        qkv.append((norms[0](q), norms[1](k), v))
        mods.append(mod)
    outs = _joint_attention(attn, qkv, rope)
    for stream, out, (gate, shift_mlp, scale_mlp, gate_mlp) in zip(streams, outs, mods):
        x, _, adapter, text = stream
        x = x + gate[:, None] * _layer(attn.to_add_out if text else attn.to_out[0], out, adapter)
        norm, ff = (block.norm2_context, block.ff_context) if text else (block.norm2, block.ff)
        h = norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        h = _layer(ff.net[2], ff.net[0].gelu(_layer(ff.net[0].proj, h, adapter)), adapter)
        x = x + gate_mlp[:, None] * h
        stream[0] = x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def _single_block(block: Any, streams: list[list], rope: Any) -> None:
    """One FluxSingleTransformerBlock over streams [hidden, temb, adapter], updated in place."""
    attn, qkv, mods = block.attn, [], []
    for x, temb, adapter in streams:
        h, gate = _modulate(block.norm, x, temb, adapter, 3)
        q, k, v = (_layer(p, h, adapter).unflatten(-1, (-1, attn.head_dim)) for p in (attn.to_q, attn.to_k, attn.to_v))
        qkv.append((attn.norm_q(q), attn.norm_k(k), v))
        mods.append((gate, block.act_mlp(_layer(block.proj_mlp, h, adapter))))
    outs = _joint_attention(attn, qkv, rope)
    for stream, out, (gate, mlp) in zip(streams, outs, mods):
        x, _, adapter = stream
        x = x + gate[:, None] * _layer(block.proj_out, torch.cat([out, mlp], dim=2), adapter)
        stream[0] = x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def condition_forward(transformer: Any, latents: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor,
                      timestep: torch.Tensor, image_ids: torch.Tensor, text_ids: torch.Tensor,
                      cond: torch.Tensor | None, cond_ids: torch.Tensor | None, guidance: torch.Tensor | None,
                      cond_timestep: float = 0.0) -> torch.Tensor:
    """FluxTransformer2DModel's forward with condition tokens appended: (B, N, 64) packed latents -> (B, N, 64)
    velocity. Text and image tokens take the frozen layers and `timestep` (0..1); condition tokens (B, M, 64)
    take the LoRA and `cond_timestep`. Without `cond` it computes exactly what `transformer(...)` does."""
    tr = transformer
    out_dtype, dtype = latents.dtype, tr.dtype  # the boundary: CLIP's pooled vector is float32 beside a bf16 FLUX.1
    latents, text, pooled = latents.to(dtype), text.to(dtype), pooled.to(dtype)
    cond = None if cond is None else cond.to(dtype)

    def temb(t: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        t = t.to(latents.dtype) * 1000
        return tr.time_text_embed(t, pooled) if g is None else tr.time_text_embed(t, g.to(latents.dtype) * 1000, pooled)

    main_temb = temb(timestep, guidance)
    txt, img = _layer(tr.context_embedder, text, False), _layer(tr.x_embedder, latents, False)
    streams = [[txt, main_temb, False, True], [img, main_temb, False, False]]
    ids = [text_ids, image_ids]
    if cond is not None:
        cond_guidance = None if guidance is None else torch.ones_like(guidance)
        cond_temb = temb(torch.full_like(timestep, cond_timestep), cond_guidance)
        streams.append([tr.x_embedder(cond), cond_temb, True, False])
        ids.append(cond_ids)
    rope = tr.pos_embed(torch.cat(ids, dim=0))
    for block in tr.transformer_blocks:
        _double_block(block, streams, rope)
    # The single blocks see text and image as one stream, as in FluxTransformer2DModel.
    single = [[torch.cat([streams[0][0], streams[1][0]], dim=1), main_temb, False]] + [s[:3] for s in streams[2:]]
    for block in tr.single_transformer_blocks:
        _single_block(block, single, rope)
    image = single[0][0][:, txt.shape[1]:]
    return tr.proj_out(tr.norm_out(image, main_temb)).to(out_dtype)
