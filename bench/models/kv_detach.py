"""The token-0 K/V detach of Custom Diffusion training, as an attention processor.

diffusers' `CustomDiffusionAttnProcessor2_0(train_kv=True)` blocks the gradient through the key and value of
cross-attention token 0 (the start-of-text token): `detach * key + (1 - detach) * key.detach()` with detach = 0 on
token 0. The values are unchanged; only the K/V weights' gradients lose token 0's part. Here the same is done by
`DetachedKVProcessor`, set on every cross-attention layer (`attn2`) of a UNet that trains its own `to_k`/`to_v`
(`bench.models.personalize.cross_attention_kv`).

It is a processor, not a hook on `to_k`/`to_v`: `torch.compile` (speed switch `compile=regional`) traces the
processor as part of the block and guards on which processor a layer holds, so a compiled block never reuses code
traced for a layer without the detach; forward hooks on the inner projections are not re-checked by compiled code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class DetachedKVProcessor:
    """Cross-attention with no gradient through token 0's key and value; otherwise diffusers' `AttnProcessor2_0`
    (scaled dot-product attention) or, `eager=True`, its `AttnProcessor` (matmul-softmax-matmul, the speed switch
    `attention=eager`), with the same outputs."""

    def __init__(self, eager: bool = False) -> None:
        self.eager = eager

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        cross = encoder_hidden_states is not None
        if not cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        if cross:
            key, value = detach_first_token(key), detach_first_token(value)

        if self.eager:  # diffusers' AttnProcessor: heads folded into the batch, its own score function
            mask = attn.prepare_attention_mask(attention_mask, length, batch)
            query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
            probs = attn.get_attention_scores(query, key, mask)
            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        else:  # diffusers' AttnProcessor2_0
            heads, head_dim = attn.heads, key.shape[-1] // attn.heads
            query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
                attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)
            hidden_states = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def detach_first_token(projection: torch.Tensor) -> torch.Tensor:
    """(B, T, D) key or value with token 0 cut from the graph; the values are the same tensor's. Nothing to block
    without a gradient (inference): the projection comes back as it is."""
    if not projection.requires_grad:
        return projection
    return torch.cat([projection[:, :1].detach(), projection[:, 1:]], dim=1)


def cross_attention_layers(unet: Any) -> dict[str, Any]:
    """Every cross-attention layer (`attn2`) of a UNet by module name, in module order."""
    layers = {name: module for name, module in unet.named_modules() if name.endswith("attn2")}
    if not layers:
        raise ValueError("the UNet has no cross-attention (attn2) layers")
    return layers


def install(unet: Any) -> int:
    """Set `DetachedKVProcessor` on every attn2 layer that lacks it, keeping the layer's attention kind (eager when
    it held diffusers' `AttnProcessor`, scaled dot-product otherwise). Idempotent (a deep copy of a UNet carries its
    processors); returns the number of layers changed."""
    from diffusers.models.attention_processor import AttnProcessor

    added = 0
    for attn in cross_attention_layers(unet).values():
        if not isinstance(attn.processor, DetachedKVProcessor):
            attn.set_processor(DetachedKVProcessor(eager=isinstance(attn.processor, AttnProcessor)))
            added += 1
    return added


def remove(unet: Any) -> int:
    """Give every attn2 layer holding `DetachedKVProcessor` back diffusers' plain processor of the same attention
    kind; returns how many."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    removed = 0
    for attn in cross_attention_layers(unet).values():
        if isinstance(attn.processor, DetachedKVProcessor):
            attn.set_processor(AttnProcessor() if attn.processor.eager else AttnProcessor2_0())
            removed += 1
    return removed


def installed(unet: Any) -> bool:
    """Whether every attn2 layer of the UNet holds `DetachedKVProcessor`."""
    return all(isinstance(attn.processor, DetachedKVProcessor) for attn in cross_attention_layers(unet).values())
