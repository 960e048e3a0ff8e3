"""DisenBooth on the tiny profile: what it trains, its losses, the ecosystem round trip, its bad input.

Trained once per module (2 iterations, lr raised so the image visibly moves, unfused so the base weights can be
checked) and shared by the tests below.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from bench.api import BenchError
from bench.config import build
from bench.models.loading import Models
from bench.models.profiles import get_profile
from bench.registry import get_method
from tests.helpers import (
    ListLog,
    TrainedRun,
    assert_one_line_error,
    bench,
    pipeline_image,
    pixels,
    plain_pipeline,
    trained_run,
)

SEED = 3
OVERRIDES = {"iterations": 2, "lr": 1e-2, "fuse": False}


run = trained_run("disenbooth", OVERRIDES)


def _initial_trainables(run: TrainedRun) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The LoRA and adapter weights as training started (same seed, same order of initialisation)."""
    from peft import LoraConfig

    from baselines.disenbooth import ImageAdapter

    cfg = run.method.config
    torch.manual_seed(0)
    unet = copy.deepcopy(run.models.get_pristine("student_unet"))
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                target_modules=list(cfg.target_modules)))
    adapter = ImageAdapter(run.models.student_text_encoder.config.hidden_size)
    lora = {k: v.clone() for k, v in unet.state_dict().items() if ".lora_" in k}
    return lora, {k: v.clone() for k, v in adapter.state_dict().items()}


def test_trains_exactly_the_lora_and_the_image_adapter(run) -> None:
    models = run.models
    unet, pristine = models.student_unet, models.get_pristine("student_unet").state_dict()
    state = unet.state_dict()
    lora = {k for k in state if ".lora_" in k}
    targets = {k.split(".lora_")[0] for k in lora}
    assert lora and all(t.endswith(("to_q", "to_k", "to_v", "to_out.0")) for t in targets)
    assert {t.rsplit(".", 2)[-2] if t.endswith("to_out.0") else t.rsplit(".", 1)[-1] for t in targets} == {
        "to_q", "to_k", "to_v", "to_out"}
    assert any(".attn1." in t for t in targets) and any(".attn2." in t for t in targets), "self- and cross-attn"
    assert all(unet.get_submodule(t).r["default"] == 4 for t in targets)
    lora_init, adapter_init = _initial_trainables(run)
    assert lora_init.keys() == lora
    assert all(not torch.equal(state[k], lora_init[k]) for k in lora), "every LoRA matrix learnt"
    # ... by at most two Adam steps of lr 1e-2 from that init (so the reconstructed init is the real one)
    assert all((state[k] - lora_init[k]).abs().max() <= 0.025 for k in lora)
    adapter = run.trained.adapter.state_dict()
    assert adapter.keys() == adapter_init.keys() == {"adapter.0.weight", "adapter.0.bias", "adapter.2.weight",
                                                     "adapter.2.bias", "mask"}
    assert all(not torch.equal(adapter[k], adapter_init[k]) for k in adapter), "every adapter tensor learnt"
    assert all((adapter[k] - adapter_init[k]).abs().max() <= 0.025 for k in adapter)
    for key, value in state.items():  # every base UNet weight bit-identical (unfused)
        if ".lora_" not in key:
            assert torch.equal(value, pristine[key.replace(".base_layer.", ".")]), key
    for role in ("student_text_encoder", "vae"):
        now, before = getattr(models, role).state_dict(), models.get_pristine(role).state_dict()
        assert all(torch.equal(now[k], before[k]) for k in before), f"{role} frozen"
    assert not any(p.requires_grad for p in models.get_pristine("clip_vision").parameters())


def test_loss_is_the_released_weighted_sum(run) -> None:
    rows = run.log.rows
    assert run.log.phases == [("train", 2)] and len(rows) == 2
    for row in rows:
        expected = row["denoise"] + 0.01 * row["weak_denoise"] + 0.001 * row["cosine"]
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
        assert -1.0 <= row["cosine"] <= 1.0 and row["t_mean"] == 999.0


def test_image_branch_reaches_the_unet(run, concept, tmp_path) -> None:
    """f_i enters the denoising: zeroing the contrastive and weak terms, the adapter still gets a gradient."""
    cls = get_method("disenbooth")
    method = cls(build(cls.Config, {**OVERRIDES, "iterations": 1, "contrastive_weight": 0.0,
                                    "weak_denoise_weight": 0.0, "weight_decay": 0.0}))
    trained = method.train(concept, Models(get_profile("tiny"), "cpu"), tmp_path, 0, ListLog())
    _, init = _initial_trainables(run)
    assert not torch.equal(trained.adapter.state_dict()["adapter.2.weight"], init["adapter.2.weight"])


def test_saved_lora_loads_into_plain_diffusers(run) -> None:
    ours = pixels(run.trained.generate([run.prompt()], [SEED])[0])
    pipe = plain_pipeline()
    base = pipeline_image(pipe, run.models.latent_size, SEED, run.prompt())
    pipe.load_lora_weights(run.weights)
    pipe.fuse_lora()
    theirs = pipeline_image(pipe, run.models.latent_size, SEED, run.prompt())
    assert np.abs(theirs - base).max() > 2, "the trained weights change the image (the check is not vacuous)"
    assert np.abs(theirs - ours).max() <= 1


def test_saved_adapter_loads_back(run) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from baselines.disenbooth import ADAPTER_FILE, ImageAdapter

    path = run.weights / ADAPTER_FILE
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["identifier"] == run.trained.identifier == "dog</w>"
    assert json.loads(meta["format"])["hidden_size"] == 32
    adapter = ImageAdapter(32)
    adapter.load_state_dict(load_file(path), strict=True)  # the released module's key names
    x = torch.randn(2, 1, 32)
    assert torch.equal(adapter(x), run.trained.adapter(x))
    assert sorted(p.name for p in run.weights.iterdir()) == [ADAPTER_FILE, "pytorch_lora_weights.safetensors"]


def test_method_load_gives_identical_samples(run) -> None:
    fused = get_method("disenbooth")(build(get_method("disenbooth").Config, {}))
    fresh = fused.load(run.weights, Models(get_profile("tiny"), "cpu"))
    assert fresh.identifier == run.trained.identifier
    assert not any(".lora_" in k for k in fresh.parts["unet"].state_dict()), "fused on load"
    prompts, seeds = [run.prompt(), f"a {run.trained.identifier} dog in the snow"], [SEED, 0]
    for a, b in zip(run.trained.generate(prompts, seeds), fresh.generate(prompts, seeds)):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_identifier_resolution() -> None:
    from baselines.disenbooth import resolve_identifier

    assert resolve_identifier("{class}</w>", "dog") == "dog</w>"
    assert resolve_identifier("{class}</w>", "stuffed animal") == "animal</w>"
    assert resolve_identifier("sks", "dog") == "sks"
    with pytest.raises(BenchError, match="is the class noun itself"):
        resolve_identifier("{class}", "dog")


@pytest.mark.parametrize("args, needle", [
    (["--set", "identifier=dog"], "is the class noun itself"),
    (["--set", "identifier=a b"], "identifier must be one word"),
    (["--set", "image_input=imagenet"], "image_input must be one of released, clip"),
    (["--set", "contrastive_weight=-1"], "contrastive_weight must be >= 0"),
    (["--backbone", "hyper-sd15"], "text encoder is 24-d"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "disenbooth", *args, "--set", "iterations=1",
                         "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path)
    assert_one_line_error(code, err, needle, tmp_path)


@pytest.mark.slow
def test_cli_run_and_generate(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """The tiny run (iterations capped at 10): train, sample 25 images, score, record; then `bench generate`."""
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "disenbooth", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path)
    assert code == 0, err
    run = tmp_path / "tiny" / "disenbooth" / "default" / "dog" / "seed0"
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "done" and record["config"]["iterations"] == 10
    assert record["identifier"] == "dog</w>" and len(record["images"]) == 25
    out = tmp_path / "g.png"
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", "a dog</w> dog on the moon",
                         "--out", out, "--data", dreambench_root)
    assert code == 0 and out.is_file(), err
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run, "--prompt", "a sks dog on the moon",
                         "--out", out, "--data", dreambench_root)
    assert code == 2 and "identifier 'dog</w>'" in err
