"""TensorBoard (`--report-to tensorboard`, extra `onestep-bench[tensorboard]`): one event-file folder per run,
`<results>/tensorboard/<profile>/<method>/<variant>/<concept>/seed<k>`, so that
`tensorboard --logdir <results>/tensorboard` shows a whole sweep, runs named by their path.

Scalars at the run's global step; the sample grids as images; the config (JSON) as text; tags, hashes and the
final scores in the HParams tab (one row per run, filterable by method, variant, concept, seed and profile).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.tracking import RunInfo, flatten


def log_dir(run: RunInfo) -> Path:
    return run.results / "tensorboard" / run.profile / run.method / run.variant / run.concept / f"seed{run.seed}"


class TensorBoardTracker:
    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.run = run
        self.writer = SummaryWriter(log_dir=str(log_dir(run)), flush_secs=10)
        self.writer.add_text("config", "```\n" + json.dumps(run.tracked_config(), indent=1, default=str) + "\n```")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: Any, step: int, caption: str = "") -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def finish(self, status: str, metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        hp = {k: v for k, v in flatten({**self.run.tags, **self.run.hashes, "status": status}).items()}
        for summary in hparams(hp, {f"metrics/{k}": v for k, v in metrics.items()}):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()
