"""MLflow (`--report-to mlflow`, extra `onestep-bench[mlflow]`, the light `mlflow-skinny` client): one MLflow run
per benchmark run in experiment `onestep-bench` (else `$MLFLOW_EXPERIMENT_NAME`), at `$MLFLOW_TRACKING_URI`, else
a local file store `<results>/mlruns` (`mlflow ui --backend-store-uri <results>/mlruns`). Tags: method, variant,
concept, seed, profile and `group` (`<method>/<variant>`); params: the flattened config and hashes (the full
config also as the artifact `config.json`); metrics at the run's global step; sample grids as image artifacts
under `samples/`; the run ends FINISHED or FAILED with the run's status.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.tracking import PROJECT, RunInfo, flatten

PARAM_CHUNK = 100
"""Params per `log_batch` call (MLflow's limit)."""


class MlflowTracker:
    def start(self, run: RunInfo) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local file store needs no server; MLflow 3 asks to opt in to it
            uri = (run.results / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except Exception:  # noqa: BLE001 - another worker created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        tags = {**run.tags, "group": run.group, "config_hash": run.hashes.get("config_hash", "")}
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(run.tracked_config()).items()]
        for start in range(0, len(params), PARAM_CHUNK):
            self.client.log_batch(self.run_id, params=params[start:start + PARAM_CHUNK])
        self.client.log_dict(self.run_id, run.tracked_config(), "config.json")

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, tag: str, image: Any, step: int, caption: str = "") -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"{tag}_{step:06d}.png")

    def finish(self, status: str, metrics: dict[str, float]) -> None:
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "done" else "FAILED")
