"""TextBoost on the tiny profile: exactly its recipe's parameters learn, its files load back (through diffusers'
own loaders too), its data option picks TextBoost's one-shot copy, and bad input is one line with exit code 2."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import build
from bench.models.loading import Models
from bench.models.profiles import get_profile
from tests.helpers import assert_one_line_error, bench, pipeline_image, pixels, plain_pipeline, trained_run

# Two steps (the LoRA A matrices get a gradient only once B has moved); learning rates raised so two steps change
# the image; unfused so the base weights can be checked.
OVERRIDES = {"iterations": 2, "batch_size": 2, "lr": 5e-2, "emb_lr": 5e-2, "fuse": False}
SEED = 3


run = trained_run("textboost", OVERRIDES)


def test_trains_only_text_encoder_lora_and_the_new_rows(run) -> None:
    models = run.models
    te, pristine = models.student_text_encoder, models.get_pristine("student_text_encoder")
    state, before = te.state_dict(), pristine.state_dict()
    lora = {k for k in state if ".lora_" in k}
    targets = {k.split(".lora_")[0] for k in lora}
    assert lora and all(t.endswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")) for t in targets)
    assert len(targets) == 3 * te.config.num_hidden_layers
    assert all(state[k].abs().sum() > 0 for k in lora if ".lora_B." in k), "B starts at 0 and must have learnt"
    emb_key = next(k for k in before if k.endswith("token_embedding.weight"))
    vocab = before[emb_key].shape[0]
    for key, value in state.items():  # every other text-encoder weight bit-identical
        if ".lora_" in key:
            continue
        base = key.replace(".base_layer.", ".")
        if base == emb_key:
            assert torch.equal(value[:vocab], before[emb_key]), "no vocabulary row may move"
        else:
            assert torch.equal(value, before[base]), key
    # the new rows (2 concept vectors + the augmentation tokens' vectors) all moved from their initialisers
    tok = models.student_tokenizer
    new = state[emb_key][vocab:]
    assert new.shape[0] == len(tok) - vocab == len(run.trained.tokens) > 2
    init_ids = tok("corgi dog", add_special_tokens=False).input_ids
    assert not torch.equal(new[:2], before[emb_key][init_ids])
    for role in ("student_unet", "vae"):
        now, ref = getattr(models, role).state_dict(), models.get_pristine(role).state_dict()
        assert all(torch.equal(now[k], ref[k]) for k in ref), role
    assert run.trained.identifier == "<tb_0> <tb_1>"  # "corgi dog": TextBoost's word for `dog`, two pieces
    assert [r["t_mean"] for r in run.log.rows] == [999.0, 999.0]
    assert run.log.rows[1]["kpl"] > 0, "the knowledge-preservation loss sees the adapted encoder"


def test_new_rows_are_kept_under_the_mean_norm(run) -> None:
    emb = run.models.student_text_encoder.get_input_embeddings().weight
    pristine = run.models.get_pristine("student_text_encoder").get_input_embeddings().weight
    vocab = pristine.shape[0]
    assert emb[vocab:].norm(dim=-1).max() <= pristine.norm(dim=-1).mean() * 1.01


def test_saved_files_load_into_plain_diffusers(run) -> None:
    ours = pixels(run.trained.generate([run.prompt()], [SEED])[0])
    pipe = plain_pipeline()
    base = pipeline_image(pipe, run.models.latent_size, SEED, run.prompt())
    files = sorted(str(p) for p in run.weights.glob("<*>.safetensors"))
    assert any(f.endswith("<tb_0>.safetensors") for f in files)
    pipe.load_textual_inversion(files)
    pipe.load_lora_weights(run.weights)
    assert any(".lora_" in k for k in pipe.text_encoder.state_dict()), "the text-encoder LoRA was loaded"
    theirs = pipeline_image(pipe, run.models.latent_size, SEED, run.prompt())
    assert np.abs(theirs - base).max() > 2, "the trained weights change the image (the check is not vacuous)"
    assert np.abs(theirs - ours).max() <= 1


def test_method_load_gives_identical_samples_and_fuses(run) -> None:
    fresh = run.method.load(run.weights, Models(get_profile("tiny"), "cpu"))
    assert fresh.identifier == run.trained.identifier
    prompts, seeds = [run.prompt(), f"a {run.trained.identifier} dog in the snow"], [SEED, 0]
    for a, b in zip(run.trained.generate(prompts, seeds), fresh.generate(prompts, seeds)):
        assert np.array_equal(pixels(a), pixels(b))
    fused = run.method.__class__(build(run.method.Config, {})).load(run.weights, Models(get_profile("tiny"), "cpu"))
    te = fused.parts["text_encoder"]
    assert not any(".lora_" in k or ".base_layer." in k for k in te.state_dict()), "a plain encoder after fusing"
    a, b = run.trained.generate([run.prompt()], [SEED])[0], fused.generate([run.prompt()], [SEED])[0]
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_vector_names_and_their_load_order() -> None:
    from baselines.textboost import _token_order, vector_names

    assert vector_names("<tb>", 1) == ["<tb>"] and vector_names("<tb>", 2) == ["<tb_0>", "<tb_1>"]
    assert vector_names("tbx", 2) == ["tbx_0", "tbx_1"]
    names = [f"{n}.safetensors" for n in vector_names("<tb>", 12)]
    assert sorted(map(Path, reversed(names)), key=_token_order) == list(map(Path, names))  # _10 after _9


# --- the data option and the augmentation ---------------------------------------------------------------------

def test_reference_set_picks_textboosts_one_shot_photo(concept, tmp_path) -> None:
    from bench.data_textboost import reference_images

    assert [p.name for p in reference_images(concept, "textboost_n1")] == ["00.jpg"]  # dreambooth_n1.txt: dog,00
    assert reference_images(concept, "all") == concept.images and len(concept.images) > 1
    user = dataclasses.replace(concept, name="dog", dataset=False, images=tuple(reversed(concept.images)))
    assert reference_images(user, "textboost_n1") == (sorted(concept.images, key=lambda p: p.name)[0],)


def test_paired_augmentation_names_each_op_by_its_token() -> None:
    from PIL import Image

    from baselines.textboost_data import GEOMETRIC_OPS, PairedAugmentation, photo_collage

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    words = {k: k for k in ("<zoom-in>", "<zoom-out>", "<crop>", "<left>", "<right>", "<hflip>", "<collage>",
                            "<grayscale>")}
    rng = random.Random(0)
    for op in GEOMETRIC_OPS:
        out, key, _ = op(image, rng)
        assert out.size == image.size and (key is None or key in words)
    flipped, key, _ = GEOMETRIC_OPS[-1](image, rng)
    assert key == "<hflip>" and np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    assert photo_collage(image, rng)[1] == "<collage>"
    always = PairedAugmentation(p=1.0, color_p=1.0, words=words)
    out, prompt = always(image, "a photo of a <tb> dog", rng)
    assert "<collage>" in prompt and prompt.endswith(", <grayscale>")
    assert np.allclose(np.asarray(out)[..., 0], np.asarray(out)[..., 1])  # grey
    plain = PairedAugmentation(p=0.0, color_p=1.0, words=None)
    assert plain(image, "a photo of a <tb> dog", rng)[1] == "a photo of a <tb> dog, grayscale"


def test_snr_weighted_timesteps_favour_high_noise() -> None:
    from diffusers import EulerDiscreteScheduler

    from bench.models.training import snr_weighted_timesteps

    t = snr_weighted_timesteps(EulerDiscreteScheduler(), 4000, torch.Generator().manual_seed(0))
    assert t.min() >= 1 and t.max() <= 999, "t = 0 has the largest log-SNR: weight 0"
    assert t.float().mean() > 550 and (t >= 500).sum() > 1.4 * (t < 500).sum(), "the noisy half is favoured"


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--set", "token=dog", "--set", "iterations=1"], "token 'dog' is already in the tokenizer's vocabulary"),
    (["--set", "token=<crop>"], "token '<crop>' is one of the augmentation tokens"),
    (["--set", "reference_set=n2"], "reference_set must be one of all, textboost_n1"),
    (["--set", "timestep_policy=t1000"], "timestep_policy must be one of"),
    (["--set", "kpl_prompts_file=/nonexistent.jsonl"], "kpl_prompts_file '/nonexistent.jsonl' is not a file"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "textboost", *args, "--concepts", "dog",
                         "--data", dreambench_root, "--results", tmp_path)
    assert_one_line_error(code, err, needle, tmp_path)


def test_evaluation_phrase_is_the_reference_one(run) -> None:
    """The reference `eval_dreambooth.py` (token format "<INSTANCE> SUBJECT") evaluates a two-vector token as
    "a <dog_0> dog <dog_1> dog in the jungle"; `eval_phrase=joined` keeps "a <tb_0> <tb_1> dog in the jungle"."""
    from baselines.textboost import released_phrase
    from bench.api import DEFAULT_PHRASE, Concept, eval_phrase

    concept = Concept("dog", "dog", (), ("a {0} {1} in the jungle",))
    assert concept.prompt(concept.prompts[0], "<tb_0> <tb_1>", released_phrase(["<tb_0>", "<tb_1>"])) == \
        "a <tb_0> dog <tb_1> dog in the jungle"
    vectors = run.trained.identifier.split()
    assert eval_phrase(run.trained) == released_phrase(vectors)
    joined = run.method.__class__(build(run.method.Config, {"eval_phrase": "joined"})).load(
        run.weights, Models(get_profile("tiny"), "cpu"))
    assert eval_phrase(joined) == DEFAULT_PHRASE
    assert concept.prompt(concept.prompts[0], joined.identifier, eval_phrase(joined)) == \
        f"a {' '.join(vectors)} dog in the jungle"
