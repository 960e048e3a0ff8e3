"""Cones 2 (Liu et al., NeurIPS 2023) on SD-Turbo: a subject as a residual on its class word's text embedding.

The recipe (released `train_cones2.py` and the command in its README): fine-tune the *whole text encoder*, UNet
and VAE frozen, on the subject's photos with the prompt being the raw class word alone ("dog"); the loss is the
denoising MSE plus a text-embedding-preservation term that keeps the encoder's output unchanged everywhere but on
the class word: `1e-2 * ||E'[before] - E[before]||_2 + 1e-3 * ||E'[after] - E[after]||_2` (Frobenius norms, not
squared; "before" is the start-of-text token, "after" every position after the class word, padding included; E is
the untouched encoder's output for the same prompt). AdamW lr 5e-6 (weight decay 1e-2), gradient clip 1, constant
lr, batch 1, 4000 steps, no augmentation (its Resize + RandomCrop is the identity on square photos), no flip.

After training, the residual is the mean over the 27 photo templates ("a photo of a dog", ...) of the tuned minus
the untouched encoder's output at the class word's token(s); the tuned encoder is then dropped. At inference the
untouched encoder encodes the prompt ("a dog in the jungle") and the residual is added to its output at the first
occurrence of the class word's token(s). The layout-guided sampler of the reference is for several subjects in one
image; one subject needs none, so sampling is the harness's plain one-step sampling.

Departures forced by the one-step model, each a config field: trained at t = 999 (`timestep_policy`, the
reference draws t uniformly), at the profile's resolution (SD-Turbo 512 px; the reference trains SD 2.1 at 768).
SD-Turbo's text encoder is SD 2.1's (OpenCLIP ViT-H, 23 layers, 1024-d), so the residual has the reference's
shape. Saved as `residual.safetensors` (the reference's `residual.pt`; key "residual", (tokens, width), with the
class word and its token ids as metadata); `keep_text_encoder` also saves the tuned encoder (`save_pretrained`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api import BenchError, Concept, Log, Models
from bench.config import BATCH_SIZE, CHECKPOINT_EVERY, SAMPLING_STEPS, SCHEDULE
from bench.data_textboost import check_reference_set, reference_images
from bench.models import sampling
from bench.models.loop import DenoisingLoop, Step
from bench.models.recipe import ALL_PHOTOS, check_recipe, concept_batches, scaled_lr
from bench.models.sampling import Numerics
from bench.models.training import IMAGENET_TEMPLATES, TRAIN_NFE_VARIANTS, Batch, masked_mse

RESIDUAL_FILE = "residual.safetensors"


@dataclass(frozen=True)
class Cones2Config(Numerics):
    timestep_policy: str = "t999"
    """Training timesteps: "t999" (train NFE 1, default: a one-step model only sees t = 999), "four_step" (train
    NFE 4) or "uniform" (train NFE 1000, what the reference does)."""
    iterations: int = field(default=4000, metadata=SCHEDULE)
    """Optimiser steps (paper Table 5 and the reference README: 4000)."""
    batch_size: int = field(default=1, metadata=BATCH_SIZE)
    """Images per step (reference README: 1). The prompt is the same for every image, so it is encoded once."""
    lr: float = 5e-6
    """Learning rate of the text encoder (reference: 5e-6)."""
    scale_lr: bool = False
    """Scale `lr` by the batch size (reference: off)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (reference default: 1e-2)."""
    grad_clip: float = 1.0
    """Gradient norm clip over the text encoder (reference default: 1.0); 0 turns it off."""
    loss_rate_first: float = 1e-2
    """Weight of the preservation norm on the positions before the class word (the start-of-text token); the
    reference README's 1e-2 (its argparse default is 5e-3)."""
    loss_rate_second: float = 1e-3
    """Weight of the preservation norm on every position after the class word (end of text, padding); the
    reference README's 1e-3 (its argparse default is 5e-4)."""
    token_num: int = 0
    """How many of the class word's tokens carry the residual (the reference's `--token_num`, default 1 there,
    where every example class is one token). 0 = all of them ("stuffed animal" -> 2); k >= 1 = the first k, which
    must not exceed the class word's token count."""
    train_prompt: str = "{class_noun}"
    """The training prompt; it must contain `{class_noun}`. Reference: the raw class word alone ("dog")."""
    hflip: bool = False
    """Random horizontal flip; off, as in the reference (no flip in its dataset)."""
    keep_text_encoder: bool = False
    """Also keep and save the fine-tuned text encoder (`text_encoder/`, `save_pretrained`, safetensors), as the
    reference also saves its whole tuned pipeline. Sampling never uses it: only the residual is applied."""
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps for evaluation (SD-Turbo: 1). Sampling-only: changing it re-samples, never retrains."""
    reference_set: str = "textboost_n1"
    """Which photos it trains on: "textboost_n1" (default), the one photo per subject of TextBoost's DreamBench split,
    as the paper did ("for DisenBooth and Cones 2, the reference images were taken from the training dataset in
    TextBoost"; `bench.data_textboost`), or "all" (every photo of the concept; variant `all_photos`)."""
    sample_batch_size: int = 25
    """Images per sampling batch."""
    checkpoint_every: int = field(default=500, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint (the tuned text encoder, AdamW moments, RNG states) every this many iterations
    and at the end, in the run's work folder; `bench run --resume` continues a killed run from it, bit-identically.
    0 = off. Not part of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        check_recipe(self)
        check_reference_set(self.reference_set)
        if self.loss_rate_first < 0 or self.loss_rate_second < 0:
            raise ValueError("loss_rate_first and loss_rate_second must be >= 0")
        if self.token_num < 0:
            raise ValueError(f"token_num must be 0 (all of the class word's tokens) or >= 1, not {self.token_num}")
        try:
            self.train_prompt.format(class_noun="")
        except (KeyError, IndexError, ValueError):
            ok = False
        else:
            ok = self.train_prompt.count("{class_noun}") == 1
        if not ok:
            raise ValueError(f"train_prompt must contain '{{class_noun}}' once and no other braces, e.g. "
                             f"'{{class_noun}}' or 'a photo of a {{class_noun}}', not '{self.train_prompt}'")


# --- where the class word sits in a prompt --------------------------------------------------------------------

def subject_ids(tokenizer: Any, class_noun: str, token_num: int) -> list[int]:
    """The token ids that carry the residual: the class word's BPE tokens (the first `token_num` of them, or all
    for 0). A `token_num` larger than the word's token count is a one-line error."""
    ids = tokenizer(class_noun, add_special_tokens=False).input_ids
    if not ids:
        raise BenchError(f"cones2: the class noun '{class_noun}' gives no tokens; give a class word such as 'dog'")
    if token_num > len(ids):
        raise BenchError(f"cones2: token_num={token_num} but the class noun '{class_noun}' is {len(ids)} "
                         f"token(s); use 0 (all of them) or 1..{len(ids)} (--set token_num=...)")
    return ids[:token_num] if token_num else ids


def find_subject(ids: list[int] | torch.Tensor, subject: list[int] | tuple[int, ...]) -> int | None:
    """The position of the first occurrence of the token sequence `subject` in `ids` (one prompt's ids), else None."""
    seq, n = [int(i) for i in ids], len(subject)
    for start in range(len(seq) - n + 1):
        if tuple(seq[start:start + n]) == tuple(subject):
            return start
    return None


class ResidualTextEncoder(torch.nn.Module):
    """The untouched text encoder with the subject's residual added to its output at the first occurrence of the
    subject's tokens (the reference's `cond_embeddings[0][token] += residual`); prompts without them (the empty
    prompt of a guided sampler) are encoded as they are. Callable as `sampling.encode_text` calls a text encoder."""

    def __init__(self, text_encoder: Any, subject: list[int], residual: torch.Tensor) -> None:
        super().__init__()
        self.text_encoder, self.subject = text_encoder, tuple(subject)
        self.register_buffer("residual", residual.detach().float().clone())  # (n, D)

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        hidden = self.text_encoder(input_ids, *args, **kwargs)[0]  # (B, 77, D)
        delta = torch.zeros_like(hidden)
        n = len(self.subject)
        for row, ids in enumerate(input_ids.tolist()):
            start = find_subject(ids, self.subject)
            if start is not None:
                delta[row, start:start + n] = self.residual.to(delta)
        return (hidden + delta,)


# --- the method ----------------------------------------------------------------------------------------------

class Cones2:
    name: ClassVar[str] = "cones2"
    label: ClassVar[str] = "Cones 2"
    version: ClassVar[int] = 1
    resumable: ClassVar[bool] = True  # checkpoint_every, through bench.models.loop
    Config: ClassVar[type] = Cones2Config
    variants: ClassVar[dict[str, dict[str, Any]]] = {**TRAIN_NFE_VARIANTS, **ALL_PHOTOS}

    def __init__(self, config: Cones2Config) -> None:
        self.config = config

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> Cones2Model:
        cfg = self.config
        torch.manual_seed(seed)
        parts = models.pipeline_parts()
        tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
        device = models.device

        # 1. The subject's tokens in the training prompt ("dog": position 1, after start of text).
        subject = subject_ids(tokenizer, concept.class_noun, cfg.token_num)
        prompt = cfg.train_prompt.format(class_noun=concept.class_noun)
        ids = sampling.tokenize(tokenizer, [prompt], device)  # (1, 77)
        start = find_subject(ids[0], subject)
        if start is None:
            raise BenchError(f"cones2: the training prompt '{prompt}' does not tokenise with the class noun "
                             f"'{concept.class_noun}' as a word; put {{class_noun}} apart (--set train_prompt=...)")
        end = start + len(subject)

        # 2. What the untouched encoder says: the preservation target, and the 27 templates for the residual.
        templates = [t.format(concept.class_noun) for t in IMAGENET_TEMPLATES]
        with torch.no_grad():
            target = text_encoder(ids)[0].float()  # (1, 77, D)
            frozen = _subject_rows(tokenizer, text_encoder, templates, subject)  # (27, n, D)

        # 3. A copy of the text encoder that learns, all of it; the run's own encoder stays untouched.
        tuned = copy.deepcopy(text_encoder).requires_grad_(True).train()
        params = list(tuned.parameters())
        optimizer = torch.optim.AdamW(params, lr=scaled_lr(cfg, cfg.batch_size), weight_decay=cfg.weight_decay)

        # 4. Data: the concept's photos as they are (no augmentation), the one fixed prompt.
        photos = reference_images(concept, cfg.reference_set)  # TextBoost's split by default
        batches = concept_batches(models, photos, prompt, cfg, seed, templates=("{}",))

        # 5. The shared denoising loop (`bench.models.loop`): the context is the tuned copy's output for the prompt
        #    (with gradient), the loss the denoising MSE plus the preservation norms against the untouched output.
        def context(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            hidden = tuned(ids)[0]  # (1, 77, D), with gradient
            return hidden.expand(len(batch.prompts), -1, -1), {"hidden": hidden}

        def loss(step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            hidden = step.extras["hidden"]
            first = torch.linalg.vector_norm((hidden[0, :start] - target[0, :start]).float())
            second = torch.linalg.vector_norm((hidden[0, end:] - target[0, end:]).float())
            embed = cfg.loss_rate_first * first + cfg.loss_rate_second * second
            mse = masked_mse(step.pred, step.target, step.batch.masks)
            return mse + embed, {"mse": mse, "embed": embed}

        loop = DenoisingLoop.for_recipe(cfg, models, parts, {"text_encoder": params}, optimizer, batches, seed,
                                        loss_fn=loss, context_fn=context)
        loop.run(cfg.iterations, out_dir, cfg.checkpoint_every, log)

        # 6. The residual: mean over the templates of tuned minus untouched output at the subject's tokens.
        tuned.requires_grad_(False).eval()
        with torch.no_grad():
            residual = (_subject_rows(tokenizer, tuned, templates, subject) - frozen).mean(0)  # (n, D)
        return Cones2Model(cfg, parts, concept.class_noun, subject, residual,
                           tuned if cfg.keep_text_encoder else None)

    def load(self, weights_dir: Path, models: Models) -> Cones2Model:
        from safetensors import safe_open

        parts = models.pipeline_parts()
        with safe_open(str(weights_dir / RESIDUAL_FILE), framework="pt") as f:
            residual, meta = f.get_tensor("residual"), f.metadata() or {}
        if "class_noun" not in meta or "token_ids" not in meta:
            raise ValueError(f"{RESIDUAL_FILE} has no class_noun / token_ids metadata: not a Cones 2 residual")
        noun, subject = meta["class_noun"], [int(i) for i in json.loads(meta["token_ids"])]
        ids = parts["tokenizer"](noun, add_special_tokens=False).input_ids
        if find_subject(ids, subject) != 0:
            raise ValueError(f"the residual's token ids {subject} are not the tokenizer's for '{noun}'")
        width = parts["text_encoder"].config.hidden_size
        if residual.ndim != 2 or residual.shape != (len(subject), width):
            raise ValueError(f"residual of shape {tuple(residual.shape)}; this text encoder needs "
                             f"({len(subject)}, {width})")
        return Cones2Model(self.config, parts, noun, subject, residual.to(models.device))


def _subject_rows(tokenizer: Any, text_encoder: Any, prompts: list[str], subject: list[int]) -> torch.Tensor:
    """(P, n, D) float32: each prompt's encoder output at the first occurrence of the subject's n tokens."""
    ids = sampling.tokenize(tokenizer, prompts, next(text_encoder.parameters()).device)
    hidden = text_encoder(ids)[0].float()
    rows = []
    for i in range(len(prompts)):
        start = find_subject(ids[i], subject)
        if start is None:  # only if the class word merges with a template's words
            raise BenchError(f"cones2: the class noun does not tokenise as a word in '{prompts[i]}'")
        rows.append(hidden[i, start:start + len(subject)])
    return torch.stack(rows)


class Cones2Model:
    """The personalised model: SD-Turbo with the residual on the class word; saved as `residual.safetensors`."""

    def __init__(self, config: Cones2Config, parts: dict[str, Any], class_noun: str, subject: list[int],
                 residual: torch.Tensor, tuned_text_encoder: Any = None) -> None:
        self.config, self.parts = config, parts
        self.class_noun, self.subject, self.residual = class_noun, list(subject), residual.detach().float()
        self.identifier = class_noun
        self.eval_phrase = "{class_noun}"  # "a dog in the jungle": the class word carries the subject
        self.default_steps = config.sample_steps
        self.tuned_text_encoder = tuned_text_encoder
        encoder = ResidualTextEncoder(parts["text_encoder"], self.subject, self.residual)
        self.sampling_parts = {**parts, "text_encoder": encoder.to(self.residual.device)}

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        tokenizer = self.parts["tokenizer"]
        for prompt in prompts:  # the residual needs its word: a prompt without it would silently be the base model
            if find_subject(sampling.tokenize(tokenizer, [prompt], "cpu")[0], self.subject) is None:
                raise BenchError(f"cones2: the prompt '{prompt}' does not contain the class noun "
                                 f"'{self.class_noun}' as a word, e.g. \"a {self.class_noun} on the moon\"")
        return sampling.generate_config(self.sampling_parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"residual": self.residual.contiguous().cpu()}, str(out_dir / RESIDUAL_FILE),
                  metadata={"class_noun": self.class_noun, "token_ids": json.dumps(self.subject),
                            "format": "cones2-residual"})
        if self.tuned_text_encoder is not None:
            self.tuned_text_encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
