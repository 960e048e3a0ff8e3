"""Every method learns (`bench.learning`): on tiny, a trained method's samples move toward the concept's photos
compared with its own start (one training step) from the same prompts and noise; a method without training moves
toward the photos that condition it. A negative control, whose trained weights are not used when sampling, fails
the same check. Fast tier: on 3 concepts per method, every method that trains moves the stated share closer, and every
conditioning reaches its samples; slow tier (`-m slow`): the share of concepts moved closer, on all 30 concepts of
the real DreamBench."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from baselines.lora import LoRA, LoRAConfig
from bench import learning
from bench.contract import MethodInfo
from bench.data import select_concepts
from bench.registry import get_method, method_names

FAST_CONCEPTS = "dog,teapot,backpack"
"""Three concepts of the committed fixture (the real DreamBench when present); `cat` is the other concept whose
photos condition a method without training."""
CHECKED = [n for n in method_names() if n != "base" and not n.startswith(("fake", "toy"))]
"""Every built-in method but the floor (`base`: no photo reaches it, by design)."""


class IgnoresItsTraining:
    """The negative control: trains exactly as LoRA, then samples with a fresh copy of the untouched student UNet,
    so its trained weights are never used at sampling."""

    name: ClassVar[str] = "lora"
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = LoRAConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __init__(self, config: LoRAConfig) -> None:
        self.inner = LoRA(config)

    def train(self, concept: Any, models: Any, out_dir: Path, seed: int, log: Any) -> Any:
        trained = self.inner.train(concept, models, out_dir, seed, log)
        trained.parts = {**trained.parts, "unet": learning._models("base").student_unet}
        return trained


def _concepts(root: Path, names: str) -> tuple[list[Any], list[Any]]:
    return select_concepts(root, names), select_concepts(root, "all")


TRAINS = [n for n in CHECKED if MethodInfo.of(get_method(n)).trains]
CONDITIONS = [n for n in CHECKED if n not in TRAINS]
MEASURED = {
    # method: (closer of dog, teapot, backpack on the committed fixture, on the real DreamBench), tiny, 10 iterations
    "cones2": (3, 3), "custom_diffusion": (3, 3), "disenbooth": (3, 3), "dreambooth": (3, 3), "echodistill": (3, 3),
    "lora": (3, 3), "textboost": (3, 3), "textual_inversion": (3, 3), "ip_adapter_tcd": (2, 1), "ominicontrol": (2, 1),
}
"""Measured shares (README, "Which method is better"): every method that trains moves at least 2 of the 3 concepts
closer on either dataset, so the fast tier asserts the stated share (`learning.SHARE`, 2 of 3) for them. The two
methods without training condition on photos through tiny's random image encoder (IP-Adapter) or a random FLUX.1
transformer (OminiControl): nothing pretrained ties a photo to what they draw, so their direction is at chance (1
or 2 of 3) and the fast tier asserts that the photos reach every sample; their share is the slow tier's."""


@pytest.mark.parametrize("name", TRAINS)
def test_every_trained_method_learns_on_three_concepts(name: str, dreambench_root: Path) -> None:
    """Trained samples closer to the concept's photos than the method's start's, on at least 2 of 3 concepts (a
    check the negative control below fails)."""
    chosen, everything = _concepts(dreambench_root, FAST_CONCEPTS)
    report = learning.check_method(name, chosen, everything)
    assert len(report.results) == 3
    assert report.passed, report.line()


@pytest.mark.parametrize("name", CONDITIONS)
def test_every_conditioning_reaches_its_samples_on_three_concepts(name: str, dreambench_root: Path) -> None:
    """Samples conditioned on the concept's photos differ from those conditioned on another concept's photos."""
    chosen, everything = _concepts(dreambench_root, FAST_CONCEPTS)
    report = learning.check_method(name, chosen, everything)
    assert len(report.results) == 3
    assert all(r.learned != r.reference for r in report.results), report.line()


def test_every_method_is_measured() -> None:
    assert set(MEASURED) == set(CHECKED) and set(TRAINS) | set(CONDITIONS) == set(CHECKED)
    assert all(min(MEASURED[n]) >= 2 for n in TRAINS)  # the stated share holds where the fast tier asserts it


def test_the_negative_control_fails_the_same_check(dreambench_root: Path) -> None:
    chosen, everything = _concepts(dreambench_root, FAST_CONCEPTS)
    report = learning.check_method("lora", chosen, everything, cls=IgnoresItsTraining)
    assert not report.passed and report.share == 0, report.line()
    for r in report.results:  # unused weights: exactly the start's samples
        assert r.learned == r.reference


def test_a_concept_passes_only_when_strictly_closer() -> None:
    assert learning.ConceptResult("m", "dog", 1.0, 1.5).passed
    assert not learning.ConceptResult("m", "dog", 1.5, 1.5).passed
    assert not learning.ConceptResult("m", "dog", 1.6, 1.5).passed
    results = tuple(learning.ConceptResult("m", c, 1.0, 1.0 + (i < 2)) for i, c in enumerate("abc"))
    assert learning.LearningReport("m", results).passed  # 2 of 3 = the stated share
    assert not learning.LearningReport("m", results[1:]).passed  # 1 of 2


NOT_YET_ALL = {
    "ip_adapter_tcd": "measured 14/30 concepts: conditioning through tiny's random image encoder and adapter, nothing "
                      "pretrained ties a photo to what it draws",
}
"""The slow tier's measured shortfalls on all 30 concepts (README, "Which method is better")."""


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET_ALL[n]))
                                  if n in NOT_YET_ALL else n for n in CHECKED])
def test_every_method_learns_on_all_concepts(name: str, real_dreambench_root: Path) -> None:
    chosen, everything = _concepts(real_dreambench_root, "all")
    report = learning.check_method(name, chosen, everything)
    print(report.line())
    assert len(report.results) == 30
    assert report.passed, report.line()


def test_reachable_through_an_identity_autoencoder_gives_the_photos_back() -> None:
    """The measure's targets: photos resized to the sample size, through encode and decode; an autoencoder that
    changes nothing gives the resized photos back, pixel for pixel (the [-1, 1] round trip is exact)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from PIL import Image

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

        def decode(self, z):
            return SimpleNamespace(sample=z)

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    (out,) = learning.reachable([photo], Identity(), 16)
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(photo.resize((16, 16), Image.BICUBIC)))


def test_bench_learns_from_the_command_line(dreambench_root: Path, monkeypatch, capsys) -> None:
    from tests.helpers import bench

    code, out, err = bench(monkeypatch, capsys, "learns", "--method", "lora,nope", "--data", dreambench_root)
    assert code == 2 and "unknown method 'nope'" in err and not out  # refused before any training
    code, out, err = bench(monkeypatch, capsys, "learns", "--method", "lora", "--concepts", "dog", "--data",
                           dreambench_root)
    assert code == 0 and out.startswith("ok   lora: 1/1 concepts closer (dog "), out + err
    assert "1 of 1 method(s) learn" in err


def test_each_method_is_measured_through_the_vae_it_samples_with() -> None:
    assert {n: learning.vae_role(get_method(n)) for n in ("lora", "echodistill", "ip_adapter_tcd", "ominicontrol")} \
        == {"lora": "vae", "echodistill": "vae", "ip_adapter_tcd": "sdxl_vae", "ominicontrol": "flux_vae"}


def test_a_trained_method_is_compared_with_its_own_start(monkeypatch, concept) -> None:
    """The reference is the same method trained `START` iteration per stage, on the same prompts, at the samples'
    size; not the backbone."""
    from PIL import Image

    calls, sizes = [], []

    def trained_samples(cls, name, concept, iterations):
        calls.append((name, iterations))
        return [Image.new("RGB", (24, 24), (200 if iterations > 1 else 90, 0, 0))], ["a sks dog"]

    monkeypatch.setattr(learning, "_trained_samples", trained_samples)
    monkeypatch.setattr(learning, "_targets", lambda c, models, role, size: sizes.append((role, size)) or
                        [Image.new("RGB", (24, 24), (255, 0, 0))])
    monkeypatch.setattr(learning, "_models", lambda name, backbone="sd-turbo": None)
    result = learning.check_trained(LoRA, "lora", concept)
    assert calls == [("lora", learning.ITERATIONS), ("lora", learning.START)] and sizes == [("vae", 24)]
    assert result.passed and result.learned < result.reference  # the redder trained sample is the closer one


def test_bench_learns_refuses_bad_input_in_one_line(dreambench_root: Path, monkeypatch, capsys) -> None:
    from tests.helpers import bench

    for args, said in ((["--concepts", "nosuch"], "nosuch"), (["--iterations", "1"], "--iterations must be at least 2"),
                       (["--method", ","], "no method given")):
        argv = ["learns", "--method", "lora", "--data", dreambench_root, *args]
        code, out, err = bench(monkeypatch, capsys, *argv)
        assert code == 2 and not out and said in err and len(err.strip().splitlines()) == 1, (args, err)
