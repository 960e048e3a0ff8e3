"""Speed switches: how the models run, never what they compute beyond floating-point rounding.

Applied by `bench.models.loading.Models` to each run's own copies of the UNets and the VAE, so every method gets
them without a line of its own. Set with `--speed KEY=VALUE` on `bench run`, `bench ablate` and `bench perf`;
recorded with every run (`record.speed`) but not part of the config hash, since they do not change results
beyond rounding. `bench perf --speed-sweep` measures each switch against the defaults in one process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

AUTOCAST = ("none", "bf16")
"""Values of the methods' `autocast_dtype` field, the training precision (see `autocast`): "none" = float32, as the
released code and diffusers' examples train (default); "bf16" a speed switch that changes results at bf16 rounding."""
SAMPLE_DTYPES = ("auto", "none", "fp16", "bf16")
"""Values of the methods' `sample_dtype` field, the sampling precision: "auto" = fp16 on CUDA and float32 on CPU (the
released evaluation samples fp16 pipelines on CUDA; default), or forced "none" / "fp16" / "bf16"."""

SPEED_ROLES = ("student_unet", "teacher_unet", "vae")
"""The roles the switches touch: the denoisers and the autoencoder (the text and image encoders run once per
prompt or image and are not worth it)."""

REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")
"""Module classes compiled by `compile="regional"`: the repeated blocks of the UNets and of the VAE decoder.
Each class's forward is compiled once per process; later runs (other concepts) reuse the compiled code."""


@dataclass(frozen=True)
class Speed:
    channels_last: str = "auto"
    """"on": UNets and VAE in channels-last (NHWC) memory format, which cuDNN's fastest convolutions use; "off";
    "auto" (default): on for CUDA, off on CPU."""
    compile: str = "off"
    """"regional": `torch.compile` of every transformer and ResNet block of the UNets and the VAE decoder
    (diffusers' regional compilation; compiled once per process and reused across concepts); "off" (default:
    compiling costs minutes, which only pays off over long sweeps)."""
    attention: str = "sdpa"
    """"sdpa" (default): torch's fused `scaled_dot_product_attention` (diffusers' AttnProcessor2_0); "eager":
    the plain matmul-softmax-matmul processor, to measure what SDPA saves."""
    latents: str = "cache"
    """"cache" (default): a training photo's VAE encoding is computed once and only its posterior sample drawn
    each step, wherever batches repeat photos exactly (no random-scale augmentation: DreamBooth, LoRA, Textual
    Inversion; see `bench.models.training.Latents`); "encode": every batch goes through the VAE encoder."""

    def __post_init__(self) -> None:
        for name, valid in (("channels_last", ("auto", "on", "off")), ("compile", ("off", "regional")),
                            ("attention", ("sdpa", "eager")), ("latents", ("cache", "encode"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"speed {name} must be one of {', '.join(valid)}, not '{getattr(self, name)}'")

    def resolved(self, device: Any) -> dict[str, str]:
        """The settings as applied on `device` ("auto" decided); what a run record stores."""
        out = asdict(self)
        if self.channels_last == "auto":
            out["channels_last"] = "on" if str(device).startswith("cuda") else "off"
        return out


def parse_speed(items: list[str] | dict[str, Any] | None) -> Speed:
    """`["channels_last=on", "compile=regional"]` (or a dict) -> Speed; a bad key or value is one line."""
    from bench.api import BenchError
    from bench.config import build

    if isinstance(items, dict):
        return build(Speed, items)
    pairs: dict[str, str] = {}
    for item in items or []:
        for part in (p for p in item.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep:
                raise BenchError(f"--speed expects KEY=VALUE, got '{part}'; keys: "
                                 f"{', '.join(f.name for f in fields(Speed))}")
            pairs[key.strip()] = value.strip()
    return build(Speed, pairs)


def apply(module: Any, role: str, speed: Speed, device: Any) -> Any:
    """Apply the switches to one run's copy of a UNet or the VAE (other roles come back unchanged)."""
    if role not in SPEED_ROLES:
        return module
    import torch

    settings = speed.resolved(device)
    if settings["attention"] == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        module.set_attn_processor(AttnProcessor())
    if settings["channels_last"] == "on":
        module.to(memory_format=torch.channels_last)
    if settings["compile"] == "regional":
        root = module.decoder if role == "vae" else module
        for sub in root.modules():
            if type(sub).__name__ in REGIONS:
                sub.compile()
    return module


def sweep_settings() -> list[tuple[str, Speed]]:
    """(label, Speed) for `bench perf --speed-sweep`: the defaults, each switch flipped on its own, and the
    defaults again last, whose ratio to the first row shows how much of a difference is noise and drift."""
    return [("default", Speed()), ("channels_last=on", Speed(channels_last="on")),
            ("channels_last=off", Speed(channels_last="off")), ("compile=regional", Speed(compile="regional")),
            ("attention=eager", Speed(attention="eager")), ("latents=encode", Speed(latents="encode")),
            ("default, again", Speed())]


def check_autocast(setting: str, sample_dtype: str = "auto") -> None:
    """A config's `autocast_dtype` must be one of AUTOCAST and its `sample_dtype` one of SAMPLE_DTYPES (for the
    configs' `__post_init__`)."""
    if setting not in AUTOCAST:
        raise ValueError(f"autocast_dtype must be one of {', '.join(AUTOCAST)}, not '{setting}'")
    if sample_dtype not in SAMPLE_DTYPES:
        raise ValueError(f"sample_dtype must be one of {', '.join(SAMPLE_DTYPES)}, not '{sample_dtype}'")


def autocast(device: Any, setting: str) -> Any:
    """The forward-pass precision context of an `autocast_dtype` (training) or `sample_dtype` (sampling) field:
    "none" (float32), "bf16", "fp16", or "auto" = fp16 on CUDA and float32 elsewhere. Weights, optimiser states and
    losses stay float32. These are config fields (in the config hash), not speed switches: they change results at
    their rounding."""
    from contextlib import nullcontext

    import torch

    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)
    if setting == "auto" and device.type == "cuda":
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
