"""After a LoRA file loads, check that every module it names received its weights.

diffusers applies a LoRA through peft, which adapts the modules its key conversion recognises and only warns
about the rest: a file in a naming it half-understands (diffusers' LCM-LoRA training script writes attention
layers as `...to_q.lora.down.weight` beside peft-named others) then loads partly, and the run goes on with a
different model. `check_lora_complete` compares the modules named in the file with the modules that now hold the
adapter and stops with one line naming the first missing ones. Names are compared in a naming-neutral form (the
component prefix and the LoRA suffix removed, dots as underscores), so peft, diffusers and kohya files whose
module names follow the model's own are matched name by name; a file in another naming (kohya's SGM block
numbers) is checked by its module count.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.api import BenchError

_DOWN = re.compile(r"(?:\.lora_A(?:\.[^.]+)?|\.lora\.down|\.lora_down|\.lora_linear_layer\.down|_lora\.down)\.weight$")
"""The key of a LoRA's first (down, A) matrix, one per adapted module, in peft, diffusers (old and new) and kohya
naming; what precedes it is the module's name."""
_PREFIXES = ("base_model.model.", "unet.", "transformer.", "text_encoder_2.", "text_encoder.", "lora_unet_",
             "lora_transformer_", "lora_te1_", "lora_te2_", "lora_te_")
"""Component prefixes of the namings above."""


def file_modules(path: Path) -> list[str]:
    """The modules a LoRA safetensors file adapts (one per down/A matrix), in the file's own naming, sorted."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    return sorted({_DOWN.split(key)[0] for key in keys if _DOWN.search(key)})


def _neutral(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if ".processor." in name:  # diffusers' old attention-processor naming: `attn1.processor.to_out_lora.down`
        name = re.sub(r"\.to_out$", ".to_out.0", name.replace(".processor.", "."))
    return name.replace(".", "_")


def adapted_modules(models: dict[str, Any], adapter: str) -> list[str]:
    """`component.module` names of the modules holding LoRA weights of `adapter`, over the given components."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [f"{part}.{name}" for part, model in models.items() if model is not None
            for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {})]


def check_lora_complete(path: Path, models: dict[str, Any], adapter: str) -> None:
    """Raise a one-line BenchError unless every module the LoRA file `path` names now holds `adapter`'s weights
    in one of `models` (component name -> module, e.g. {"unet": pipe.unet, "text_encoder": ...})."""
    named = file_modules(Path(path))
    loaded = adapted_modules(models, adapter)
    have = {_neutral(name.split(".", 1)[1]) for name in loaded}
    missing = [name for name in named if _neutral(name) not in have]
    if len(loaded) >= len(named) and (not missing or len(missing) == len(named)):
        return  # all there: by name, or (a naming of its own, e.g. kohya's SGM blocks) by count
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise BenchError(
        f"LoRA file {path} loaded partly: {len(loaded)} of the {len(named)} modules it names received weights; "
        f"missing {shown or 'some modules'}. Its key naming is one diffusers applies only in part: save it in "
        f"peft naming (`<module>.lora_A.weight` / `lora_B`, as `save_lora_weights` writes today) or kohya naming")
