"""Small tested helpers for Custom-Diffusion-style personalisation, shared by the methods that need them.

- a new token (`<new1>`) in a tokenizer/text encoder, initialised from a word, whose embedding row is the only
  row that learns (the other rows' gradients are zeroed by a hook). Two initialisations: "released" (the released
  code's per-instance word, looked up raw in the vocabulary, one row) and "class" (a descriptive word per class,
  BPE-tokenised, mean of its pieces); see `resolve_init` and `init_embedding_ids`;
- the cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`) of a UNet as the trainable set, with the
  gradient through the key and value of token 0 blocked as diffusers' `CustomDiffusionAttnProcessor2_0(train_kv=
  True)` blocks it (`cross_attention_kv`, `remove_kv_detach`);
- saving those in diffusers' Custom Diffusion format (`load_attn_procs`) and the token in the textual-inversion
  format (`load_textual_inversion`), and loading them back;
- the recipes' LoRA (`lora_config`): added to a UNet, taken (and fused) for saving in diffusers' LoRA format, and
  loaded back (`add_unet_lora`, `take_unet_lora` -> `UnetLoRA.save`, `load_unet_lora`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.models import kv_detach

CD_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"

# One descriptive word per DreamBench class to initialise `<new1>` (method.md, "Models"); recorded per run.
INIT_WORDS = {
    "dog": "corgi", "cat": "ginger", "backpack": "rucksack", "stuffed animal": "teddy", "bowl": "ceramic",
    "can": "soda", "candle": "wax", "clock": "alarm", "sneaker": "trainer", "toy": "plastic", "boot": "leather",
    "glasses": "sunglasses", "cartoon": "character", "teapot": "porcelain", "vase": "ceramic",
}

# The released code's initialisation word per DreamBench instance (OPAD-code, `run_dreambooth.py`, INSTANCES).
# It is looked up raw in the vocabulary (`init_embedding_ids(..., lookup="raw")`): with the CLIP vocabulary,
# "plushie", "corgi", "curly", "retriever", "stuffed" and "border collie" are no vocabulary entry and give the
# unknown token `<|endoftext|>`; the others give their non-word-final piece ("red", not "red</w>").
RELEASED_INIT_WORDS = {
    "backpack": "red", "backpack_dog": "color", "bear_plushie": "plushie", "berry_bowl": "white", "can": "color",
    "candle": "jar", "cat": "ginger", "cat2": "gray", "clock": "yellow", "colorful_sneaker": "color",
    "dog": "corgi", "dog2": "fluffy", "dog3": "curly", "dog5": "fluffy", "dog6": "corgi", "dog7": "retriever",
    "dog8": "border collie", "duck_toy": "duck", "fancy_boot": "white", "grey_sloth_plushie": "brown",
    "monster_toy": "stuffed", "pink_sunglasses": "pink", "poop_emoji": "ktn", "rc_car": "car",
    "red_cartoon": "sketch", "robot_toy": "robot", "shiny_sneaker": "rainbow", "teapot": "brown", "vase": "red",
    "wolf_plushie": "plushie",
}

INIT_SOURCES = ("released", "class")
"""Where the initialisation word comes from (`resolve_init`): "released" = `RELEASED_INIT_WORDS` per instance,
"class" = `INIT_WORDS` per class."""
INIT_LOOKUPS = ("raw", "bpe")
"""How a word becomes embedding rows (`init_embedding_ids`): "raw" = one vocabulary entry (the released code),
"bpe" = the BPE pieces of the word, averaged."""



def init_word(class_noun: str) -> str:
    """The initialisation word for a class; the class noun's last word when the class is not DreamBench's."""
    return INIT_WORDS.get(class_noun, class_noun.split()[-1])


def resolve_init(concept_name: str, class_noun: str, source: str = "class") -> str:
    """The word that initialises `<new1>` for a concept.

    source "released": the released code's word for the DreamBench instance (`RELEASED_INIT_WORDS`, keyed by the
    instance folder name, e.g. "dog6"); a concept that is not in that table falls back to the per-class word
    (`init_word(class_noun)`), since the released code has no word for it. source "class": the per-class word
    (`init_word`), whatever the concept. The lookup (raw or BPE) is chosen separately (`init_embedding_ids`).
    """
    if source == "released":
        return RELEASED_INIT_WORDS.get(concept_name, init_word(class_noun))
    if source == "class":
        return init_word(class_noun)
    raise ValueError(f"init source must be one of {', '.join(INIT_SOURCES)}, not '{source}'")


def init_for(concept_name: str, class_noun: str, source: str, word: str | None = None, in_dataset: bool = True
             ) -> tuple[str, str]:
    """(word, lookup) that initialise `<new1>` for a concept under `source` (a method's `init` field).

    "released": the released table's word looked up raw, as the released code does; a concept outside the table
    (a user's own folder, `in_dataset=False`, whatever its name) has no released word, so it gets the per-class word
    through BPE, the sensible reading.
    "class": the per-class word through BPE. `word` overrides the table's word, looked up the source's way.
    """
    released = source == "released" and (word is not None or (in_dataset and concept_name in RELEASED_INIT_WORDS))
    if not released:
        return word or init_word(class_noun), "bpe"
    return word or resolve_init(concept_name, class_noun, source), "raw"


def init_embedding_ids(tokenizer: Any, word: str, lookup: str = "bpe") -> list[int]:
    """The embedding rows whose mean initialises a new token from `word`.

    lookup "raw": the released code's `tokenizer.encode([word], add_special_tokens=False)` under the slow
    `CLIPTokenizer` of transformers 4.x, where a list of strings (without `is_split_into_words`) goes straight to
    `convert_tokens_to_ids`: `word` itself is looked up as one vocabulary entry (no lower-casing, no BPE, no `</w>`
    suffix, so an entry is a non-word-final piece), and a string that is not an entry gives the unknown token
    (`<|endoftext|>` for CLIP). Always one id. Done from the vocabulary here, so the slow and the fast tokenizer
    agree (transformers 5's `encode([word])` treats the list as a batch and BPE-tokenises instead).
    lookup "bpe": the word's BPE pieces (`tokenizer(word, add_special_tokens=False)`), one id or more.
    """
    if lookup == "raw":
        token_id = tokenizer.get_vocab().get(word)  # added tokens included, as `convert_tokens_to_ids` has them
        if token_id is None:
            token_id = tokenizer.unk_token_id
            if token_id is None:
                raise ValueError(f"'{word}' is not in the vocabulary and the tokenizer has no unknown token")
        return [int(token_id)]
    if lookup == "bpe":
        ids = list(tokenizer(word, add_special_tokens=False).input_ids)
        if not ids:
            raise ValueError(f"'{word}' tokenises to nothing")
        return ids
    raise ValueError(f"init lookup must be one of {', '.join(INIT_LOOKUPS)}, not '{lookup}'")


def add_token(tokenizer: Any, text_encoder: Any, token: str, init: str, lookup: str = "bpe") -> int:
    """Add `token` to the vocabulary and set its embedding from the word `init`; returns the token's id.

    lookup "bpe" (default): the mean of the rows of `init`'s BPE pieces; "raw": a copy of the one row of `init`
    looked up raw in the vocabulary, as the released code does (`init_embedding_ids`).
    """
    if token in tokenizer.get_vocab():
        raise ValueError(f"token '{token}' is already in the vocabulary")
    init_ids = init_embedding_ids(tokenizer, init, lookup)  # looked up before the new token exists
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        emb[token_id] = emb[init_ids[0]] if lookup == "raw" else emb[init_ids].mean(0)
    return token_id


def train_token_row(text_encoder: Any, token_ids: list[int]) -> torch.nn.Parameter:
    """Make the embedding matrix trainable but zero the gradient of every row except `token_ids`.

    Returns the embedding weight. Weight decay in AdamW would still move frozen rows, so callers either use
    weight_decay=0 for it or call `restore_rows` after each step.
    """
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    mask[token_ids] = 1.0
    weight.register_hook(lambda grad: grad * mask)
    return weight


def restore_rows(text_encoder: Any, original: torch.Tensor, keep: list[int]) -> None:
    """Copy `original` back into every embedding row except `keep` (guards against optimiser drift)."""
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        mask = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[keep] = False
        weight[mask] = original.to(weight.device)[mask]


def keep_other_rows(text_encoder: Any, keep: list[int]) -> Callable[[], None]:
    """Snapshot the embedding table now; the function returned copies every row but `keep` back from it (a loop's
    `after_step`: weight decay and the optimiser's moments cannot move the frozen rows)."""
    original = text_encoder.get_input_embeddings().weight.detach().clone()
    return lambda: restore_rows(text_encoder, original, keep)


def kv_projections(unet: Any) -> list[torch.nn.Module]:
    """The key and value projections (`to_k`, `to_v`) of every cross-attention layer (`attn2`), in module order."""
    projs = [proj for name, module in unet.named_modules() if name.endswith("attn2")
             for proj in (module.to_k, module.to_v)]
    if not projs:
        raise ValueError("the UNet has no cross-attention (attn2) layers")
    return projs


def install_kv_detach(unet: Any) -> int:
    """Block the gradient through the key and value of cross-attention token 0 (the start-of-text token), as
    diffusers' `CustomDiffusionAttnProcessor2_0(train_kv=True)` does: `bench.models.kv_detach.DetachedKVProcessor` on
    every attn2 layer (outputs unchanged, compile-safe). Idempotent; returns the number of layers changed."""
    return kv_detach.install(unet)


def remove_kv_detach(unet: Any) -> int:
    """Undo `install_kv_detach` (also on a deep copy of a UNet that had it); returns how many layers changed."""
    return kv_detach.remove(unet)


def has_kv_detach(unet: Any) -> bool:
    """Whether every attn2 layer of the UNet blocks token 0's K/V gradient."""
    return kv_detach.installed(unet)


def cross_attention_kv(unet: Any, detach_first_token: bool = True) -> list[torch.nn.Parameter]:
    """The key and value projection weights of every cross-attention layer (`attn2`), set trainable.

    detach_first_token (default True): no gradient through token 0's key and value, as diffusers'
    `CustomDiffusionAttnProcessor2_0(train_kv=True)` trains them (`install_kv_detach`; idempotent). False removes
    any such processor, so the gradient of token 0 flows (the behaviour before the option existed).
    """
    params = []
    for proj in kv_projections(unet):
        if proj.bias is not None:
            raise ValueError("cross-attention K/V with bias are not in the Custom Diffusion format")
        proj.weight.requires_grad_(True)
        params.append(proj.weight)
    if detach_first_token:
        install_kv_detach(unet)
    else:
        remove_kv_detach(unet)
    return params


def save_custom_diffusion(unet: Any, out_dir: Path) -> Path:
    """Write attn2 K/V in diffusers' Custom Diffusion format; `unet.load_attn_procs(out_dir, weight_name=...)`."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    original = unet.attn_processors
    names = list(original)  # `set_attn_processor` empties the dict it is given
    procs = {}
    for name in original:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if name.endswith("attn2.processor"):
            proc = CustomDiffusionAttnProcessor(train_kv=True, train_q_out=False, hidden_size=attn.to_k.out_features,
                                                cross_attention_dim=attn.to_k.in_features)
            proc.to_k_custom_diffusion.weight.data.copy_(attn.to_k.weight.data)
            proc.to_v_custom_diffusion.weight.data.copy_(attn.to_v.weight.data)
            procs[name] = proc.to(attn.to_k.weight.device)
        else:
            procs[name] = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False)
    unet.set_attn_processor(procs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        unet.save_attn_procs(out_dir, weight_name=CD_WEIGHTS, safe_serialization=True)
    finally:
        unet.set_attn_processor(original)
    # diffusers' loader expects one entry per attention layer and builds a plain Custom Diffusion processor for an
    # empty one; safetensors drops processors without parameters, so the self-attention layers are written back
    # as empty tensors (what the Custom Diffusion training script's .bin files hold as empty dicts).
    from safetensors.torch import load_file, save_file

    path = out_dir / CD_WEIGHTS
    state = load_file(path)
    state.update({name: torch.empty(0) for name in names if not name.endswith("attn2.processor")})
    save_file(state, path)
    return path


def load_custom_diffusion(unet: Any, weights: Path) -> None:
    """Copy K/V saved by `save_custom_diffusion` back into the UNet's own attn2 projections."""
    from safetensors.torch import load_file

    state = load_file(weights)
    for key, value in state.items():
        if value.numel() == 0:  # a layer without trained K/V (see `save_custom_diffusion`)
            continue
        module_name, _, param = key.rpartition(".processor.")
        proj = {"to_k_custom_diffusion.weight": "to_k", "to_v_custom_diffusion.weight": "to_v"}.get(param)
        if proj is None:
            raise ValueError(f"unexpected key in Custom Diffusion weights: {key}")
        getattr(unet.get_submodule(module_name), proj).weight.data.copy_(value)


def save_token(tokenizer: Any, text_encoder: Any, token: str, path: Path) -> Path:
    """The token's embedding row as a textual-inversion file (`{token: (1, D)}`), `pipe.load_textual_inversion`."""
    from safetensors.torch import save_file

    row = text_encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(token)]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: row.detach().float().cpu().clone().unsqueeze(0)}, path)
    return path


def load_token(tokenizer: Any, text_encoder: Any, path: Path) -> str:
    """Add the token stored in a textual-inversion file to the tokenizer/encoder; returns the token."""
    from safetensors.torch import load_file

    state = load_file(path)
    (token, row), = state.items()
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token])
        text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        emb = text_encoder.get_input_embeddings().weight
        emb[tokenizer.convert_tokens_to_ids(token)] = row.reshape(-1).to(emb)
    return token


def lora_config(rank: int, alpha: float | None, target_modules: tuple[str, ...]) -> Any:
    """The recipes' peft `LoraConfig`: rank r, alpha (None = r, scale 1), Gaussian A (std 1/r) and B = 0, on the
    modules whose names end in `target_modules`."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian",
                      target_modules=list(target_modules))


def add_unet_lora(unet: Any, rank: int, alpha: float | None, target_modules: tuple[str, ...]
                  ) -> dict[str, torch.nn.Parameter]:
    """Add the LoRA adapter ("default", `lora_config`) to the UNet; returns its A/B matrices by name, the only
    trainable weights (draws the Gaussian init from the global torch RNG)."""
    unet.add_adapter(lora_config(rank, alpha, target_modules))
    return {name: p for name, p in unet.named_parameters() if p.requires_grad}


def load_unet_lora(unet: Any, weights_dir: Path) -> None:
    """Load `UnetLoRA.save`'s file into the UNet through diffusers' own loader (what `pipe.load_lora_weights(dir)`
    runs, the LoRA config read from the file's metadata); the UNet stays frozen."""
    from diffusers import StableDiffusionPipeline

    from bench.models.lora_check import check_lora_complete

    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(weights_dir, return_lora_metadata=True)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, adapter_name="default", metadata=metadata)
    check_lora_complete(Path(weights_dir) / "pytorch_lora_weights.safetensors", {"unet": unet}, "default")
    unet.requires_grad_(False)


@dataclass(frozen=True)
class UnetLoRA:
    """A UNet's LoRA adapter as diffusers saves it (`take_unet_lora`), kept apart from the UNet for `save`."""

    layers: dict[str, Any]
    """The A/B matrices under diffusers' key names."""
    metadata: dict[str, Any]
    """The peft LoRA config (rank, alpha, targets), written as the file's metadata."""

    def save(self, out_dir: Path) -> None:
        """`pytorch_lora_weights.safetensors` with the LoRA config as metadata: `pipe.load_lora_weights(out_dir)`."""
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=self.layers,
                                                  unet_lora_adapter_metadata=self.metadata, safe_serialization=True)


def take_unet_lora(unet: Any, fuse: bool) -> UnetLoRA:
    """The UNet's peft LoRA adapter ("default") as diffusers saves it, taken before an optional fuse,
    W <- W + (alpha / r) B A, after which the peft wrappers are dropped so that sampling, and its timing, runs a
    plain UNet."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from bench.models.checkpoint import stable_lora_metadata

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="default"))
    metadata = stable_lora_metadata(unet.peft_config["default"].to_dict())  # same run, same bytes
    if fuse:
        unet.fuse_lora()
        unet.unload_lora()
    return UnetLoRA(layers, metadata)
