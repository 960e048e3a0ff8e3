"""Small typed values of a run record (`bench.record`): the structure that used to travel as strings, parsed
once: a variant's name (`default+iterations=500`) and the metric suite that scored a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VariantName:
    """A run's variant: a named variant of its method and the ad-hoc overrides named after it,
    `default+iterations=500` -> base `default`, parts `("iterations=500",)`. Ablation variants that join names
    with `+` (`drop_disc_clip+disc_dino1`) keep the joined names in the base: a part has a `=`."""

    base: str
    """The named variant (a key of the method's `variants`, or an ablation name)."""
    parts: tuple[str, ...] = ()
    """The `key=value` parts of ad-hoc overrides, in their written order."""

    @classmethod
    def parse(cls, text: str) -> VariantName:
        pieces = text.split("+")
        base = [pieces[0]]
        parts = []
        for piece in pieces[1:]:
            (parts if "=" in piece else base).append(piece)
        return cls("+".join(base), tuple(parts))

    def __str__(self) -> str:
        return "+".join((self.base, *self.parts))

    @property
    def overrides(self) -> dict[str, str]:
        """The ad-hoc overrides as written in the name (values as text, filesystem-safe)."""
        return dict(part.split("=", 1) for part in self.parts)


@dataclass(frozen=True)
class SuiteRef:
    """Which metric suite scored a record: its name and version (`metric_suite.name`, `.version`)."""

    name: str
    """`paper`, `dreambooth`, `tiny`, ... (`unknown` when a record names none)."""
    version: int = 1
    """The suite's version (1 when a record names none)."""

    @classmethod
    def of(cls, metric_suite: dict[str, Any] | None) -> SuiteRef:
        suite = metric_suite or {}
        return cls(str(suite.get("name") or "unknown"), int(suite.get("version", 1)))

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"
