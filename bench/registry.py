"""One lazy table of methods: name -> "module:Class". Nothing is imported until a method is asked for.

Methods from outside the repository join the table through `bench.plugins` (a `bench.methods` entry point, or
`--include path/to/module.py`), also without being imported."""

from __future__ import annotations

from typing import Any

from bench.naming import did_you_mean, unknown  # noqa: F401 (kept importable from here)

METHODS: dict[str, str] = {
    "custom_diffusion": "baselines.custom_diffusion:CustomDiffusion",
    "disenbooth": "baselines.disenbooth:DisenBooth",
    "echodistill": "echodistill.trainer:EchoDistill",
    "textual_inversion": "baselines.textual_inversion:TextualInversion",
    "dreambooth": "baselines.dreambooth:DreamBooth",
    "lora": "baselines.lora:LoRA",
    "cones2": "baselines.cones2:Cones2",
    "ip_adapter_tcd": "baselines.ip_adapter_tcd:IPAdapterTCD",
    "ominicontrol": "baselines.ominicontrol:OminiControl",
    "textboost": "baselines.textboost:TextBoost",
    "base": "baselines.base:Base",
}


def method_names() -> list[str]:
    from bench.plugins import discover

    discover(METHODS)
    return sorted(METHODS)


def get_method(name: str) -> Any:
    """The method class registered as `name`, imported on first use."""
    from bench.plugins import discover, load

    discover(METHODS)
    if name not in METHODS:
        raise unknown("method", name, method_names())
    return load(METHODS[name])


def describe(name: str) -> str:
    """One line about a method: the first line of its module's docstring (imports the method)."""
    import sys

    cls = get_method(name)
    module = sys.modules.get(cls.__module__)
    doc = ((module.__doc__ if module else None) or cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
