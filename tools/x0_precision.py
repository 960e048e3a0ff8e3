"""How far reduced precision moves SD-Turbo's one-step clean latent x0 (paper-random profile, CPU).

One step as in method.md: eps ~ N(0, 1) of shape (B, 4, 64, 64), sigma = sqrt((1 - a) / a) with
a = alphas_cumprod[999] (about 14.61), the UNet sees eps * sigma / sqrt(sigma^2 + 1) at t = 999 with seeded random
(B, 77, 1024) text states, and x0 = sigma * (eps - eps_hat). The UNet (full SD-Turbo architecture, random weights
seeded by --seed) and the scheduler come from the project's own loader. eps_hat and x0 are computed in float32
(the reference) and under each variant:

- fp16: weights and inputs cast to float16 (as the released code samples). On CPUs without AVX512-FP16/AMX the
  float16 convolutions run in PyTorch's slow reference kernel: this row takes minutes.
- fp16-emulated: float32 math on float16-rounded weights and inputs, every op's output rounded to float16 (fp16
  storage with fp32 accumulation, as CUDA computes fp16); seconds, and a cross-check of the fp16 row.
- bf16-autocast: float32 weights under torch.autocast("cpu", torch.bfloat16).
- bf16: weights and inputs cast to bfloat16.

x0 is computed like diffusers' Euler step: float32 arithmetic on the upcast eps_hat, stored in the model's output
dtype. With --decode every x0 is also decoded by the float32 random-init VAE to pixels in [-1, 1] (clamped, as
saved), and the pixel error is reported in units of 1/255.

    python tools/x0_precision.py [--batch 2] [--seed 0] [--decode] [--variants fp16,bf16] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

VARIANTS = ("fp16", "fp16-emulated", "bf16-autocast", "bf16")
T = 999


class RoundToFp16(TorchFunctionMode):
    """Rounds the float32 result of every torch op to float16: fp16 storage, fp32 arithmetic. Paused inside
    `exact` (the UNet's sinusoidal time projection, which diffusers computes in float32 before casting it)."""

    def __init__(self, exact: torch.nn.Module) -> None:
        super().__init__()
        self.paused = False
        exact.register_forward_pre_hook(lambda *_: setattr(self, "paused", True))
        exact.register_forward_hook(lambda *_: setattr(self, "paused", False))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not self.paused and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            return out.to(torch.float16).to(torch.float32)
        return out


def _cast(unet: torch.nn.Module, dtype: torch.dtype, emulate: bool = False) -> torch.nn.Module:
    """A copy of `unet` in `dtype`, or (emulate) in float32 with every tensor rounded to float16."""
    out = copy.deepcopy(unet)
    if not emulate:
        return out.to(dtype)
    with torch.no_grad():
        for tensor in [*out.parameters(), *out.buffers()]:
            if tensor.dtype == torch.float32:
                tensor.copy_(tensor.to(torch.float16))
    return out


def variant(name: str, unet: torch.nn.Module) -> tuple[torch.nn.Module, torch.dtype, Any, torch.dtype | None]:
    """(model, input dtype, context manager, x0 storage dtype or None for the output's) of one variant."""
    if name == "fp16":
        return _cast(unet, torch.float16), torch.float16, contextlib.nullcontext(), None
    if name == "fp16-emulated":
        # float32 inputs: their cast inside the mode rounds them to float16
        model = _cast(unet, torch.float16, emulate=True)
        return model, torch.float32, RoundToFp16(model.time_proj), torch.float16
    if name == "bf16-autocast":
        return unet, torch.float32, torch.autocast("cpu", dtype=torch.bfloat16), None
    if name == "bf16":
        return _cast(unet, torch.bfloat16), torch.bfloat16, contextlib.nullcontext(), None
    raise ValueError(f"unknown variant '{name}'")


def errors(ref: torch.Tensor, got: torch.Tensor, scale: float = 1.0) -> dict[str, float]:
    """Max abs and RMS of got - ref (times `scale`), RMS relative to ref's RMS, and non-finite count."""
    diff = (got.double() - ref.double()) * scale
    rms = diff.pow(2).mean().sqrt().item()
    return {"max_abs": diff.abs().max().item(), "rms": rms,
            "rel_rms": rms / (ref.double() * scale).pow(2).mean().sqrt().item(),
            "nonfinite": int((~torch.isfinite(got)).sum())}


def decode(vae: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (clamped, as an image is saved) of float32 latents, one sample at a time."""
    with torch.no_grad():
        return torch.cat([vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1) for x in x0.split(1)])


def run(batch: int, seed: int, names: list[str], with_decode: bool) -> dict[str, Any]:
    """Build the models, compute the float32 reference and every variant; the figures as a dict."""
    from bench.models.loading import load_component
    from bench.models.profiles import get_profile

    start = time.perf_counter()
    profile = get_profile("paper-random")
    torch.manual_seed(seed)  # the random weights
    unet = load_component(profile, "student_unet", "cpu")
    scheduler = load_component(profile, "student_scheduler", "cpu")
    a = float(scheduler.alphas_cumprod[T])
    sigma = math.sqrt((1 - a) / a)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(batch, 4, 64, 64, generator=gen)
    context = torch.randn(batch, 77, 1024, generator=gen)
    x_in = eps * sigma / math.sqrt(sigma**2 + 1)
    t = torch.tensor(T)
    out: dict[str, Any] = {"profile": "paper-random", "device": "cpu", "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "batch": batch, "seed": seed, "timestep": T,
                           "sigma": sigma, "context": "randn (B, 77, 1024)", "build_s": time.perf_counter() - start}

    def forward(model: torch.nn.Module, dtype: torch.dtype, ctx: Any) -> tuple[torch.Tensor, float]:
        begin = time.perf_counter()
        with torch.no_grad(), ctx:
            eps_hat = model(x_in.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample
        return eps_hat, time.perf_counter() - begin

    ref_eps, ref_s = forward(unet, torch.float32, contextlib.nullcontext())
    ref_x0 = sigma * (eps - ref_eps)
    out["reference"] = {"eps_hat_rms": ref_eps.pow(2).mean().sqrt().item(), "eps_hat_mean": ref_eps.mean().item(),
                        "x0_rms": ref_x0.pow(2).mean().sqrt().item(), "forward_s": ref_s}
    if out["reference"]["eps_hat_rms"] < 1e-3:
        print("warning: random-init eps_hat is ~0 (degenerate init); x0 ~ sigma * eps")
    x0s: dict[str, torch.Tensor] = {}
    out["variants"] = {}
    for name in names:
        model, dtype, ctx, store = variant(name, unet)
        eps_hat, seconds = forward(model, dtype, ctx)
        del model
        x0_math = sigma * (eps - eps_hat.float())
        x0 = x0_math.to(store or eps_hat.dtype).float()
        e_eps, e_x0 = errors(ref_eps, eps_hat.float()), errors(ref_x0, x0)
        out["variants"][name] = {"forward_s": seconds, "output_dtype": str(eps_hat.dtype), "eps_hat": e_eps,
                                 "x0_storage_rounding": errors(x0_math, x0),
                                 "x0": e_x0, "x0_over_eps_hat_rms": e_x0["rms"] / e_eps["rms"],
                                 "x0_over_eps_hat_max": e_x0["max_abs"] / e_eps["max_abs"]}
        x0s[name] = x0
        print(f"{name}: forward {seconds:.1f} s, x0 RMS error {e_x0['rms']:.3g}", flush=True)
    if with_decode:
        begin = time.perf_counter()
        vae = load_component(profile, "vae", "cpu")  # seeded by the global generator after the UNet
        ref_px = decode(vae, ref_x0)
        out["decode"] = {"vae": "float32, random init", "units": "1/255 of the [0, 255] range (|d pixel| * 127.5)",
                         "pixel_rms_fp32": ref_px.pow(2).mean().sqrt().item(),
                         "clamped_fraction_fp32": (ref_px.abs() >= 1).float().mean().item()}
        for name, x0 in x0s.items():
            out["variants"][name]["pixels"] = errors(ref_px, decode(vae, x0), scale=127.5)
        out["decode"]["seconds"] = time.perf_counter() - begin
    out["total_s"] = time.perf_counter() - start
    return out


def table(res: dict[str, Any]) -> str:
    """The figures as a Markdown table (errors vs float32; pixel errors in 1/255)."""
    ref = res["reference"]
    head = ["variant", "eps_hat max", "eps_hat RMS", "eps_hat rel", "x0 max", "x0 RMS", "x0 rel",
            "x0/eps_hat (RMS)", "px max", "px RMS", "forward s"]
    lines = [f"sigma = {res['sigma']:.4f}; fp32 RMS: eps_hat {ref['eps_hat_rms']:.4f}, x0 {ref['x0_rms']:.3f}; "
             f"fp32 forward {ref['forward_s']:.1f} s", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, v in res["variants"].items():
        px = v.get("pixels")
        cells = [name, *(f"{v[k][m]:.3g}" for k in ("eps_hat", "x0") for m in ("max_abs", "rms", "rel_rms")),
                 f"{v['x0_over_eps_hat_rms']:.2f}", f"{px['max_abs']:.3g}" if px else "-",
                 f"{px['rms']:.3g}" if px else "-", f"{v['forward_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode", action="store_true", help="also decode every x0 with the fp32 VAE")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("results/perf/x0_precision_cpu.json"))
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    if bad := sorted(set(names) - set(VARIANTS)):
        parser.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    from bench.hub import quiet_libraries

    quiet_libraries()
    res = run(args.batch, args.seed, names, args.decode)
    print(table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
