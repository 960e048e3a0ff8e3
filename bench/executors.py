"""Executors: where jobs run. Every executor calls the same `bench.runs.execute_job`, which skips finished
runs, locks the run, and records it; so any executor can be killed at any moment and simply started again.

- `local`: in this process, one job after another.
- `gpus`: one worker process per visible GPU (`CUDA_VISIBLE_DEVICES`, else `torch.cuda.device_count()`), each
  pinned to its GPU (its `CUDA_VISIBLE_DEVICES` is that one device). `--workers N` sets the number of workers:
  N CPU workers when there is no GPU (each pinned to its share of the cores), or N workers spread over the GPUs.
  Workers pull the next job when they finish one, so a slow run never holds up the rest; a worker that dies
  (OOM, segfault, kill) has its run reported as crashed and is replaced.
- `slurm`: through submitit, one SLURM job per run or one job array (`--slurm-array`), logs and submission files
  in `<results>/_slurm/`. Only runs with work to do are submitted. A job that hits its time limit or is
  preempted is requeued by submitit and continues from its last checkpoint. `--cluster local` runs the same
  submission on this machine (submitit's LocalExecutor), to try a setup before the queue.

Each shows a rich progress display: the sweep, and per worker the current run's iterations and loss.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.api import BenchError, InfraError, infra_cause
from bench.runs import Context, Job, execute_job, prepare, training_key, triage

EXECUTORS = ("local", "gpus", "slurm")
CLUSTERS = ("slurm", "local", "debug")
SLURM_FOLDER = "_slurm"


@dataclass
class ExecOptions:
    """How and where a sweep runs (the `bench run`/`bench ablate` executor flags)."""

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
        from bench.registry import unknown

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


# --- the sweep, as the CLI calls it ----------------------------------------------------------------------------


def sweep(methods: list[str], variants: list[tuple[str, dict[str, Any]]], concepts: str, seeds: list[int],
          profile: str, backbone: str, data: Path | None, results: Path, suite: str | None, device: str | None,
          weights: list[str] | None, force: bool, resume: bool, retry_failed: bool, options: ExecOptions,
          concept_dir: Path | None = None, class_noun: str | None = None, speed: list[str] | None = None
          ) -> tuple[str, int]:
    """Validate everything, run the plan on the chosen executor; (the summary lines, the exit code: 0, or
    EXIT_RUNS_FAILED when a run of the plan failed or is kept failed)."""
    options.validate()
    jobs, ctx = prepare(methods, variants, concepts, seeds, profile, backbone, data, results, suite, device, weights,
                        force, resume, retry_failed, concept_dir, class_noun, speed=speed)
    with _sigterm_exits():
        outcome = run_jobs(jobs, ctx, options)
    return summarize(outcome, ctx.results), exit_code(outcome)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (`kill`, `scancel`, a job manager) unwinds like Ctrl-C: locks are released, unfinished runs stay
    resumable. (SIGKILL cannot be caught; its locks are recognised as stale instead.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(jobs: list[Job], ctx: Context, executor: str | ExecOptions = "local", **options: Any
             ) -> list[dict[str, Any]]:
    """Run `jobs` on an executor (a name plus ExecOptions fields, or an ExecOptions); one outcome per job."""
    opts = executor if isinstance(executor, ExecOptions) else ExecOptions(executor=executor, **options)
    opts.validate()
    from bench.store import check_writable

    if opts.executor == "gpus":
        gpu_slots(ctx, opts.workers)  # no GPU and no --workers: fail before anything is written
    if opts.executor == "slurm" and opts.cluster == "slurm":
        import shutil

        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise BenchError(f"--executor slurm needs SLURM, but {' and '.join(missing)} {verb} not on PATH; use "
                             f"--executor local or gpus here, or --cluster local to try the submission locally")
    check_writable(ctx.results)
    if opts.executor == "gpus":
        return run_gpus(jobs, ctx, opts.workers)
    if opts.executor == "slurm":
        return run_slurm(jobs, ctx, opts)
    return run_local(jobs, ctx)


def warm_caches(jobs: list[Job], ctx: Context) -> None:
    """Build the tiny models and metric backbones once, here, before several processes would each build them."""
    if any(job.profile == "tiny" for job in jobs):
        from bench.models.tiny import ensure_built

        ensure_built()
    from bench.metrics.suites import ensure_tiny, get_suite

    if get_suite(ctx.suite).builder == "tiny":
        ensure_tiny()


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=False)


def _loss_text(scalars: dict) -> str:
    return next((f"{k}={v:.4f}" for k, v in scalars.items() if "loss" in k), "")


def _report(progress: Any, outcome: dict[str, Any]) -> None:
    if outcome["status"] in ("failed", "crashed", "lost_lock"):
        progress.console.print(f"[red]{outcome['status']}[/red] {outcome['job'].key.label()}: "
                               f"{outcome.get('reason')}")


# --- local -----------------------------------------------------------------------------------------------------


def run_local(jobs: list[Job], ctx: Context) -> list[dict[str, Any]]:
    """Run every job here, in order; a failed run is recorded and the sweep goes on."""
    results = []
    with _progress() as progress:
        sweep_task = progress.add_task("sweep", total=len(jobs))
        run_task = progress.add_task("", total=1, visible=False)

        def on_step(phase: str, done: int, total: int, scalars: dict) -> None:
            progress.update(run_task, completed=done, total=max(total, 1), visible=True,
                            description=f"  {phase} {_loss_text(scalars)}")

        with _erased_on_error(progress):
            for job in jobs:
                progress.update(sweep_task, description=f"sweep {job.key.label()}")
                progress.update(run_task, completed=0, visible=False)
                outcome = execute_job(job, ctx, on_step)
                results.append(outcome)
                _report(progress, outcome)
                progress.advance(sweep_task)
        progress.update(run_task, visible=False)
    return results


@contextmanager
def _erased_on_error(progress: Any) -> Iterator[None]:
    """A user mistake found mid-sweep (BenchError) or an environment failure (`infra_cause`) leaves only its one line:
    the progress display is erased instead of left above it."""
    try:
        yield
    except Exception as err:
        if isinstance(err, BenchError) or infra_cause(err) is not None:  # one line, like a user mistake
            _erase(progress)
        raise


def _erase(progress: Any) -> None:
    """Leave nothing of the progress display behind: cleared on a terminal, not printed into a log."""
    progress.live.transient = True
    progress.disable = True


# --- one process per GPU -----------------------------------------------------------------------------------------


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices, UUIDs or MIG ids)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for item in (x.strip() for x in env.split(",")):
            if not item or item.startswith("-"):
                break  # CUDA stops at the first invalid entry; "-1" or "" hides every GPU
            ids.append(item)
        return ids
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPU
        return []


@dataclass
class _Slot:
    index: int
    gpu: str | None
    cores: list[int]
    threads: int
    proc: Any = None
    conn: Any = None
    current: Job | None = None
    task: Any = None
    restarts: int = 0
    closing: bool = False

    @property
    def name(self) -> str:
        return f"gpu{self.gpu}" if self.gpu is not None else f"cpu{self.index}"


def gpu_slots(ctx: Context, workers: int | None) -> list[_Slot]:
    """One slot per worker: its GPU (None for a CPU worker), its cores and its thread count."""
    if ctx.device not in (None, "cpu", "cuda"):
        raise BenchError(f"--device {ctx.device} cannot be combined with --executor gpus (each worker gets its "
                         f"own GPU); choose GPUs with CUDA_VISIBLE_DEVICES")
    gpus = [] if ctx.device == "cpu" else visible_gpus()
    if not gpus and not workers:
        raise BenchError("--executor gpus found no GPU (CUDA_VISIBLE_DEVICES / torch.cuda.device_count()); pass "
                         "--workers N for N CPU worker processes, or use --executor local")
    n = workers or len(gpus)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    slots = []
    for i in range(n):
        share = cores[i * len(cores) // n:(i + 1) * len(cores) // n] if not gpus and len(cores) >= n else []
        threads = max(1, len(share) if share else len(cores) // n)
        slots.append(_Slot(i, gpus[i % len(gpus)] if gpus else None, share, threads))
    return slots


def run_gpus(jobs: list[Job], ctx: Context, workers: int | None = None) -> list[dict[str, Any]]:
    """One worker process per GPU (or `workers` CPU workers); jobs handed out one at a time as workers free up."""
    import multiprocessing
    from multiprocessing.connection import wait

    from bench import registry

    slots = gpu_slots(ctx, workers)
    n = len(slots)
    mp = multiprocessing.get_context("spawn")  # CUDA cannot be forked; spawn also re-reads CUDA_VISIBLE_DEVICES
    warm_caches(jobs, ctx)
    pending = deque(jobs)
    keys = {job: training_key(job, ctx) for job in jobs}
    waiting: list[_Slot] = []  # asked for work while every pending job shares its training with a running one
    outcomes: list[dict[str, Any]] = []

    def next_job() -> Job | None:
        """The first pending job whose training is not running in another slot (it may then reuse it)."""
        busy = {keys[s.current] for s in slots if s.current is not None}
        for job in pending:
            if keys[job] not in busy:
                pending.remove(job)
                return job
        return None

    def serve(slot: _Slot, progress: Any) -> None:
        slot.current = next_job()
        if slot.current is None and pending:
            waiting.append(slot)  # served again when a run finishes
            progress.update(slot.task, visible=True, description=f"  {slot.name} waiting for a shared training")
            return
        slot.conn.send(slot.current)
        if slot.current is None:
            slot.closing = True
            progress.update(slot.task, visible=False)
        else:
            progress.update(slot.task, completed=0, total=1, visible=True,
                            description=f"  {slot.name} {slot.current.key.label()}")

    def wake(progress: Any) -> None:
        for slot in list(waiting):
            if slot.conn in live:
                waiting.remove(slot)
                serve(slot, progress)

    def start(slot: _Slot) -> None:
        parent, child = mp.Pipe()
        env = {"CUDA_VISIBLE_DEVICES": slot.gpu if slot.gpu is not None else "",
               "OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # inherited by the spawned child before it imports torch
        try:
            slot.proc = mp.Process(target=_worker, args=(child, slot.gpu is not None, slot.threads, slot.cores, ctx,
                                                         dict(registry.METHODS), os.getpid()),
                                   name=f"bench-{slot.name}", daemon=True)
            slot.proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        child.close()
        slot.conn, slot.current, slot.closing = parent, None, False

    with _progress() as progress:
        sweep_task = progress.add_task(f"sweep ({n} workers)", total=len(jobs))
        for slot in slots:
            slot.task = progress.add_task(f"  {slot.name} starting", total=1)
        try:
            for slot in slots:
                start(slot)
            live = {slot.conn: slot for slot in slots}
            while live:
                for conn in wait(list(live), timeout=1.0):
                    slot = live[conn]
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):  # the worker died
                        del live[conn]
                        if slot in waiting:
                            waiting.remove(slot)
                        slot.proc.join(timeout=10)
                        if slot.current is not None:
                            outcome = {"job": slot.current, "status": "crashed",
                                       "run_dir": slot.current.key.path(ctx.results),
                                       "reason": f"worker {slot.name} died (exit code {slot.proc.exitcode}); "
                                                 f"re-run to redo it (--resume continues from its checkpoint)"}
                            outcomes.append(outcome)
                            _report(progress, outcome)
                            progress.advance(sweep_task)
                            slot.current = None
                            wake(progress)
                        if pending and not slot.closing and slot.restarts < 3:
                            slot.restarts += 1
                            start(slot)
                            live[slot.conn] = slot
                        else:
                            progress.update(slot.task, visible=False)
                        continue
                    kind = message[0]
                    if kind == "ready":
                        serve(slot, progress)
                    elif kind == "step" and slot.current is not None:
                        _, phase, done, total, loss = message
                        progress.update(slot.task, completed=done, total=max(total, 1),
                                        description=f"  {slot.name} {slot.current.key.label()} {phase} {loss}")
                    elif kind == "done":
                        outcomes.append(message[1])
                        _report(progress, message[1])
                        slot.current = None
                        progress.advance(sweep_task)
                        wake(progress)
                    elif kind == "error":  # a user mistake: only its one line is left on screen
                        _erase(progress)
                        raise BenchError(message[1])
                    elif kind == "infra":  # the environment failed: stop every worker, record nothing
                        _erase(progress)
                        raise InfraError(message[1])
            for job in pending:  # every worker died for good
                outcomes.append({"job": job, "status": "crashed", "run_dir": job.key.path(ctx.results),
                                 "reason": "not run: every worker process died"})
        finally:
            for slot in slots:
                if slot.proc is not None and slot.proc.is_alive():
                    slot.proc.terminate()
            for slot in slots:
                if slot.proc is not None:
                    slot.proc.join(timeout=10)
    return outcomes


def _die_with_parent(parent: int) -> None:
    """End this worker when the sweep's process dies (even by SIGKILL), so no worker runs on unattended: on Linux
    the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG); everywhere, a watchdog thread exits when the parent is gone."""
    import ctypes
    import signal
    import threading

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below does it

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def _worker(conn: Any, gpu: bool, threads: int, cores: list[int], ctx: Context, methods: dict[str, str],
            parent: int) -> None:
    """A worker process: ask for a job, run it, report; until told to stop (None). Dies with its parent."""
    _die_with_parent(parent)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    import torch

    from bench import registry

    registry.METHODS.update(methods)  # the parent's method table, including methods registered at run time

    torch.set_num_threads(threads)
    ctx = dataclasses.replace(ctx, device="cuda" if gpu else "cpu")
    last = [0.0]

    def on_step(phase: str, done: int, total: int, scalars: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2 or done >= total:
            last[0] = now
            conn.send(("step", phase, done, total, _loss_text(scalars)))

    while True:
        conn.send(("ready",))
        job = conn.recv()
        if job is None:
            return
        try:
            outcome = execute_job(job, ctx, on_step)
        except BenchError as err:
            conn.send(("error", str(err)))
            return
        except Exception as err:  # noqa: BLE001 - a harness failure on one run must not stop the others
            cause = infra_cause(err)
            if cause is not None:  # the environment failed: the parent stops the sweep (if it is still there)
                conn.send(("infra", cause))
                return
            outcome = {"job": job, "status": "crashed", "run_dir": job.key.path(ctx.results),
                       "reason": f"{type(err).__name__}: {err}"[:500]}
        conn.send(("done", outcome))


# --- SLURM through submitit -----------------------------------------------------------------------------------


class SlurmTask:
    """What a SLURM job runs: `execute_job` for one run. On a time limit or preemption submitit calls
    `checkpoint`, which requeues the same run with `resume=True`, so it continues from its last checkpoint.
    It carries the submitter's method table, so a method registered at run time is found in the job too."""

    def __init__(self, ctx: Context, methods: dict[str, str] | None = None) -> None:
        from bench import registry

        self.ctx = ctx
        self.methods = dict(registry.METHODS if methods is None else methods)

    def __call__(self, job: Job) -> dict[str, Any]:
        from bench import registry

        registry.METHODS.update(self.methods)
        return execute_job(job, self.ctx)

    def checkpoint(self, job: Job) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SlurmTask(dataclasses.replace(self.ctx, resume=True), self.methods), job)


def run_slurm(jobs: list[Job], ctx: Context, opts: ExecOptions) -> list[dict[str, Any]]:
    """Submit the runs that have work to do through submitit; wait for them with a progress display."""
    import submitit

    from bench.store import RunLock

    ctx = dataclasses.replace(
        ctx, results=Path(ctx.results).resolve(), data=Path(ctx.data).resolve(),
        concept_dirs={k: (str(Path(f).resolve()), noun) for k, (f, noun) in ctx.concept_dirs.items()})
    outcomes: list[dict[str, Any]] = []
    todo: list[Job] = []
    for job in jobs:  # submit only what needs doing: a queued no-op still costs a slot
        state = triage(job, ctx)
        lock = RunLock(state.run_dir)
        if state.state in ("done", "failed"):
            status = "skipped" if state.state == "done" else "kept_failed"
            reason = state.record.reason if state.record and status == "kept_failed" else None
            outcomes.append({"job": job, "status": status, "run_dir": state.run_dir, "reason": reason})
        elif lock.path.exists() and not lock.is_stale():
            outcomes.append({"job": job, "status": "locked", "run_dir": state.run_dir, "reason": lock.describe()})
        else:
            todo.append(job)
    if not todo:
        return outcomes
    if opts.cluster != "slurm":
        warm_caches(todo, ctx)  # a cluster's nodes may not share this machine's cache; local jobs do

    folder = ctx.results / SLURM_FOLDER
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.cluster)
    gpus = 1 if opts.gpus_per_job is None else opts.gpus_per_job
    params: dict[str, Any] = {"name": "bench", "timeout_min": opts.time or 120}
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.cpus_per_job:
        params["cpus_per_task"] = opts.cpus_per_job
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.mem:
        params["slurm_mem"] = slurm_mem(opts.mem)
    extra = sbatch_options(opts.sbatch)
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    task = SlurmTask(ctx)
    leaders, followers = split_shared_training(todo, ctx)
    todo = leaders + [job for job, _ in followers]
    try:
        if opts.array:
            submitted = executor.map_array(task, leaders)
        else:
            submitted = [executor.submit(task, job) for job in leaders]
        if followers:  # each starts after the run whose training it samples (afterany: it trains if that failed)
            by_job = dict(zip(leaders, submitted))
            after = {job: by_job[leader].job_id for job, leader in followers}
            if opts.array:
                master = submitted[0].job_id.split("_")[0]
                executor.update_parameters(slurm_additional_parameters={**extra, "dependency": f"afterany:{master}"})
                submitted += executor.map_array(task, [job for job, _ in followers])
            else:
                for job, _ in followers:
                    executor.update_parameters(
                        slurm_additional_parameters={**extra, "dependency": f"afterany:{after[job]}"})
                    submitted.append(executor.submit(task, job))
    except Exception as err:  # noqa: BLE001 - sbatch refused the submission: say why, in one line
        lines = [x for x in str(err).strip().splitlines() if x.strip()]
        raise BenchError(f"SLURM submission failed: {lines[-1] if lines else type(err).__name__}") from None
    ids = ", ".join(j.job_id for j in submitted)
    if not opts.wait:
        from rich.console import Console

        Console(stderr=True).print(f"submitted {len(submitted)} job(s) ({ids}); logs in {folder}; "
                                   f"follow with `bench status --results {ctx.results}`")
        return outcomes + [{"job": job, "status": "submitted", "run_dir": job.key.path(ctx.results),
                            "reason": sj.job_id} for job, sj in zip(todo, submitted)]
    return outcomes + _wait(todo, submitted, ctx, folder, opts.cluster)


def split_shared_training(jobs: list[Job], ctx: Context) -> tuple[list[Job], list[tuple[Job, Job]]]:
    """(leaders, [(follower, its leader)]): the first job of each training hash trains; the others share it."""
    first: dict[str, Job] = {}
    leaders, followers = [], []
    for job in jobs:
        key = training_key(job, ctx)
        if key in first:
            followers.append((job, first[key]))
        else:
            first[key] = job
            leaders.append(job)
    return leaders, followers


def _wait(todo: list[Job], submitted: list[Any], ctx: Context, folder: Path, cluster: str) -> list[dict[str, Any]]:
    outcomes = []
    remaining = dict(enumerate(submitted))
    poll = 2.0 if cluster != "slurm" else 15.0
    with _progress() as progress:
        sweep_task = progress.add_task("sweep (slurm)", total=len(submitted))
        while remaining:
            states: dict[str, int] = {}
            for i, sj in list(remaining.items()):
                if sj.done():
                    del remaining[i]
                    outcome = _result(todo[i], sj, ctx)
                    outcomes.append(outcome)
                    _report(progress, outcome)
                    progress.advance(sweep_task)
                else:
                    state = str(sj.state).lower()
                    states[state] = states.get(state, 0) + 1
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            progress.update(sweep_task, description=f"sweep (slurm{': ' + detail if detail else ''}) logs {folder}")
            if remaining:
                time.sleep(poll)
    return outcomes


def _result(job: Job, sj: Any, ctx: Context) -> dict[str, Any]:
    try:
        return sj.result()
    except Exception as err:  # noqa: BLE001 - the job died or raised outside the method
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        cause = next((x for x in reversed(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b", x)),
                     lines[-1] if lines else type(err).__name__)
        return {"job": job, "status": "crashed", "run_dir": job.key.path(ctx.results),
                "reason": f"SLURM job {sj.job_id}: {cause[:300]} (log: {sj.paths.stderr})"}


# --- the summary ---------------------------------------------------------------------------------------------------

LABELS = {"kept_failed": "kept failed", "lost_lock": "lost lock"}
EXIT_RUNS_FAILED = 3
"""`bench run` / `bench ablate` exit code when a run of the plan failed, crashed or is kept failed (2 is a user
mistake found before any work, 0 every run done or skipped as done)."""


def exit_code(results: list[dict[str, Any]]) -> int:
    """EXIT_RUNS_FAILED when any run failed, crashed or was kept failed, else 0."""
    return EXIT_RUNS_FAILED if any(r["status"] in ("failed", "crashed", "kept_failed") for r in results) else 0
ORDER = ("done", "skipped", "submitted", "locked", "kept_failed", "failed", "crashed", "lost_lock")


def summarize(results: list[dict[str, Any]], where: Path | None = None) -> str:
    """`2 done, 1 skipped` and, when there is something to act on, what to do about it."""
    if not results:
        raise BenchError("nothing to run")
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    ranked = sorted(counts, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))
    lines = [", ".join(f"{counts[s]} {LABELS.get(s, s)}" for s in ranked)]
    status = f"`bench status --results {where}`" if where is not None else "`bench status`"
    bad = counts.get("failed", 0) + counts.get("crashed", 0)
    if bad:
        lines.append(f"{bad} run(s) failed; see {status}")
    if counts.get("kept_failed"):
        lines.append(f"{counts['kept_failed']} run(s) failed before and were not retried; pass --retry-failed "
                     f"to re-run them")
    if counts.get("locked"):
        lines.append(f"{counts['locked']} run(s) are being run by another process; see {status}")
    return "\n".join(lines)
