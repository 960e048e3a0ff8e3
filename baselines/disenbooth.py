"""DisenBooth (Chen et al., ICLR 2024) on SD-Turbo: identity-preserving disentangled tuning.

Recipe of the released code (`forchchch/DisenBooth`, `train_disenbooth.py` and `train_disenbooth.sh`, SD 2.1-base):
rank-4 LoRA (alpha = rank, Gaussian A with std 1/r, B = 0) on `to_q`, `to_k`, `to_v`, `to_out.0` of every self- and
cross-attention layer of the UNet; the text encoder frozen. Beside it, the identity-irrelevant branch: the frozen
OpenCLIP ViT-H/14 image encoder (laion2b_s32b_b79k) embeds the training photo itself (its [-1, 1] pixels resized to
224, no CLIP normalisation), and a learnable adapter -- a sigmoid mask m (init 0, so 0.5) and a residual MLP,
f_i = MLP(sigmoid(m) * e) + sigmoid(m) * e -- turns that embedding into one vector that is added to every token of
the prompt's text embedding f_s. Per step, with the one prompt "a dog</w> dog" (the class word followed by the
literal "</w>" as identifier):

    loss = mse(unet(x_t, t, f_s + f_i), target) + 0.01 * mse(unet(x_t, t, f_s), target)
           + 0.001 * cos(mean_tokens(f_s), f_i)

(denoising with both embeddings, the weak identity-preserving denoising with the text alone, and the cosine
similarity that pushes f_i away from f_s). AdamW (lr 1e-4 for LoRA and adapter, weight decay 1e-2), constant lr,
batch 1, gradient clip 1.0 on the UNet LoRA parameters only; paper Table 5 of EchoDistill: 2000 iterations.
Inference uses the identity-preserved branch only (the released notebook: text weight 1, image weight 0), so the
personalised model is the LoRA-adapted UNet with plain prompts, as `load_lora_weights` gives it.

Departures (config fields): trained at t = 999 by default (`timestep_policy`; the reference draws t uniformly),
the harness's centre-cropped square photos (the reference resizes the short side and crops at random), and the
image encoder is the profile's IP-Adapter `models/image_encoder` -- the same OpenCLIP ViT-H/14 weights in
transformers' format, whose `image_embeds` are open_clip's `encode_image`. SD-Turbo's text encoder is SD 2.1's
OpenCLIP-H (1024-d), the reference's own, so the adapter keeps its width; a backbone whose text width differs from
the image embedding (hyper-sd15: 768) is refused. The paper takes DisenBooth's reference photos "from the training
dataset in TextBoost": TextBoost's one-shot DreamBench split (`data/dreambooth_n1.txt`, one listed photo per
subject, unchanged), which this method's `reference_set="textboost_n1"` (default) picks from the DreamBench photos
(`bench.data_textboost`); `reference_set="all"` (variant `all_photos`) trains on every photo.

Saved as `pytorch_lora_weights.safetensors` (diffusers LoRA format: `pipe.load_lora_weights(dir)`) and
`disenbooth_adapter.safetensors` (the adapter under the released module's key names, so the released
`Image_adapter` loads it with `load_state_dict`; the identifier in its metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import BenchError, Concept, Log, Models
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_STEPS, SCHEDULE
from bench.data_textboost import check_reference_set, reference_images
from bench.models import personalize, sampling
from bench.models.loop import DenoisingLoop, Step
from bench.models.recipe import ALL_PHOTOS, check_lora, check_recipe, concept_batches
from bench.models.sampling import Numerics
from bench.models.training import TRAIN_NFE_VARIANTS, Batch, masked_mse

ADAPTER_FILE = "disenbooth_adapter.safetensors"
IMAGE_INPUTS = ("released", "clip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DisenBoothConfig(Numerics):
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1, default for the one-step student), "four_step" (train NFE 4) or
    "uniform" (train NFE 1000, the released script's uniform draw)."""
    iterations: int = field(default=2000, metadata=SCHEDULE)
    """Optimiser steps (EchoDistill paper, Table 5: 2000; the released script: 2000)."""
    batch_size: int = field(default=1, metadata=BATCH_SIZE)
    """Images per step (released script: 1)."""
    lr: float = 1e-4
    """Learning rate of the UNet LoRA and of the image adapter (released script: 1e-4 for both), constant."""
    weight_decay: float = 1e-2
    """AdamW weight decay, on LoRA and adapter alike (released script: 1e-2)."""
    grad_clip: float = 1.0
    """Gradient norm clip on the UNet LoRA parameters only, as released (the adapter is not clipped); 0 = off."""
    rank: int = 4
    """LoRA rank r (released script: 4)."""
    alpha: float | None = None
    """LoRA alpha; the update is scaled by alpha / rank. None -> alpha = rank (scale 1, as the released layers)."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """UNet submodules that get an adapter (released: q, k, v, out of every attention layer)."""
    weak_denoise_weight: float = 0.01
    """Weight of the identity-preserving (text-only) denoising loss (released: 0.01)."""
    contrastive_weight: float = 0.001
    """Weight of the cosine similarity between the mean text token and the image feature (released: 0.001)."""
    identifier: str = "{class}</w>"
    """What stands for the subject; `{class}` becomes the class noun's last word. Released: "dog</w>" in the
    prompt "a dog</w> dog" (the literal "</w>", which the CLIP tokenizer splits into "</", "w", ">"). One word, no
    spaces, not the class noun itself."""
    image_input: str = "released"
    """What the image encoder sees: "released" = the training pixels in [-1, 1] resized (bilinear) to the encoder's
    input size, without CLIP's mean/std, as the released script feeds `encode_image`; "clip" = CLIP-normalised.
    The resize antialiases, as torchvision's tensor `Resize` does from 0.17 on (older versions did not)."""
    hflip: bool = False
    """Random horizontal flip; off, as the released dataset (no flip)."""
    fuse: bool = True
    """Fuse the LoRA into the base weights before sampling (protocol: "fuse before timing"). Off keeps the peft
    layers (same images up to float rounding, slower)."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    reference_set: str = "textboost_n1"
    """Which photos it trains on: "textboost_n1" (default), the one photo per subject of TextBoost's DreamBench split,
    as the paper did ("for DisenBooth and Cones 2, the reference images were taken from the training dataset in
    TextBoost"; `bench.data_textboost`), or "all" (every photo of the concept; variant `all_photos`)."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=200, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (the LoRA matrices and the image adapter, AdamW moments, RNG states) every this
    many iterations and at the end, in the run's work folder; `bench run --resume` continues a killed run from it,
    bit-identically. 0 = off. Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self, non_negative=("weak_denoise_weight", "contrastive_weight"))
        check_reference_set(self.reference_set)
        check_lora(self, "to_q")
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {', '.join(IMAGE_INPUTS)}, not '{self.image_input}'")
        word = self.identifier.replace("{class}", "dog")
        if not word.strip() or any(c.isspace() for c in word) or "{" in word or "}" in word:
            raise ValueError(f"identifier must be one word without spaces (optionally with {{class}}, e.g. "
                             f"'{{class}}</w>' or 'sks'), not '{self.identifier}'")


def resolve_identifier(template: str, class_noun: str) -> str:
    """The identifier for a concept: `{class}` replaced by the class noun's last word ("{class}</w>" -> "dog</w>").
    An identifier equal to a word of the class noun would make the prompt "a dog dog": one line, exit 2."""
    word = template.replace("{class}", class_noun.split()[-1])
    if word.lower() in class_noun.lower().split():
        raise BenchError(f"disenbooth identifier '{word}' is the class noun itself; use one that differs, e.g. "
                         f"'{{class}}</w>' (released) or 'sks'")
    return word


class ImageAdapter(torch.nn.Module):
    """The identity-irrelevant branch's adapter: f_i = MLP(sigmoid(m) * e) + sigmoid(m) * e, with m a learnable
    per-channel mask (init 0) and MLP = Linear, ReLU, Linear (width kept). Submodule names as released."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.adapter = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, width))
        self.mask = torch.nn.Parameter(torch.zeros(width))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        gated = torch.sigmoid(self.mask) * embedding
        return self.adapter(gated) + gated


def image_features(clip_vision: Any, pixels: torch.Tensor, image_input: str) -> torch.Tensor:
    """(B, 3, H, W) pixels in [-1, 1] -> (B, 1, D) projected image embeddings of the frozen encoder."""
    import torch.nn.functional as F

    side = clip_vision.config.image_size
    x = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    if image_input == "clip":
        mean, std = torch.tensor(CLIP_MEAN, device=x.device), torch.tensor(CLIP_STD, device=x.device)
        x = ((x + 1) / 2 - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        return clip_vision(pixel_values=x.to(clip_vision.dtype)).image_embeds.float()[:, None]


class DisenBooth:
    name: ClassVar[str] = "disenbooth"
    label: ClassVar[str] = "DisenBooth"
    version: ClassVar[int] = 1
    resumable: ClassVar[bool] = True  # checkpoint_every, through bench.models.loop
    Config: ClassVar[type] = DisenBoothConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {**TRAIN_NFE_VARIANTS, **ALL_PHOTOS}

    def __init__(self, config: DisenBoothConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> DisenBoothModel:
        cfg = self.config
        identifier = resolve_identifier(cfg.identifier, concept.class_noun)
        parts = models.pipeline_parts()
        unet, tokenizer, text_encoder = parts["unet"], parts["tokenizer"], parts["text_encoder"]
        clip_vision = models.get_pristine("clip_vision")  # frozen, shared read-only
        width, embed = text_encoder.config.hidden_size, clip_vision.config.projection_dim
        if width != embed:
            raise BenchError(f"disenbooth adds the image embedding ({embed}-d) to the text embedding, but this "
                             f"backbone's text encoder is {width}-d; use --backbone sd-turbo (1024 = 1024)")
        device = models.device
        torch.manual_seed(seed)  # the Gaussian init of the LoRA A matrices and the adapter's Linear init

        # 1. Trainable: LoRA on the UNet attention projections, and the image adapter.
        lora_params = list(personalize.add_unet_lora(unet, cfg.rank, cfg.alpha, cfg.target_modules).values())
        adapter = ImageAdapter(width).to(device)
        optimizer = torch.optim.AdamW([{"params": lora_params}, {"params": list(adapter.parameters())}],
                                      lr=cfg.lr, weight_decay=cfg.weight_decay)

        # 2. Data: the photos, one prompt "a dog</w> dog"; its embedding f_s is fixed (frozen text encoder).
        photos = reference_images(concept, cfg.reference_set)  # TextBoost's split by default
        batches = concept_batches(models, photos, f"{identifier} {concept.class_noun}", cfg, seed, templates=("a {}",))
        with torch.no_grad():
            text = sampling.encode_text(tokenizer, text_encoder, [batches.templates[0].format(batches.phrase)])

        # 3. The shared denoising loop (`bench.models.loop`): the UNet sees f_s + f_i; the loss adds the weak,
        #    text-only denoising (a second UNet pass with f_s) and the cosine that pushes f_i away from mean(f_s).
        def context(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            text_states = text.expand(len(batch.prompts), -1, -1)
            irrelevant = adapter(image_features(clip_vision, batch.pixels, cfg.image_input))  # (B, 1, D)
            return text_states + irrelevant, {"text": text_states, "image": irrelevant}

        def loss(step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            text_states, irrelevant = step.extras["text"], step.extras["image"]
            denoise = masked_mse(step.pred, step.target, step.batch.masks)
            weak = masked_mse(step.denoise(text_states), step.target, step.batch.masks)
            cosine = torch.nn.functional.cosine_similarity(text_states.mean(dim=1), irrelevant[:, 0], dim=1,
                                                           eps=1e-6).mean()
            total = denoise + cfg.weak_denoise_weight * weak + cfg.contrastive_weight * cosine
            return total, {"denoise": denoise, "weak_denoise": weak, "cosine": cosine}

        trainable = {"lora": lora_params, "adapter": list(adapter.parameters())}
        loop = DenoisingLoop.for_recipe(cfg, models, parts, trainable, optimizer, batches, seed, loss_fn=loss,
                                        context_fn=context, clipped=("lora",))
        unet.train()
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)
        unet.eval()
        for p in [*lora_params, *adapter.parameters()]:
            p.requires_grad_(False)
        return DisenBoothModel(cfg, parts, adapter.eval(), identifier)

    def load(self, weights_dir: Path, models: Models) -> DisenBoothModel:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(weights_dir) / ADAPTER_FILE
        if not path.is_file():
            raise BenchError(f"{weights_dir} holds no {ADAPTER_FILE}; point at a disenbooth run's weights/ folder")
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        state = load_file(path)
        adapter = ImageAdapter(state["mask"].shape[0])
        adapter.load_state_dict(state, strict=True)
        parts = models.pipeline_parts()
        personalize.load_unet_lora(parts["unet"], weights_dir)
        return DisenBoothModel(self.config, parts, adapter.to(models.device).eval().requires_grad_(False),
                               meta["identifier"])


class DisenBoothModel:
    """The personalised model: SD-Turbo with the LoRA fused in, sampled with the identity-preserved (text) branch
    only; keeps the image adapter for saving."""

    def __init__(self, config: DisenBoothConfig, parts: dict[str, Any], adapter: ImageAdapter,
                 identifier: str) -> None:
        self.config, self.parts, self.adapter = config, parts, adapter
        self.identifier = identifier
        self.default_steps = config.sample_steps
        self.lora = personalize.take_unet_lora(parts["unet"], config.fuse)  # what `save` writes, before fusing

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        self.lora.save(out_dir)
        state = {k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()}
        meta = {"identifier": self.identifier, "image_input": self.config.image_input,
                "format": json.dumps({"module": "Image_adapter", "hidden_size": int(state["mask"].shape[0])})}
        save_file(state, Path(out_dir) / ADAPTER_FILE, metadata=meta)
