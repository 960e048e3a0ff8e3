"""EchoDistill on the offline `tiny` profile: losses on hand-made inputs, what trains and what must not, every
variant switching off exactly what it names, divergence, save/load. Fast tier: 1 iteration, batch 1.
The slow tier holds the learning check over all 30 DreamBench concepts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench.api import Diverged, Method, Trained
from bench.config import build
from bench.data import select_concepts
from bench.models.loading import Models
from bench.models.profiles import get_profile
from echodistill import losses as L
from echodistill.config import DROPPABLE, VARIANTS, EchoDistillConfig
from echodistill.discriminators import build_discriminators
from echodistill.model import kv_params
from echodistill.trainer import EchoDistill, Session

FAST = {"iterations": 1, "batch_size": 1, "echo_samples": 2, "echo_iters": 1, "sample_batch_size": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are too small to gain from intra-op threads; on a shared CPU extra threads only spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def concept(dreambench_root: Path):
    return select_concepts(dreambench_root, "dog")[0]


def tiny() -> Models:
    return Models(get_profile("tiny"), "cpu")


class Log:
    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []
        self.rows: list[tuple[str, int, dict]] = []

    def begin(self, phase: str, total: int) -> None:
        self.phases.append((phase, total))

    def __call__(self, iteration: int, **scalars: float) -> None:
        self.rows.append((self.phases[-1][0], iteration, scalars))


def session(concept, models=None, seed=0, **overrides) -> Session:
    return Session(EchoDistillConfig(**{**FAST, **overrides}), concept, models or tiny(), seed, Log())


def step(s: Session) -> dict[str, float]:
    return s.iteration(0, next(s.batches))


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def emb_key(encoder) -> str:
    return next(n for n, p in encoder.named_parameters() if p is encoder.get_input_embeddings().weight)


def kv_names(unet) -> set[str]:
    return {f"{n}.{p}.weight" for n, _ in unet.named_modules() if n.endswith("attn2") for p in ("to_k", "to_v")}


# --- config -------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_spec():
    c = EchoDistillConfig()
    assert (c.iterations, c.batch_size, c.lr_teacher, c.lr_student, c.lr_disc) == (1000, 2, 1e-5, 2e-5, 1e-4)
    assert (c.betas, c.weight_decay, c.grad_clip, c.teacher_guidance) == ((0.9, 0.999), 1e-2, 1.0, 7.5)
    assert (c.weight_mse, c.weight_id, c.weight_msswd) == (1.0, 1.0, 0.1)
    assert (c.weight_adv_dino1, c.weight_adv_dino2, c.weight_adv_clip) == (1.0, 1.0, 1.0)
    assert (c.timestep_weighting, c.msswd_input, c.echo_samples, c.echo_iters) == ("alphas_cumprod", "released", 100,
                                                                                   250)
    assert (c.loss_normalisation, c.init, c.kv_detach_first_token) == ("mask_sum", "released", True)
    assert (c.autocast_dtype, c.sample_dtype, c.sampler) == ("none", "auto", "euler_ancestral")
    assert (c.drop, c.teacher_first, c.shots, c.hflip, c.augment, c.token, c.eval_steps) == (
        (), False, None, True, True, "<new1>", 1)
    assert c.student_losses() == ("mse_loss", "id_loss", "msswd_loss", "disc_dino1", "disc_dino2", "disc_clip")


def test_config_validation():
    with pytest.raises(ValueError, match="valid: teacher, discriminators.*echo"):
        EchoDistillConfig(drop=("disc_clp",))
    assert EchoDistillConfig(drop=["disc_clip", "ste"]).drop == ("disc_clip", "ste")
    assert EchoDistillConfig(drop="disc_clip,ste").drop == ("disc_clip", "ste")
    assert EchoDistillConfig(shots="1").shots == 1
    for bad in ({"timestep_weighting": "linear"}, {"msswd_input": "x"}, {"teacher_first": True, "drop": ["teacher"]},
                {"drop": ["teacher", "discriminators"]}, {"batch_size": 0}, {"shots": 0}, {"lr_student": -1.0}):
        with pytest.raises(ValueError):
            EchoDistillConfig(**bad)
    assert EchoDistillConfig(drop=["teacher"]).student_losses() == ("disc_dino1", "disc_dino2", "disc_clip")
    assert EchoDistillConfig(drop=["discriminators"]).discriminators() == ()


def test_variants_cover_every_drop_name_and_build():
    assert {f"drop_{n}" for n in DROPPABLE} | {"default", "teacher_first", "one_shot"} == set(VARIANTS)
    for name, overrides in VARIANTS.items():
        config = build(EchoDistillConfig, overrides)
        if name.startswith("drop_"):
            assert config.drop == (name.removeprefix("drop_"),)
    assert build(EchoDistillConfig, VARIANTS["one_shot"]).shots == 1


def test_registered_and_follows_the_contract():
    from bench.registry import get_method

    cls = get_method("echodistill")
    assert cls is EchoDistill and isinstance(cls(EchoDistillConfig()), Method)


# --- losses on hand-made inputs --------------------------------------------------------------------------------


def test_timestep_weight_at_both_ends():
    from diffusers import DDIMScheduler

    ac = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    t = torch.tensor([0, 999])
    w = L.timestep_weight(ac, t, "alphas_cumprod")
    assert w[0].item() == pytest.approx(1 - 0.00085, abs=1e-6)
    assert w[1].item() == pytest.approx(1 / (1 + 14.6146**2), rel=1e-3)  # sigma_999 = 14.61
    assert L.timestep_weight(ac, t, "sqrt_alphas_cumprod").tolist() == pytest.approx(w.sqrt().tolist())
    with pytest.raises(ValueError):
        L.timestep_weight(ac, t, "linear")


def test_latent_mse_is_half_mean_per_sample():
    x0_s = torch.zeros(2, 4, 8, 8)
    x0_T = torch.stack([torch.full((4, 8, 8), 2.0), torch.full((4, 8, 8), 1.0)])
    per_sample = L.latent_mse(x0_s, x0_T)
    assert per_sample.tolist() == [2.0, 0.5]
    w = torch.tensor([1.0, 0.0])
    assert (per_sample * w).mean().item() == 1.0  # the trainer's weighting: per sample x w(t'), batch mean


def test_teacher_loss_counts_only_the_mask():
    pred, target = torch.zeros(1, 4, 4, 4), torch.ones(1, 4, 4, 4)
    target[..., 2:, :] = 100.0  # outside the mask: must not count
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    # released: the 4-channel sum over the mask divided by the 1-channel mask sum (4x the masked mean)
    assert L.teacher_loss(pred, target, mask).item() == pytest.approx(4.0)
    assert L.teacher_loss(pred, target, mask, "mean").item() == pytest.approx(1.0)


def test_identity_loss_zero_for_identical_images():
    models = tiny()
    clip, proj = models.get_pristine("clip_vision"), models.get_pristine("ip_proj")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    feats = L.identity_features(clip, proj, images)
    assert feats.shape == (2, 4, 16)  # 4 IP-Adapter tokens of the tiny cross-attention width
    assert L.identity_loss(feats, feats).abs().max().item() < 1e-6
    other = L.identity_loss(feats, L.identity_features(clip, proj, -images))
    assert other.shape == (2,) and (other > 0).all() and (other <= 2).all()


def test_msswd_loss_modes():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert L.msswd_loss(x, x).abs().max().item() < 1e-5
    unit = L.msswd_loss(x, x * 0.5, "unit", torch.Generator().manual_seed(0))
    released = L.msswd_loss(x, x * 0.5, "released", torch.Generator().manual_seed(0))
    assert unit.shape == (2,) and (unit > 0).all() and not torch.allclose(unit, released)


def test_adversarial_losses_on_hand_made_logits():
    even = torch.zeros(3, 2)
    assert L.generator_loss(even).item() == pytest.approx(math.log(2))
    assert L.discriminator_loss(even, even).item() == pytest.approx(math.log(2))
    says_real, says_fake = torch.tensor([[-10.0, 10.0]]), torch.tensor([[10.0, -10.0]])
    assert L.generator_loss(says_real).item() < 1e-6  # the student fools D: no loss
    assert L.generator_loss(says_fake).item() == pytest.approx(20.0, rel=1e-4)  # -log softmax: non-saturating
    assert L.discriminator_loss(says_real, says_fake).item() < 1e-6  # D right on both
    assert L.discriminator_loss(says_fake, says_real).item() == pytest.approx(20.0, rel=1e-4)
    assert L.accuracy(torch.cat([says_real, says_fake]), L.REAL) == 0.5


def test_discriminators_frozen_backbones_gradient_to_image():
    models = tiny()
    discs = build_discriminators(models, ("disc_dino1", "disc_dino2", "disc_clip"), "cpu")
    image = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    for name, disc in discs.items():
        logits = disc(image)
        assert logits.shape == (2, 2)
        assert [p.shape for p in disc.parameters()] == [(512, disc.dim), (512,), (2, 512), (2,)]  # the head only
        assert all(not p.requires_grad for b in disc.backbones() for p in b.parameters())
        assert all(not b.training for b in disc.backbones())
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), image)
        assert grad.abs().sum() > 0, name  # through the frozen backbone into the image
    assert discs["disc_clip"].dim == 4 * 16 and discs["disc_dino2"].dim == 48
    again = build_discriminators(models, ("disc_dino2",), "cpu")  # heads from the seed alone
    assert set(again) == {"disc_dino2"}
    assert torch.equal(again["disc_dino2"].head[0].weight, discs["disc_dino2"].head[0].weight)
    other = build_discriminators(models, ("disc_dino2",), "cpu", seed=1)["disc_dino2"]
    assert not torch.equal(other.head[0].weight, discs["disc_dino2"].head[0].weight)


# --- what trains, and what must not ----------------------------------------------------------------------------


def test_one_iteration_changes_only_the_intended_parameters(concept):
    models = tiny()
    s = session(concept, models)
    frozen = {name: models.get_pristine(name) for name in ("clip_vision", "ip_proj", "dino1", "dinov2")}
    watched = {"student_unet": s.student_unet, "teacher_unet": s.teacher_unet, "vae": models.vae,
               "text_encoder": s.teacher_text.encoder, "heads": torch.nn.ModuleList(d.head for d in s.discs.values()),
               **frozen}
    before = {k: snapshot(m) for k, m in watched.items()}
    out = step(s)
    assert changed(before["student_unet"], s.student_unet) == kv_names(s.student_unet)
    assert changed(before["teacher_unet"], s.teacher_unet) == kv_names(s.teacher_unet)
    assert changed(before["heads"], watched["heads"]) == set(before["heads"])
    for name in ("vae", *frozen):
        assert not changed(before[name], watched[name]), name
    key = emb_key(s.teacher_text.encoder)
    assert changed(before["text_encoder"], s.teacher_text.encoder) == {key}
    rows = (before["text_encoder"][key] != s.teacher_text.embeddings.detach()).any(dim=1).nonzero().flatten()
    assert rows.tolist() == [s.teacher_text.token_id]  # only the new token's row, every other row bit-identical
    assert s.student_text is s.teacher_text  # one shared text encoder (STE)
    expected = {"loss_teacher", "grad_teacher", "w_t", "mse", "id", "msswd", "raw_mse", "raw_id", "raw_msswd",
                "adv_dino1", "adv_dino2", "adv_clip", "loss_student", "grad_student", "grad_disc",
                *(f"{k}_{d}" for k in ("disc", "acc_real", "acc_fake") for d in ("dino1", "dino2", "clip"))}
    assert set(out) == expected and all(math.isfinite(v) for v in out.values())


def _capture_student_context(s: Session) -> list[torch.Tensor]:
    seen = []
    s.student_unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[2]), with_kwargs=True)
    return seen


def test_student_never_receives_the_text_embedding_gradient(concept):
    s = session(concept)
    seen = _capture_student_context(s)
    step(s)
    assert seen and not any(c.requires_grad for c in seen)
    assert s.opt_student.param_groups[0]["params"] == kv_params(s.student_unet)  # no token row for the student


def test_reproducible_from_the_seed(concept):
    a, b = session(concept, seed=3), session(concept, seed=3)
    out_a, out_b = step(a), step(b)
    assert out_a == out_b
    assert all(torch.equal(p, q) for p, q in zip(kv_params(a.student_unet), kv_params(b.student_unet)))


# --- every variant switches off exactly what it names ------------------------------------------------------


def _spy(monkeypatch, name: str) -> list:
    calls, real = [], getattr(L, name)
    monkeypatch.setattr(L, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("part", [d for d in DROPPABLE if d != "echo"])
def test_drop_switches_off_exactly_that_part(concept, monkeypatch, part):
    spies = {n: _spy(monkeypatch, n) for n in ("latent_mse", "identity_loss", "msswd_loss", "generator_loss")}
    models = tiny()
    s = session(concept, models, drop=(part,))
    text_before = snapshot(s.student_text.encoder)
    teacher_kv = [p.detach().clone() for p in kv_params(models.teacher_unet)] if part != "teacher" else None
    out = step(s)
    discs = {"disc_dino1", "disc_dino2", "disc_clip"}
    expect_discs = set() if part == "discriminators" else discs - {part}
    assert set(s.discs) == expect_discs
    assert {k for k in out if k.startswith("adv_")} == {f"adv_{d.removeprefix('disc_')}" for d in expect_discs}
    assert len(spies["generator_loss"]) == len(expect_discs)
    align = {"mse_loss": "latent_mse", "id_loss": "identity_loss", "msswd_loss": "msswd_loss"}
    for loss, fn in align.items():
        on = part not in (loss, "teacher")
        assert bool(spies[fn]) == on and (loss.removesuffix("_loss") in out) == on, loss
    if part == "teacher":
        assert "teacher_unet" not in models._copies  # never even loaded
        assert "loss_teacher" not in out and "w_t" not in out
    else:
        assert not all(torch.equal(p, q) for p, q in zip(teacher_kv, kv_params(models.teacher_unet)))
    if part in ("teacher", "ste"):  # the student has its own encoder and token, trained by its own losses
        assert s.student_text.encoder is models.student_text_encoder and not s.shared
        rows = (text_before[emb_key(s.student_text.encoder)]
                != s.student_text.embeddings.detach()).any(dim=1).nonzero().flatten()
        assert rows.tolist() == [s.student_text.token_id]
    else:
        assert s.shared and "student_text_encoder" not in models._copies
    if part == "ste":  # the teacher still trains its own token in its own encoder
        assert s.teacher_text.encoder is models.teacher_text_encoder and s.teacher_text is not s.student_text


def test_drop_ste_student_context_carries_the_gradient(concept):
    s = session(concept, drop=("ste",))
    seen = _capture_student_context(s)
    step(s)
    assert seen[0].requires_grad


def test_drop_echo_has_no_echo_stage_and_only_the_teacher_view(concept, tmp_path):
    log = Log()
    trained = EchoDistill(EchoDistillConfig(**FAST, drop=("echo",))).train(concept, tiny(), tmp_path, 0, log)
    assert [p for p, _ in log.phases] == ["distill"] and set(trained.views) == {"teacher"}


def test_teacher_first_trains_teacher_then_student_with_identity_only(concept, monkeypatch, tmp_path):
    spies = {n: _spy(monkeypatch, n) for n in ("latent_mse", "msswd_loss", "generator_loss")}
    log, models = Log(), tiny()
    trained = EchoDistill(EchoDistillConfig(**FAST, teacher_first=True)).train(concept, models, tmp_path, 0, log)
    assert log.phases == [("teacher", 1), ("distill", 1)]
    assert set(log.rows[0][2]) == {"loss_teacher", "grad_teacher"}
    assert set(log.rows[1][2]) == {"id", "loss_student", "grad_student"}
    assert not any(spies.values()) and set(trained.views) == {"teacher"}


def test_one_shot_uses_only_the_first_image(concept):
    s = session(concept, shots=1)
    assert len(concept.images) > 1 and len(s.batches.images) == 1


def test_non_finite_loss_raises_diverged(concept, monkeypatch):
    s = session(concept)
    monkeypatch.setattr(L, "latent_mse", lambda a, b: torch.full((a.shape[0],), float("nan")))
    with pytest.raises(Diverged, match="non-finite mse at iteration 0"):
        step(s)


# --- the whole run: echo stage, views, save/load -----------------------------------------------------------


def test_train_echo_views_and_save_load_round_trip(concept, tmp_path):
    log, models = Log(), tiny()
    trained = EchoDistill(EchoDistillConfig(**FAST)).train(concept, models, tmp_path / "work", 0, log)
    assert log.phases == [("distill", 1), ("echo", 1)]
    assert isinstance(trained, Trained) and trained.identifier == "<new1>" and trained.default_steps == 1
    assert set(trained.views) == {"teacher", "student_before_echo", "teacher_before_echo"}
    assert trained.views["teacher"].default_steps == 25 and trained.views["teacher"].guidance == 7.5
    prompts, seeds = ["a photo of a <new1> dog", "a <new1> dog on the beach"], [0, 1]
    final = [p.detach().clone() for p in kv_params(models.student_unet)]
    samples = {name: [list(im.getdata()) for im in view.generate(prompts, seeds, 1)]
               for name, view in [("student", trained), *trained.views.items()]}
    assert all(torch.equal(p, q) for p, q in zip(final, kv_params(models.student_unet)))  # views swap back
    assert samples["student"] != samples["student_before_echo"]
    trained.save(tmp_path / "weights")
    assert (tmp_path / "weights" / "<new1>.safetensors").is_file()
    loaded = EchoDistill(EchoDistillConfig()).load(tmp_path / "weights", tiny())
    assert set(loaded.views) == set(trained.views)
    for name, view in [("student", loaded), *loaded.views.items()]:
        assert [list(im.getdata()) for im in view.generate(prompts, seeds, 1)] == samples[name], name


# --- slow: the method learns on tiny ----------------------------------------------------------------------------

LEARNING = {"iterations": 20, "echo_iters": 10, "echo_samples": 25, "lr_teacher": 1e-3, "lr_student": 1e-3,
            "lr_disc": 1e-3}
"""The tiny learning schedule: the method unchanged, a short schedule with larger steps (random tiny models
barely move at the paper's lrs in 30 iterations; see echodistill/README.md)."""


def _msswd_to_reals(trained, concept, models) -> float:
    """Mean MS-SWD over all (student sample, real image) pairs; 4 one-step samples, fixed directions."""
    import numpy as np

    from bench.models.training import load_pixels
    from echodistill.msswd import ms_swd

    images = trained.generate([f"a photo of a <new1> {concept.class_noun}"] * 4, [0, 1, 2, 3], 1)
    gen = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 for im in images])
    real = (torch.stack(load_pixels(concept.images, models.resolution)) + 1) / 2
    x, y = gen.repeat_interleave(len(real), 0), real.repeat(len(gen), 1, 1, 1)
    return float(ms_swd(x, y, generator=torch.Generator().manual_seed(0)).mean())


@pytest.mark.slow
def test_learning_check_msswd_to_real_images_drops(real_dreambench_root, tmp_path):
    """After training, the student's samples are closer (MS-SWD) to the real images on >= 25 of 30 concepts."""
    concepts = select_concepts(real_dreambench_root, "all")
    assert len(concepts) == 30
    improved = []
    for c in concepts:
        models = tiny()
        untrained = EchoDistill(EchoDistillConfig(iterations=0, drop=("echo",)))
        start = untrained.train(c, models, tmp_path / c.name / "start", 0, Log())
        before = _msswd_to_reals(start, c, models)
        models = tiny()
        trained = EchoDistill(EchoDistillConfig(**LEARNING)).train(c, models, tmp_path / c.name / "trained", 0, Log())
        after = _msswd_to_reals(trained, c, models)
        improved.append(after < before)
        print(f"{c.name}: MS-SWD {before:.3f} -> {after:.3f}")
    print(f"improved on {sum(improved)} of {len(improved)} concepts")
    assert sum(improved) >= 25


def test_hyper_sd15_backbone_fuses_the_one_step_lora_and_trains(concept, tmp_path):
    """`--backbone hyper-sd15`: SD 1.5 + a one-step LoRA (here a random stand-in) fused before training; the
    teacher (SD 1.5) predicts epsilon, the other target branch."""
    import dataclasses

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from bench.models.profiles import Component

    profile = get_profile("tiny", backbone="hyper-sd15")
    base = Models(profile, "cpu").student_unet
    base.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(base))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers, safe_serialization=True)
    lora = Component("lora", "hyper_lora", str(tmp_path), file="pytorch_lora_weights.safetensors")
    models = Models(dataclasses.replace(profile, components={**profile.components, "student_lora": lora}), "cpu")
    pristine = models.get_pristine("student_unet").state_dict()
    s = session(concept, models, drop=("echo",))
    assert s.teacher_sched.config.prediction_type == "epsilon"
    assert not torch.equal(s.student_unet.state_dict()[next(iter(kv_names(s.student_unet)))],
                           pristine[next(iter(kv_names(s.student_unet)))])  # fused
    assert set(s.student_unet.state_dict()) == set(pristine)  # no LoRA layers left
    assert math.isfinite(step(s)["loss_student"])
