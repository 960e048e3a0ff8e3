"""Where one model role's weights come from and how they load: the `Component` record, the roles a method brings
with it (`ModelRoles`), and the file access shared by every loader (`bench.models.loading` for the harness's
roles, a method's own module for the kinds it adds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hub import hub_offline, offline_mode

CONFIGS = Path(__file__).parent / "configs"
"""Full-size architectures shipped as configs (`paper-random`)."""


@dataclass(frozen=True)
class Component:
    """Where one role's weights come from and how to load them."""

    kind: str
    """Loader: unet, vae, text_encoder, tokenizer, scheduler, clip_vision, ip_proj, timm, lora (`bench.models.
    loading`), or a kind a method's `ModelRoles.loaders` adds."""
    group: str
    """Override key for `--weights GROUP=PATH`: student, teacher, image_encoder, dino1, dinov2, ..."""
    source: str
    """Hub id, local folder, or (for single-file kinds) local file."""
    subfolder: str | None = None
    """Folder inside `source` (diffusers layout: unet/, vae/, ...)."""
    file: str | None = None
    """File inside `source` for single-file weights (IP-Adapter projection, LoRA)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Kind-specific options: timm architecture kwargs, scheduler config overrides, input size."""
    config: str | None = None
    """paper-random: config shipped under bench/models/configs, relative path."""
    methods: tuple[str, ...] = ()
    """The methods that use this role; empty: every method. A role a method declares (`ModelRoles`) is reserved
    for it and joins only its profile (`Profile.for_method`), so adding one changes no other method's record or
    hash."""


Loader = Callable[[Component, bool], Any]
"""A kind's loader: (component, random_init) -> the loaded object (random_init: `paper-random`, build the
architecture from its config with random weights, read no weights file)."""


@dataclass(frozen=True)
class ModelRoles:
    """Model roles a method brings with it, declared in its own module (`MethodOptions.model_roles`): a method on
    another base-model family (SDXL, FLUX.1) or with an extra network needs no edit of the harness. The roles join
    the method's profile only (`Profile.for_method`), reserved for it; `--weights GROUP=PATH` reaches their groups
    like any other; on `tiny` the stand-ins are built (once, into the cache) before the first of them loads."""

    roles: Callable[[str], dict[str, Component]]
    """Profile name (`paper`, `paper-random`, `tiny`) -> role name -> `Component` (kind, `--weights` group, hub id or
    local path, subfolder, file, options, `config` for paper-random)."""
    loaders: dict[str, Loader] = field(default_factory=dict)
    """Loaders of the kinds these roles add (the harness's kinds need none: unet, vae, text_encoder, ...)."""
    build_tiny: Callable[[], Any] | None = None
    """Builds the tiny stand-ins of `roles("tiny")` into the cache, once (`bench.models.tiny.build_once`)."""


DECLARED_LOADERS: dict[str, Loader] = {}
"""Kinds added by methods' `ModelRoles.loaders`, registered when their roles join a profile."""
TINY_BUILDERS: dict[str, Callable[[], Any]] = {}
"""Method name -> its `ModelRoles.build_tiny`, registered likewise; `Models` calls it before a reserved tiny role
first loads."""


def is_local(comp: Component) -> bool:
    return Path(comp.source).exists()


def from_pretrained(cls: Any, comp: Component) -> Any:
    """A local folder as is; a hub id from the cache, or downloaded when the hub is reachable."""
    kwargs = {"subfolder": comp.subfolder} if comp.subfolder else {}
    import torch

    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        kwargs["use_safetensors"] = True  # weights are safetensors only: never unpickle a .bin
    if is_local(comp):
        return cls.from_pretrained(comp.source, **kwargs)
    offline = hub_offline()
    if offline:  # from the cache only: diffusers asks the hub about a sharded checkpoint unless told not to
        kwargs["local_files_only"] = True
    with offline_mode(offline):
        return cls.from_pretrained(comp.source, **kwargs)


def in_hub_cache(source: str) -> bool:
    """True when the hub cache holds a snapshot of the repository `source` (looked at, not guessed)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def hub_file(comp: Component) -> Path:
    """A single weights file: local `source/file`, or from the hub cache (downloaded when reachable)."""
    if is_local(comp):
        path = Path(comp.source)
        return path / comp.file if path.is_dir() and comp.file else path
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    with offline_mode(offline):
        return Path(hf_hub_download(comp.source, comp.file, local_files_only=offline))


def pretrained_tokenizer(comp: Component) -> Any:
    """A CLIP tokenizer from its files; an empty one (no vocabulary found) is an error, not a 2-token tokenizer."""
    from transformers import CLIPTokenizer

    tokenizer = from_pretrained(CLIPTokenizer, comp)
    if len(tokenizer) < 1000:  # transformers builds an empty tokenizer (2 tokens) when it finds no vocabulary
        raise OSError(f"no CLIP vocabulary (vocab.json, merges.txt) found in {comp.source}/{comp.subfolder or ''}")
    return tokenizer
