"""`bench ablate` flags -> named variants (config overrides) of a method. A variant is never a new class.

Which config field each flag sets is the method's own declaration (`bench.api.MethodOptions.ablations`, read
through `bench.contract.MethodInfo`); this module only names the variants and checks the flags' values."""

from __future__ import annotations

from typing import Any

from bench.api import BenchError


def override_suffix(overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe name part for ad-hoc overrides: `iterations=500+lr=2e-05`."""
    parts = []
    for key, value in sorted(overrides.items()):
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}={text}".replace("/", "_").replace(" ", "_"))
    return "+".join(parts)


def ablation_variants(drops: list[str], teacher_first: bool, shots: int | None, nfe: str | None,
                      backbone: str, extra: dict[str, Any] | None = None,
                      method: str = "echodistill") -> list[tuple[str, dict[str, Any]]]:
    """(variant name, overrides) pairs for one `bench ablate` call; several --drop flags form one variant.

    `--nfe 1,2,4` gives one variant per step count that differs only in the sampling-only `eval_steps`, so the
    runs share one training (`bench.runs.find_trained`). `extra` (`--set k=v`) applies to every variant and
    names itself in the variant, as in `bench run`. A flag `method` does not declare is a one-line error."""
    from bench.contract import MethodInfo
    from bench.registry import get_method

    info = MethodInfo.of(get_method(method))
    variants: list[tuple[str, dict[str, Any]]] = []
    if drops:
        names = sorted(set(drops))
        variants.append(("drop_" + "+".join(names), {info.ablation_field("drop"): names}))
    if teacher_first:
        variants.append(("teacher_first", {info.ablation_field("teacher_first"): True}))
    if shots is not None:
        if shots < 1:
            raise BenchError(f"--shots must be >= 1, got {shots}")
        variants.append((f"shots{shots}", {info.ablation_field("shots"): shots}))
    if nfe:
        try:
            steps = [int(s) for s in nfe.split(",") if s.strip()]
        except ValueError:
            raise BenchError(f"--nfe must be comma-separated step counts, e.g. 1,2,4; got '{nfe}'") from None
        bad = [s for s in steps if s not in (1, 2, 4)]
        if bad:
            raise BenchError(f"--nfe {bad[0]} is not supported; valid: 1, 2, 4")
        variants += [(f"nfe{s}", {info.ablation_field("nfe"): s}) for s in steps]
    if backbone != "sd-turbo":
        variants.append((f"backbone_{backbone}", {}))
    if not variants:
        raise BenchError("nothing to ablate; pass --drop NAME, --teacher-first, --shots N, --nfe 1,2,4 or "
                         "--backbone hyper-sd15")
    if extra:
        from bench.config import normalise_overrides

        extra = normalise_overrides([info.config], extra)  # iterations=1e1 is iterations=10
        suffix = override_suffix(extra)
        variants = [(f"{name}+{suffix}", {**overrides, **extra}) for name, overrides in variants]
    return variants
