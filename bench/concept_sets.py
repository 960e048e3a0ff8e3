"""Which dataset a run's concept belongs to: the tables keep each dataset apart (never averaged together)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATASET_NAMES = ("dreambench", "customconcept101", "yours")
"""The datasets a run's concept can belong to; `yours` is a `--concept-dir` folder (named `<folder>@<hash>`)."""


def dataset_of(concept: str, data: Path | None) -> str:
    """The dataset a concept of the `--data` folder `data` belongs to (the folder's layout tells, as
    `bench.data.load_concepts` reads it); a user concept's name carries its content hash after `@`."""
    if "@" in concept:
        return "yours"
    if data is not None:
        from bench.cc101 import find_cc101
        from bench.data import PROMPTS_FILE

        if find_cc101(Path(data)) is not None and not (Path(data) / PROMPTS_FILE).is_file():
            return "customconcept101"
    return "dreambench"


def record_dataset(record: Any) -> str:
    """A record's dataset (`RunRecord.dataset`): as written, else (an older record) told by its concept's name."""
    return record.dataset or dataset_of(record.concept or "", None)
