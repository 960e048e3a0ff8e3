"""What EchoDistill returns: the personalised student (1..N steps) and its views, ready to sample, save and load.

A run holds one student UNet, one teacher UNet and one (shared) text encoder. The "before echo" views are not
copies of those models: they keep only the trained tensors of that moment (cross-attention K/V and the token
row) and swap them into the live modules while they generate, then swap the final ones back.

Layout written by `EchoDistillModel.save(out_dir)` (diffusers' formats, safetensors only):
    student/pytorch_custom_diffusion_weights.safetensors   student K/V   (`unet.load_attn_procs`)
    teacher/pytorch_custom_diffusion_weights.safetensors   teacher K/V
    <new1>.safetensors                                     the token     (`pipe.load_textual_inversion`)
    teacher/<new1>.safetensors                             the teacher's token, only without the shared encoder
    before_echo/...                                        the same, as they were before the echo stage
    echodistill.json                                       what is there and how to sample it
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.api import Models
from bench.models import personalize, sampling
from bench.models.speed import autocast

META = "echodistill.json"

State = list[tuple[torch.Tensor, "int | None", torch.Tensor]]
"""Saved trained tensors: (live parameter, row index or None for the whole tensor, value)."""


@dataclass
class Text:
    """A tokenizer/text encoder pair that knows the new token. Shared by student and teacher by default (STE)."""

    tokenizer: Any
    encoder: Any
    token: str
    original: torch.Tensor | None = None
    """(V, D) embedding matrix at the start of training; every row but the token's is restored to it."""

    @property
    def token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.token)

    @property
    def embeddings(self) -> torch.nn.Parameter:
        """(V, D) token embedding matrix; only row `token_id` ever trains."""
        return self.encoder.get_input_embeddings().weight

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77, D) cross-attention context; gradient flows into the token row when enabled."""
        return sampling.encode_text(self.tokenizer, self.encoder, prompts)


def student_unet(models: Models) -> Any:
    """The run's student UNet. Where the profile names a one-step LoRA (`--backbone hyper-sd15`: SD 1.5 + the
    Hyper-SD one-step LoRA), it is fused into the weights first, so the student is a plain UNet whose K/V train
    and save like SD-Turbo's. UNet layers only (diffusers' `load_lora_into_unet` keeps the "unet." keys)."""
    unet = models.student_unet
    if "student_lora" in models.profile.components:
        path = models.student_lora  # None for paper-random: no weights to fuse
        if path is not None:
            from diffusers import StableDiffusionPipeline

            from bench.models.lora_check import check_lora_complete

            state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
            StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet, adapter_name="onestep")
            check_lora_complete(path, {"unet": unet}, "onestep")  # all of the file, or one line
            unet.fuse_lora()
            unet.unload_lora()
            unet.requires_grad_(False)
    return unet


def kv_params(unet: Any) -> list[torch.Tensor]:
    """The K and V projection weights of every cross-attention layer (`attn2`), in module order."""
    return [proj.weight for proj in personalize.kv_projections(unet)]


def capture(unet: Any | None, text: Text | None) -> State:
    """The current trained tensors of `unet` (K/V) and `text` (the token row) as a detached copy."""
    state: State = [(p, None, p.detach().clone()) for p in (kv_params(unet) if unet is not None else [])]
    if text is not None:
        state.append((text.embeddings, text.token_id, text.embeddings[text.token_id].detach().clone()))
    return state


@contextmanager
def swapped(state: State) -> Iterator[None]:
    """Copy `state` into the live parameters for the duration, then put the live values back."""
    if not state:
        yield
        return
    live = capture_values(state)
    _write(state)
    try:
        yield
    finally:
        _write(live)


def capture_values(state: State) -> State:
    return [(p, i, (p if i is None else p[i]).detach().clone()) for p, i, _ in state]


@torch.no_grad()
def _write(state: State) -> None:
    for p, i, value in state:
        (p if i is None else p[i]).copy_(value)


class Sampler:
    """One samplable model of a run (follows `bench.api.Trained`): a UNet with its scheduler and text path."""

    def __init__(self, unet: Any, scheduler: Any, vae: Any, text: Text, latent_size: int | None, default_steps: int,
                 guidance: float, batch_size: int, precision: str, state: State | None = None,
                 sampler: str = "euler_ancestral") -> None:
        """latent_size None = the UNet's native size (SD 2.1 768-v: 768 px); `sampler`, `precision`: see
        `bench.models.sampling.sampling_scheduler` and `bench.models.speed.autocast`."""
        self.unet, self.scheduler, self.vae, self.text, self.sampler = unet, scheduler, vae, text, sampler
        self.latent_size, self.guidance, self.batch_size, self.precision = latent_size, guidance, batch_size, precision
        self.identifier, self.default_steps = text.token, default_steps
        self.state = state or []

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        device = next(self.unet.parameters()).device
        with swapped(self.state), autocast(device, self.precision):
            return sampling.generate(self.unet, self.scheduler, self.vae, self.text.tokenizer, self.text.encoder,
                                     list(prompts), list(seeds), steps or self.default_steps, self.latent_size,
                                     guidance=self.guidance, batch_size=self.batch_size, sampler=self.sampler)

    def save(self, kv_dir: Path, token_file: Path | None) -> None:
        """K/V in the Custom Diffusion format under `kv_dir`; the token row as a textual-inversion file."""
        with swapped(self.state):
            personalize.save_custom_diffusion(self.unet, kv_dir)
            if token_file is not None:
                personalize.save_token(self.text.tokenizer, self.text.encoder, self.text.token, token_file)


class EchoDistillModel:
    """The final student (1 step by default) plus `views`: the teacher after echo, and both before echo."""

    def __init__(self, student: Sampler, teacher: Sampler | None, before: dict[str, Sampler], shared: bool) -> None:
        self.student, self.teacher, self.before, self.shared = student, teacher, before, shared
        self.identifier, self.default_steps = student.identifier, student.default_steps
        self.views: dict[str, Sampler] = {**({"teacher": teacher} if teacher is not None else {}), **before}

    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list:
        return self.student.generate(prompts, seeds, steps)

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        token_name = f"{self.identifier}.safetensors"
        groups = [("", self.student, self.teacher)]
        if self.before:
            groups.append(("before_echo", self.before["student_before_echo"], self.before.get("teacher_before_echo")))
        for sub, student, teacher in groups:
            root = out_dir / sub if sub else out_dir
            student.save(root / "student", root / token_name)
            if teacher is not None:  # with the shared encoder the token file above is also the teacher's
                teacher.save(root / "teacher", None if self.shared else root / "teacher" / token_name)
        meta = {"token": self.identifier, "shared_text_encoder": self.shared, "teacher": self.teacher is not None,
                "before_echo": bool(self.before), "student_steps": self.student.default_steps,
                "teacher_steps": self.teacher.default_steps if self.teacher else None,
                "teacher_guidance": self.teacher.guidance if self.teacher else None,
                "weights": personalize.CD_WEIGHTS}
        (out_dir / META).write_text(json.dumps(meta, indent=2))


def load_model(weights_dir: Path, models: Models, batch_size: int, precision: str,
               student_steps: int | None = None, sampler: str = "euler_ancestral") -> EchoDistillModel:
    """Rebuild what `EchoDistillModel.save` wrote onto `models`' own copies (for `bench generate`, and for a run
    that samples another run's training with other steps). `student_steps` overrides the saved step count of the
    student and its before-echo view."""
    weights_dir = Path(weights_dir)
    meta_path = weights_dir / META
    if not meta_path.is_file():
        from bench.api import BenchError

        raise BenchError(f"{weights_dir} holds no EchoDistill weights ({META} missing)")
    meta = json.loads(meta_path.read_text())
    token_file = weights_dir / f"{meta['token']}.safetensors"
    has_teacher, shared = meta["teacher"], meta["shared_text_encoder"]

    def text_of(role: str, file: Path) -> Text:
        tokenizer, encoder = getattr(models, f"{role}_tokenizer"), getattr(models, f"{role}_text_encoder")
        return Text(tokenizer, encoder, personalize.load_token(tokenizer, encoder, file))

    student_text = text_of("teacher" if shared else "student", token_file)
    teacher_text = None
    if has_teacher:
        teacher_text = student_text if shared else text_of("teacher", weights_dir / "teacher" / token_file.name)
    personalize.load_custom_diffusion(student_unet(models), weights_dir / "student" / meta["weights"])
    if has_teacher:
        personalize.load_custom_diffusion(models.teacher_unet, weights_dir / "teacher" / meta["weights"])

    def view(role: str, text: Text, state: State | None = None) -> Sampler:
        steps = student_steps if role == "student" and student_steps else meta[f"{role}_steps"]
        guidance = meta["teacher_guidance"] if role == "teacher" else 0.0
        return Sampler(getattr(models, f"{role}_unet"), getattr(models, f"{role}_scheduler"), models.vae, text,
                       None, steps, guidance, batch_size, precision, state, sampler)

    student = view("student", student_text)
    teacher = view("teacher", teacher_text) if has_teacher else None
    before: dict[str, Sampler] = {}
    if meta["before_echo"]:
        root = weights_dir / "before_echo"
        before["student_before_echo"] = view(
            "student", student_text, _state_from_files(models.student_unet, root / "student" / meta["weights"],
                                                       student_text, root / token_file.name))
        if has_teacher:
            teacher_token = root / token_file.name if shared else root / "teacher" / token_file.name
            before["teacher_before_echo"] = view(
                "teacher", teacher_text, _state_from_files(models.teacher_unet, root / "teacher" / meta["weights"],
                                                           teacher_text, teacher_token))
    return EchoDistillModel(student, teacher, before, shared)


def _state_from_files(unet: Any, kv_file: Path, text: Text, token_file: Path) -> State:
    """The K/V + token state stored in files, read without changing the live model."""
    from safetensors.torch import load_file

    live = capture(unet, None)
    personalize.load_custom_diffusion(unet, kv_file)
    state = capture(unet, None)
    _write(live)
    (row,) = load_file(token_file).values()
    state.append((text.embeddings, text.token_id, row.reshape(-1).to(text.embeddings)))
    return state
