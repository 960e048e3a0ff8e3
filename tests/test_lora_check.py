"""A LoRA file must load whole: after loading one (TCD, OminiControl, Hyper-SD, a user's), every module the file
names holds its weights, or the run stops with one line naming the first missing ones. Files in diffusers'
LCM-LoRA training naming (`to_q.lora.down.weight` beside peft-named others) load partly in diffusers."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from baselines.tcd_models import TCD_LORA_TARGETS, tiny_sdxl_unet
from bench.api import BenchError
from bench.models.lora_check import check_lora_complete, file_modules

FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """The same TCD-shaped LoRA of the tiny SDXL UNet in peft, LCM-training-script and kohya naming."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("loras")
    torch.manual_seed(0)
    model = tiny_sdxl_unet()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=list(TCD_LORA_TARGETS)))
    peft_state = get_peft_model_state_dict(model)
    StableDiffusionXLPipeline.save_lora_weights(root / "peft", unet_lora_layers=peft_state, safe_serialization=True)
    # diffusers' train_lcm_distill_lora_sdxl.py: convert_state_dict_to_diffusers, then save_lora_weights.
    StableDiffusionXLPipeline.save_lora_weights(root / "lcm", unet_lora_layers=convert_state_dict_to_diffusers(
        peft_state), safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
    (root / "kohya").mkdir()
    save_file({k: v.contiguous() for k, v in kohya.items()}, root / "kohya" / FILE)
    return root


def _load(path):
    from diffusers import StableDiffusionXLPipeline

    unet = tiny_sdxl_unet()
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path.parent), weight_name=path.name)
    StableDiffusionXLPipeline.load_lora_into_unet(state, alphas, unet, adapter_name="tcd")
    return unet


@pytest.mark.parametrize("naming", ["peft", "kohya"])
def test_complete_files_pass(lora_files, naming) -> None:
    path = lora_files / naming / FILE
    assert len(file_modules(path)) == 79
    check_lora_complete(path, {"unet": _load(path)}, "tcd")


def test_partly_loaded_file_stops_with_one_line_naming_the_missing(lora_files) -> None:
    path = lora_files / "lcm" / FILE
    with pytest.raises(BenchError) as err:
        check_lora_complete(path, {"unet": _load(path)}, "tcd")
    text = str(err.value)
    assert "\n" not in text and "47 of the 79 modules" in text
    assert "attn1.to_k" in text and "and 29 more" in text


def test_ip_adapter_tcd_refuses_a_partly_loading_tcd_lora(lora_files) -> None:
    from baselines.ip_adapter_tcd import IPAdapterTCDConfig, build_pipeline
    from bench.models.component import Component
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    profile = get_profile("tiny").for_method("ip_adapter_tcd")
    lora = Component("lora", "tcd_lora", str(lora_files / "lcm"), file=FILE)
    models = Models(dataclasses.replace(profile, components={**profile.components, "tcd_lora": lora}), "cpu")
    with pytest.raises(BenchError, match="loaded partly: 47 of the 79"):
        build_pipeline(models, IPAdapterTCDConfig())
    good = Component("lora", "tcd_lora", str(lora_files / "peft"), file=FILE)
    models = Models(dataclasses.replace(profile, components={**profile.components, "tcd_lora": good}), "cpu")
    assert build_pipeline(models, IPAdapterTCDConfig()) is not None


def test_unused_extra_module_in_a_user_file_is_named(lora_files, tmp_path) -> None:
    """A file naming a module the model lacks (a typo, another architecture) is not silently ignored either."""
    from safetensors.torch import load_file, save_file

    state = load_file(lora_files / "peft" / FILE)
    state["unet.mid_block.attentions.0.transformer_blocks.0.attn9.to_q.lora_A.weight"] = torch.zeros(4, 64)
    state["unet.mid_block.attentions.0.transformer_blocks.0.attn9.to_q.lora_B.weight"] = torch.zeros(64, 4)
    (tmp_path / "x").mkdir()
    save_file(state, tmp_path / "x" / FILE)
    unet = copy.deepcopy(_load(lora_files / "peft" / FILE))
    with pytest.raises(BenchError, match="attn9.to_q"):
        check_lora_complete(tmp_path / "x" / FILE, {"unet": unet}, "tcd")
