"""Watching training as it happens: a run's losses, samples and scores sent live to experiment trackers.

`bench run|ablate --report-to tensorboard|wandb|mlflow` (repeatable; none by default) sends, through each tool's
own client library (optional extras `onestep-bench[tensorboard]`, `[wandb]`, `[mlflow]`):
- every scalar the method logs, as `<stage>/<name>` (`distill/loss`, `echo/disc_clip`, `train/grad_norm`), at the
  run's global step (iterations done, all stages counted), with `time/iteration_s` and the config's learning rates
  (`lr/<field>`, constant: no method uses a schedule);
- the run's resolved config, config and training hashes as the tracked run's config; method, variant, concept,
  seed and profile as tags, `<method>/<variant>` as its group, so that a sweep is one project with one group per
  method and variant;
- the scores (`metrics/<name>`) and the status when the run is recorded;
- with `--sample-every N`, the sample grid (`bench.tracking.samples`).

The harness's own records stay the source of truth. A tracker that fails (not installed, offline, over quota, a bug)
is one warning and is dropped for the rest of the run (`bench.tracking.fanout`): it never fails or changes a run.
The options travel with the run request (`Context.tracking`) to every executor's workers; they are not part of a
method's config, so they change no hash.

Modules: `fanout` (the failure barrier), `observer` (what the run's loss log calls), `samples` (the grid),
`tensorboard_tracker`, `wandb_tracker`, `mlflow_tracker` (one per tool), `live` (`bench status --watch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api import BenchError

TRACKERS = {
    "tensorboard": ("bench.tracking.tensorboard_tracker:TensorBoardTracker", "tensorboard"),
    "wandb": ("bench.tracking.wandb_tracker:WandbTracker", "wandb"),
    "mlflow": ("bench.tracking.mlflow_tracker:MlflowTracker", "mlflow"),
}
"""`--report-to` name -> (its class, the extra that installs its client library)."""

PROJECT = "onestep-bench"
"""The W&B project and MLflow experiment a sweep is tracked in (`WANDB_PROJECT`, `MLFLOW_EXPERIMENT_NAME` win)."""


@dataclass(frozen=True)
class Tracking:
    """How a sweep's runs are watched: part of the run request, never of a method's config (no hash changes)."""

    report_to: tuple[str, ...] = ()
    """Trackers (`TRACKERS` keys), in the order given; none by default."""
    sample_every: int = 0
    """Sample the fixed grid from the model being trained every this many iterations of each stage; 0 = never."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "report_to", tuple(dict.fromkeys(self.report_to or ())))
        for name in self.report_to:
            if name not in TRACKERS:
                raise BenchError(f"unknown --report-to '{name}'; valid: {', '.join(TRACKERS)}")
        if not isinstance(self.sample_every, int) or self.sample_every < 0:
            raise BenchError(f"--sample-every must be an integer >= 0 (0 = no samples), got {self.sample_every}")

    @property
    def active(self) -> bool:
        return bool(self.report_to or self.sample_every)


def parse_report_to(items: list[str] | None) -> tuple[str, ...]:
    """`--report-to` values, each also comma-separated (`--report-to tensorboard,wandb`)."""
    return tuple(name.strip() for item in items or [] for name in item.split(",") if name.strip())


@dataclass(frozen=True)
class RunInfo:
    """What a tracker shows of a run besides its curves: who it is, its config and where results live."""

    method: str
    variant: str
    concept: str
    seed: int
    profile: str
    config: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    """`config_hash` and `training_hash`."""
    results: Path = Path("results")
    """The results root: TensorBoard's event files and MLflow's default file store go under it."""

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant}/{self.concept}/seed{self.seed}"

    @property
    def group(self) -> str:
        return f"{self.method}/{self.variant}"

    @property
    def name(self) -> str:
        """The tracked run's display name, unique in a sweep."""
        return f"{self.profile}/{self.label}"

    @property
    def tags(self) -> dict[str, str]:
        return {"method": self.method, "variant": self.variant, "concept": self.concept, "seed": str(self.seed),
                "profile": self.profile}

    def tracked_config(self) -> dict[str, Any]:
        """The tracked run's config: the method's resolved config under `config`, the hashes and the tags."""
        return {"config": self.config, **self.hashes, **self.tags, "seed": self.seed}

    def learning_rates(self) -> dict[str, float]:
        """The config's learning rates (`lr`, `*_lr`, `lr_*`, `learning_rate*`) by field name."""
        return {k: float(v) for k, v in self.config.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k == "lr" or k.endswith("_lr") or k.startswith(("lr_", "learning_rate")))}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as `a.b` keys with scalar values (lists and other values as their JSON-ish text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def open_observer(tracking: Tracking | None, record: Any, run_dir: Path, results: Path, concept: Any,
                  eval_seeds: tuple[int, ...]) -> Any:
    """The observer of one run (`observer.TrainingObserver`), or None when nothing watches it. `record` is the
    run's `RunRecord` as started (identity, config, hashes)."""
    if tracking is None or not tracking.active:
        return None
    from bench.tracking.fanout import Fanout
    from bench.tracking.observer import TrainingObserver

    info = RunInfo(record.method, record.variant, record.concept, int(record.seed), record.profile,
                   dict(record.config or {}), {"config_hash": record.config_hash or "",
                                               "training_hash": record.training_hash or ""}, Path(results))
    fanout = Fanout.open(tracking.report_to, info)
    return TrainingObserver(tracking, info, fanout, run_dir, concept, eval_seeds)
