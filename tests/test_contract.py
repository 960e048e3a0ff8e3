"""The one contract every registered method passes on the tiny profile: declarations, train, sample, save, load.

The checks live in `bench.contract_check`, so `bench check-method NAME` runs the same ones on a method from
outside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.contract_check import ContractViolation, check_declarations, check_method
from bench.registry import method_names


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name: str, concept, tmp_path: Path) -> None:
    lines: list[str] = []
    check_method(name, concept, tmp_path, say=lines.append)
    assert any(line.startswith("ok  load") for line in lines)


def test_a_broken_declaration_is_named() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass
    class BrokenConfig:
        steps: int = 1
        """Steps."""

    class Broken:
        name: ClassVar[str] = "broken"
        Config: ClassVar[type] = BrokenConfig
        variants: ClassVar[dict] = {"default": {}, "bad": {"stpes": 2}}

    with pytest.raises(ContractViolation, match="variant 'bad': unknown config field 'stpes'"):
        check_declarations(Broken)
    Broken.variants = {"default": {}}
    Broken.resumable = True
    with pytest.raises(ContractViolation, match="resumable checkpoints: a resumable method's Config has a"):
        check_declarations(Broken)
