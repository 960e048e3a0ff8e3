"""The one contract every registered method passes on the tiny profile: train, sample, save, load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bench.api import Method, Trained
from bench.registry import get_method, method_names
from tests.helpers import ListLog


@pytest.fixture(scope="module")
def concept(dreambench_root):
    from bench.data import select_concepts

    return select_concepts(dreambench_root, "dog")[0]


def _tiny_config(cls):
    """The method's default config with every schedule length capped at 2, as the harness caps tiny runs."""
    from bench.runs import Job, resolve_config

    return resolve_config(Job(cls.name, "default", "dog", 0, "tiny"), iteration_cap=2)


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name: str, concept, tmp_path: Path) -> None:
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    cls = get_method(name)
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.Config)
    assert "default" in cls.variants
    for overrides in cls.variants.values():  # every named variant is a valid config
        from bench.config import build

        build(cls.Config, overrides)
    config = _tiny_config(cls)
    method = cls(config)
    assert isinstance(method, Method)

    log = ListLog()
    profile = get_profile("tiny")
    trained = method.train(concept, Models(profile, "cpu"), tmp_path / "work", 0, log)
    assert isinstance(trained, Trained)
    assert log.phases and log.rows, "a method reports its iterations through the Log"
    assert all(np.isfinite(v) for row in log.rows for v in row.values())

    prompts = [concept.prompt("a {0} {1} in the snow", trained.identifier)] * 2
    images = trained.generate(prompts, [0, 1])
    assert [im.size for im in images] == [(profile.resolution, profile.resolution)] * 2
    repeat = trained.generate(prompts, [0, 1])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, repeat)), "bit-identical repeat"
    alone = trained.generate(prompts[:1], [1])  # another batch: only float summation order changes
    assert np.abs(np.asarray(alone[0]).astype(int) - np.asarray(images[1]).astype(int)).max() <= 1
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1])), "different seeds differ"

    trained.save(tmp_path / "weights")
    files = [p for p in (tmp_path / "weights").rglob("*") if p.is_file()]
    assert files and any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")], "safetensors only"

    loaded = method.load(tmp_path / "weights", Models(profile, "cpu"))
    reloaded = loaded.generate(prompts[:1], [0])
    diff = np.abs(np.asarray(reloaded[0]).astype(int) - np.asarray(images[0]).astype(int)).max()
    assert diff <= 1, f"loading saved weights changes the sample by {diff}/255"
