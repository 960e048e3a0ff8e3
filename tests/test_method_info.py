"""The method contract in code: declarations read once (`MethodInfo`), field roles from metadata, a method's own
ablation flags and perf shortcuts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from bench.api import BenchError, MethodOptions
from bench.config import SAMPLING_ONLY, SAMPLING_STEPS, SCHEDULE, STEP_COUNT
from bench.contract import MethodInfo, is_schedule, is_step_count, schedule_fields, step_fields, undeclared_fields
from bench.registry import get_method, method_names


@dataclass(frozen=True)
class _Config:
    warmup: int = field(default=50, metadata=SCHEDULE)
    """A schedule length with an unconventional name: capped because it is declared."""
    echo_iters: int = field(default=40, metadata={"schedule": False})
    """Named like a schedule but declared not one: left alone."""
    iterations: int = 30
    """No metadata: its conventional name does not make it a schedule (never capped)."""
    sample_steps: int = field(default=25, metadata=SAMPLING_ONLY)
    """Sampling-only without a step declaration: not a step count, whatever its name."""
    guide_steps: int = field(default=25, metadata=STEP_COUNT)
    """A training-time step count."""
    n: int = field(default=9, metadata=SAMPLING_STEPS)
    """A sampling step count with an unconventional name."""


class _Bare:
    name: ClassVar[str] = "bare"
    Config: ClassVar[type] = _Config
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}


def test_defaults_come_from_method_options() -> None:
    info = MethodInfo.of(_Bare)
    assert (info.version, info.trains, info.resumable) == (MethodOptions.version, MethodOptions.trains,
                                                           MethodOptions.resumable) == (1, True, False)
    assert info.ablations == {} and info.perf_overrides == {} and info.config is _Config
    with pytest.raises(BenchError, match=r"method 'bare' declares no --drop ablation; it offers: none"):
        info.ablation_field("drop")


def test_registered_methods_declare_their_contract() -> None:
    infos = {name: MethodInfo.of(get_method(name)) for name in method_names()}
    assert all(isinstance(info.version, int) and info.version >= 1 for info in infos.values())
    resumable = {"custom_diffusion", "textual_inversion", "dreambooth", "lora", "echodistill"}
    assert {name for name, info in infos.items() if info.resumable} >= resumable
    assert not any(info.resumable for info in infos.values() if not info.trains), "nothing to resume without training"
    echo = infos["echodistill"]
    assert echo.ablations["nfe"] == "eval_steps" and echo.perf_overrides == {"drop": ["echo"]}
    for info in infos.values():  # every method's schedule and step fields are declared, none read by name
        assert undeclared_fields(info.config) == [], info.name
        assert ("iterations" in schedule_fields(info.config)) == info.trains, info.name
        assert set(info.ablations.values()) <= {f.name for f in dataclasses.fields(info.config)}
    assert schedule_fields(echo.config) == ["iterations", "echo_iters"]
    assert step_fields(echo.config) == ["teacher_steps", "eval_steps"]


def test_field_roles_follow_metadata_never_names() -> None:
    roles = {f.name: (is_schedule(f), is_step_count(f)) for f in dataclasses.fields(_Config)}
    assert roles == {"warmup": (True, False), "echo_iters": (False, False), "iterations": (False, False),
                     "sample_steps": (False, False), "guide_steps": (False, True), "n": (False, True)}
    assert undeclared_fields(_Config) == ["iterations", "sample_steps"]


def test_resolve_config_caps_by_metadata() -> None:
    from bench.runs import Job, resolve_config

    config = resolve_config(_Bare, Job("bare", "default", "dog", 0, "tiny"), iteration_cap=10, step_cap=5)
    assert dataclasses.asdict(config) == {"warmup": 10, "echo_iters": 40, "iterations": 30, "sample_steps": 25,
                                          "guide_steps": 5, "n": 5}


def test_ablation_flags_are_the_methods_own(monkeypatch) -> None:
    from bench import registry
    from bench.ablations import ablation_variants

    got = ablation_variants(["ste"], True, 1, "1,4", "sd-turbo", method="echodistill")
    assert got == [("drop_ste", {"drop": ["ste"]}), ("teacher_first", {"teacher_first": True}),
                   ("shots1", {"shots": 1}), ("nfe1", {"eval_steps": 1}), ("nfe4", {"eval_steps": 4})]
    with pytest.raises(BenchError, match="method 'lora' declares no --drop ablation"):
        ablation_variants(["ste"], False, None, None, "sd-turbo", method="lora")
    monkeypatch.setitem(registry.METHODS, "bare", f"{__name__}:_Bare")
    monkeypatch.setattr(_Bare, "ablations", {"nfe": "n"}, raising=False)
    assert ablation_variants([], False, None, "2", "sd-turbo", method="bare") == [("nfe2", {"n": 2})]


def test_ablate_cli_refuses_an_undeclared_flag(monkeypatch, capsys, tmp_path) -> None:
    from tests.helpers import bench

    code, _, err = bench(monkeypatch, capsys, "ablate", "--method", "lora", "--teacher-first", "--concepts", "dog",
                         "--results", tmp_path)
    assert code == 2 and "declares no --teacher-first ablation" in err and len(err.strip().splitlines()) == 1


LABELS = {"custom_diffusion": "Custom Diffusion", "echodistill": "EchoDistill",
          "textual_inversion": "Textual Inversion", "dreambooth": "DreamBooth", "lora": "LoRA", "cones2": "Cones 2",
          "disenbooth": "DisenBooth", "ip_adapter_tcd": "IP-Adapter", "ominicontrol": "OminiControl",
          "textboost": "TextBoost"}
"""The display names the tables have always printed (formerly a dict in the harness, now each class's `label`)."""


def test_presentation_is_the_declarations_and_every_built_in_method_has_a_label() -> None:
    from bench.contract import presentation

    shown = {name: presentation(name) for name in method_names()}
    for name in method_names():
        assert shown[name] == MethodInfo.of(get_method(name)).presentation
    assert {name: p.label for name, p in shown.items() if name in LABELS} == LABELS
    assert [n for n, p in shown.items() if p.table_view and n in LABELS] == ["echodistill"]
    assert shown["echodistill"].table_view == "student_before_echo"
    assert {n: p.model for n, p in shown.items() if p.model and n in LABELS} == {"ip_adapter_tcd": "TCD",
                                                                                 "ominicontrol": "Flux"}
    assert presentation("not_registered").label == "not_registered"


def test_a_computed_or_inherited_declaration_is_read_from_the_class(tmp_path, monkeypatch) -> None:
    from bench import plugins, registry
    from bench.contract import presentation

    path = tmp_path / "derived.py"
    path.write_text("from tests.test_method_info import _Bare\n\n"
                    "class Derived(_Bare):\n    name = 'derived'\n    label = 'Der' + 'ived'\n")
    monkeypatch.setattr(registry, "METHODS", {**registry.METHODS, "derived": f"{path}:Derived"})
    monkeypatch.setattr(plugins, "_discovered", {"entry_points"})
    assert presentation("derived").label == "Derived"
    assert MethodInfo.of(_Bare).label == "bare" and MethodInfo.of(_Bare).table_view is None
