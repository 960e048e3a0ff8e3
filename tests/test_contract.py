"""The one contract every registered method passes on the tiny profile: declarations, train, sample, save, load.

The checks live in `bench.contract_check`, so `bench check-method NAME` runs the same ones on a method from
outside the repository."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from bench.contract_check import ContractViolation, check_declarations, check_method
from bench.registry import method_names
from tests.fake_method import FakeConditioned, FakeMethod, FakePrepared


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name: str, concept, tmp_path: Path) -> None:
    lines: list[str] = []
    check_method(name, concept, tmp_path, say=lines.append)
    assert any(line.startswith("ok  load") for line in lines)


def test_a_broken_declaration_is_named() -> None:
    from dataclasses import dataclass

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
    with pytest.raises(ContractViolation, match="resumable checkpoints: a resumable method's Config declares"):
        check_declarations(Broken)


class ZeroIterations(FakeMethod):
    """An honest method that trains nothing: it begins its phase with 0 iterations and logs none."""

    name: ClassVar[str] = "zero_iterations"
    variants: ClassVar[dict] = {"default": {"iterations": 0}}


class Unconditioned(FakePrepared):
    """A method without training whose model is conditioned on no photo at all."""

    name: ClassVar[str] = "unconditioned"

    def prepare(self, concept, models, out_dir, seed) -> FakeConditioned:
        import torch

        return FakeConditioned(torch.full((8,), 0.5), [])


@pytest.mark.parametrize("name, cls", [("zero_iterations", ZeroIterations), ("unconditioned", Unconditioned)])
def test_honest_methods_that_train_or_condition_on_nothing_pass(name, cls, concept, tmp_path, monkeypatch) -> None:
    from bench import registry

    monkeypatch.setitem(registry.METHODS, name, f"{__name__}:{cls.__name__}")
    lines: list[str] = []
    check_method(name, concept, tmp_path, say=lines.append)
    assert any(line.startswith("ok  load") for line in lines)


def test_the_log_check_still_catches_a_silent_training() -> None:
    from bench.contract_check import ListLog, check_log

    silent = ListLog()
    silent.begin("train", 5)  # five iterations begun, none reported
    with pytest.raises(ContractViolation, match="reports its iterations through the Log"):
        check_log(silent)
    nan = ListLog()
    nan.begin("train", 1)
    nan(0, loss=float("nan"))
    with pytest.raises(ContractViolation, match="finite"):
        check_log(nan)
    zero = ListLog()
    zero.begin("train", 0)
    check_log(zero)
    check_log(ListLog())
