"""Load a profile's components: one code path for the real weights, the tiny stand-ins and random init.

`Models` is lazy: a role (`models.student_unet`, `models.dino1`, ...) is loaded on first access. Loaded weights
are kept once per process (pristine, on the device) and every `Models` instance gets its own deep copy, so a
method may change its copy freely and the next run starts from the original weights without a reload.
Every module comes back frozen (`requires_grad=False`) and in eval mode; a method unfreezes what it trains.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from bench.api import BenchError
from bench.hub import hub_offline, offline_mode, quiet_libraries, quiet_loading  # noqa: F401 (re-exported)
from bench.models.component import (
    CONFIGS,
    DECLARED_LOADERS,
    TINY_BUILDERS,
    Component,
    from_pretrained,
    hub_file,
    in_hub_cache,
    is_local,
    pretrained_tokenizer,
)
from bench.models.profiles import Profile

_PRISTINE: dict[tuple, Any] = {}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Models:
    """Lazy access to the components of one profile on one device (follows `bench.api.Models`).

    Roles (see `bench.models.profiles`): student_unet, student_scheduler, student_text_encoder,
    student_tokenizer, teacher_unet, teacher_scheduler, teacher_text_encoder, teacher_tokenizer, vae,
    clip_vision, ip_proj, dino1, dinov2 (and student_lora for hyper-sd15 at paper scale), and the roles the run's
    method declares (`MethodOptions.model_roles`: IP-Adapter TCD's SDXL, OminiControl's FLUX.1).
    """

    def __init__(self, profile: Profile, device: str | None = None, speed: Any = None) -> None:
        import torch

        from bench.models.speed import Speed

        self.profile = profile
        self.device = torch.device(device or default_device())
        self.speed = speed or Speed()
        """Speed switches (`bench.models.speed`) applied to this instance's UNets and VAE."""
        self.resolution = profile.resolution
        self._copies: dict[str, Any] = {}
        self.load_seconds = 0.0
        """Time spent loading and copying components; run timings subtract it (protocol.md, "Timing")."""

    def __getattr__(self, role: str) -> Any:
        if role.startswith("_") or role not in self.profile.components:
            raise AttributeError(role)
        if role not in self._copies:
            start = time.perf_counter()
            from bench.models.speed import apply

            self._copies[role] = apply(_fresh(self.get_pristine(role)), role, self.speed, self.device)
            self.load_seconds += time.perf_counter() - start
        return self._copies[role]

    def get_pristine(self, role: str) -> Any:
        """The process-wide loaded component; never modify it (read-only uses such as frozen backbones)."""
        comp = self.profile.components[role]
        key = (self.profile.name, self.profile.backbone, role, comp.source, str(self.device))
        if key not in _PRISTINE:
            if self.profile.name == "tiny":
                from bench.models.tiny import ensure_built

                ensure_built()
                for method in comp.methods:  # a method's own stand-ins (`ModelRoles.build_tiny`), on first use
                    if method in TINY_BUILDERS:
                        TINY_BUILDERS[method]()
            _PRISTINE[key] = load_component(self.profile, role, self.device)
        return _PRISTINE[key]

    def pipeline_parts(self, role: str = "student") -> dict[str, Any]:
        """One model's sampling parts, as `bench.models.sampling.generate_parts` takes them: this run's copies of
        the `role` ("student" or "teacher") UNet, scheduler, tokenizer and text encoder, and the shared VAE."""
        return {"unet": getattr(self, f"{role}_unet"), "scheduler": getattr(self, f"{role}_scheduler"),
                "tokenizer": getattr(self, f"{role}_tokenizer"),
                "text_encoder": getattr(self, f"{role}_text_encoder"), "vae": self.vae}

    def generate(self, parts: dict[str, Any], prompts: list[str], seeds: list[int], steps: int,
                 **options: Any) -> list:
        """`bench.models.sampling.generate_parts` (`bench.api.Models.generate`)."""
        from bench.models.sampling import generate_parts

        return generate_parts(parts, list(prompts), list(seeds), steps, **options)

    @property
    def dtype(self) -> Any:
        """The floating-point type the roles are loaded in: float32 (lower precision runs under autocast)."""
        import torch

        return torch.float32

    @property
    def latent_size(self) -> int:
        """Latent side length: the resolution divided by the VAE's downsampling factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.resolution // factor

    def describe(self) -> dict[str, Any]:
        return {**self.profile.describe(), "device": str(self.device)}


def _fresh(obj: Any) -> Any:
    if hasattr(obj, "config") and hasattr(obj, "set_timesteps"):  # a scheduler: same config, fresh state
        return type(obj).from_config(obj.config)
    return copy.deepcopy(obj)


def load_component(profile: Profile, role: str, device: Any) -> Any:
    """Load one role's component, turning any 'not found' into one line that says what to do."""
    quiet_libraries()
    comp = profile.components[role]
    if comp.kind == "timm" and not profile.random_init and is_local(comp):
        check_timm_snapshot(profile, role)
    try:
        with quiet_loading():  # library warnings and log lines: a failure is this function's one line
            obj = (_LOADERS.get(comp.kind) or DECLARED_LOADERS[comp.kind])(comp, profile.random_init)
    except BenchError:
        raise
    except Exception as err:  # hub errors, missing files, bad configs: all become one actionable line
        folder = Path(comp.source).expanduser()
        if not folder.exists() and hub_offline() and not in_hub_cache(comp.source):
            from huggingface_hub import constants

            reason = f"not in the local hub cache ({constants.HF_HUB_CACHE}), and the hub is unreachable"
        elif folder.is_dir() and comp.subfolder and not (folder / comp.subfolder).is_dir():
            reason = (f"no {comp.subfolder}/ folder in it: a diffusers repository keeps each part in its own folder "
                      f"(transformer/, vae/, text_encoder/, ...)")
        else:
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise BenchError(
            f"profile '{profile.name}': cannot load {role} from '{comp.source}' ({reason}); use --profile tiny "
            f"to run offline, or point it at a local copy with --weights {comp.group}=/path"
        ) from None
    if hasattr(obj, "to") and hasattr(obj, "requires_grad_"):
        obj = obj.to(device).requires_grad_(False).eval()
    return obj


def check_timm_snapshot(profile: Profile, role: str) -> None:
    """A local dino1/dinov2 source must be a timm snapshot; a transformers-format repository is one clear line.

    The timm loader reads `model.safetensors` with timm's key names (`patch_embed.proj.weight`, `blocks.0...`).
    A transformers checkpoint of the same network (facebook/dino-vits16, facebook/dinov2-large: `config.json`
    with a `model_type`, keys such as `embeddings.patch_embeddings...`) cannot be read by it, and timm's own
    error would be a list of missing keys; this names the timm repository to download instead.
    """
    comp = profile.components[role]
    path = Path(comp.source).expanduser()
    folder = path if path.is_dir() else path.parent
    weights = path / "model.safetensors" if path.is_dir() else path
    keys = _safetensors_keys(weights) if weights.is_file() and weights.suffix == ".safetensors" else None
    if keys is not None and any(k.endswith("patch_embed.proj.weight") for k in keys):
        return  # timm's layout: whatever config.json says, timm reads it
    model_type = None
    try:
        config = json.loads((folder / "config.json").read_text())
        if isinstance(config, dict) and "architecture" not in config:  # timm's config.json names `architecture`
            model_type = config.get("model_type")
    except (OSError, ValueError):
        pass
    hf_keys = keys is not None and any(k.startswith(("embeddings.", "encoder.layer.", "vit.", "dinov2."))
                                       for k in keys)
    if model_type is None and not hf_keys:
        return  # not recognisably transformers: timm's own error (if any) is reported by `load_component`
    repo = f"timm/{comp.options['arch']}"
    what = f'"model_type": "{model_type}" in config.json' if model_type else "transformers key names"
    raise BenchError(
        f"profile '{profile.name}': cannot load {role} from '{comp.source}': it is a transformers-format "
        f"repository ({what}), which the timm loader cannot read; point --weights {comp.group}= at a local "
        f"snapshot of the timm repository {repo} (`hf download {repo} --local-dir /models/{comp.options['arch']}`)"
    )


def _safetensors_keys(path: Path) -> list[str] | None:
    """The tensor names of a safetensors file (its header only); None when it is not a readable one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # noqa: BLE001 - a damaged or foreign file: not recognisably timm or transformers
        return None


def _unet(comp: Component, random_init: bool) -> Any:
    from diffusers import UNet2DConditionModel

    if random_init:
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / comp.config))
    return from_pretrained(UNet2DConditionModel, comp)


def _vae(comp: Component, random_init: bool) -> Any:
    from diffusers import AutoencoderKL

    if random_init:
        return AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / comp.config))
    return from_pretrained(AutoencoderKL, comp)


def _text_encoder(comp: Component, random_init: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    if random_init:
        return CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / comp.config))
    return from_pretrained(CLIPTextModel, comp)


def _tokenizer(comp: Component, random_init: bool) -> Any:
    from transformers import CLIPTokenizer

    if random_init:  # the real vocabulary is available offline: build the real tokenizer
        from bench.models.tiny import tiny_root, write_clip_tokenizer

        pad = "<|endoftext|>" if comp.group == "student" and "sd15" in comp.source.lower() else "!"
        out = tiny_root().parent / f"clip-tokenizer-{'eos' if pad != '!' else 'bang'}"
        if not (out / "merges.txt").exists():
            write_clip_tokenizer(out, pad)
        return CLIPTokenizer.from_pretrained(out)
    return pretrained_tokenizer(comp)


def _scheduler(comp: Component, random_init: bool) -> Any:
    import diffusers

    if random_init:
        config = diffusers.DDIMScheduler.load_config(CONFIGS / comp.config)
    else:
        config = from_pretrained(_SchedulerConfig, comp)
    cls_name = comp.options.get("_class_name", config["_class_name"])
    return getattr(diffusers, cls_name).from_config(config)


class _SchedulerConfig:
    """Adapter so a scheduler's config goes through the same hub-or-local path as the models."""

    @staticmethod
    def from_pretrained(source: str, **kwargs: Any) -> dict:
        import diffusers

        return diffusers.DDIMScheduler.load_config(source, **kwargs)


def _clip_vision(comp: Component, random_init: bool) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if random_init:
        return CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(CONFIGS / comp.config))
    return from_pretrained(CLIPVisionModelWithProjection, comp)


def _ip_proj(comp: Component, random_init: bool) -> Any:
    """IP-Adapter's image projection (Linear 1024 -> 4 x 768, LayerNorm) as diffusers' `ImageProjection`."""
    from diffusers.models.embeddings import ImageProjection

    proj = ImageProjection(cross_attention_dim=comp.options["cross_attention_dim"],
                           image_embed_dim=comp.options["image_embed_dim"], num_image_text_embeds=4)
    if random_init:
        return proj
    from safetensors.torch import load_file

    state = load_file(hub_file(comp))
    # IP-Adapter names the linear layer `proj`; diffusers names it `image_embeds`.
    renamed = {k.removeprefix("image_proj.").replace("proj.", "image_embeds.", 1): v
               for k, v in state.items() if k.startswith("image_proj.")}
    proj.load_state_dict(renamed, strict=True)
    return proj


def _timm(comp: Component, random_init: bool) -> Any:
    import timm

    kwargs = {k: v for k, v in comp.options.items() if k not in ("arch", "input_size")}
    if random_init:
        return timm.create_model(comp.options["arch"], pretrained=False, num_classes=0, **kwargs)
    if is_local(comp):
        path = Path(comp.source)
        overlay = {"file": str(path / "model.safetensors" if path.is_dir() else path)}
    else:
        overlay = {"hf_hub_id": comp.source}
        with offline_mode(hub_offline()):
            return timm.create_model(comp.options["arch"], pretrained=True, pretrained_cfg_overlay=overlay,
                                     num_classes=0, **kwargs)
    return timm.create_model(comp.options["arch"], pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0,
                             **kwargs)


def _lora(comp: Component, random_init: bool) -> Any:
    """A LoRA file is applied by the method that needs it; loading resolves its local path."""
    return None if random_init else hub_file(comp)


_LOADERS = {"unet": _unet, "vae": _vae, "text_encoder": _text_encoder, "tokenizer": _tokenizer,
            "scheduler": _scheduler, "clip_vision": _clip_vision, "ip_proj": _ip_proj, "timm": _timm,
            "lora": _lora}
