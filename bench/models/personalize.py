"""Small tested helpers for Custom-Diffusion-style personalisation, shared by the methods that need them.

- a new token (`<new1>`) in a tokenizer/text encoder, initialised from a descriptive word, whose embedding row
  is the only row that learns (the other rows' gradients are zeroed by a hook);
- the cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`) of a UNet as the trainable set;
- saving those in diffusers' Custom Diffusion format (`load_attn_procs`) and the token in the textual-inversion
  format (`load_textual_inversion`), and loading them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CD_WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"

# One descriptive word per DreamBench class to initialise `<new1>` (method.md, "Models"); recorded per run.
INIT_WORDS = {
    "dog": "corgi", "cat": "ginger", "backpack": "rucksack", "stuffed animal": "teddy", "bowl": "ceramic",
    "can": "soda", "candle": "wax", "clock": "alarm", "sneaker": "trainer", "toy": "plastic", "boot": "leather",
    "glasses": "sunglasses", "cartoon": "character", "teapot": "porcelain", "vase": "ceramic",
}


def init_word(class_noun: str) -> str:
    """The initialisation word for a class; the class noun's last word when the class is not DreamBench's."""
    return INIT_WORDS.get(class_noun, class_noun.split()[-1])


def add_token(tokenizer: Any, text_encoder: Any, token: str, init: str) -> int:
    """Add `token` to the vocabulary and set its embedding to that of `init` (mean over its sub-tokens)."""
    if token in tokenizer.get_vocab():
        raise ValueError(f"token '{token}' is already in the vocabulary")
    init_ids = tokenizer(init, add_special_tokens=False).input_ids
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        emb[token_id] = emb[init_ids].mean(0)
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


def cross_attention_kv(unet: Any) -> list[torch.nn.Parameter]:
    """The key and value projection weights of every cross-attention layer (`attn2`), set trainable."""
    params = []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            for proj in (module.to_k, module.to_v):
                proj.weight.requires_grad_(True)
                params.append(proj.weight)
                if proj.bias is not None:
                    raise ValueError("cross-attention K/V with bias are not in the Custom Diffusion format")
    if not params:
        raise ValueError("the UNet has no cross-attention (attn2) layers")
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
