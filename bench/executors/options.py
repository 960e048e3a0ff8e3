"""How a sweep runs: the executor flags of `bench run` / `bench ablate`, validated before any work."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.api import BenchError

EXECUTORS = ("local", "gpus", "slurm")
CLUSTERS = ("slurm", "local", "debug")


@dataclass(kw_only=True)
class ExecOptions:
    """How and where a sweep runs (the `bench run`/`bench ablate` executor flags), built with keywords."""

    executor: str = "local"
    workers: int | None = None
    """`gpus`: number of worker processes (default: one per visible GPU; required without a GPU)."""
    partition: str | None = None
    time: int | None = None
    """`slurm`: time limit per job, minutes (default 120)."""
    gpus_per_job: int | None = None
    """`slurm`: GPUs per job (default 1; 0 for none)."""
    cpus_per_job: int | None = None
    mem: str | None = None
    """`slurm`: memory per job, e.g. 32G."""
    sbatch: tuple[str, ...] = ()
    """`slurm`: extra sbatch options, KEY=VALUE (or KEY for a flag), e.g. account=proj, qos=high, exclusive."""
    array: bool = False
    """`slurm`: submit one job array instead of one job per run."""
    wait: bool = True
    """`slurm`: wait for the jobs and show their progress (else submit and return)."""
    cluster: str = "slurm"
    """`slurm`: submitit cluster: slurm, or local/debug to run the same submission on this machine."""

    def validate(self) -> None:
        from bench.naming import unknown

        if self.executor not in EXECUTORS:
            raise unknown("executor", self.executor, EXECUTORS)
        if self.cluster not in CLUSTERS:
            raise unknown("cluster", self.cluster, CLUSTERS)
        if self.workers is not None:
            if self.executor != "gpus":
                raise BenchError(f"--workers applies to --executor gpus, not '{self.executor}'")
            if self.workers < 1:
                raise BenchError(f"--workers must be >= 1, got {self.workers}")
        slurm_only = {"--partition": self.partition, "--time": self.time, "--gpus-per-job": self.gpus_per_job,
                      "--cpus-per-job": self.cpus_per_job, "--mem": self.mem, "--sbatch": self.sbatch or None,
                      "--slurm-array": self.array or None, "--no-wait": None if self.wait else True,
                      "--cluster": None if self.cluster == "slurm" else self.cluster}
        given = [flag for flag, value in slurm_only.items() if value is not None]
        if given and self.executor != "slurm":
            raise BenchError(f"{given[0]} applies to --executor slurm, not '{self.executor}'")
        for flag, value, low in (("--time", self.time, 1), ("--gpus-per-job", self.gpus_per_job, 0),
                                 ("--cpus-per-job", self.cpus_per_job, 1)):
            if value is not None and value < low:
                raise BenchError(f"{flag} must be >= {low}, got {value}")
        if self.mem is not None:
            slurm_mem(self.mem)
        sbatch_options(self.sbatch)


def slurm_mem(text: str) -> str:
    """`32G`, `32GB`, `500M`, `64000` (MB) -> SLURM's form (`32G`); anything else fails with the valid forms."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGTkmgt]?)[Bb]?\s*", text)
    if not match:
        raise BenchError(f"bad --mem '{text}'; expected a size such as 32G, 500M or 64000 (MB)")
    return match.group(1) + match.group(2).upper()


def sbatch_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--sbatch KEY=VALUE` (repeatable; KEY alone for a flag) -> {key: value} for the sbatch file."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or (sep and not value.strip()):
            raise BenchError(f"bad --sbatch '{item}'; expected KEY=VALUE (e.g. --sbatch account=myproj) or KEY")
        out[key] = value.strip() if sep else True
    return out


def slurm_resources(*, gpus: int, cpus: int | None, partition: str | None, mem: str | None,
                    sbatch: tuple[str, ...] | list[str], account: str | None = None) -> dict[str, Any]:
    """The submitit parameters for one job's resources (GPUs, CPUs, partition, memory, account, extra sbatch
    options), shared by `--executor slurm` and the whole-paper job array; unset values are left to SLURM."""
    params: dict[str, Any] = {}
    if gpus:
        params["gpus_per_node"] = gpus
    if cpus:
        params["cpus_per_task"] = cpus
    if partition:
        params["slurm_partition"] = partition
    if mem:
        params["slurm_mem"] = slurm_mem(mem)
    extra = sbatch_options(sbatch)
    if account:
        extra["account"] = account
    if extra:
        params["slurm_additional_parameters"] = extra
    return params
