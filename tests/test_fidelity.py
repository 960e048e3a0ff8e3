"""Reproduction fidelity: the harness trains and evaluates as the authors' released code does (README, "Fidelity").

Each test holds one row of the README's fidelity table to the released behaviour (or to a diffusers peer where
the installed library has one), and would fail on the harness's earlier behaviour. Self-contained: the concept
is a few generated photos, the models are the tiny profile's.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import Concept
from bench.models import sampling
from bench.models.training import (
    IMAGENET_TEMPLATES,
    TRAIN_TEMPLATES,
    TrainingBatches,
    custom_diffusion_augment,
    insert_after_first_word,
    masked_mse,
    resize,
    templates_for,
)

PROMPTS = ("a {0} {1} in the jungle", "a {0} {1} in the snow", "a red {0} {1}")


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> Concept:
    """Three 96 px photos of a 'dog' (noise blobs), made here."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = root / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return Concept("dog", "dog", tuple(paths), PROMPTS, live=True)


@pytest.fixture
def models():
    """Fresh per-run copies for each test (training adds `<new1>` to its copies); the loaded models are shared."""
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    return Models(get_profile("tiny"), "cpu")


# --- training data: templates, prompt edits, one resize from the original --------------------------------------

def test_released_templates_are_the_27_without_close() -> None:
    assert len(IMAGENET_TEMPLATES) == 27 and len(TRAIN_TEMPLATES) == 25
    assert not any("close" in t for t in TRAIN_TEMPLATES)
    assert {"a photo of a cool {}", "a photo of a small {}"} <= set(TRAIN_TEMPLATES)  # the old list dropped these
    assert templates_for(True) == TRAIN_TEMPLATES and templates_for(False) == IMAGENET_TEMPLATES


def test_augmentation_words_go_after_the_first_word() -> None:
    assert insert_after_first_word("a photo of a <new1> dog", "very small") == "a very small photo of a <new1> dog"
    assert insert_after_first_word("a photo of a <new1> dog", "a far away") == "a a far away photo of a <new1> dog"
    batches = TrainingBatches([torch.zeros(3, 64, 64)], "<new1> dog", 64, 8, seed=0, augment=True, hflip=False)
    prompts = next(batches).prompts
    edited = [p for p in prompts if any(w in p for w in ("far away", "very small", "zoomed in", "close up"))]
    assert edited and all(p.split()[1] in ("a", "very", "zoomed", "close") for p in edited)
    assert not any(p.startswith(("very small", "zoomed in", "close up", "a far away photo")) for p in edited)


def test_augmentation_resizes_the_original_photo_once() -> None:
    """The placed or cropped photo equals one bilinear (antialiased) resize of the original to the drawn scale,
    not a resize of a copy first brought to the training size."""
    original = torch.rand(3, 200, 200) * 2 - 1
    size, factor = 64, 8
    for seed in range(20):
        rng = random.Random(seed)
        out, mask, _ = custom_diffusion_augment(original, size, factor, rng)
        rng = random.Random(seed)  # replay the draws
        scale = rng.randint(size // 3, size) if rng.random() < 0.66 else rng.randrange(int(1.2 * size), int(1.4 * size))
        top, left = rng.randint(0, abs(scale - size)), rng.randint(0, abs(scale - size))
        once = resize(original, scale)
        twice = resize(resize(original, size), scale)
        if scale > size:
            expected, twice = once[:, top:top + size, left:left + size], twice[:, top:top + size, left:left + size]
            got = out
        else:
            expected, got = once, out[:, top:top + scale, left:left + scale]
        assert torch.allclose(got, expected, atol=1e-6)
        if scale != size:
            assert not torch.allclose(got, twice, atol=1e-3)


def test_upscale_range_excludes_its_upper_end(monkeypatch) -> None:
    """numpy's randint(int(1.2 s), int(1.4 s)) never gives int(1.4 s); randint(s // 3, s + 1) gives s."""
    import bench.models.training as T

    scales: set[int] = set()
    real = T.resize
    monkeypatch.setattr(T, "resize", lambda image, side: scales.add(side) or real(image, side))
    rng = random.Random(0)
    for _ in range(3000):
        custom_diffusion_augment(torch.zeros(3, 10, 10), 10, 2, rng)
    assert 14 not in scales and {3, 10, 12, 13} <= scales


# --- loss normalisation -------------------------------------------------------------------------------------------

def test_mask_sum_normalisation_matches_the_released_loss() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.3).float()
    err = torch.nn.functional.mse_loss(pred, target, reduction="none")
    released = ((err * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
    assert torch.allclose(masked_mse(pred, target, mask, "mask_sum"), released)
    ones = torch.ones(2, 1, 8, 8)
    assert torch.allclose(masked_mse(pred, target, ones, "mask_sum"), 4 * masked_mse(pred, target, ones, "mean"))
    assert torch.allclose(masked_mse(pred, target, ones, "mean"), torch.nn.functional.mse_loss(pred, target))


def test_custom_diffusion_and_echodistill_default_to_the_released_loss() -> None:
    from baselines.custom_diffusion import CustomDiffusionConfig
    from echodistill import losses as L
    from echodistill.config import EchoDistillConfig

    assert CustomDiffusionConfig().loss_normalisation == "mask_sum"
    assert EchoDistillConfig().loss_normalisation == "mask_sum"
    pred, target, mask = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.ones(1, 1, 2, 2)
    assert float(L.teacher_loss(pred, target, mask)) == pytest.approx(4.0)


# --- samplers -----------------------------------------------------------------------------------------------------

def _context(models, prompts: list[str]) -> torch.Tensor:
    return sampling.encode_text(models.student_tokenizer, models.student_text_encoder, prompts)


def test_euler_ancestral_equals_euler_at_one_step(models) -> None:
    cond = _context(models, ["a photo of a dog", "a dog"])
    kwargs = dict(unet=models.student_unet, scheduler=models.student_scheduler, cond=cond, seeds=[3, 4])
    a = sampling.sample_latents(**kwargs, steps=1, sampler="euler_ancestral")
    e = sampling.sample_latents(**kwargs, steps=1, sampler="euler")
    assert torch.equal(a, e)
    a2 = sampling.sample_latents(**kwargs, steps=2, sampler="euler_ancestral")
    e2 = sampling.sample_latents(**kwargs, steps=2, sampler="euler")
    assert not torch.allclose(a2, e2, atol=1e-3)


@pytest.mark.parametrize("steps", [2, 4])
def test_multi_step_student_matches_diffusers_pipeline_with_euler_ancestral(models, steps: int) -> None:
    """Peer: diffusers' StableDiffusionPipeline with EulerAncestralDiscreteScheduler from the model's config and
    one CPU generator per image gives the same latents as the harness (initial and per-step noise seeded)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    prompts, seeds = ["a photo of a dog", "a red dog"], [11, 12]
    ours = sampling.sample_latents(models.student_unet, models.student_scheduler, _context(models, prompts), seeds,
                                   steps)
    pipe = StableDiffusionPipeline(vae=models.vae, text_encoder=models.student_text_encoder,
                                   tokenizer=models.student_tokenizer, unet=models.student_unet,
                                   scheduler=EulerAncestralDiscreteScheduler.from_config(
                                       models.student_scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompts, num_inference_steps=steps, guidance_scale=0.0, output_type="latent",
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_each_image_keeps_its_noise_whatever_the_batch(models) -> None:
    cond = _context(models, ["a dog", "a red dog", "a dog"])
    both = sampling.sample_latents(models.student_unet, models.student_scheduler, cond, [5, 6, 5], 4)
    alone = sampling.sample_latents(models.student_unet, models.student_scheduler, cond[1:2], [6], 4)
    assert torch.allclose(both[1], alone[0], atol=1e-5) and torch.allclose(both[0], both[2])


def test_sd21_samples_at_its_native_size(models) -> None:
    """The 768-v SD 2.1 stand-in has a larger sample size than the profile trains at; it samples at it."""
    from baselines.custom_diffusion import CustomDiffusion

    teacher = models.teacher_unet
    assert teacher.config.sample_size > models.latent_size  # tiny: 12 latents (96 px) against 8 (64 px)
    assert sampling.native_latent_size(teacher) == teacher.config.sample_size
    cfg_cls = CustomDiffusion.Config
    from bench.config import build

    config = build(cfg_cls, CustomDiffusion.variants["sd21"] | {"sample_steps": 2})
    from baselines.custom_diffusion import CustomDiffusionModel

    image = CustomDiffusionModel(config, models.pipeline_parts("teacher")).generate(["a dog"], [0])[0]
    factor = models.resolution // models.latent_size
    assert image.size == (teacher.config.sample_size * factor,) * 2


# --- evaluation noise and prompts -----------------------------------------------------------------------------------

def test_every_prompt_of_a_seed_has_its_own_noise() -> None:
    seeds = {sampling.eval_noise_seed(p, s) for p in range(25) for s in range(4)}
    assert len(seeds) == 100
    assert sampling.eval_noise_seed(3, 1) == sampling.eval_noise_seed(3, 1)  # the same for every method and run
    with pytest.raises(ValueError):
        sampling.eval_noise_seed(1000, 0)


class _Recorder:
    """A `Trained` that remembers what it was asked to sample and returns grey images."""

    identifier, default_steps = "<new1>", 1

    def __init__(self, phrase: str | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        if phrase:
            self.eval_phrase = phrase

    def generate(self, prompts, seeds, steps=None):
        from PIL import Image

        self.calls += list(zip(prompts, seeds))
        return [Image.new("RGB", (16, 16), (128, 128, 128)) for _ in prompts]

    def save(self, out_dir: Path) -> None:
        pass


def test_evaluation_draws_noise_per_prompt_and_uses_the_declared_phrase(concept, tmp_path) -> None:
    from bench.runs import Context, evaluate

    ctx = Context(data=tmp_path, results=tmp_path, suite="tiny", eval_batch_size=4)
    default, ti = _Recorder(), _Recorder("{identifier}")
    out = evaluate(default, concept, (0, 1), tmp_path / "a", ctx, "cpu")
    evaluate(ti, concept, (0, 1), tmp_path / "b", ctx, "cpu")
    timed = default.calls[2:]  # after the warm-up and the single-image timing
    assert sorted({s for _, s in timed}) == sorted(sampling.eval_noise_seed(p, s) for p in range(3) for s in (0, 1))
    expected = [sampling.eval_noise_seed(p, s) for p in range(3) for s in (0, 1)]
    assert [r["noise_seed"] for r in out["images"]] == expected
    assert timed[0][0] == "a <new1> dog in the jungle"
    assert ti.calls[2][0] == "a <new1> in the jungle"
    assert [s for _, s in ti.calls] == [s for _, s in default.calls]  # paired across methods


def test_textual_inversion_trains_and_evaluates_on_the_placeholder_alone(concept, models, tmp_path) -> None:
    from baselines.textual_inversion import TextualInversion
    from bench.config import build
    from tests.helpers import ListLog

    seen: list[str] = []
    original = TrainingBatches.__next__

    def spy(self):
        batch = original(self)
        seen.extend(batch.prompts)
        return batch

    TrainingBatches.__next__ = spy
    try:
        method = TextualInversion(build(TextualInversion.Config, {"iterations": 2, "grad_accumulation": 2}))
        trained = method.train(concept, models, tmp_path, 0, ListLog())
    finally:
        TrainingBatches.__next__ = original
    assert seen and all(p.endswith("<new1>") and "dog" not in p for p in seen)
    assert concept.prompt(PROMPTS[0], trained.identifier, trained.eval_phrase) == "a <new1> in the jungle"
    assert concept.clip_text(PROMPTS[0]) == "a dog in the jungle"


# --- echo set -----------------------------------------------------------------------------------------------------

def test_every_echo_sample_has_its_own_noise(concept, models, tmp_path) -> None:
    from echodistill.config import EchoDistillConfig
    from echodistill.trainer import Session
    from tests.helpers import ListLog

    cfg = EchoDistillConfig(iterations=0, echo_samples=27, echo_iters=0, drop=("discriminators",))
    session = Session(cfg, concept, models, 0, ListLog())
    seen: list[list[int]] = []
    original = sampling.sample_latents

    def spy(*args, **kwargs):
        seen.append(list(args[3]))
        return original(*args, **kwargs)

    sampling.sample_latents = spy
    try:
        images = session.echo_samples()
    finally:
        sampling.sample_latents = original
    seeds = [s for chunk in seen for s in chunk]
    assert len(images) == 27 and len(set(seeds)) == 27
    assert not torch.allclose(images[0], images[25], atol=1e-3)  # same template (k % 25), other noise


# --- precision and MS-SWD defaults ------------------------------------------------------------------------------------

def test_defaults_train_in_fp32_sample_in_fp16_on_cuda_and_feed_msswd_minus_one_to_one() -> None:
    from bench.models.speed import autocast
    from echodistill.config import EchoDistillConfig

    cfg = EchoDistillConfig()
    assert cfg.autocast_dtype == "none" and cfg.sample_dtype == "auto" and cfg.msswd_input == "released"
    assert autocast("cuda", "auto").fast_dtype == torch.float16
    assert autocast("cuda", "bf16").fast_dtype == torch.bfloat16
    assert not isinstance(autocast("cpu", "auto"), torch.autocast)
    from echodistill.losses import msswd_loss

    a, b = torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 0.5)
    released = msswd_loss(a, b, generator=torch.Generator().manual_seed(0))
    unit = msswd_loss(a, b, "unit", generator=torch.Generator().manual_seed(0))
    assert float(released) > 1.2 * float(unit)  # [-1, 1] input: about twice the [0, 1] term


# --- the token's initial row and the K/V detach, as wired into the methods ---------------------------------------

@pytest.mark.parametrize("init", ["released", "class"])
def test_echodistill_initialises_the_token_as_configured(init: str, concept) -> None:
    from bench.models import personalize
    from bench.models.loading import Models
    from bench.models.profiles import get_profile
    from echodistill.config import EchoDistillConfig
    from echodistill.trainer import Session
    from tests.helpers import ListLog

    models = Models(get_profile("tiny"), "cpu")  # fresh copies: another test's session added <new1> to its own
    cfg = EchoDistillConfig(iterations=0, echo_iters=0, drop=("discriminators",), init=init)
    session = Session(cfg, concept, models, 0, ListLog())
    text = session.teacher_text
    pristine = models.get_pristine("teacher_text_encoder").get_input_embeddings().weight
    vocab = models.get_pristine("teacher_tokenizer").get_vocab()
    if init == "released":  # "corgi" looked up raw: not a vocabulary entry, so the unknown token's row
        unknown = models.get_pristine("teacher_tokenizer").unk_token_id
        assert "corgi" not in vocab and unknown == vocab["<|endoftext|>"]
        assert torch.equal(text.embeddings[text.token_id], pristine[unknown])
    else:  # the per-class word through BPE, mean of its pieces
        ids = models.get_pristine("teacher_tokenizer")(personalize.init_word("dog"), add_special_tokens=False).input_ids
        assert torch.allclose(text.embeddings[text.token_id], pristine[ids].mean(0))
    assert personalize.has_kv_detach(session.student_unet)  # token 0's K/V gradient blocked on every attn2 layer


def test_echodistill_teacher_view_samples_at_sd21_native_size(concept, models, tmp_path) -> None:
    from echodistill.config import EchoDistillConfig
    from echodistill.trainer import EchoDistill
    from tests.helpers import ListLog

    cfg = EchoDistillConfig(iterations=0, drop=("echo", "discriminators"), teacher_steps=2)
    trained = EchoDistill(cfg).train(concept, models, tmp_path, 0, ListLog())
    factor = models.resolution // models.latent_size
    student = trained.generate(["a <new1> dog"], [0])[0]
    teacher = trained.views["teacher"].generate(["a <new1> dog"], [0])[0]
    assert student.size == (models.student_unet.config.sample_size * factor,) * 2 == (models.resolution,) * 2
    assert teacher.size == (models.teacher_unet.config.sample_size * factor,) * 2 != student.size


# --- review fixes: views of another precision, non-square photos, user templates, user folders -----------------

def test_views_are_taken_over_only_when_sampled_the_same_way() -> None:
    from bench.config import to_dict
    from bench.runs import same_view_sampling
    from echodistill.config import EchoDistillConfig

    donor = to_dict(EchoDistillConfig())
    assert same_view_sampling(EchoDistillConfig(eval_steps=4), donor)  # the student's steps: compared per view
    assert not same_view_sampling(EchoDistillConfig(sample_dtype="none"), donor)
    assert not same_view_sampling(EchoDistillConfig(sampler="euler"), donor)


def test_non_square_photos_are_centre_cropped_not_squashed(tmp_path) -> None:
    from PIL import Image

    from bench.models.training import load_pixels

    arr = np.zeros((60, 40, 3), dtype=np.uint8)
    arr[10:50] = 255  # the centre 40 x 40 square is white, the top and bottom 10 rows black
    Image.fromarray(arr).save(tmp_path / "tall.png")
    (pixels,) = load_pixels([tmp_path / "tall.png"])
    assert pixels.shape == (3, 40, 40) and torch.all(pixels == 1.0)


def test_phrase_replaces_only_the_identifier_class_pair() -> None:
    c = Concept("mypet", "dog", (), ())
    assert c.prompt("a {0} on the beach", "<new1>") == "a <new1> on the beach"
    assert c.prompt("a {0} in a {1} costume", "<new1>", "{identifier}") == "a <new1> in a dog costume"
    assert c.prompt("a red {0} {1}", "<new1>", "{identifier}") == "a red <new1>"


def test_a_user_folder_named_like_a_dreambench_concept_gets_the_class_word() -> None:
    from bench.models import personalize

    assert personalize.init_for("dog", "dog", "released") == ("corgi", "raw")
    assert personalize.init_for("dog", "dog", "released", in_dataset=False) == (personalize.init_word("dog"), "bpe")
    assert personalize.init_for("mymug", "mug", "released") == ("mug", "bpe")
