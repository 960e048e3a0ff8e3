"""DisenBooth and Cones 2 train on TextBoost's one-shot DreamBench split by default, as the paper did ("the
reference images were taken from the training dataset in TextBoost"); `reference_set=all` trains on every photo."""

from __future__ import annotations

import importlib

import pytest

from bench.data_textboost import reference_images
from tests.helpers import train_tiny


@pytest.mark.parametrize("name", ["disenbooth", "cones2"])
@pytest.mark.parametrize("reference_set", ["textboost_n1", "all"])
def test_the_photos_a_method_trains_on(name, reference_set, concept, monkeypatch, tmp_path) -> None:
    module = importlib.import_module("bench.models.recipe")  # `concept_batches` loads every baseline's photos
    seen: list[tuple] = []
    real = module.load_pixels
    monkeypatch.setattr(module, "load_pixels", lambda paths, *a, **k: seen.append(tuple(paths)) or real(paths, *a, **k))
    overrides = {"iterations": 1} if reference_set == "textboost_n1" else {"iterations": 1, "reference_set": "all"}
    train_tiny(name, overrides, concept, tmp_path)
    assert seen[0] == reference_images(concept, reference_set)
    assert len(seen[0]) == (1 if reference_set == "textboost_n1" else len(concept.images)) and len(concept.images) > 1
