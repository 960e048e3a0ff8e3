"""IP-Adapter (TCD): diffusers' own loaders on the tiny models, the conditioning photo choice, save and load, the
paper profile's one-line error for missing adapter weights, and the paper-random sizes (on the meta device).

Expected parameter counts of the paper-random roles (configs in bench/models/configs/{sdxl,ip-adapter-sdxl}):
- SDXL base 1.0 UNet 2,567,463,684 (the released checkpoint's count); SDXL VAE 83,653,863 (SD's VAE layout).
- CLIP ViT-L/14 text 123,060,480 (as SD 1.5's).
- OpenCLIP ViT-bigG/14 text + projection 694,659,840 = (49408 + 77) x 1280 + 32 x 19,677,440 + final LN 2,560
  + projection 1280 x 1280.
- OpenCLIP ViT-bigG/14 vision + projection (h94 sdxl_models/image_encoder) 1,844,907,264 = patch 3x14x14x1664
  + class 1664 + positions 257 x 1664 + pre-LN 3,328 + 48 x 38,361,728 + post-LN 3,328 + projection 1664 x 1280.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.models.loading import Models
from bench.models.profiles import get_profile
from tests.helpers import bench


@pytest.fixture(scope="module")
def prepared(concept):
    """Conditioned on every photo ("each"), so that each mode can be sampled from the same pipeline."""
    from baselines.ip_adapter_tcd import IPAdapterTCD, IPAdapterTCDConfig

    models = Models(get_profile("tiny").for_method("ip_adapter_tcd"), "cpu")
    model = IPAdapterTCD(IPAdapterTCDConfig(conditioning="each")).prepare(concept, models, None, 0)
    return model, models


def _as(model, **changes):
    """The same pipeline and photo embeddings under another config (conditioning mode)."""
    from baselines.ip_adapter_tcd import IPAdapterTCDModel

    return IPAdapterTCDModel(dataclasses.replace(model.config, **changes), model.pipe, model.embeds,
                             model.conditioning)


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im).astype(int) for im in images]


def test_adapters_load_through_diffusers_own_loaders(prepared) -> None:
    from diffusers import TCDScheduler
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection
    from safetensors.torch import load_file

    model, models = prepared
    unet = model.pipe.unet
    procs = unet.attn_processors
    cross = [name for name in procs if name.endswith("attn2.processor")]
    assert cross and all(isinstance(procs[n], IPAdapterAttnProcessor2_0) for n in cross)
    assert all(procs[n].scale == [0.5] for n in cross), "the TCD example's IP-Adapter scale"
    assert isinstance(unet.encoder_hid_proj, MultiIPAdapterImageProjection)
    adapter = load_file(models.ip_adapter_sdxl)  # h94's key layout: cross-attention layers numbered 1, 3, 5, ...
    for k, name in enumerate(cross):
        assert torch.equal(procs[name].to_k_ip[0].weight, adapter[f"ip_adapter.{2 * k + 1}.to_k_ip.weight"])
    # the TCD LoRA is fused (W + B A, scale 1) and its layers are gone: a plain UNet samples
    lora, pristine = load_file(models.tcd_lora), models.get_pristine("sdxl_unet")
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.1.resnets.0.conv1"):
        a, b = lora[f"unet.{name}.lora_A.weight"], lora[f"unet.{name}.lora_B.weight"]
        delta = (b.flatten(1) @ a.flatten(1)).reshape(pristine.get_submodule(name).weight.shape)
        assert torch.allclose(unet.get_submodule(name).weight, pristine.get_submodule(name).weight + delta, atol=1e-5)
    assert not any("lora" in n for n, _ in unet.named_parameters())
    assert isinstance(model.pipe.scheduler, TCDScheduler)
    assert model.embeds.shape == (len(model.conditioning), models.sdxl_image_encoder.config.projection_dim)


def test_conditioning_photo_choice_changes_the_output(prepared) -> None:
    model, _ = prepared
    prompts, seeds = ["a dog on the beach"] * 2, [0, 1]
    each = _pixels(model.generate(prompts, seeds))  # seed 0: photo 0, seed 1: photo 1
    first = _pixels(_as(model, conditioning="first").generate(prompts, seeds))
    mean = _pixels(_as(model, conditioning="mean").generate(prompts, seeds))
    assert np.abs(each[0] - first[0]).max() <= 1, "seed 0 is conditioned on the first photo in both modes"
    assert np.abs(each[1] - first[1]).max() > 8, "another photo, another image"
    assert np.abs(mean[0] - first[0]).max() > 8, "the mean embedding is not the first photo's"
    model.pipe.set_ip_adapter_scale(0.0)
    try:  # without the adapter the photo changes nothing: the difference above came through it
        off_each, off_first = (_pixels(m.generate(prompts, seeds)) for m in (model, _as(model, conditioning="first")))
        assert np.abs(off_each[1] - off_first[1]).max() <= 1
    finally:
        model.pipe.set_ip_adapter_scale(model.config.ip_scale)


def test_saved_embeddings_load_back_to_the_same_images(prepared, tmp_path) -> None:
    from safetensors import safe_open

    from baselines.ip_adapter_tcd import EMBEDS_FILE, IPAdapterTCD

    model, _ = prepared
    model.save(tmp_path)
    with safe_open(str(tmp_path / EMBEDS_FILE), framework="pt") as f:
        assert f.metadata()["mode"] == "each"
    models = Models(get_profile("tiny").for_method("ip_adapter_tcd"), "cpu")
    loaded = IPAdapterTCD(model.config).load(tmp_path, models)
    assert loaded.conditioning == model.conditioning == sorted(model.conditioning)
    prompts, seeds = ["a dog in the snow"] * 2, [3, 4]
    diff = max(np.abs(a - b).max() for a, b in zip(_pixels(model.generate(prompts, seeds)),
                                                   _pixels(loaded.generate(prompts, seeds))))
    assert diff <= 1


def test_missing_adapter_weights_on_paper_is_one_line(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    from baselines.tcd_models import ensure_tiny

    root = ensure_tiny()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["run", "--method", "ip_adapter_tcd", "--concepts", "dog", "--profile", "paper", "--data",
            dreambench_root, "--results", tmp_path / "r", "--device", "cpu", "--weights", f"sdxl={root / 'sdxl'}"]
    code, _, err = bench(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ip_adapter_sdxl" in err and "h94/IP-Adapter" in err and "--weights ip_adapter_sdxl=" in err
    code, _, err = bench(monkeypatch, capsys, *args, "--weights", f"ip_adapter_sdxl={root / 'ip-adapter'}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "tcd_lora" in err and "h1t/TCD-SDXL-LoRA" in err and "--weights tcd_lora=" in err
    assert not list((tmp_path / "r").rglob("record.json")), "nothing recorded"


def test_roles_are_reserved_for_the_method() -> None:
    tiny = get_profile("tiny")
    assert "sdxl_unet" in tiny.for_method("ip_adapter_tcd").describe()["components"]
    for method in ("lora", "echodistill"):
        described = tiny.for_method(method).describe()["components"]
        assert not [role for role in described if role.startswith(("sdxl", "tcd", "ip_adapter_sdxl"))]


EXPECTED = {"sdxl_unet": ("UNet2DConditionModel", 2_567_463_684), "sdxl_vae": ("AutoencoderKL", 83_653_863),
            "sdxl_text_encoder": ("CLIPTextModel", 123_060_480),
            "sdxl_text_encoder_2": ("CLIPTextModelWithProjection", 694_659_840),
            "sdxl_image_encoder": ("CLIPVisionModelWithProjection", 1_844_907_264)}


def test_paper_random_builds_the_full_size_models_on_meta() -> None:
    from bench.models.loading import load_component

    profile = get_profile("paper-random").for_method("ip_adapter_tcd")
    for role, (cls, count) in EXPECTED.items():
        with torch.device("meta"):
            obj = load_component(profile, role, "meta")
        assert type(obj).__name__ == cls and sum(p.numel() for p in obj.parameters()) == count, role
    scheduler = load_component(profile, "sdxl_scheduler", "cpu")
    assert type(scheduler).__name__ == "TCDScheduler" and scheduler.config.prediction_type == "epsilon"
    pads = [load_component(profile, r, "cpu").pad_token for r in ("sdxl_tokenizer", "sdxl_tokenizer_2")]
    assert pads == ["<|endoftext|>", "!"], "SDXL's two tokenizers pad differently"
    assert load_component(profile, "ip_adapter_sdxl", "cpu") is None and load_component(profile, "tcd_lora", "cpu") \
        is None, "paper-random builds a random adapter in memory; no file"
    with torch.device("meta"):
        unet = load_component(profile, "sdxl_unet", "meta")
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    assert len(cross) == 70, "h94's ip-adapter_sdxl holds 70 K/V pairs (ip_adapter.1 ... ip_adapter.139)"


@pytest.mark.slow
def test_bench_perf_times_preparation_and_sampling(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    import json

    code, out, err = bench(monkeypatch, capsys, "perf", "--methods", "ip_adapter_tcd", "--profile", "tiny",
                           "--sweep-batch", "2", "--device", "cpu", "--data", dreambench_root, "--out", tmp_path,
                           "--score-images", "0")
    assert code == 0, err
    row = json.loads(next(tmp_path.glob("*.json")).read_text())["methods"][0]
    assert row["trains"] is False and row["prepare_s"] >= 0 and row["iterations_timed"] == 0
    assert 0 < row["infer_unet_s_per_image_b1"] <= row["infer_s_per_image_b1"], "the UNet calls are labelled"
    assert "| ip_adapter_tcd | / (prepare" in out


def test_prompts_carry_the_tcd_examples_prefix(prepared) -> None:
    """The TCD example prompts "best quality, high quality, wearing sunglasses": the pipeline gets that prefix
    before every evaluation prompt by default, and the bare prompt with `prompt_prefix=""` (variant no_prefix)."""
    from baselines.ip_adapter_tcd import IPAdapterTCD

    model, _ = prepared
    seen: list = []
    pipe = model.pipe
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    try:
        type(pipe).__call__ = spy
        _as(model, conditioning="first").generate(["a dog in the jungle"], [0])
        _as(model, conditioning="first", **IPAdapterTCD.variants["no_prefix"]).generate(["a dog in the jungle"], [0])
    finally:
        type(pipe).__call__ = original
    assert seen == [["best quality, high quality, a dog in the jungle"], ["a dog in the jungle"]]
