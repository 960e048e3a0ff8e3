"""IP-Adapter (Ye et al., 2023) with TCD: the encoder-based row of the paper's Tables 1 and 5. It does not train.

The paper: "due to the absence of an available implementation compatible with the one-step SD-Turbo model, we
adopt the TCD-based practice". That practice (`jabir-zheng/TCD`, README "Compatibility with IP-Adapter"): SDXL
base 1.0, its scheduler replaced by `TCDScheduler` (same config), the TCD LoRA `h1t/TCD-SDXL-LoRA` loaded and
fused, the SDXL IP-Adapter of `h94/IP-Adapter` (`sdxl_models/ip-adapter_sdxl`, image encoder
`sdxl_models/image_encoder`) at scale 0.5, guidance 0 and gamma (`eta`) 0.3. The TCD example samples 4 steps;
the paper's row samples one (Table 5, inference NFE 1), so `sample_steps` is 1 and the `tcd4` variant has 4.
Its prompt begins "best quality, high quality, ", and so do ours (`prompt_prefix`; variant `no_prefix` without).

Everything goes through diffusers' own classes and loaders: `StableDiffusionXLPipeline` over the profile's
components, `load_lora_weights` + `fuse_lora` (then `unload_lora_weights`: the fused weights stay, the LoRA layers
go) and `load_ip_adapter` (its file in h94's key layout), `set_ip_adapter_scale`, `encode_image`.

"Preparing" the method for a concept is encoding its reference photo(s) with the image encoder; which ones is the
`conditioning` field (the paper does not say): "first" (default: the concept's first photo in file-name order,
one reference image per generation as the IP-Adapter and TCD examples use it), "each" (every photo takes a turn:
the image with noise seed n is conditioned on photo n mod N, so over the evaluation's 25 prompts each photo
conditions about the same number of images) or "mean" (the mean of all photos' image embeddings). The photos'
file names are recorded with the run (`conditioning`). The concept has no identifier: prompts name the class
("a dog in the jungle").

Saved: the conditioning photos' image embeddings (`image_embeds.safetensors`, with the file names and the mode as
metadata); `load` rebuilds the pipeline from the profile and samples them, without the photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from baselines import tcd_models
from bench.api import Concept, Models
from bench.config import SAMPLING_ONLY, SAMPLING_STEPS
from bench.models import sampling
from bench.models.component import ModelRoles

CONDITIONING = ("first", "each", "mean")
RANDOM_ADAPTER_SEED = 0
"""paper-random: the seed of the random IP-Adapter weights (the same in `prepare` and `load`)."""
EMBEDS_FILE = "image_embeds.safetensors"
PROMPT_PREFIX = "best quality, high quality, "
"""The TCD repository's IP-Adapter example prompt begins so (IP-Adapter's own SDXL demos too)."""


@dataclass(frozen=True)
class IPAdapterTCDConfig:
    conditioning: str = "first"
    """Which reference photo(s) condition the model: "first" (the first photo by file name; default), "each"
    (image with noise seed n: photo n mod N) or "mean" (mean of all photos' image embeddings)."""
    ip_scale: float = 0.5
    """IP-Adapter scale (`set_ip_adapter_scale`): the weight of the image tokens' attention (TCD example: 0.5)."""
    eta: float = field(default=0.3, metadata=SAMPLING_ONLY)
    """TCD's gamma (`eta` of `TCDScheduler.step`): stochasticity of each step (TCD example: 0.3). Sampling-only."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps (paper Table 5: one; the TCD example: 4, variant `tcd4`). Sampling-only."""
    prompt_prefix: str = field(default=PROMPT_PREFIX, metadata=SAMPLING_ONLY)
    """Put before every prompt: the TCD example's "best quality, high quality, " (its prompt is "best quality, high
    quality, wearing sunglasses"), so "best quality, high quality, a dog in the jungle"; "" = the bare prompt
    (variant `no_prefix`). CLIP-T scores the class prompt without it either way. Sampling-only."""
    guidance: float = field(default=0.0, metadata=SAMPLING_ONLY)
    """Classifier-free guidance scale; 0 as TCD samples (no unconditional branch). Sampling-only."""
    sample_dtype: str = field(default="auto", metadata=SAMPLING_ONLY)
    """Sampling precision: "auto" = fp16 autocast on CUDA, float32 on CPU; "none", "fp16", "bf16". The VAE always
    decodes in float32 (SDXL's VAE overflows in fp16). Sampling-only."""
    sample_batch_size: int = 25
    """Images per pipeline call."""

    def __post_init__(self) -> None:
        from bench.models.speed import check_autocast

        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONING)}, not '{self.conditioning}'")
        if not 0 <= self.ip_scale <= 2:
            raise ValueError(f"ip_scale must be in [0, 2] (TCD example: 0.5), not {self.ip_scale}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1] (TCD example: 0.3), not {self.eta}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, not {self.guidance}")
        for name in ("sample_steps", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        check_autocast("none", self.sample_dtype)


class IPAdapterTCD:
    name: ClassVar[str] = "ip_adapter_tcd"
    label: ClassVar[str] = "IP-Adapter"
    base_model: ClassVar[str] = "TCD"
    model_roles: ClassVar[ModelRoles] = tcd_models.MODEL_ROLES  # SDXL + TCD LoRA + IP-Adapter SDXL
    version: ClassVar[int] = 1
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = IPAdapterTCDConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "each": {"conditioning": "each"},
        "mean": {"conditioning": "mean"},
        "tcd4": {"sample_steps": 4},
        "no_prefix": {"prompt_prefix": ""},
    }

    def __init__(self, config: IPAdapterTCDConfig) -> None:
        self.config = config

    def prepare(self, concept: Concept, models: Models, out_dir: Path, seed: int) -> IPAdapterTCDModel:
        """Encode the conditioning photo(s); nothing is trained (`seed` changes nothing here)."""
        from bench.data import load_image

        pipe = build_pipeline(models, self.config)
        photos = concept.images[:1] if self.config.conditioning == "first" else concept.images
        with torch.no_grad():
            embeds = torch.cat([pipe.encode_image(load_image(p), models.device, 1)[0] for p in photos])
        return IPAdapterTCDModel(self.config, pipe, embeds.float(), [Path(p).name for p in photos])

    def load(self, weights_dir: Path, models: Models) -> IPAdapterTCDModel:
        from safetensors import safe_open

        with safe_open(str(Path(weights_dir) / EMBEDS_FILE), framework="pt") as f:
            embeds = f.get_tensor("image_embeds")
            names = json.loads((f.metadata() or {}).get("conditioning", "[]"))
        pipe = build_pipeline(models, self.config)
        return IPAdapterTCDModel(self.config, pipe, embeds.to(models.device).float(), names)


def build_pipeline(models: Models, config: IPAdapterTCDConfig) -> Any:
    """SDXL with TCDScheduler, the TCD LoRA fused, the IP-Adapter loaded at `ip_scale`: the TCD practice. The adapter
    files are resolved first, so a missing one is the error named (before SDXL loads)."""
    from diffusers import StableDiffusionXLPipeline

    from baselines.tcd_models import ip_adapter_state, nested_ip_state
    from bench.models.lora_check import check_lora_complete

    adapter, lora, encoder = models.ip_adapter_sdxl, models.tcd_lora, models.sdxl_image_encoder
    pipe = StableDiffusionXLPipeline(
        vae=models.sdxl_vae, text_encoder=models.sdxl_text_encoder, text_encoder_2=models.sdxl_text_encoder_2,
        tokenizer=models.sdxl_tokenizer, tokenizer_2=models.sdxl_tokenizer_2, unet=models.sdxl_unet,
        scheduler=models.sdxl_scheduler, image_encoder=encoder, feature_extractor=None, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:  # None on paper-random: a random UNet has nothing to distil
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="tcd")
        check_lora_complete(lora, {"unet": pipe.unet, "text_encoder": pipe.text_encoder,
                                   "text_encoder_2": pipe.text_encoder_2}, "tcd")  # all of it, or one line
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; sampling runs a plain UNet
    if adapter is not None:
        pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    else:  # paper-random: random weights in the real layout, through the same loader
        state = ip_adapter_state(pipe.unet, encoder.config.projection_dim, RANDOM_ADAPTER_SEED)
        pipe.load_ip_adapter(nested_ip_state(state), subfolder="", weight_name="")
    pipe.set_ip_adapter_scale(config.ip_scale)
    pipe.unet.requires_grad_(False)
    return pipe


class IPAdapterTCDModel:
    """SDXL + TCD conditioned on the concept's photo(s); prompts name the class, there is no identifier."""

    identifier = ""
    eval_phrase = "{class_noun}"

    def __init__(self, config: IPAdapterTCDConfig, pipe: Any, embeds: torch.Tensor, names: list[str]) -> None:
        self.config, self.pipe, self.embeds = config, pipe, embeds  # embeds: (photos, D), one row per photo
        self.conditioning = list(names)
        """The file names of the photos that condition the model (recorded with the run)."""
        self.default_steps = config.sample_steps
        _label_unet(pipe.unet)

    def photo_index(self, seed: int) -> int:
        """Which row of `embeds` conditions the image with noise seed `seed`; -1 = the mean of all rows."""
        if self.config.conditioning == "mean":
            return -1
        return int(seed) % len(self.embeds) if self.config.conditioning == "each" else 0

    def embedding(self, index: int) -> torch.Tensor:
        """(1, 1, D): one conditioning embedding, as `ip_adapter_image_embeds` takes it for a whole batch."""
        row = self.embeds.mean(dim=0) if index < 0 else self.embeds[index]
        return row.reshape(1, 1, -1)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        """The pipeline conditions a whole call on one embedding (it repeats `ip_adapter_image_embeds` over the
        batch), so images conditioned on different photos ("each") go in separate calls, one per photo; each image
        keeps its own noise generator, so the grouping changes nothing but float rounding."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        groups: dict[int, list[int]] = {}
        for i, seed in enumerate(seeds):
            groups.setdefault(self.photo_index(seed), []).append(i)
        images: list = [None] * len(prompts)
        for index, members in groups.items():
            for start in range(0, len(members), self.config.sample_batch_size):
                chunk = members[start:start + self.config.sample_batch_size]
                out = self._sample([prompts[i] for i in chunk], [seeds[i] for i in chunk], index,
                                   steps or self.default_steps)
                for i, image in zip(chunk, out):
                    images[i] = image
        return images

    def _sample(self, prompts: list[str], seeds: list[int], index: int, steps: int) -> list:
        from torch.profiler import record_function

        from bench.models.speed import autocast

        pipe, cfg = self.pipe, self.config
        device = pipe.unet.device
        size = sampling.native_latent_size(pipe.unet)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        latents = sampling.seeded_noise(seeds, (pipe.unet.config.in_channels, size, size), device,
                                        generators=generators)  # TCD's step noise continues each generator
        embeds = self.embedding(index).to(device)
        if cfg.guidance > 1:  # the unconditional half first, zeros as diffusers' `encode_image` gives it
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        with autocast(device, cfg.sample_dtype), record_function("bench/generate"):
            out = pipe(prompt=[cfg.prompt_prefix + p for p in prompts], height=size * pipe.vae_scale_factor,
                       width=size * pipe.vae_scale_factor,
                       num_inference_steps=steps, guidance_scale=cfg.guidance, eta=cfg.eta, generator=generators,
                       latents=latents, ip_adapter_image_embeds=[embeds], output_type="latent")
        with record_function("bench/generate"):  # float32 decode: SDXL's VAE overflows in fp16
            return sampling.to_pil(sampling.decode(pipe.vae, out.images.float()))

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"image_embeds": self.embeds.detach().cpu().contiguous()}, out_dir / EMBEDS_FILE,
                  metadata={"conditioning": json.dumps(self.conditioning), "mode": self.config.conditioning})


def _label_unet(unet: Any) -> None:
    """Mark each UNet call as "bench/unet" for the profiler (`bench perf` reads it for UNet-only latency), as the
    harness's own sampler does; the pipeline calls the UNet itself."""
    from torch.profiler import record_function

    open_labels: list = []
    unet.register_forward_pre_hook(lambda module, args: open_labels.append(record_function("bench/unet").__enter__()))
    unet.register_forward_hook(lambda module, args, output: open_labels.pop().__exit__(None, None, None))
