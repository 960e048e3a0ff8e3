"""Every method learns (`bench.learning`): on tiny, a trained method's samples move toward the concept's photos
compared with the untrained student from the same prompts and noise; a method without training moves toward the
photos that condition it. A negative control, whose trained weights are not used when sampling, fails the same
check. Fast tier: 3 concepts per method; slow tier (`-m slow`): all 30 concepts of the real DreamBench."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from baselines.lora import LoRA, LoRAConfig
from bench import learning
from bench.data import select_concepts
from bench.registry import method_names

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


NOT_YET = {
    "textboost": "measured 1/3 on dog, teapot, backpack at tiny's 10 iterations (2/3 at 30): backpack and dog move "
                 "away from the photos",
    "ip_adapter_tcd": "measured 1/3: tiny's image encoder and adapter are random stand-ins, so conditioning on the "
                      "concept's photo moves samples no nearer to it than another concept's photo",
}
"""Methods whose fast-tier check is below the stated share, as measured (README, "Which method is better"): kept as
expected failures so that the gap stays visible; a fix turns them into passes (`xfail` is not strict only because
the margins are small)."""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET[n])) if n in NOT_YET
                                  else n for n in CHECKED])
def test_every_method_learns_on_three_concepts(name: str, dreambench_root: Path) -> None:
    chosen, everything = _concepts(dreambench_root, FAST_CONCEPTS)
    report = learning.check_method(name, chosen, everything)
    assert len(report.results) == 3
    assert report.passed, report.line()


def test_the_negative_control_fails_the_same_check(dreambench_root: Path) -> None:
    chosen, everything = _concepts(dreambench_root, FAST_CONCEPTS)
    report = learning.check_method("lora", chosen, everything, cls=IgnoresItsTraining)
    assert not report.passed and report.share == 0, report.line()
    for r in report.results:  # unused weights: exactly the untrained samples
        assert r.learned == r.reference


def test_a_concept_passes_only_when_strictly_closer() -> None:
    assert learning.ConceptResult("m", "dog", 1.0, 1.5).passed
    assert not learning.ConceptResult("m", "dog", 1.5, 1.5).passed
    assert not learning.ConceptResult("m", "dog", 1.6, 1.5).passed
    results = tuple(learning.ConceptResult("m", c, 1.0, 1.0 + (i < 2)) for i, c in enumerate("abc"))
    assert learning.LearningReport("m", results).passed  # 2 of 3 = the stated share
    assert not learning.LearningReport("m", results[1:]).passed  # 1 of 2


NOT_YET_ALL = {
    **NOT_YET,
    "custom_diffusion": "measured 6/10 concepts (3/7 beyond the fast tier's 3): can, clock, red_cartoon and vase move "
                        "away from the photos",
    "echodistill": "measured 6/10 concepts, the same four moving away as Custom Diffusion's (K/V and token)",
}
"""The slow tier's measured shortfalls (README, "Which method is better"), on the 10 concepts measured so far."""


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET_ALL[n]))
                                  if n in NOT_YET_ALL else n for n in CHECKED])
def test_every_method_learns_on_all_concepts(name: str, real_dreambench_root: Path) -> None:
    chosen, everything = _concepts(real_dreambench_root, "all")
    report = learning.check_method(name, chosen, everything)
    print(report.line())
    assert len(report.results) == 30
    assert report.passed, report.line()
