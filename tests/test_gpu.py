"""The gpu tier: a few bf16 training iterations of LoRA on the full-size `paper-random` models, on CUDA.

Runs with `pytest -m gpu` where CUDA is present, skips (saying why) where it is not. It checks what the CPU
tiers cannot: the full-size architectures train under bf16 autocast on a GPU with finite losses, and a sample
comes back at the paper resolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ListLog

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_paper_random_lora_bf16_iterations(dreambench_root: Path, tmp_path: Path) -> None:
    from baselines.lora import LoRA, LoRAConfig
    from bench.data import select_concepts
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    concept = select_concepts(dreambench_root, "dog")[0]
    profile = get_profile("paper-random")
    models = Models(profile, "cuda")
    method = LoRA(LoRAConfig(iterations=3, autocast_dtype="bf16", sample_batch_size=1))
    log = ListLog()
    trained = method.train(concept, models, tmp_path / "work", 0, log)
    assert len(log.rows) == 3 and all(math.isfinite(v) for row in log.rows for v in row.values())
    image = trained.generate([concept.prompt(concept.prompts[0], trained.identifier)], [0])[0]
    assert image.size == (profile.resolution, profile.resolution)
    assert np.isfinite(np.asarray(image, dtype=np.float32)).all()
