"""Fidelity of the Custom Diffusion parts to the released code and to diffusers' Custom Diffusion processor.

- K/V training: `personalize.cross_attention_kv` trains the UNet's own attn2 `to_k`/`to_v` with the default
  attention processor; its gradients must equal those of diffusers' `CustomDiffusionAttnProcessor2_0(train_kv=True)`,
  which detaches the key and value of cross-attention token 0.
- The initial token: the released code looks its per-instance word up raw in the CLIP vocabulary
  (`tokenizer.encode([word], add_special_tokens=False)` under transformers 4.x's slow `CLIPTokenizer`) and copies
  that one row.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers

from bench.models import kv_detach, personalize
from bench.models.tiny import CLIP_SPECIAL, write_clip_tokenizer

# --- K/V training: first-token detach --------------------------------------------------------------------------


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8,
        )
    return unet.float().eval().requires_grad_(False)


def _inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([999, 500])
    context = torch.randn(2, 77, 32, generator=gen)
    target = torch.randn(2, 4, 8, 8, generator=gen)
    return sample, timesteps, context, target


def _step(unet, params: dict[str, torch.nn.Parameter]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's output and the gradient of its MSE loss for each named parameter."""
    sample, timesteps, context, target = _inputs()
    out = unet(sample, timesteps, encoder_hidden_states=context).sample
    loss = torch.nn.functional.mse_loss(out, target)
    grads = torch.autograd.grad(loss, list(params.values()))
    return out.detach(), dict(zip(params, grads))


def _ours(unet, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Our path: the UNet's own attn2 K/V, default attention processors, `cross_attention_kv`."""
    weights = personalize.cross_attention_kv(unet, **kwargs)
    names = {id(p): n for n, p in unet.named_parameters()}
    params = {names[id(w)].removesuffix(".weight"): w for w in weights}  # "...attn2.to_k"
    assert len(params) == len(weights) > 0
    return _step(unet, params)


def _custom_diffusion_peer(unet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """diffusers' Custom Diffusion training set-up (examples/custom_diffusion): `CustomDiffusionAttnProcessor2_0`
    with train_kv on every attn2, K/V copied from the UNet, parameterless Custom Diffusion processors elsewhere."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    peer = copy.deepcopy(unet)
    personalize.remove_kv_detach(peer)  # a plain copy of the pretrained UNet, whatever was installed on `unet`
    procs, params = {}, {}
    for name in list(peer.attn_processors):
        layer = name.removesuffix(".processor")
        attn = peer.get_submodule(layer)
        if name.endswith("attn2.processor"):
            proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False,
                                                   hidden_size=attn.to_k.out_features,
                                                   cross_attention_dim=attn.to_k.in_features)
            proc.load_state_dict({"to_k_custom_diffusion.weight": attn.to_k.weight.detach().clone(),
                                  "to_v_custom_diffusion.weight": attn.to_v.weight.detach().clone()})
            params[f"{layer}.to_k"] = proc.to_k_custom_diffusion.weight
            params[f"{layer}.to_v"] = proc.to_v_custom_diffusion.weight
        else:
            proc = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False,
                                                   hidden_size=attn.to_q.out_features, cross_attention_dim=None)
        procs[name] = proc
    peer.set_attn_processor(procs)
    for weight in params.values():
        weight.requires_grad_(True)
    return _step(peer, params)


def _kv_hooks(unet) -> int:
    """How many K/V projections are detached at token 0 (two per attn2 layer holding the detaching processor)."""
    return sum(2 for name, module in unet.named_modules()
               if name.endswith("attn2") and isinstance(module.processor, kv_detach.DetachedKVProcessor))


def test_kv_gradients_equal_custom_diffusion_processor() -> None:
    """Our K/V gradients (and outputs) are those of `CustomDiffusionAttnProcessor2_0(train_kv=True)`, and differ
    from the gradients with token 0 left in (the behaviour before the detach)."""
    base = _tiny_unet()
    peer_out, peer_grads = _custom_diffusion_peer(base)
    out, grads = _ours(copy.deepcopy(base))  # the default: detach_first_token=True
    plain_out, plain_grads = _ours(copy.deepcopy(base), detach_first_token=False)

    assert set(grads) == set(peer_grads) == set(plain_grads)
    assert len(grads) == 8  # four cross-attention layers (one down, one mid, two up), K and V each
    torch.testing.assert_close(out, peer_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)  # the detach never changes a value
    for name in grads:
        assert peer_grads[name].abs().max() > 0, f"{name}: no gradient reaches the layer, the test would be void"
        torch.testing.assert_close(grads[name], peer_grads[name], rtol=1e-5, atol=1e-8, msg=name)
        diff = (plain_grads[name] - peer_grads[name]).abs().max()
        assert diff > 1e-3 * peer_grads[name].abs().max(), f"{name}: token 0 makes no difference to the gradient"


def test_kv_detach_is_idempotent_and_removable() -> None:
    base = _tiny_unet()
    _, once = _ours(base)
    assert personalize.has_kv_detach(base) and _kv_hooks(base) == 8
    _, twice = _ours(base)  # installing again adds nothing
    assert _kv_hooks(base) == 8 and personalize.install_kv_detach(base) == 0
    for name in once:
        assert torch.equal(once[name], twice[name])

    clone = copy.deepcopy(base)  # a copy carries the processors; installing on it must not double them either
    assert _kv_hooks(clone) == 8 and personalize.install_kv_detach(clone) == 0

    assert personalize.remove_kv_detach(base) == 4 and _kv_hooks(base) == 0 and not personalize.has_kv_detach(base)
    assert personalize.remove_kv_detach(base) == 0
    _, plain = _step(base, {n: base.get_submodule(n).weight for n in once})
    _, plain_again = _ours(clone, detach_first_token=False)  # the switch removes processors a copy carried
    assert _kv_hooks(clone) == 0
    for name in once:
        assert torch.equal(plain[name], plain_again[name])
        assert not torch.equal(plain[name], once[name])


def test_kv_detach_survives_torch_compile() -> None:
    """Regional compilation (`--speed compile=regional`) of an undetached UNet and then of detaching ones, in one
    process: each compiled copy keeps its own gradients. (A forward hook on `to_k`/`to_v` was lost here: the
    detaching copy compiled after an undetached one ran its code and got token 0's gradient back.)"""
    from bench.models.speed import REGIONS

    def compiled(unet):
        for sub in unet.modules():
            if type(sub).__name__ in REGIONS:
                sub.compile(backend="eager")
        return unet

    torch._dynamo.reset()
    base = _tiny_unet()
    _, peer = _custom_diffusion_peer(base)
    _, plain = _ours(compiled(copy.deepcopy(base)), detach_first_token=False)
    _, after = _ours(compiled(copy.deepcopy(base)))  # the detach set after compiling (what a run does)
    before = copy.deepcopy(base)
    personalize.install_kv_detach(before)
    _, before = _ours(compiled(before))  # ... and before compiling
    eager_attention = copy.deepcopy(base)
    from diffusers.models.attention_processor import AttnProcessor

    eager_attention.set_attn_processor(AttnProcessor())  # `--speed attention=eager`: kept by the detach
    _, eager = _ours(compiled(eager_attention))
    assert all(isinstance(m.processor, kv_detach.DetachedKVProcessor) and m.processor.eager
               for n, m in eager_attention.named_modules() if n.endswith("attn2"))
    torch._dynamo.reset()
    for name in peer:
        for grads in (after, before, eager):
            torch.testing.assert_close(grads[name], peer[name], rtol=1e-5, atol=1e-8, msg=name)
        assert (plain[name] - peer[name]).abs().max() > 1e-3 * peer[name].abs().max(), name


def test_kv_detach_is_harmless_at_inference() -> None:
    base = _tiny_unet()
    sample, timesteps, context, _ = _inputs()
    with torch.no_grad():
        before = base(sample, timesteps, encoder_hidden_states=context).sample
    personalize.cross_attention_kv(base)
    with torch.no_grad():
        after = base(sample, timesteps, encoder_hidden_states=context).sample
    with torch.inference_mode():
        inference = base(sample, timesteps, encoder_hidden_states=context).sample
    assert torch.equal(before, after) and torch.equal(before, inference)


# --- the initial token -----------------------------------------------------------------------------------------

UNKNOWN = {"plushie", "corgi", "curly", "retriever", "stuffed", "border collie"}
"""Table words that are no entry of the CLIP vocabulary: the released lookup gives `<|endoftext|>` for them."""


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip-tokenizer")
    write_clip_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def fast(tok_dir: Path):
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(tok_dir)  # transformers 5: CLIPTokenizer itself
    assert tokenizer.is_fast
    return tokenizer


def _slow(tok_dir: Path):
    """transformers 4.x's slow `CLIPTokenizer` (the released code's class), or None where it no longer exists."""
    cls = transformers.CLIPTokenizer
    return cls.from_pretrained(tok_dir) if issubclass(cls, transformers.PreTrainedTokenizer) else None


def _released_encode(tok_dir: Path, word: str) -> list[int]:
    """The released code's `tokenizer.encode([word], add_special_tokens=False)` under the slow CLIPTokenizer.

    With transformers 4.x, the call itself. transformers 5 has no slow CLIPTokenizer (and its `encode` takes a list
    as a batch), so there the 4.x path is written out on the tokenizer's files: `_encode_plus` sends a list of
    strings (not `is_split_into_words`) to `convert_tokens_to_ids`, whose `_convert_token_to_id` is
    `encoder.get(token, encoder.get(unk_token))`.
    """
    slow = _slow(tok_dir)
    if slow is not None:
        return slow.encode([word], add_special_tokens=False)
    encoder = json.loads((tok_dir / "vocab.json").read_text())
    unk = json.loads((tok_dir / "tokenizer_config.json").read_text())["unk_token"]
    return [encoder.get(word, encoder.get(unk))]


def _open_clip_raw(word: str) -> int:
    """The same raw lookup on open_clip's own vocabulary (an independent copy of the CLIP vocabulary)."""
    from open_clip.tokenizer import SimpleTokenizer

    encoder = {CLIP_SPECIAL.get(k, k): v for k, v in SimpleTokenizer().encoder.items()}
    return encoder.get(word, encoder["<|endoftext|>"])


def test_raw_lookup_equals_released_encode_for_every_table_word(tok_dir: Path, fast) -> None:
    words = sorted(set(personalize.RELEASED_INIT_WORDS.values()))
    slow = _slow(tok_dir)
    for word in words:
        expected = _released_encode(tok_dir, word)
        assert len(expected) == 1
        assert personalize.init_embedding_ids(fast, word, "raw") == expected, word
        assert expected == [_open_clip_raw(word)], word
        if slow is not None:
            assert personalize.init_embedding_ids(slow, word, "raw") == expected, word


def test_raw_lookup_unknown_words_give_endoftext(fast) -> None:
    eot = fast.convert_tokens_to_ids("<|endoftext|>")
    assert eot == fast.unk_token_id == 49407
    table = set(personalize.RELEASED_INIT_WORDS.values())
    assert UNKNOWN <= table
    unknown = {w for w in table if personalize.init_embedding_ids(fast, w, "raw") == [eot]}
    assert unknown == UNKNOWN
    subjects = {s for s, w in personalize.RELEASED_INIT_WORDS.items() if w in UNKNOWN}
    assert subjects == {"bear_plushie", "dog", "dog3", "dog6", "dog7", "dog8", "monster_toy", "wolf_plushie"}


def test_raw_lookup_is_a_non_word_final_piece(fast) -> None:
    """A known word gives its vocabulary entry without `</w>` (not what BPE gives); "corgi" has only the
    word-final entry "corgi</w>", so the raw lookup of "corgi" is `<|endoftext|>`, never "corgi</w>"."""
    (red,) = personalize.init_embedding_ids(fast, "red", "raw")
    assert fast.convert_ids_to_tokens(red) == "red"
    assert personalize.init_embedding_ids(fast, "red", "bpe") == fast.convert_tokens_to_ids(["red</w>"]) != [red]
    (ktn,) = personalize.init_embedding_ids(fast, "ktn", "raw")  # poop_emoji: one raw entry, two BPE pieces
    assert fast.convert_ids_to_tokens(ktn) == "ktn"
    assert len(personalize.init_embedding_ids(fast, "ktn", "bpe")) == 2
    corgi_bpe = personalize.init_embedding_ids(fast, "corgi", "bpe")
    assert fast.convert_ids_to_tokens(corgi_bpe) == ["corgi</w>"]
    assert personalize.init_embedding_ids(fast, "corgi", "raw") == [fast.unk_token_id]
    assert "corgi" not in fast.get_vocab()
    with pytest.raises(ValueError):
        personalize.init_embedding_ids(fast, "red", "nope")


def _tiny_text_encoder():
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.CLIPTextModel(config).eval()


@pytest.mark.parametrize("word", ["red", "ktn", "border collie", "corgi"])
def test_add_token_raw_copies_the_looked_up_row(tok_dir: Path, word: str) -> None:
    tokenizer, encoder = transformers.CLIPTokenizerFast.from_pretrained(tok_dir), _tiny_text_encoder()
    original = encoder.get_input_embeddings().weight.detach().clone()
    (row,) = personalize.init_embedding_ids(tokenizer, word, "raw")
    token_id = personalize.add_token(tokenizer, encoder, "<new1>", word, lookup="raw")
    emb = encoder.get_input_embeddings().weight
    assert token_id == original.shape[0] and emb.shape[0] == token_id + 1
    assert torch.equal(emb[token_id], original[row])
    assert torch.equal(emb[:token_id], original)


def test_add_token_default_stays_bpe_mean(tok_dir: Path) -> None:
    tokenizer, encoder = transformers.CLIPTokenizerFast.from_pretrained(tok_dir), _tiny_text_encoder()
    original = encoder.get_input_embeddings().weight.detach().clone()
    pieces = tokenizer("ktn", add_special_tokens=False).input_ids
    assert len(pieces) == 2
    token_id = personalize.add_token(tokenizer, encoder, "<new1>", "ktn")  # callers that pass no lookup
    assert torch.equal(encoder.get_input_embeddings().weight[token_id], original[pieces].mean(0))


def test_resolve_init() -> None:
    table = personalize.RELEASED_INIT_WORDS
    assert len(table) == 30 and table["dog8"] == "border collie" and table["poop_emoji"] == "ktn"
    assert personalize.resolve_init("dog6", "dog", "released") == "corgi"
    assert personalize.resolve_init("backpack_dog", "backpack", "released") == "color"
    assert personalize.resolve_init("backpack_dog", "backpack", "class") == personalize.init_word("backpack")
    assert personalize.resolve_init("my_mug", "mug", "released") == personalize.init_word("mug") == "mug"
    assert personalize.resolve_init("my_dog", "dog", "released") == personalize.INIT_WORDS["dog"]
    assert set(personalize.INIT_SOURCES) == {"released", "class"}
    with pytest.raises(ValueError):
        personalize.resolve_init("dog", "dog", "paper")


def test_released_table_covers_dreambench(dreambench_root: Path) -> None:
    dataset = dreambench_root / "dataset" if (dreambench_root / "dataset").is_dir() else dreambench_root
    subjects = {p.name for p in dataset.iterdir() if p.is_dir()}
    assert subjects <= set(personalize.RELEASED_INIT_WORDS)  # the mini fixture holds five of the thirty
    if len(subjects) >= 30:
        assert subjects == set(personalize.RELEASED_INIT_WORDS)
