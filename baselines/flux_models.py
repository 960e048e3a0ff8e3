"""FLUX.1 model roles, OminiControl's base, declared by the method (`OminiControl.model_roles = MODEL_ROLES`) for all
three profiles: where they come from, how they load, and the `tiny` stand-ins.

Roles: `flux_transformer` (FluxTransformer2DModel), `flux_vae` (16-channel AutoencoderKL), `flux_text_encoder` and
`flux_tokenizer` (CLIP-L: the pooled prompt vector), `flux_text_encoder_2` and `flux_tokenizer_2` (T5-XXL encoder:
the token sequence), `flux_scheduler` (flow-matching Euler) and `omini_lora` (OminiControl's subject LoRA file).

- `paper`: FLUX.1-schnell's diffusers repository (`--weights flux=/path/to/FLUX.1-schnell`) and the LoRA file
  `omini/subject_512.safetensors` of `Yuanshi/OminiControl` (`--weights omini=/path/to/OminiControl`, a folder
  holding `omini/subject_512.safetensors`, or the file itself); the method's `lora_file` may name the paper's
  `experimental/subject.safetensors` of the same source instead (`omini_lora_path`).
  The transformer and T5 load in bfloat16.
- `tiny`: small seeded models built in code into their own cache folder (`tiny-flux-v<N>`, apart from the SD
  stand-ins so that neither build invalidates the other), saved by `FluxPipeline.save_pretrained` in the
  repository's layout, with a LoRA file in the released key format (`FluxPipeline.save_lora_weights` of a peft
  adapter on the released target modules); read back by the loaders below, which also read the real ones.
- `paper-random`: the full-size architectures from `bench/models/configs/flux-schnell`, random weights; the LoRA
  role is then empty and the method adds a random adapter of the released shape.

They join OminiControl's profile only (`Profile.for_method`): every other method's profile, record and hash are as
they were before they were added. `--weights` groups: `flux` and `omini`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.models.component import Component, ModelRoles

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
OMINICONTROL = "Yuanshi/OminiControl"
OMINI_LORA_FILE = "omini/subject_512.safetensors"
OMINI_PAPER_LORA_FILE = "experimental/subject.safetensors"
"""The subject LoRA OminiControl's README calls "the model used in the paper" (`omini/subject_512` is the later
one, "fine-tuned on a larger dataset", which its example notebook loads)."""
OMINI_LORA_FILES = (OMINI_LORA_FILE, OMINI_PAPER_LORA_FILE)
METHODS = ("ominicontrol",)
"""The methods these roles are reserved for (`Component.methods`): other methods' profiles leave them out."""

OMINI_TARGETS = (r"(.*x_embedder|.*(?<!single_)transformer_blocks\.[0-9]+\.norm1\.linear"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.attn\.to_[qkv]"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.attn\.to_out\.0"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.ff\.net\.2"
                 r"|.*single_transformer_blocks\.[0-9]+\.norm\.linear|.*single_transformer_blocks\.[0-9]+\.proj_mlp"
                 r"|.*single_transformer_blocks\.[0-9]+\.proj_out|.*single_transformer_blocks\.[0-9]+\.attn\.to_[qkv])")
"""The modules OminiControl's subject LoRA adapts (its released training config `train/config/subject.yaml`): the
patch embedder, every block's modulation, attention projections and MLP output. Rank 16, alpha 16."""
OMINI_RANK = 16

TINY_FLUX_VERSION = 2
"""Bump when `build_tiny` changes: the cache folder name carries it."""


def flux_roles(flux_source: str, omini_source: str, tiny: bool) -> dict[str, Component]:
    """The FLUX.1 roles of a profile; `tiny` points at the built stand-ins (float32, no shipped configs)."""
    half = {} if tiny else {"dtype": "bfloat16"}  # 12B and 4.7B parameters: the released bf16 weights as they are

    def role(kind: str, subfolder: str, options: dict | None = None) -> Component:
        shipped = not tiny and not kind.endswith("tokenizer")  # tokenizers are built, not configured
        return Component(kind, "flux", flux_source, subfolder, options=options or {},
                         config=f"flux-schnell/{subfolder}" if shipped else None, methods=METHODS)

    return {
        "flux_transformer": role("flux_transformer", "transformer", half),
        "flux_vae": role("vae", "vae"),
        "flux_text_encoder": role("text_encoder", "text_encoder"),
        "flux_tokenizer": role("tokenizer", "tokenizer"),
        "flux_text_encoder_2": role("t5_encoder", "text_encoder_2", half),
        "flux_tokenizer_2": role("t5_tokenizer", "tokenizer_2"),
        "flux_scheduler": role("scheduler", "scheduler"),
        "omini_lora": Component("omini_lora", "omini", omini_source, file=OMINI_LORA_FILE, methods=METHODS),
    }


def tiny_flux_roles() -> dict[str, Component]:
    root = tiny_flux_root()
    return flux_roles(str(root / "flux-schnell"), str(root / "OminiControl"), tiny=True)


# --- loaders (the same code for all three profiles) --------------------------------------------------------


def _dtype(comp: Component) -> Any:
    import torch

    return getattr(torch, comp.options.get("dtype", "float32"))


def _flux_transformer(comp: Component, random_init: bool) -> Any:
    from diffusers import FluxTransformer2DModel

    from bench.models.component import CONFIGS, from_pretrained

    if random_init:
        return FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(CONFIGS / comp.config)).to(_dtype(comp))
    return from_pretrained(FluxTransformer2DModel, comp).to(_dtype(comp))


def _t5_encoder(comp: Component, random_init: bool) -> Any:
    from transformers import T5Config, T5EncoderModel

    from bench.models.component import CONFIGS, from_pretrained

    if random_init:
        return T5EncoderModel(T5Config.from_pretrained(CONFIGS / comp.config)).to(_dtype(comp))
    return from_pretrained(T5EncoderModel, comp).to(_dtype(comp))


def _t5_tokenizer(comp: Component, random_init: bool) -> Any:
    from transformers import T5TokenizerFast

    from bench.models.component import from_pretrained

    if random_init:  # the real SentencePiece vocabulary does not ship with any package: the in-code one
        out = tiny_flux_root().parent / "t5-tokenizer"
        if not (out / "tokenizer.json").exists():
            write_t5_tokenizer(out)
        return T5TokenizerFast.from_pretrained(out)
    return from_pretrained(T5TokenizerFast, comp)


def _omini_lora(comp: Component, random_init: bool) -> Any:
    """The LoRA file's path (the method loads it through diffusers' `FluxPipeline.load_lora_weights`); None on
    paper-random, where the method adds a random adapter of the released shape instead."""
    if random_init:
        return None
    from bench.models.component import hub_file

    path = hub_file(comp)
    if not path.is_file():
        raise FileNotFoundError(f"no {comp.file} in {comp.source}")
    return path


LOADERS = {"flux_transformer": _flux_transformer, "t5_encoder": _t5_encoder, "t5_tokenizer": _t5_tokenizer,
           "omini_lora": _omini_lora}
"""Loader kinds these roles add to `bench.models.loading` (the VAE, CLIP, tokenizer and scheduler use its own)."""


# --- tiny stand-ins ----------------------------------------------------------------------------------------


def tiny_flux_root() -> Path:
    from bench.paths import cache_root

    return cache_root() / f"tiny-flux-v{TINY_FLUX_VERSION}"


def ensure_tiny_flux() -> Path:
    """Build the tiny FLUX.1 stand-ins and LoRA into the cache unless there (atomically); return the folder."""
    from bench.models.tiny import build_once

    return build_once(tiny_flux_root(), TINY_FLUX_VERSION, build_tiny)


def write_t5_tokenizer(out: Path) -> None:
    """A T5-style Unigram tokenizer built in code (special tokens `<pad>` 0, `</s>` 1, `<unk>` 2, the 100 sentinel
    tokens, single characters and some 2,000 English words from CLIP's vocabulary), saved as `tokenizer.json` the
    way the FLUX.1 repository ships its T5 tokenizer. Different prompts give different ids; the ids are not T5's."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    words = [t[:-4] for t in SimpleTokenizer().encoder if t.endswith("</w>") and t[:-4].isalpha() and len(t) > 5]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -3.0 - i * 1e-3) for i, w in enumerate(words[:2000])]
    vocab += [(c, -10.0) for c in chars] + [(f"\u2581{c}", -9.0) for c in chars]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    T5TokenizerFast(vocab=vocab, model_max_length=512).save_pretrained(out)


def build_tiny(root: Path) -> None:
    """Tiny FLUX.1-schnell (a diffusers pipeline folder) and OminiControl LoRA file under `root`."""
    from bench.hub import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from bench.models.tiny import write_clip_tokenizer

    torch.manual_seed(20)
    # 2 heads of 16 channels (rotary axes 4 + 6 + 6), one double and one single block; 64 input channels as the
    # real one (16 latent channels, 2 x 2 patches packed).
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(21)  # downsamples by 8 with 16 latent channels, FLUX's scale and shift
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16, 16, 16),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(22)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
                                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407))
    tok_dir, t5_dir = root / "_tok" / "clip", root / "_tok" / "t5"
    write_clip_tokenizer(tok_dir, "<|endoftext|>")  # CLIP-L (openai) pads with its end token
    write_t5_tokenizer(t5_dir)
    t5_tokenizer = T5TokenizerFast.from_pretrained(t5_dir)
    torch.manual_seed(23)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                 num_heads=4, feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                                 dropout_rate=0.0, pad_token_id=0, eos_token_id=1))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=CLIPTokenizer.from_pretrained(
        tok_dir), text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.save_pretrained(root / "flux-schnell", safe_serialization=True)
    shutil.rmtree(root / "flux-schnell" / "tokenizer")  # the real repository's files: vocab.json + merges.txt
    shutil.copytree(tok_dir, root / "flux-schnell" / "tokenizer")
    shutil.rmtree(root / "_tok")

    # The LoRA as OminiControl's trainer writes it: a peft adapter on the released targets, saved by
    # `FluxPipeline.save_lora_weights` (keys `transformer.<module>.lora_A.weight`). B is random (peft starts it
    # at zero), so the adapter changes what it touches.
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                       target_modules=OMINI_TARGETS), adapter_name="subject")
    torch.manual_seed(24)
    for name, param in transformer.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5)
    state = get_peft_model_state_dict(transformer, adapter_name="subject")
    folder = root / "OminiControl" / Path(OMINI_LORA_FILE).parent
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=state, weight_name=Path(OMINI_LORA_FILE).name,
                                   safe_serialization=True)
    paper = root / "OminiControl" / OMINI_PAPER_LORA_FILE  # the paper's file in its place (the same tiny weights)
    paper.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / Path(OMINI_LORA_FILE).name, paper)


def omini_lora_path(models: Any, file: str) -> Path | None:
    """The OminiControl LoRA `file` (one of `OMINI_LORA_FILES`) of the profile's `omini_lora` source: the role's
    own file through the role, another from the same source (`--weights omini=`); None on paper-random."""
    if file == OMINI_LORA_FILE:
        return models.omini_lora
    import dataclasses

    from bench.api import BenchError
    from bench.models.component import hub_file

    if models.profile.random_init:
        return None
    if models.profile.name == "tiny":
        ensure_tiny_flux()
    comp = dataclasses.replace(models.profile.components["omini_lora"], file=file)
    try:
        path = hub_file(comp)
    except Exception as err:  # noqa: BLE001 - hub errors and missing files: one line
        path, reason = None, str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    else:
        reason = f"no {file} in {comp.source}"
    if path is None or not path.is_file():
        raise BenchError(f"profile '{models.profile.name}': cannot load omini_lora file {file} from "
                         f"'{comp.source}' ({reason}); point --weights omini= at a folder holding {file}")
    return path


# --- the declaration ------------------------------------------------------------------------------------------


def roles(profile: str) -> dict[str, Component]:
    """FLUX.1-schnell and the OminiControl subject LoRA for `profile` (hub ids, or on `tiny` the built stand-ins)."""
    return tiny_flux_roles() if profile == "tiny" else flux_roles(FLUX_SCHNELL, OMINICONTROL, tiny=False)


MODEL_ROLES = ModelRoles(roles, LOADERS, ensure_tiny_flux)
"""What `OminiControl.model_roles` declares."""
