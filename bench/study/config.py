"""The settings of one preference study, stored in its database so that the study describes itself."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.api import BenchError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INSTRUCTION = ("Select the best image from each group, considering both text-image alignment and object identity "
               "consistency.")
"""The question the paper asked its participants (Table 7)."""
PAPER_METHODS = ("echodistill", "custom_diffusion", "cones2", "disenbooth")
"""The methods of the paper's study (each in its default variant): best of 4, one image of each per trial."""


def check_name(name: str) -> str:
    """`name` if it can name a study (it becomes a file name), else the one-line error."""
    if not NAME.match(name):
        raise BenchError(f"study name '{name}' is not valid; use letters, digits, '_', '-', '.' "
                         f"(up to 64 characters, starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class StudyConfig:
    """What `bench study create` was asked for; recorded in the database's `meta` table."""

    name: str
    """The study's name: its database is `<results>/<profile>/_studies/<name>.sqlite`."""
    profile: str
    """The model profile whose runs are compared (tiny, paper, paper-random)."""
    methods: tuple[str, ...]
    """The methods compared, one candidate image each per trial."""
    variants: tuple[str, ...]
    """The variant of each method, in the order of `methods`."""
    concepts: tuple[str, ...]
    """The concepts trials are drawn from (every concept with all methods finished when empty)."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds whose runs may provide a trial."""
    trials: int | None = None
    """How many trials to draw; None takes every eligible (concept, prompt, evaluation seed)."""
    draw_seed: int = 0
    """Seed of the draw and of each trial's candidate order."""
    per_trial: int | None = None
    """Most votes one trial may collect (None: every participant may vote on every trial)."""
    references: int = 3
    """Reference photos of the concept shown above each trial."""
    instruction: str = INSTRUCTION
    """The question shown to participants."""
    assignment_ttl_s: float = 1800.0
    """An assignment left unanswered this long no longer holds a place in its trial's `per_trial` quota."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes kept with the study (dataset root, results folder)."""

    def __post_init__(self) -> None:
        check_name(self.name)
        if len(self.methods) < 2:
            raise BenchError(f"a preference study needs at least 2 methods, got {len(self.methods)}; "
                             f"the paper's study compares {','.join(PAPER_METHODS)}")
        if len(self.variants) != len(self.methods):
            raise BenchError(f"--variant gives {len(self.variants)} variants for {len(self.methods)} methods; "
                             f"give one variant for all, or one per method")
        if len(set(zip(self.methods, self.variants))) != len(self.methods):
            raise BenchError("each (method, variant) may appear only once in --methods/--variant")
        if not self.seeds:
            raise BenchError("no seeds given; e.g. --seeds 0")
        if self.trials is not None and self.trials < 1:
            raise BenchError(f"--trials must be at least 1 (or 'all'), got {self.trials}")
        if self.per_trial is not None and self.per_trial < 1:
            raise BenchError(f"--per-trial must be at least 1, got {self.per_trial}")
        if not 0 <= self.references <= 8:
            raise BenchError(f"--references must be between 0 and 8, got {self.references}")
        if self.assignment_ttl_s <= 0:
            raise BenchError(f"assignment_ttl_s must be positive, got {self.assignment_ttl_s}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyConfig:
        tuples = ("methods", "variants", "concepts", "seeds")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})
