"""Cones 2 on the tiny profile: what trains, the residual's extraction and placement, the round trips, bad input.

One run (2 iterations at a raised learning rate, so the residual visibly moves the image; the tuned text encoder
kept so its weights can be checked) is trained once per module and shared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.api import BenchError
from bench.config import build
from bench.models import sampling
from bench.models.loading import Models
from bench.models.profiles import get_profile
from bench.models.training import IMAGENET_TEMPLATES
from bench.registry import get_method
from tests.helpers import ListLog, assert_one_line_error, bench, pipeline_image, pixels, plain_pipeline, trained_run

SEED = 3
OVERRIDES = {"iterations": 2, "lr": 2e-2, "keep_text_encoder": True}


run = trained_run("cones2", OVERRIDES)


def _changed(module: torch.nn.Module, pristine: torch.nn.Module) -> set[str]:
    now, before = dict(module.named_parameters()), dict(pristine.named_parameters())
    assert now.keys() == before.keys()
    return {k for k in before if not torch.equal(now[k], before[k])}


# --- what trains ---------------------------------------------------------------------------------------------

def test_only_the_tuned_text_encoder_moves(run) -> None:
    """The recipe fine-tunes the whole text encoder (a copy): all its weights move; the run's UNet, VAE and text
    encoder (what sampling uses) stay bit-identical to the base model, and no token is added."""
    models = run.models
    pristine_te = models.get_pristine("student_text_encoder")
    tuned = run.trained.tuned_text_encoder
    assert _changed(tuned, pristine_te) == {k for k, _ in pristine_te.named_parameters()}
    assert _changed(models.student_text_encoder, pristine_te) == set()
    assert _changed(models.student_unet, models.get_pristine("student_unet")) == set()
    assert _changed(models.vae, models.get_pristine("vae")) == set()
    assert len(models.student_tokenizer) == len(models.get_pristine("student_tokenizer"))
    rows = run.log.rows
    assert len(rows) == 2 and rows[0]["t_mean"] == 999.0
    assert rows[0]["embed"] == 0.0 and rows[1]["embed"] > 0.0, "preservation term: 0 before the first update"
    assert abs(rows[1]["loss"] - rows[1]["mse"] - rows[1]["embed"]) < 1e-5


def test_residual_is_the_template_mean_of_tuned_minus_frozen(run) -> None:
    """Known answer, computed here from token positions: mean over the 27 templates of the tuned minus the
    untouched encoder's output at the "dog" token."""
    tok = run.models.student_tokenizer
    dog = tok("dog", add_special_tokens=False).input_ids
    assert len(dog) == 1
    frozen, tuned = run.models.get_pristine("student_text_encoder"), run.trained.tuned_text_encoder
    diffs = []
    for template in IMAGENET_TEMPLATES:
        ids = sampling.tokenize(tok, [template.format("dog")], "cpu")
        pos = ids[0].tolist().index(dog[0])
        with torch.no_grad():
            diffs.append(tuned(ids)[0][0, pos] - frozen(ids)[0][0, pos])
    expected = torch.stack(diffs).mean(0, keepdim=True)
    assert run.trained.residual.shape == (1, frozen.config.hidden_size)
    assert expected.abs().max() > 0
    torch.testing.assert_close(run.trained.residual, expected, rtol=1e-5, atol=1e-6)


# --- where the residual goes ---------------------------------------------------------------------------------

def test_residual_lands_on_exactly_the_class_tokens(run) -> None:
    """Known answer: output minus the untouched encoder's output is the residual at the first occurrence of the
    class word's tokens (one token for "dog", two for "stuffed animal") and exactly zero everywhere else."""
    from baselines.cones2 import ResidualTextEncoder

    tok, frozen = run.models.student_tokenizer, run.models.get_pristine("student_text_encoder")
    width = frozen.config.hidden_size
    cases = [("dog", "a dog on a dog bed", 2), ("stuffed animal", "a photo of a stuffed animal", 5),
             ("dog", "a cat on the moon", None)]
    for noun, prompt, position in cases:
        subject = tok(noun, add_special_tokens=False).input_ids
        residual = torch.arange(len(subject) * width, dtype=torch.float32).reshape(len(subject), width) + 1
        encoder = ResidualTextEncoder(frozen, subject, residual)
        ids = sampling.tokenize(tok, [prompt, ""], "cpu")
        with torch.no_grad():
            delta = encoder(ids)[0] - frozen(ids)[0]
        expected = torch.zeros_like(delta)
        if position is not None:
            assert ids[0, position:position + len(subject)].tolist() == subject
            expected[0, position:position + len(subject)] = residual
        torch.testing.assert_close(delta, expected, rtol=0, atol=1e-4)


def test_residual_changes_the_image_and_matches_plain_diffusers(run, tmp_path) -> None:
    """The harness's image equals a plain diffusers pipeline given the untouched encoder's prompt embeddings plus
    the saved residual at the class word (no Cones 2 loader exists; `prompt_embeds` is the ecosystem's way).
    The tiny UNet barely reacts to one of 77 context tokens, so the learnt residual is scaled up 100 times here
    to make the image move (the check is then not vacuous); the mechanics are the same."""
    from safetensors.torch import load_file

    from baselines.cones2 import Cones2Model

    prompt = "a photo of a dog on the beach"
    strong = Cones2Model(run.trained.config, run.models.pipeline_parts(), "dog", run.trained.subject,
                         run.trained.residual * 100)
    strong.save(tmp_path)
    ours = pixels(strong.generate([prompt], [SEED])[0])
    pipe = plain_pipeline()
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]
    base = pipeline_image(pipe, run.models.latent_size, SEED, prompt_embeds=embeds.clone())
    dog = pipe.tokenizer("dog", add_special_tokens=False).input_ids[0]
    embeds[0, ids[0].tolist().index(dog)] += load_file(tmp_path / "residual.safetensors")["residual"][0]
    theirs = pipeline_image(pipe, run.models.latent_size, SEED, prompt_embeds=embeds)
    assert np.abs(theirs - base).max() > 2, "the residual changes the image (the check is not vacuous)"
    assert np.abs(theirs - ours).max() <= 1


# --- saving and loading --------------------------------------------------------------------------------------

def test_saved_files_and_load_gives_identical_samples(run) -> None:
    from safetensors import safe_open
    from transformers import CLIPTextModel

    with safe_open(str(run.weights / "residual.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["residual"]
    assert meta["class_noun"] == "dog" and json.loads(meta["token_ids"]) == run.trained.subject
    kept = CLIPTextModel.from_pretrained(run.weights / "text_encoder")
    assert _changed(kept, run.trained.tuned_text_encoder) == set()
    fresh = run.method.load(run.weights, Models(get_profile("tiny"), "cpu"))
    assert fresh.identifier == "dog" and fresh.eval_phrase == "{class_noun}"
    prompts, seeds = ["a dog in the jungle", "a red dog on the moon"], [SEED, 0]
    for a, b in zip(run.trained.generate(prompts, seeds), fresh.generate(prompts, seeds)):
        assert np.array_equal(pixels(a), pixels(b))


def test_evaluation_prompt_is_the_class_word_alone(run, concept) -> None:
    from bench.api import eval_phrase

    assert concept.prompt("a {0} {1} in the jungle", run.trained.identifier, eval_phrase(run.trained)) == \
        "a dog in the jungle"


# --- bad input -----------------------------------------------------------------------------------------------

def test_prompt_without_the_class_word_is_refused(run) -> None:
    with pytest.raises(BenchError, match="does not contain the class noun 'dog'"):
        run.trained.generate(["a hotdog on the moon"], [0])


def test_token_num_beyond_the_class_word_is_refused(concept, tmp_path) -> None:
    cls = get_method("cones2")
    method = cls(build(cls.Config, {"token_num": 2, "iterations": 1}))
    with pytest.raises(BenchError, match="token_num=2 but the class noun 'dog' is 1 token"):
        method.train(concept, Models(get_profile("tiny"), "cpu"), tmp_path, 0, ListLog())


def test_a_weights_file_of_another_format_is_refused(run, tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"residual": torch.zeros(1, 8)}, str(tmp_path / "residual.safetensors"))
    with pytest.raises(ValueError, match="not a Cones 2 residual"):
        run.method.load(tmp_path, Models(get_profile("tiny"), "cpu"))


@pytest.mark.parametrize("args, needle", [
    (["--set", "train_prompt=a photo of a dog"], "train_prompt must contain '{class_noun}'"),
    (["--set", "train_prompt=a {class_noun} {x}"], "train_prompt must contain '{class_noun}'"),
    (["--set", "token_num=-1"], "token_num must be 0"),
    (["--set", "token_num=2", "--set", "iterations=1"], "token_num=2 but the class noun 'dog' is 1 token"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle, dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "cones2", *args, "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path)
    assert_one_line_error(code, err, needle, tmp_path)


@pytest.mark.slow
def test_cli_run_then_generate(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    """The full tiny run, then `bench generate` from its folder; a prompt without the class word is one line and
    exit 2."""
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "cones2", "--concepts", "dog", "--data",
                         dreambench_root, "--results", tmp_path)
    assert code == 0, err
    run_dir = tmp_path / "tiny" / "cones2" / "default" / "dog" / "seed0"
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "done" and record["config"]["iterations"] == 10 and len(record["images"]) == 25
    assert (run_dir / "weights" / "residual.safetensors").is_file()
    out = tmp_path / "g.png"
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run_dir, "--prompt", "a dog on the moon",
                         "--out", out, "--data", dreambench_root)
    assert code == 0 and out.is_file(), err
    code, _, err = bench(monkeypatch, capsys, "generate", "--run", run_dir, "--prompt", "a hotdog on the moon",
                         "--out", tmp_path / "h.png", "--data", dreambench_root)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "class noun 'dog'" in lines[0], err


def test_ls_methods_describes_cones2(monkeypatch, capsys) -> None:
    code, out, _ = bench(monkeypatch, capsys, "ls", "methods")
    line = next(line for line in out.splitlines() if line.startswith("cones2\t"))
    assert code == 0 and "Cones 2" in line and "residual" in line
