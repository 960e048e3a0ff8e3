"""TextBoost (Park et al., 2024): one-shot personalisation by fine-tuning the text encoder only, on SD-Turbo.

What learns (`nahyeonkaty/textboost`, `train_textboost.py` as `run_textboost_db.py` runs it): LoRA adapters (peft,
rank 4, alpha = rank, Gaussian init) on the text encoder's self-attention `q_proj`, `k_proj`, `v_proj`, and the
embedding rows of the new tokens -- the concept's multi-vector token (`<tb_0> <tb_1>`, one vector per BPE piece of
its initialiser, e.g. "corgi dog") and the augmentation tokens (`<zoom-in>`, `<hflip>`, ...). The UNet, the VAE
and every other text-encoder weight stay frozen. Two learning rates: 1e-4 for LoRA, 1e-3 for the embeddings;
AdamW (weight decay 1e-2), gradient clip 1.0 on the LoRA weights, constant lr, batch 8; 500 iterations (the
paper's Table 5). After each step the new embedding rows are scaled down to the mean embedding norm if longer.

Loss: the denoising MSE on the augmented photo plus 0.1 x the knowledge-preservation loss -- 1 - cosine similarity,
per token, between the trained and the original text encoder's outputs on unrelated prompts (captions, 10 %
class templates, 10 % the empty prompt). In training the start-of-text output (and the whole output of the empty
prompt) is pinned to the frozen encoder's, as the reference's `TextBoostModel` does; sampling uses the plain
encoder, as the reference's inference does. Trained on TextBoost's one-shot DreamBench copy by default
(`reference_set`, `bench.data_textboost`).

Trained at t = 999 by default (a one-step student only sees t = 999); `train4` / `train1000` use the four-step set
and uniform timesteps (what the reference code samples: its SNR weighting is off by its flag's default), and
`snr_weighted` the paper's SNR-weighted sampling. Saved as a diffusers text-encoder LoRA
(`pytorch_lora_weights.safetensors`, `pipe.load_lora_weights(dir)`) plus one textual-inversion file per new token
(`pipe.load_textual_inversion`); the adapter is fused into the text encoder before sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from baselines.textboost_data import (
    AUGMENTATION_TOKENS,
    KPL_STANDIN_PROMPTS,
    PairedAugmentation,
    PhotoBatches,
    PriorPrompts,
    read_prompt_file,
)
from bench.api import DEFAULT_PHRASE, BenchError, Concept, Log, Models
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_ONLY, SAMPLING_STEPS, SCHEDULE
from bench.data_textboost import check_reference_set, load_resized, reference_images
from bench.models import personalize, sampling
from bench.models.checkpoint import stable_lora_metadata
from bench.models.loop import DenoisingLoop, Step
from bench.models.recipe import ALL_PHOTOS, check_lora, check_recipe, check_word
from bench.models.sampling import Numerics
from bench.models.training import IMAGENET_TEMPLATES, SNR_WEIGHTED, TIMESTEP_POLICIES, TRAIN_NFE_VARIANTS

TEMPLATES = {"imagenet_small": IMAGENET_TEMPLATES,
             "textboost": ("{}", "a {}", "one {}", "the {}", "photo of a {}")}
"""Training templates (`--template`): the 27 textual-inversion ones (what `run_textboost_db.py` uses) or
TextBoost's five short ones."""
TIMESTEPS = (*TIMESTEP_POLICIES, SNR_WEIGHTED)
INITS = ("released", "class")
KPL_TYPES = ("cos", "mse")
EVAL_PHRASES = ("released", "joined")
"""`eval_phrase`: the reference evaluation's "<tb_0> dog <tb_1> dog", or "<tb_0> <tb_1> dog"."""
LORA_FILE = "pytorch_lora_weights.safetensors"

RELEASED_INIT_WORDS = {
    "backpack": "red", "backpack_dog": "character", "bear_plushie": "bear", "berry_bowl": "white", "can": "beer",
    "candle": "jar", "cat": "orange", "cat2": "gray", "clock": "yellow", "colorful_sneaker": "color",
    "dog": "corgi", "dog2": "fluffy", "dog3": "poodle", "dog5": "dachshund", "dog6": "corgi", "dog7": "retriever",
    "dog8": "border collie", "duck_toy": "rubber", "fancy_boot": "fringe", "grey_sloth_plushie": "sloth",
    "monster_toy": "stuffed", "pink_sunglasses": "pink", "poop_emoji": "poop", "rc_car": "car",
    "red_cartoon": "devil", "robot_toy": "robot", "shiny_sneaker": "rainbow", "teapot": "brown", "vase": "red",
    "wolf_plushie": "dog",
}
"""TextBoost's descriptive word per DreamBench subject (`run_textboost_db.py`, INSTANCES); the token is
initialised from "<word> <class noun>", one vector per BPE piece."""


@dataclass(frozen=True)
class TextBoostConfig(Numerics):
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1), "four_step" (train NFE 4), "uniform" (train NFE 1000, what the
    reference code runs) or "snr_weighted" (the paper's p(t) proportional to max log-SNR - log-SNR(t))."""
    iterations: int = field(default=500, metadata=SCHEDULE)
    """Optimiser steps (paper Table 5: 500; `run_textboost_db.py`: 250)."""
    batch_size: int = field(default=8, metadata=BATCH_SIZE)
    """Photos (and knowledge-preservation prompts) per step (reference: 8)."""
    lr: float = 1e-4
    """Learning rate of the LoRA weights (`run_textboost_db.py`: 1e-4; the training script's default 5e-5)."""
    emb_lr: float = 1e-3
    """Learning rate of the new token embeddings (reference: 1e-3)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (reference: 1e-2). The reference's decoupled decay also shrinks every frozen vocabulary
    row; here those rows are restored after each step, so only the new rows and LoRA decay."""
    grad_clip: float = 1.0
    """Gradient norm clip on the LoRA weights (the reference clips the encoder's parameters only); 0 = off."""
    rank: int = 4
    """LoRA rank (reference: 4)."""
    alpha: float | None = None
    """LoRA alpha (scale alpha / rank); None -> alpha = rank, as the reference."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """Text-encoder projections that get an adapter (reference: q, k, v of every self-attention layer)."""
    token: str = "<tb>"
    """Name of the concept's new token; with a multi-piece initialiser it becomes `<tb_0> <tb_1> ...`. It must not
    already be a word of the tokenizer."""
    init: str = "released"
    """Initialiser of the token: "released" = TextBoost's descriptive word per DreamBench subject plus the class
    noun ("corgi dog"); "class" = `personalize.init_word(class)` plus the class noun. A user's folder gets "class"."""
    init_word: str = ""
    """Overrides the descriptive word (the class noun is still appended); empty = from `init`."""
    templates: str = "imagenet_small"
    """Training prompt templates: "imagenet_small" (27; `run_textboost_db.py`) or "textboost" (5 short ones)."""
    kpl_weight: float = 0.1
    """Weight of the knowledge-preservation loss (reference: 0.1); 0 turns it off."""
    kpl_type: str = "cos"
    """Knowledge-preservation distance per output token: "cos" (1 - cosine; reference) or "mse"."""
    kpl_prompts_file: str = ""
    """Prompts of the knowledge-preservation loss: InstructPix2Pix's `human-written-prompts.jsonl` (the reference)
    or a text file of one prompt a line; empty = a built-in stand-in of 40 captions (the file cannot be fetched
    here)."""
    null_p: float = 0.1
    """Share of empty prompts among the knowledge-preservation prompts (reference: 0.1)."""
    template_p: float = 0.1
    """Share of class-template prompts ("a photo of a dog") among them (reference: 0.1)."""
    augment: bool = True
    """TextBoost's paired augmentation ("object" ops); off = plain photos, centre-cropped (the reference's
    `--augment none` with `--center_crop`)."""
    augment_p: float = 0.5
    """Probability of a geometric op and, separately, of a collage (`run_textboost_db.py`: 0.5)."""
    color_p: float = 0.2
    """Probability of grayscale (reference: 0.2)."""
    augment_tokens: bool = True
    """Learn augmentation tokens and name each op by its token (`--augment_inversion`, on in the reference); off =
    plain words ("zoomed in", "grayscale")."""
    fix_start_embedding: bool = True
    """In training, pin the start-of-text output and the empty prompt's output to the frozen encoder's (the
    reference's `TextBoostModel` with its null embedding, computed here from the run's own encoder)."""
    reference_set: str = "textboost_n1"
    """Training photos: "textboost_n1" = TextBoost's one-shot DreamBench copy (`bench.data_textboost`), "all" =
    every photo of the concept."""
    fuse: bool = True
    """Fuse the adapter into the text encoder before sampling (plain encoder, same images within rounding)."""
    eval_phrase: str = field(default="released", metadata=SAMPLING_ONLY)
    """What stands for the concept in evaluation prompts: "released" = each vector followed by the class noun
    ("a <tb_0> dog <tb_1> dog in the jungle", the reference's `eval_dreambooth.py` with its default token format
    "<INSTANCE> SUBJECT"), "joined" = the vectors, then the class noun once ("a <tb_0> <tb_1> dog in the jungle").
    The same for a one-vector token. Sampling-only."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=100, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (the LoRA matrices, the new token rows, AdamW moments, RNG states) every this
    many iterations and at the end, in the run's work folder; `bench run --resume` continues a killed run from it,
    bit-identically. 0 = off. Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self, non_negative=("kpl_weight",), policies=TIMESTEPS)
        for name, value, valid in (("init", self.init, INITS), ("templates", self.templates, tuple(TEMPLATES)),
                                   ("kpl_type", self.kpl_type, KPL_TYPES)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, not '{value}'")
        if self.eval_phrase not in EVAL_PHRASES:
            raise ValueError(f"eval_phrase must be one of {', '.join(EVAL_PHRASES)}, not '{self.eval_phrase}'")
        check_reference_set(self.reference_set)
        check_lora(self, "q_proj")
        if self.emb_lr <= 0:
            raise ValueError(f"emb_lr must be > 0, not {self.emb_lr}")
        for name in ("augment_p", "color_p", "null_p", "template_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.null_p + self.template_p > 1.0:
            raise ValueError("null_p + template_p must be <= 1")
        check_word("token", self.token)
        if self.augment and self.augment_tokens and self.token in AUGMENTATION_TOKENS:
            raise ValueError(f"token '{self.token}' is one of the augmentation tokens "
                             f"({', '.join(AUGMENTATION_TOKENS)}); choose another, such as '<tb>'")
        if self.kpl_prompts_file and not Path(self.kpl_prompts_file).expanduser().is_file():
            raise ValueError(f"kpl_prompts_file '{self.kpl_prompts_file}' is not a file; give a "
                             f"human-written-prompts.jsonl or a text file, or leave it empty for the stand-in")


def vector_names(token: str, count: int) -> list[str]:
    """`<tb>` -> [`<tb>`] for one vector, [`<tb_0>`, `<tb_1>`] for two (the reference's naming)."""
    if count == 1:
        return [token]
    stem, close = (token[:-1], ">") if token.endswith(">") else (token, "")
    return [f"{stem}_{i}{close}" for i in range(count)]


def plan_vectors(tokenizer: Any, token: str, init: str) -> list[tuple[str, int]]:
    """(vector name, initialising piece id) for `token`: one new vocabulary entry per BPE piece of `init`. A name
    that is already a word of the tokenizer is one line (BenchError)."""
    pieces = tokenizer(init, add_special_tokens=False).input_ids
    if not pieces:
        raise BenchError(f"textboost: initialiser '{init}' tokenises to nothing; set init_word to a word")
    names = vector_names(token, len(pieces))
    for name in dict.fromkeys([token, *names]):  # the name asked for, and each vector's
        if name in tokenizer.get_vocab() or len(tokenizer(name, add_special_tokens=False).input_ids) == 1:
            raise BenchError(f"textboost: token '{name}' is already in the tokenizer's vocabulary; choose a new "
                             f"one such as '<tb>' (--set token='<tb2>')")
    return list(zip(names, pieces))


def add_vectors(tokenizer: Any, text_encoder: Any, plan: list[tuple[str, int]]) -> list[int]:
    """Add the planned entries in one resize of the embedding matrix, each row a copy of its piece's row (the
    reference's `add_token`); returns their ids."""
    names = [name for name, _ in plan]
    if len(set(names)) != len(names) or tokenizer.add_tokens(names) != len(names):
        raise BenchError(f"textboost: new tokens clash: {', '.join(names)}")
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        emb = text_encoder.get_input_embeddings().weight
        emb[ids] = emb[[piece for _, piece in plan]].clone()
    return ids


def init_text(concept: Concept, cfg: TextBoostConfig) -> str:
    """"corgi dog": the descriptive word (override, TextBoost's per-subject word, or the per-class word) + noun."""
    if cfg.init_word:
        word = cfg.init_word
    elif cfg.init == "released" and concept.dataset and concept.name in RELEASED_INIT_WORDS:
        word = RELEASED_INIT_WORDS[concept.name]
    else:
        word = personalize.init_word(concept.class_noun)
    return f"{word} {concept.class_noun}"


class TextBoost:
    name: ClassVar[str] = "textboost"
    label: ClassVar[str] = "TextBoost"
    version: ClassVar[int] = 1
    resumable: ClassVar[bool] = True  # checkpoint_every, through bench.models.loop
    Config: ClassVar[type] = TextBoostConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        **TRAIN_NFE_VARIANTS,
        "snr_weighted": {"timestep_policy": SNR_WEIGHTED},
        **ALL_PHOTOS,
    }

    def __init__(self, config: TextBoostConfig) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> TextBoostModel:
        from diffusers.utils.peft_utils import set_adapter_layers
        from peft import inject_adapter_in_model

        cfg = self.config
        torch.manual_seed(seed)  # also seeds the Gaussian init of the LoRA A matrices
        parts = models.pipeline_parts()
        unet, tokenizer, text_encoder, vae = parts["unet"], parts["tokenizer"], parts["text_encoder"], parts["vae"]
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
        with torch.no_grad():  # the frozen encoder's output for "" (the reference's null embedding)
            null = sampling.encode_text(tokenizer, text_encoder, [""])[0]  # (77, D)

        # 1. New tokens: the concept's vectors, then the augmentation tokens; only their rows learn.
        plan = plan_vectors(tokenizer, cfg.token, init_text(concept, cfg))
        vectors, words = [name for name, _ in plan], None
        if cfg.augment and cfg.augment_tokens:
            words = {}
            for aug, init in AUGMENTATION_TOKENS.items():
                aug_plan = plan_vectors(tokenizer, aug, init)
                words[aug] = " ".join(name for name, _ in aug_plan)
                plan += aug_plan
        new_tokens = [name for name, _ in plan]
        new_ids = add_vectors(tokenizer, text_encoder, plan)
        restore_rows = personalize.keep_other_rows(text_encoder, keep=new_ids)
        # the mean norm over every row, the new ones included (reference)
        mean_norm = float(text_encoder.get_input_embeddings().weight.detach().norm(dim=-1).mean())

        # 2. LoRA on q/k/v of the text encoder (only the adapters trainable), then the new embedding rows.
        # peft's own injection (transformers' `add_adapter` wants a newer peft than diffusers pins); registered
        # as transformers registers it, so diffusers' save/fuse helpers and `load_lora_weights` see an adapter.
        lora = personalize.lora_config(cfg.rank, cfg.alpha, cfg.target_modules)
        inject_adapter_in_model(lora, text_encoder, adapter_name="default")
        text_encoder.peft_config, text_encoder._hf_peft_config_loaded = {"default": lora}, True
        text_encoder.requires_grad_(False)
        for name, param in text_encoder.named_parameters():
            param.requires_grad_(".lora_" in name)
        lora_params = [p for n, p in text_encoder.named_parameters() if p.requires_grad and "lora_" in n]
        embedding = personalize.train_token_row(text_encoder, new_ids)
        optimizer = torch.optim.AdamW([{"params": [embedding], "lr": cfg.emb_lr}, {"params": lora_params}],
                                      lr=cfg.lr, weight_decay=cfg.weight_decay)

        # 3. Data: the reference photo(s), "a photo of a <tb_0> <tb_1> dog", paired augmentation; KPL prompts.
        photos = [load_resized(p, models.resolution) for p in reference_images(concept, cfg.reference_set)]
        augmentation = PairedAugmentation(cfg.augment_p, cfg.color_p, words) if cfg.augment else None
        phrase = f"{' '.join(vectors)} {concept.class_noun}"
        templates = TEMPLATES[cfg.templates]
        batches = PhotoBatches(photos, phrase, templates, cfg.batch_size, models.resolution, seed, augmentation,
                               random_crop=cfg.augment)
        captions = (read_prompt_file(Path(cfg.kpl_prompts_file).expanduser()) if cfg.kpl_prompts_file
                    else KPL_STANDIN_PROMPTS)
        priors = PriorPrompts(captions, templates, concept.class_noun, cfg.batch_size, cfg.null_p, cfg.template_p,
                              seed)

        def encode(prompts: list[str]) -> torch.Tensor:
            context = sampling.encode_text(tokenizer, text_encoder, prompts).float()  # (B, 77, D)
            if not cfg.fix_start_embedding:
                return context
            empty = torch.tensor([not p.strip() for p in prompts], device=context.device)[:, None, None]
            context = torch.where(empty, null.expand_as(context), context)
            return torch.cat([null[:1].expand(len(prompts), 1, -1), context[:, 1:]], dim=1)

        # 4. The shared denoising loop (`bench.models.loop`): the context is the LoRA encoder's (with gradient);
        #    the loss is the denoising MSE + kpl_weight x (1 - cos) to the frozen encoder on unrelated prompts.
        def loss(step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            mse = torch.nn.functional.mse_loss(step.pred, step.target.float())
            kpl = torch.zeros((), device=mse.device)
            if cfg.kpl_weight > 0:
                prior_prompts = next(priors)
                with torch.no_grad():
                    # the frozen encoder: vocabulary rows are the original ones
                    set_adapter_layers(text_encoder, enabled=False)
                    original = encode(prior_prompts)
                    set_adapter_layers(text_encoder, enabled=True)
                current = encode(prior_prompts)
                if cfg.kpl_type == "cos":
                    kpl = (1 - torch.nn.functional.cosine_similarity(current, original, dim=-1)).mean()
                else:
                    kpl = torch.nn.functional.mse_loss(current, original)
            return mse + cfg.kpl_weight * kpl, {"mse": mse, "kpl": kpl}

        def after_step() -> None:  # vocabulary rows back; the new rows no longer than the mean embedding norm
            with torch.no_grad():
                restore_rows()
                rows = embedding[new_ids]
                norms = rows.norm(dim=-1, keepdim=True)
                embedding[new_ids] = rows * (norms.clamp(max=mean_norm) / norms)

        loop = DenoisingLoop.for_recipe(cfg, models, parts, {"lora": lora_params, "embedding": embedding}, optimizer,
                                        batches, seed, loss_fn=loss, after_step=after_step,
                                        cache_latents=False,  # every sample is augmented anew
                                        rows={"embedding": list(new_ids)}, extra_randoms={"priors": priors.rng},
                                        context_fn=lambda batch: (encode(batch.prompts), {}), clipped=("lora",))
        text_encoder.train()
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)
        text_encoder.eval()
        embedding.requires_grad_(False)
        for p in lora_params:
            p.requires_grad_(False)
        return TextBoostModel(cfg, parts, vectors, new_tokens)

    def load(self, weights_dir: Path, models: Models) -> TextBoostModel:
        from diffusers import StableDiffusionPipeline

        from bench.models.lora_check import check_lora_complete

        parts = models.pipeline_parts()
        tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
        files = sorted((p for p in weights_dir.glob("*.safetensors") if p.name != LORA_FILE), key=_token_order)
        tokens = [personalize.load_token(tokenizer, text_encoder, p) for p in files]
        vectors = [t for t in tokens if t not in _augmentation_vector_names(tokens)]
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(weights_dir, weight_name=LORA_FILE,
                                                                          return_lora_metadata=True)
        StableDiffusionPipeline.load_lora_into_text_encoder(state, alphas, text_encoder, prefix="text_encoder",
                                                            adapter_name="default", metadata=metadata)
        check_lora_complete(weights_dir / LORA_FILE, {"text_encoder": text_encoder}, "default")
        text_encoder.requires_grad_(False)
        return TextBoostModel(self.config, parts, vectors, tokens)


def _token_order(path: Path) -> tuple[str, int]:
    """`<tb_10>` after `<tb_9>`: a token's stem, then its vector index."""
    name = path.name.removesuffix(".safetensors").strip("<>")  # "tb_1" for `<tb_1>` and for `tb_1`
    stem, _, index = name.rpartition("_")
    return (stem, int(index)) if stem and index.isdigit() else (name, -1)


def _augmentation_vector_names(tokens: list[str]) -> set[str]:
    """The saved tokens that are augmentation tokens (`<zoom-in_0>`, `<crop>`)."""
    stems = {aug[:-1] for aug in AUGMENTATION_TOKENS}
    return {t for t in tokens if t in AUGMENTATION_TOKENS or t.rpartition("_")[0] in stems}


def released_phrase(vectors: list[str]) -> str:
    """The reference evaluation's phrase, as an `eval_phrase` format: "<tb_0> {class_noun} <tb_1> {class_noun}"."""
    return " ".join(f"{vector} {{class_noun}}" for vector in vectors)


class TextBoostModel:
    """The personalised model: SD-Turbo with the adapted text encoder and the new tokens."""

    def __init__(self, config: TextBoostConfig, parts: dict[str, Any], vectors: list[str], tokens: list[str]) -> None:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        self.config, self.parts, self.tokens = config, parts, tokens
        self.identifier = " ".join(vectors)  # "<tb_0> <tb_1>"
        self.eval_phrase = released_phrase(vectors) if config.eval_phrase == "released" else DEFAULT_PHRASE
        self.default_steps = config.sample_steps
        text_encoder = parts["text_encoder"]
        # What `save` writes, taken before fusing: A/B under diffusers' key names, and the adapter's config.
        self.lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder,
                                                                                     adapter_name="default"))
        self.lora_metadata = stable_lora_metadata(text_encoder.peft_config["default"].to_dict())
        self.embeddings = {t: text_encoder.get_input_embeddings().weight[tokenizer_id].detach().float().cpu().clone()
                           for t, tokenizer_id in zip(tokens, parts["tokenizer"].convert_tokens_to_ids(tokens))}
        if config.fuse:  # W <- W + (alpha / r) B A on q/k/v, then plain Linear layers again
            from diffusers.loaders.lora_base import fuse_text_encoder_lora
            from diffusers.utils.peft_utils import recurse_remove_peft_layers

            fuse_text_encoder_lora(text_encoder)
            recurse_remove_peft_layers(text_encoder)
            del text_encoder.peft_config
            text_encoder._hf_peft_config_loaded = False

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        from diffusers import StableDiffusionPipeline
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(out_dir, text_encoder_lora_layers=self.lora_layers,
                                                  text_encoder_lora_adapter_metadata=self.lora_metadata,
                                                  weight_name=LORA_FILE, safe_serialization=True)
        for token, row in self.embeddings.items():  # one textual-inversion file per vector, {token: (1, D)}
            save_file({token: row.unsqueeze(0)}, out_dir / f"{token}.safetensors")
