"""The floor: the model under test with no personalization, prompted with the class noun ("a dog in the jungle").

Every table reads floor, methods, ceiling: this row says how much of a method's score the base model already
gets from the class noun alone (CLIP-T is often highest here: nothing pulls the image toward the subject), and the
real-vs-real row says how far the photos agree with each other. Nothing is trained (`trains = False`) and no photo
conditions the model (`conditioning` is empty); the concept enters only through its class noun.

The model is the run's backbone student, sampled as the personalised students are: SD-Turbo (`--backbone
sd-turbo`, default) or SD 1.5 with the Hyper-SD one-step LoRA fused (`--backbone hyper-sd15`, the same fusing as
EchoDistill's student), one step, the Euler ancestral sampler, fp16 on CUDA. One row per backbone in the main
table. `save` writes a weightless `.safetensors` (its metadata names the backbone) so a run folder looks like every
other; `load` rebuilds the same model from the profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.api import Concept, Models
from bench.config import SAMPLING_STEPS
from bench.models import sampling
from bench.models.sampling import Numerics

MARKER_FILE = "base_model.safetensors"


@dataclass(frozen=True)
class BaseConfig(Numerics):
    sample_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Sampling steps (one-step students: 1, as every method in the main table). Sampling-only."""
    sample_batch_size: int = 25
    """Images per sampling batch."""

    def __post_init__(self) -> None:
        sampling.check_numerics(self)
        for name in ("sample_steps", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")


class Base:
    name: ClassVar[str] = "base"
    label: ClassVar[str] = "Base model (no personalization)"
    version: ClassVar[int] = 1
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = BaseConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "backbone_hyper-sd15": {}}
    """`backbone_hyper-sd15`: the floor of the Hyper-SD 1.5 student, `bench ablate --method base --backbone
    hyper-sd15` (its own variant, so its runs sit beside SD-Turbo's instead of replacing them)."""

    def __init__(self, config: BaseConfig) -> None:
        self.config = config

    def prepare(self, concept: Concept, models: Models, out_dir: Path, seed: int) -> BaseModel:
        """Nothing to learn or encode: the backbone's student as loaded (`seed` changes nothing)."""
        return BaseModel(self.config, _parts(models), models.profile.backbone)

    def load(self, weights_dir: Path, models: Models) -> BaseModel:
        return BaseModel(self.config, _parts(models), models.profile.backbone)


def _parts(models: Models) -> dict[str, Any]:
    from echodistill.model import student_unet

    parts = models.pipeline_parts()
    parts["unet"] = student_unet(models)  # hyper-sd15: the one-step LoRA fused in; SD-Turbo: as loaded
    return parts


class BaseModel:
    """The unpersonalized student; prompts name the class ("a dog in the jungle"), there is no identifier."""

    identifier = ""
    eval_phrase = "{class_noun}"

    def __init__(self, config: BaseConfig, parts: dict[str, Any], backbone: str) -> None:
        self.config, self.parts, self.backbone = config, parts, backbone
        self.default_steps = config.sample_steps
        self.conditioning: list[str] = []
        """No photo conditions the model (recorded with the run as an empty list)."""

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return sampling.generate_config(self.parts, self.config, prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({}, out_dir / MARKER_FILE, metadata={"method": "base", "backbone": self.backbone,
                                                       "note": "no weights: the backbone as loaded"})
