"""OminiControl on FLUX.1 (`baselines/ominicontrol.py`) on the tiny stand-ins: the conditioning photo matters, the
LoRA loads through diffusers' own loader and acts on the condition tokens only, the joint forward is FLUX.1's own
without them, save/load round-trips, the full-size roles build on `meta`, and missing weights are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.flux_models import OMINI_LORA_FILE, OMINI_TARGETS
from baselines.ominicontrol import LORA_FILE, OminiControl, OminiControlConfig, condition_forward
from bench.api import BenchError, Concept
from bench.config import build
from bench.models.loading import Models
from bench.models.profiles import get_profile

# The modules the released subject LoRA adapts, as named in one double and one single block (the tiny transformer).
ADAPTED = {"x_embedder", "transformer_blocks.0.norm1.linear", "transformer_blocks.0.attn.to_q",
           "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v", "transformer_blocks.0.attn.to_out.0",
           "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.norm.linear",
           "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out",
           "single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
           "single_transformer_blocks.0.attn.to_v"}
PROMPT = "a dog on the beach"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    """Two distinct non-square photos (a red and a blue gradient), named so that `a.png` sorts first."""
    root = tmp_path_factory.mktemp("photos")
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)[None, :].repeat(80, 0)
    paths = []
    for name, channel in (("a.png", 0), ("b.png", 2)):
        arr = np.zeros((80, 96, 3), np.uint8)
        arr[..., channel] = ramp
        arr[..., 1] = ramp.T[:80, :1] if channel == 0 else 40
        Image.fromarray(arr).save(root / name)
        paths.append(root / name)
    return paths


def _concept(images) -> Concept:
    return Concept("dog", "dog", tuple(images), ("a {0} {1} on the beach",))


def _prepare(images, tmp_path, **overrides):
    models = Models(get_profile("tiny").for_method("ominicontrol"), "cpu")  # one Models per run, as the harness does
    return OminiControl(build(OminiControlConfig, overrides)).prepare(_concept(images), models, tmp_path, 0)


def _pixels(model, prompts, seeds, **kwargs) -> np.ndarray:
    return np.stack([np.asarray(im) for im in model.generate(prompts, seeds, **kwargs)]).astype(np.int16)


def test_conditioning_photo_choice_changes_the_output(photos, tmp_path) -> None:
    first = _prepare(photos, tmp_path)
    assert first.conditioning == ["a.png"] and first.default_steps == 1
    only_b = _prepare(photos[1:], tmp_path)
    assert only_b.conditioning == ["b.png"]
    a_out, b_out = first.sample([PROMPT], [3], 1), only_b.sample([PROMPT], [3], 1)
    # Another photo, another image (same prompt, same noise); float rounding alone stays below 1e-5.
    assert (a_out - b_out).abs().max() > 1e-2
    assert not np.array_equal(_pixels(first, [PROMPT], [3]), _pixels(only_b, [PROMPT], [3]))

    each = _prepare(list(reversed(photos)), tmp_path, conditioning="each")
    assert each.conditioning == ["a.png", "b.png"]  # by file name, whatever the concept's order
    assert [each.photo_for(s) for s in (0, 1, 2, 3)] == [0, 1, 0, 1]
    # Seed 3 takes photo b, seed 2 photo a: what the one-photo models give, also within one mixed batch.
    mixed = each.sample([PROMPT, PROMPT], [2, 3], 1)
    assert torch.allclose(mixed[1], b_out[0], atol=1e-5)
    assert torch.allclose(mixed[0], first.sample([PROMPT], [2], 1)[0], atol=1e-5)


def test_mean_conditioning_is_refused_with_one_line() -> None:
    with pytest.raises(BenchError) as err:
        build(OminiControlConfig, {"conditioning": "mean"})
    assert "\n" not in str(err.value) and "not meaningful" in str(err.value) and "first, each" in str(err.value)
    with pytest.raises(BenchError, match="valid: first, each|must be one of first, each"):
        build(OminiControlConfig, {"conditioning": "all"})


def test_lora_loads_through_diffusers_and_adapts_only_the_released_layers(photos, tmp_path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    from baselines.flux_models import ensure_tiny_flux

    model = _prepare(photos, tmp_path)
    transformer = model.pipe.transformer
    adapted = {name for name, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)}
    assert adapted == ADAPTED
    assert list(transformer.peft_config) == ["subject"]
    # The loaded matrices are the file's (diffusers' loader, keys "transformer.<module>.lora_A.weight").
    state = load_file(ensure_tiny_flux() / "OminiControl" / OMINI_LORA_FILE)
    assert torch.equal(transformer.x_embedder.lora_B["subject"].weight, state["transformer.x_embedder.lora_B.weight"])
    assert torch.equal(transformer.single_transformer_blocks[0].proj_out.lora_A["subject"].weight,
                       state["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"])

    # Without condition tokens the model is FLUX.1 itself: the LoRA never touches text or image tokens.
    free = model.sample([PROMPT], [4], 1, condition=False)
    transformer.disable_adapters()
    plain = model.sample([PROMPT], [4], 1, condition=False)
    transformer.enable_adapters()
    assert torch.equal(free, plain)
    # With them, the LoRA changes the image (scale 0 leaves the frozen layers only).
    off = _prepare(photos, tmp_path, lora_scale=0.0)
    assert (model.sample([PROMPT], [4], 1) - off.sample([PROMPT], [4], 1)).abs().max() > 1e-2


def test_joint_forward_without_condition_is_flux_itself(photos, tmp_path) -> None:
    """No condition tokens: the block-by-block forward equals FluxTransformer2DModel's, and one-step sampling
    equals FluxPipeline's own loop from the same packed noise."""
    from bench.models.sampling import seeded_noise

    model = _prepare(photos, tmp_path)
    pipe = model.pipe
    text, pooled, text_ids = pipe.encode_prompt(prompt=[PROMPT], prompt_2=None, device="cpu")
    latents = torch.randn(1, 16, 64)
    image_ids = pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    t = torch.tensor([0.7])
    ours = condition_forward(pipe.transformer, latents, text, pooled, t, image_ids, text_ids, None, None, None)
    pipe.transformer.disable_adapters()
    try:
        theirs = pipe.transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                                  timestep=t, img_ids=image_ids, txt_ids=text_ids).sample
        packed = pipe._pack_latents(seeded_noise([5], (16, 8, 8), "cpu"), 1, 16, 8, 8)
        reference = pipe(prompt=[PROMPT], latents=packed, num_inference_steps=1, height=64, width=64,
                         output_type="pt").images
    finally:
        pipe.transformer.enable_adapters()
    assert torch.allclose(ours, theirs, atol=1e-5)
    ours_img = (model.sample([PROMPT], [5], 1, condition=False).clamp(-1, 1) + 1) / 2
    assert torch.allclose(ours_img, reference, atol=1e-5)


def test_save_then_load_gives_the_same_images(photos, tmp_path) -> None:
    from diffusers import FluxPipeline

    model = _prepare(photos, tmp_path, conditioning="each")
    before = _pixels(model, [PROMPT, "a dog in the snow", PROMPT], [0, 1, 2])
    # The same (prompt, seed) in another batch: the same image up to float rounding (sampling.py's promise).
    assert np.abs(before[:1] - _pixels(model, [PROMPT], [0])).max() <= 1
    out = tmp_path / "weights"
    model.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["conditioning.safetensors", LORA_FILE]
    state = FluxPipeline.lora_state_dict(out)  # diffusers reads what was saved
    assert len(state) == 2 * len(ADAPTED) and all(k.startswith("transformer.") for k in state)
    loaded = OminiControl(build(OminiControlConfig, {"conditioning": "each"})).load(
        out, Models(get_profile("tiny").for_method("ominicontrol"), "cpu"))
    assert loaded.conditioning == ["a.png", "b.png"]
    assert np.array_equal(before, _pixels(loaded, [PROMPT, "a dog in the snow", PROMPT], [0, 1, 2]))


# paper-random: the released parameter counts. FLUX.1-schnell's transformer has no guidance embedder (FLUX.1-dev's
# 11,901,408,320 less its 10,229,760); the T5-XXL encoder alone; CLIP ViT-L/14 text as for SD 1.5; the 16-channel VAE.
FLUX_COUNTS = {"flux_transformer": ("FluxTransformer2DModel", 11_891_178_560),
               "flux_vae": ("AutoencoderKL", 83_819_683),
               "flux_text_encoder": ("CLIPTextModel", 123_060_480),
               "flux_text_encoder_2": ("T5EncoderModel", 4_762_310_656)}


@pytest.mark.parametrize("role", sorted(FLUX_COUNTS))
def test_full_size_flux_roles_build_on_meta_with_released_counts(role: str) -> None:
    from bench.models.loading import load_component

    with torch.device("meta"):
        model = load_component(get_profile("paper-random").for_method("ominicontrol"), role, "meta")
    cls, count = FLUX_COUNTS[role]
    assert type(model).__name__ == cls and next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == count
    assert not any(p.requires_grad for p in model.parameters())


def test_full_size_flux_and_omini_adapter_build_on_meta() -> None:
    """paper-random's transformer (12B) with an adapter of the released shape: every target the released config
    names (1 patch embedder + 19 double blocks x 6 + 38 single blocks x 6 = 343 layers), rank 16."""
    from peft import LoraConfig

    from bench.models.loading import load_component

    profile = get_profile("paper-random").for_method("ominicontrol")
    with torch.device("meta"):
        transformer = load_component(profile, "flux_transformer", "meta")
        transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=OMINI_TARGETS), adapter_name="subject")
    assert transformer.config.num_layers == 19 and transformer.config.num_single_layers == 38
    assert not transformer.config.guidance_embeds  # FLUX.1-schnell
    lora = {n: p for n, p in transformer.named_parameters() if "lora_A" in n}
    assert len(lora) == 343 and all(p.shape[0] == 16 for p in lora.values())
    assert load_component(profile, "omini_lora", "cpu") is None  # paper-random: the method adds a random adapter


def test_missing_omini_lora_on_paper_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    with pytest.raises(BenchError) as err:
        _ = Models(get_profile("paper").for_method("ominicontrol"), "cpu").omini_lora
    message = str(err.value)
    assert "\n" not in message
    assert "omini_lora" in message and "Yuanshi/OminiControl" in message and "--weights omini=" in message
    # A local folder without the file: the same one line, saying which file is missing.
    with pytest.raises(BenchError) as err:
        _ = Models(get_profile("paper", weights={"omini": str(tmp_path)}).for_method("ominicontrol"), "cpu").omini_lora
    assert "\n" not in str(err.value) and OMINI_LORA_FILE in str(err.value) and "--weights omini=" in str(err.value)
    with pytest.raises(BenchError) as err:
        _ = Models(get_profile("paper").for_method("ominicontrol"), "cpu").flux_transformer
    assert "\n" not in str(err.value) and FLUX_REPO in str(err.value) and "--weights flux=" in str(err.value)


FLUX_REPO = "black-forest-labs/FLUX.1-schnell"


def test_flux_roles_are_reserved_for_ominicontrol() -> None:
    """Other methods' profiles (what their records describe and hash) leave the FLUX.1 roles out."""
    for name in ("tiny", "paper", "paper-random"):
        profile = get_profile(name)
        assert "omini_lora" in profile.for_method("ominicontrol").components
        described = profile.for_method("lora").describe()["components"]
        assert not any(role.startswith(("flux_", "omini_")) for role in described), name
        assert described == {role: entry for role, entry in profile.describe()["components"].items()
                             if not profile.components[role].methods}, "only the roles shared by every method"


@pytest.mark.parametrize("sample_dtype", ["none", "auto", "bf16"])
def test_every_sample_dtype_works_with_paper_dtypes(photos, tmp_path, sample_dtype) -> None:
    """`paper` loads the FLUX.1 transformer and T5 in bf16 and CLIP-L in float32: without autocast, CLIP's pooled
    vector used to meet the bf16 time-text embedding ("mat1 and mat2 must have the same dtype")."""
    model = _prepare(photos, tmp_path, sample_dtype=sample_dtype)
    model.pipe.transformer.to(torch.bfloat16)  # the paper profile's dtypes, on the tiny stand-ins
    model.pipe.text_encoder_2.to(torch.bfloat16)
    model.tokens = model.tokens.to(torch.bfloat16)
    assert model.pipe.text_encoder.dtype == torch.float32
    images = model.generate([PROMPT], [5])
    assert len(images) == 1 and np.asarray(images[0]).std() > 0


def test_weights_messages_name_the_role_and_the_missing_subfolder(monkeypatch, capsys, tmp_path,
                                                                  dreambench_root) -> None:
    from tests.helpers import bench

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "ominicontrol", "--concepts", "dog", "--profile",
                         "paper", "--weights", f"omini={tmp_path / 'empty'}", "--results", tmp_path / "r",
                         "--data", dreambench_root)
    assert code == 2 and "\n" not in err.strip()
    assert "omini_lora" in err and OMINI_LORA_FILE in err
    flux = tmp_path / "flux"
    (flux / "vae").mkdir(parents=True)
    (flux / "model_index.json").write_text("{}")
    with pytest.raises(BenchError) as raised:
        _ = Models(get_profile("paper", weights={"flux": str(flux)}).for_method("ominicontrol"), "cpu").flux_transformer
    assert "\n" not in str(raised.value) and "no transformer/ folder" in str(raised.value)


def test_paper_lora_variant_loads_the_experimental_file(photos, tmp_path, monkeypatch) -> None:
    """OminiControl's README: `experimental/subject` is "the model used in the paper"; `omini/subject_512` (the
    default, the example's) is the later one. Variant `paper_lora` loads the former with its (0, -32) shift."""
    import baselines.ominicontrol as omini
    from baselines.flux_models import OMINI_PAPER_LORA_FILE

    loaded: list = []
    real = omini._load_adapter
    monkeypatch.setattr(omini, "_load_adapter", lambda pipe, folder, name: (loaded.append(folder / name),
                                                                             real(pipe, folder, name)))
    paper = _prepare(photos, tmp_path, **OminiControl.variants["paper_lora"])
    default = _prepare(photos, tmp_path)
    assert [p.as_posix().endswith(f) for p, f in zip(loaded, (OMINI_PAPER_LORA_FILE, OMINI_LORA_FILE))] == [True] * 2
    assert (paper.sample([PROMPT], [1], 1) - default.sample([PROMPT], [1], 1)).abs().max() > 1e-3  # shifted
    with pytest.raises(BenchError, match="lora_file must be one of"):
        build(OminiControlConfig, {"lora_file": "omini/other.safetensors"})
    # A source holding only the default file: the variant names the missing one in one line.
    from baselines.flux_models import omini_lora_path

    only = tmp_path / "omini-only"
    (only / "omini").mkdir(parents=True)
    (only / OMINI_LORA_FILE).write_bytes(b"x")
    with pytest.raises(BenchError) as err:
        omini_lora_path(Models(get_profile("paper", weights={"omini": str(only)}).for_method("ominicontrol"), "cpu"),
                        OMINI_PAPER_LORA_FILE)
    assert "\n" not in str(err.value) and OMINI_PAPER_LORA_FILE in str(err.value)
