"""EchoDistill's config: every knob of `shared/spec/method.md`, with the spec's default, validated here.

Defaults live in this file only. Schedule lengths are declared `SCHEDULE` (the harness caps them on the `tiny`
profile, `Profile.iteration_cap`) and step counts `SAMPLING_STEPS` / `STEP_COUNT` (capped at its `step_cap`);
they keep the conventional names (`iterations`, `*_iters`, `*_steps`) too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from bench.config import (
    BATCH_SIZE,
    CHECKPOINT_EVERY,
    MAIN_SCHEDULE,
    SAMPLING_ONLY,
    SAMPLING_STEPS,
    SCHEDULE,
    STEP_COUNT,
)
from bench.models.personalize import INIT_SOURCES
from bench.models.sampling import SAMPLERS
from bench.models.speed import AUTOCAST, SAMPLE_DTYPES
from bench.models.training import LOSS_NORMALISATIONS

# What an ablation may switch off (method.md, "Variants the harness must run"). Each name removes exactly that
# part of the computation (no forward pass, no parameters, no optimiser entry), nothing else.
DROPPABLE = ("teacher", "discriminators", "disc_dino1", "disc_dino2", "disc_clip", "id_loss", "mse_loss",
             "msswd_loss", "ste", "echo")
DISCRIMINATORS = ("disc_dino1", "disc_dino2", "disc_clip")
TIMESTEP_WEIGHTINGS = ("alphas_cumprod", "sqrt_alphas_cumprod")
MSSWD_INPUTS = ("released", "unit")


@dataclass
class EchoDistillConfig:
    """EchoDistill (arXiv 2510.20512) as the project runs it; see echodistill/README.md for every choice."""

    # --- schedule (method.md, "One training iteration" and "Echo stage") ---------------------------------
    iterations: int = field(default=1000, metadata=MAIN_SCHEDULE)
    """Distillation-stage iterations (spec: 1000). 0 is allowed: the untrained initial state (for baselines)."""
    batch_size: int = field(default=2, metadata=BATCH_SIZE)
    """Images per iteration (spec: 2)."""
    echo_samples: int = 100
    """Images the trained student generates for the echo stage: the 25 training templates x 4 seeds (project
    choice, spec "Echo stage")."""
    echo_iters: int = field(default=250, metadata=SCHEDULE)
    """Iterations of the echo stage, the distillation loop with the echo samples as the real images (project
    choice)."""

    # --- optimisers (spec "Optimisers": AdamW, constant schedule) ------------------------------------------
    lr_teacher: float = 1e-5
    """Teacher K/V and the new token row (spec: 1e-5)."""
    lr_student: float = 2e-5
    """Student K/V (and, without the shared text encoder, the student's own token row) (spec: 2e-5)."""
    lr_disc: float = 1e-4
    """The three discriminator heads (spec: 1e-4)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas for all three optimisers (spec: (0.9, 0.999))."""
    weight_decay: float = 1e-2
    """AdamW weight decay for all three optimisers (spec: 1e-2)."""
    grad_clip: float = 1.0
    """Max gradient norm of the student update (spec: 1.0); also applied to the teacher update, as the released
    code does. The discriminator heads are not clipped (the released call runs before backward: a no-op)."""

    # --- teacher --------------------------------------------------------------------------------------------
    teacher_guidance: float = 7.5
    """Classifier-free guidance of the teacher target x0_T (step 5) and of teacher sampling (spec: 7.5)."""
    teacher_steps: int = field(default=25, metadata=STEP_COUNT)
    """DDIM steps when the teacher samples: the teacher view, and teacher_first's teacher samples (spec: 25)."""

    # --- losses (spec steps 4 and 6) --------------------------------------------------------------------
    weight_mse: float = 1.0
    """Latent MSE 0.5 * mean((x0_s - x0_T)^2) (spec: 1.0)."""
    weight_id: float = 1.0
    """Identity loss on IP-Adapter-projected CLIP image embeddings (spec: 1.0)."""
    weight_msswd: float = 0.1
    """MS-SWD between img_s and img_T (spec: 0.1)."""
    weight_adv_dino1: float = 1.0
    """Non-saturating generator loss of the DINO ViT-S/16 discriminator (spec: 1.0)."""
    weight_adv_dino2: float = 1.0
    """Non-saturating generator loss of the DINOv2 ViT-L/14 discriminator (spec: 1.0)."""
    weight_adv_clip: float = 1.0
    """Non-saturating generator loss of the CLIP + IP-Adapter discriminator (spec: 1.0)."""
    timestep_weighting: str = "alphas_cumprod"
    """w(t') of the alignment losses: "alphas_cumprod" (the released code, default) or "sqrt_alphas_cumprod"
    (ADD's "exponential" weighting)."""
    msswd_input: str = "released"
    """"released": feed the decoder output in [-1, 1] to MS-SWD as the released training code does (default; about
    twice the term of the reference's convention); "unit": map it to [0, 1] first (MS-SWD's own convention)."""
    loss_normalisation: str = "mask_sum"
    """The teacher's masked denoising loss: "mask_sum" divides the sum over channels and masked pixels by the
    one-channel mask sum (the released code and diffusers' Custom Diffusion: 4x the mean; default), "mean" by the
    element count (a true mean)."""

    # --- variants (spec "Variants the harness must run") -------------------------------------------------
    drop: tuple[str, ...] = ()
    """Parts to switch off, any of: teacher, discriminators, disc_dino1, disc_dino2, disc_clip, id_loss,
    mse_loss, msswd_loss, ste, echo."""
    teacher_first: bool = False
    """Paper Appendix H: train the teacher alone for `iterations`, then distil it into the student for
    `iterations` from teacher samples with the identity loss only (no echo stage)."""
    shots: int | None = None
    """Use only the first N reference images (the one-shot ablation: 1); None = all."""

    # --- data (spec "Data augmentation") -------------------------------------------------------------------
    hflip: bool = True
    """Random horizontal flip, p = 0.5 (spec: on)."""
    augment: bool = True
    """Custom Diffusion's random-scale augmentation with its loss mask and prompt words (spec: on)."""
    token: str = "<new1>"
    """The new token; the prompt is "<new1> {class}" inside the 25 training templates."""
    init: str = "released"
    """How `<new1>` is initialised: "released" (default): the released per-instance word (`run_dreambooth.py`'s
    table) looked up raw in the vocabulary (one row; unknown -> `<|endoftext|>`), as the released code does;
    "class": a descriptive word per class, BPE-tokenised, mean of its pieces (bench.models.personalize)."""
    init_word: str | None = None
    """A word that overrides the table of `init` (looked up the way `init` says); None = the table's."""
    kv_detach_first_token: bool = True
    """Block the gradient through the cross-attention key and value of token 0 (start of text), as diffusers'
    `CustomDiffusionAttnProcessor2_0(train_kv=True)`, which the released code trains through, does (default);
    False lets it through."""

    # --- sampling and numerics ---------------------------------------------------------------------------------
    eval_steps: int = field(default=1, metadata=SAMPLING_STEPS)
    """Student sampling steps used for evaluation (1; the NFE ablation samples the same student with 2, 4).
    Sampling-only: runs that differ only here share one training (the others sample its weights)."""
    sample_batch_size: int = 16
    """Images per batch when generating (evaluation and echo samples)."""
    autocast_dtype: str = "none"
    """Training precision of forward passes: "none" = float32, as the released code trains (default), or "bf16"
    (faster; changes results at bf16 rounding). Weights, optimiser states and losses stay float32."""
    sample_dtype: str = field(default="auto", metadata=SAMPLING_ONLY)
    """Sampling precision (evaluation views; echo samples are drawn in training precision): "auto" = fp16 on CUDA,
    float32 on CPU (the released evaluation's fp16 pipelines; default), "none", "fp16", "bf16". Sampling-only."""
    sampler: str = field(default="euler_ancestral", metadata=SAMPLING_ONLY)
    """What the student samples with at 2+ steps: "euler_ancestral" (the released evaluation, default; identical
    to "euler" at one step) or "euler". The teacher keeps DDIM. Sampling-only."""
    checkpoint_every: int = field(default=100, metadata=CHECKPOINT_EVERY)
    """Save a resumable checkpoint every this many iterations of each stage (distillation, echo; teacher-first's two)
    and at its end, in the run's work folder: both UNets' K/V, the token row(s), the discriminator heads, the three
    AdamW states and every RNG. `bench run --resume` continues a killed run from it, bit-identically; a kill in
    the echo stage resumes there (the finished distillation is restored from its last checkpoint). 0 = off. Not part
    of the config hash: it never changes the result."""

    def __post_init__(self) -> None:
        if isinstance(self.drop, str):  # "--drop disc_clip,ste" from a command line
            self.drop = tuple(d.strip() for d in self.drop.split(",") if d.strip())
        self.drop = tuple(self.drop)
        if isinstance(self.shots, str):  # "--shots 1"; "none" = all images
            self.shots = None if self.shots.strip().lower() in ("", "none") else int(self.shots)
        unknown = [d for d in self.drop if d not in DROPPABLE]
        if unknown:
            raise ValueError(f"unknown drop name(s) {', '.join(map(repr, unknown))}; valid: {', '.join(DROPPABLE)}")
        if isinstance(self.betas, str):
            self.betas = tuple(float(b) for b in self.betas.split(","))
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        _choice("timestep_weighting", self.timestep_weighting, TIMESTEP_WEIGHTINGS)
        _choice("msswd_input", self.msswd_input, MSSWD_INPUTS)
        _choice("autocast_dtype", self.autocast_dtype, AUTOCAST)
        _choice("sample_dtype", self.sample_dtype, SAMPLE_DTYPES)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("loss_normalisation", self.loss_normalisation, LOSS_NORMALISATIONS)
        _choice("init", self.init, INIT_SOURCES)
        for name in ("iterations", "echo_samples", "echo_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_steps", "teacher_steps", "sample_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for f in fields(self):
            if f.name.startswith(("lr_", "weight_")) and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = off), got {self.checkpoint_every}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"shots must be >= 1 or None, got {self.shots}")
        if not self.token.strip():
            raise ValueError("token must not be empty")
        if self.uses("echo") and not self.teacher_first and self.echo_iters > 0 and self.echo_samples < 1:
            raise ValueError("the echo stage needs echo_samples >= 1 (or drop echo, or echo_iters=0)")
        if self.teacher_first and "teacher" in self.drop:
            raise ValueError("teacher_first needs the teacher; it cannot be combined with drop=teacher")
        if self.teacher_first and not self.uses("id_loss"):
            raise ValueError("teacher_first distils with the identity loss only; it cannot drop id_loss")
        if not self.teacher_first and not self.student_losses():
            raise ValueError(f"drop={list(self.drop)} leaves the student no loss to train on")

    # --- what is switched on, in one place --------------------------------------------------------------------
    def uses(self, part: str) -> bool:
        """Whether `part` (a DROPPABLE name) is on. Dropping "teacher" drops everything that needs the teacher
        (the alignment losses); dropping "discriminators" drops all three."""
        if part not in DROPPABLE:
            raise ValueError(f"unknown part {part!r}; valid: {', '.join(DROPPABLE)}")
        if part in self.drop:
            return False
        if part in ("id_loss", "mse_loss", "msswd_loss"):
            return "teacher" not in self.drop
        if part in DISCRIMINATORS:
            return "discriminators" not in self.drop
        return True

    def discriminators(self) -> tuple[str, ...]:
        """The discriminators that run, e.g. ("disc_dino1", "disc_dino2", "disc_clip")."""
        return tuple(d for d in DISCRIMINATORS if self.uses(d))

    def student_losses(self) -> tuple[str, ...]:
        """The losses that train the student in the distillation loop."""
        align = tuple(p for p in ("mse_loss", "id_loss", "msswd_loss") if self.uses(p))
        return align + self.discriminators()


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")


ABLATIONS: dict[str, str] = {"drop": "drop", "teacher_first": "teacher_first", "shots": "shots",
                             "nfe": "eval_steps"}
"""`bench ablate` flags -> the config field each sets (`bench.api.MethodOptions.ablations`): `--drop NAME` (one of
DROPPABLE), `--teacher-first`, `--shots N` (the one-shot ablation) and `--nfe 1,2,4` (the same student sampled with
more steps: variants that share one training)."""
PERF_OVERRIDES: dict[str, Any] = {"drop": ["echo"]}
"""`bench perf` times one distillation iteration; the echo stage repeats the same iteration on other images."""

# Named config overrides: `bench ablate --drop X` runs variant `drop_X`. Each switches off exactly what it names.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    **{f"drop_{name}": {"drop": [name]} for name in DROPPABLE},
    "teacher_first": {"teacher_first": True},
    "one_shot": {"shots": 1},
}
