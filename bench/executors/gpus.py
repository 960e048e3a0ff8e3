"""The `gpus` executor: one worker process per visible GPU (`CUDA_VISIBLE_DEVICES`, else
`torch.cuda.device_count()`), each pinned to its GPU, or `--workers N` CPU workers each pinned to its share of
the cores. Workers pull the next job when they finish one, so a slow run never holds up the rest; a worker that
dies (OOM, segfault, kill) has its run reported as crashed and is replaced; workers die with the sweep."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.api import BenchError, InfraError, infra_cause
from bench.executors.progress import erase, loss_text, progress_display, report_failure
from bench.runs import Context, Outcome, PlannedRun, execute_job
from bench.threads import ENV as THREADS_ENV
from bench.threads import parse_threads


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
    current: PlannedRun | None = None
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
        threads = parse_threads(os.environ.get(THREADS_ENV)) or max(1, len(share) if share else len(cores) // n)
        slots.append(_Slot(i, gpus[i % len(gpus)] if gpus else None, share, threads))
    return slots


def run_gpus(runs: list[PlannedRun], ctx: Context, workers: int | None = None) -> list[Outcome]:
    """One worker process per GPU (or `workers` CPU workers); runs handed out one at a time as workers free up."""
    return WorkerPool(runs, ctx, workers).run()


class WorkerPool:
    """The `gpus` executor's loop: start a worker per slot, hand each the next job it may run, collect outcomes.

    A job whose training is already running in another worker waits (it will reuse that training); a worker that
    dies has its run reported as crashed and is restarted (at most 3 times); a user mistake or an environment
    failure in any worker stops them all with its one line. Workers find plug-in methods as every process does,
    through the registry and the files in $BENCH_INCLUDE (`bench.plugins`), which they inherit.
    """

    def __init__(self, runs: list[PlannedRun], ctx: Context, workers: int | None = None) -> None:
        import multiprocessing

        self.ctx = ctx
        self.slots = gpu_slots(ctx, workers)
        self.mp = multiprocessing.get_context("spawn")  # CUDA cannot be forked; spawn re-reads CUDA_VISIBLE_DEVICES
        self.runs, self.pending = runs, deque(runs)
        self.waiting: list[_Slot] = []  # asked for work while every pending run shares a running one's training
        self.live: dict[Any, _Slot] = {}
        self.outcomes: list[Outcome] = []
        self.progress: Any = None
        self.sweep_task: Any = None

    def run(self) -> list[Outcome]:
        from multiprocessing.connection import wait

        from bench.executors.caches import warm_caches

        warm_caches(self.runs, self.ctx)
        with progress_display() as progress:
            self.progress = progress
            self.sweep_task = progress.add_task(f"sweep ({len(self.slots)} workers)", total=len(self.runs))
            for slot in self.slots:
                slot.task = progress.add_task(f"  {slot.name} starting", total=1)
            try:
                for slot in self.slots:
                    self.start(slot)
                while self.live:
                    for conn in wait(list(self.live), timeout=1.0):
                        self.receive(self.live[conn])
                for run in self.pending:  # every worker died for good
                    self.outcomes.append(Outcome(run.job, "crashed", run.run_dir,
                                                 "not run: every worker process died"))
            finally:
                self.stop()
        return self.outcomes

    def start(self, slot: _Slot) -> None:
        parent, child = self.mp.Pipe()
        env = {"CUDA_VISIBLE_DEVICES": slot.gpu if slot.gpu is not None else "",
               "OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # inherited by the spawned child before it imports torch
        try:
            slot.proc = self.mp.Process(target=_worker, args=(child, slot.gpu is not None, slot.threads, slot.cores,
                                                              self.ctx, os.getpid()),
                                        name=f"bench-{slot.name}", daemon=True)
            slot.proc.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        child.close()
        slot.conn, slot.current, slot.closing = parent, None, False
        self.live[slot.conn] = slot

    def stop(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.terminate()
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.join(timeout=10)

    def next_job(self) -> PlannedRun | None:
        """The first pending run whose training is not running in another slot (it may then reuse it)."""
        busy = {s.current.training_key for s in self.slots if s.current is not None}
        for run in self.pending:
            if run.training_key not in busy:
                self.pending.remove(run)
                return run
        return None

    def serve(self, slot: _Slot) -> None:
        slot.current = self.next_job()
        if slot.current is None and self.pending:
            self.waiting.append(slot)  # served again when a run finishes
            self.progress.update(slot.task, visible=True, description=f"  {slot.name} waiting for a shared training")
            return
        slot.conn.send(slot.current)
        if slot.current is None:
            slot.closing = True
            self.progress.update(slot.task, visible=False)
        else:
            self.progress.update(slot.task, completed=0, total=1, visible=True,
                                 description=f"  {slot.name} {slot.current.key.label()}")

    def finished(self, outcome: Outcome, slot: _Slot) -> None:
        """A run of `slot` is over: count it, and serve the workers that waited for its training."""
        self.outcomes.append(outcome)
        report_failure(self.progress, outcome)
        self.progress.advance(self.sweep_task)
        slot.current = None
        for other in list(self.waiting):
            if other.conn in self.live:
                self.waiting.remove(other)
                self.serve(other)

    def receive(self, slot: _Slot) -> None:
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            self.died(slot)
            return
        kind = message[0]
        if kind == "ready":
            self.serve(slot)
        elif kind == "step" and slot.current is not None:
            _, phase, done, total, loss = message
            self.progress.update(slot.task, completed=done, total=max(total, 1),
                                 description=f"  {slot.name} {slot.current.key.label()} {phase} {loss}")
        elif kind == "done":
            self.finished(message[1], slot)
        elif kind == "error":  # a user mistake: only its one line is left on screen
            erase(self.progress)
            raise BenchError(message[1])
        elif kind == "infra":  # the environment failed: stop every worker, record nothing
            erase(self.progress)
            raise InfraError(message[1])

    def died(self, slot: _Slot) -> None:
        """The worker process of `slot` is gone: its run crashed; start a new worker while there is work."""
        del self.live[slot.conn]
        if slot in self.waiting:
            self.waiting.remove(slot)
        slot.proc.join(timeout=10)
        if slot.current is not None:
            self.finished(Outcome(slot.current.job, "crashed", slot.current.run_dir,
                                  f"worker {slot.name} died (exit code {slot.proc.exitcode}); "
                                  f"re-run to redo it (--resume continues from its checkpoint)"), slot)
        if self.pending and not slot.closing and slot.restarts < 3:
            slot.restarts += 1
            self.start(slot)
        else:
            self.progress.update(slot.task, visible=False)


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


def _worker(conn: Any, gpu: bool, threads: int, cores: list[int], ctx: Context, parent: int) -> None:
    """A worker process: ask for a planned run, run it, report; until told to stop (None). Dies with its parent.
    Plug-in methods come from $BENCH_INCLUDE (inherited), as in every process."""
    _die_with_parent(parent)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    import torch

    torch.set_num_threads(threads)
    ctx = dataclasses.replace(ctx, device="cuda" if gpu else "cpu")
    last = [0.0]

    def on_step(phase: str, done: int, total: int, scalars: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2 or done >= total:
            last[0] = now
            conn.send(("step", phase, done, total, loss_text(scalars)))

    while True:
        conn.send(("ready",))
        run = conn.recv()
        if run is None:
            return
        try:
            outcome = execute_job(run, ctx, on_step)
        except BenchError as err:
            conn.send(("error", str(err)))
            return
        except Exception as err:  # noqa: BLE001 - a harness failure on one run must not stop the others
            cause = infra_cause(err)
            if cause is not None:  # the environment failed: the parent stops the sweep (if it is still there)
                conn.send(("infra", cause))
                return
            outcome = Outcome(run.job, "crashed", run.run_dir, f"{type(err).__name__}: {err}"[:500])
        conn.send(("done", outcome))
