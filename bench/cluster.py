"""The whole paper on a SLURM cluster: `tools/paper_tables.py slurm N` submits the plan as one job array of N shard
jobs through submitit, then publishes the tables and the report.

Each array task K runs `paper_tables.py shard K N` (the same split as the CI workflow's, `bench.shard`) with its
own `--executor gpus`: one worker per GPU that SLURM gave the job. Every task writes into the one shared results
folder (`--results`, on the cluster's shared filesystem): run locks keep two tasks off one run, so nothing needs
merging. A task that hits its time limit or is preempted is requeued by submitit (`ShardTask.checkpoint`): it
skips what it finished and continues the interrupted runs from their checkpoints (`shard --resume`); submission
files and logs are in `<results>/_slurm/paper/`. `--cluster local` runs the same job objects on this machine
(submitit's LocalExecutor), to try a set-up before the queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api import BenchError

FOLDER = Path("_slurm") / "paper"
"""Under the results folder: submitit's submission files, logs and pickled jobs."""


@dataclass
class ShardTask:
    """What array task K runs: `paper_tables.py [options] shard K N --executor E` in a fresh process (the same
    interpreter and environment as the submitter's: a cluster's nodes see the same installation)."""

    script: str
    options: list[str]
    n: int
    executor: str = "gpus"
    env: dict[str, str] = field(default_factory=dict)
    resume: bool = False
    """Continue interrupted runs from their checkpoints (`shard --resume`): what a requeued task does."""

    def argv(self, k: int) -> list[str]:
        return [sys.executable, self.script, *self.options, "shard", str(k), str(self.n), "--executor",
                self.executor, *(["--resume"] if self.resume else [])]

    def __call__(self, k: int) -> int:
        return subprocess.run(self.argv(k), check=False, env={**os.environ, **self.env}).returncode

    def checkpoint(self, k: int) -> Any:
        """On a time limit or preemption: the same shard again, finished runs skipped and the interrupted ones
        continued from their last checkpoint."""
        from dataclasses import replace

        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(replace(self, resume=True), k)


@dataclass(frozen=True)
class ClusterOptions:
    """The job array's resources, as `paper_tables.py slurm` takes them."""

    partition: str | None = None
    time_min: int = 4320
    """Minutes per shard job (SLURM's --time)."""
    gpus: int = 1
    """GPUs per shard job (its runs spread over them)."""
    cpus: int | None = None
    mem: str | None = None
    """Memory per job, e.g. 64G."""
    account: str | None = None
    sbatch: tuple[str, ...] = ()
    """Extra sbatch options KEY=VALUE (e.g. qos=high, constraint=a100)."""
    cluster: str = "slurm"
    """slurm | local (submitit's LocalExecutor, on this machine)."""
    parallel: int | None = None
    """At most this many shard jobs at once (%N of the array); default all."""


def forwarded(args: Any) -> list[str]:
    """The plan's options of `paper_tables.py` (its parsed arguments), as a shard job on another node must be given
    them (paths made absolute)."""
    out = ["--profile", args.profile, "--concepts", args.concepts, "--seeds", args.seeds, "--results",
           str(Path(args.results).resolve()), "--pieces", args.pieces]
    out += ["--data", str(Path(args.data).resolve())] if args.data else []
    out += ["--weights", str(Path(args.weights).resolve())] if args.weights else []
    return out + (["--methods", args.methods] if args.methods else [])


def parameters(opts: ClusterOptions, n: int) -> dict[str, Any]:
    """submitit parameters of the job array (validated: a bad value is one line)."""
    from bench.executors.options import slurm_resources

    if opts.cluster not in ("slurm", "local"):
        raise BenchError(f"unknown --cluster '{opts.cluster}'; valid: slurm, local")
    if opts.time_min < 1 or opts.gpus < 0 or n < 1:
        raise BenchError(f"bad job array: --time must be >= 1 minute, --gpus-per-job >= 0 and N >= 1 (got "
                         f"{opts.time_min}, {opts.gpus}, {n})")
    return {"name": "paper-tables", "timeout_min": opts.time_min, "slurm_array_parallelism": opts.parallel or n,
            **slurm_resources(gpus=opts.gpus, cpus=opts.cpus, partition=opts.partition, mem=opts.mem,
                              sbatch=opts.sbatch, account=opts.account)}


def submit(task: ShardTask, opts: ClusterOptions, results: Path) -> list[Any]:
    """Submit shards 1..N as one job array; the submitted jobs, in shard order."""
    import shutil

    import submitit

    if opts.cluster == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise BenchError(f"SLURM is not on this machine ({' and '.join(missing)} not on PATH); submit from a "
                             f"login node, or pass --cluster local to try the same job array here")
    folder = Path(results).resolve() / FOLDER
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.cluster)
    executor.update_parameters(**parameters(opts, task.n))
    try:
        return executor.map_array(task, list(range(1, task.n + 1)))
    except Exception as err:  # noqa: BLE001 - sbatch refused the submission: say why, in one line
        lines = [x for x in str(err).strip().splitlines() if x.strip()]
        raise BenchError(f"SLURM submission failed: {lines[-1] if lines else type(err).__name__}") from None


def wait(jobs: list[Any], poll: float = 2.0) -> list[int]:
    """Each shard's exit code once every job has ended (a job that died without one: 4, an environment failure)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll)
    codes = []
    for job in jobs:
        try:
            codes.append(int(job.result()))
        except Exception:  # noqa: BLE001 - killed, out of memory, node failure: its runs stay resumable
            codes.append(4)
    return codes
