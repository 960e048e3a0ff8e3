"""Per-run locks: one process trains a run at a time, here or on another host; a dead owner's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def lock_stale_seconds() -> float:
    """A lock whose heartbeat is older than this is stale whatever its host ($BENCH_LOCK_STALE_S, 600 s)."""
    try:
        return float(os.environ.get("BENCH_LOCK_STALE_S", "600"))
    except ValueError:
        return 600.0


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live owner from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


class RunLock:
    """An exclusive lock on one run, safe across processes, hosts and kills (SIGKILL included).

    - Taken atomically: the owner record is written to a temporary file and hard-linked to `<run>.lock`
      (`link` fails if the lock exists, and readers never see a half-written lock); O_EXCL where links
      are not supported.
    - The owner (host, pid, the pid's start time, a random token) refreshes the lock's mtime every few
      seconds from a daemon thread: the heartbeat.
    - Stale, and taken over: on the same host, when the owner pid is gone or was recycled; on any host, when
      the heartbeat is older than `lock_stale_seconds()` (a dead node, a SIGKILLed SLURM job elsewhere).
    - Take-over happens under a short-lived `<run>.lock.takeover` mutex and re-checks the lock it judged
      stale, so two processes never both replace it; `still_held()` lets the owner verify before it commits.
    """

    def __init__(self, run_dir: Path, heartbeat: float | None = None) -> None:
        self.path = run_dir.with_name(run_dir.name + ".lock")
        self.token = uuid.uuid4().hex
        self.held = False
        self._heartbeat = heartbeat if heartbeat is not None else max(1.0, min(30.0, lock_stale_seconds() / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # - reading ---------------------------------------------------------------------------------------------

    def read(self) -> tuple[bytes | None, dict[str, Any] | None, float]:
        """(raw bytes, parsed owner or None, age of the heartbeat in seconds); raw is None when there is no lock."""
        try:
            raw = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return None, None, 0.0
        try:
            owner = json.loads(raw)
            owner = owner if isinstance(owner, dict) else None
        except ValueError:
            owner = None
        return raw, owner, age

    def owner(self) -> dict[str, Any] | None:
        return self.read()[1]

    def _stale(self) -> bool:
        raw, owner, age = self.read()
        return raw is not None and self._judge(owner, age)

    is_stale = _stale

    def _judge(self, owner: dict[str, Any] | None, age: float) -> bool:
        pid = owner.get("pid") if owner else None
        if owner is None or owner.get("host") != socket.gethostname() or not isinstance(pid, int):
            # another host's processes cannot be seen (or the lock is unreadable): the heartbeat decides
            return age > lock_stale_seconds()
        if not _pid_alive(pid):
            return True
        start = owner.get("start")
        return bool(start and _process_start(pid) not in (None, start))  # pid recycled by another process

    def describe(self) -> str:
        """`host h, pid p, heartbeat 3 s ago` for `bench status`."""
        _, owner, age = self.read()
        if owner is None:
            return f"lock unreadable, {age:.0f} s old"
        job = f", slurm job {owner['slurm_job']}" if owner.get("slurm_job") else ""
        return f"host {owner.get('host')}, pid {owner.get('pid')}{job}, heartbeat {age:.0f} s ago"

    # - taking and giving back ------------------------------------------------------------------------------

    def _payload(self) -> bytes:
        pid = os.getpid()
        return json.dumps({"pid": pid, "host": socket.gethostname(), "start": _process_start(pid),
                           "token": self.token, "time": time.time(),
                           "slurm_job": os.environ.get("SLURM_JOB_ID")}).encode()

    def _create(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self._payload())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem: O_EXCL, written right after
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(self._payload())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Take the lock; False when a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            raw, owner, age = self.read()
            if raw is not None and not self._judge(owner, age):
                return False
            if not self._take_over(raw):
                return False
        self.held = True
        self._start_heartbeat()
        return True

    def _take_over(self, judged: bytes | None) -> bool:
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:  # a take-over lasts milliseconds: an old mutex was left by a killed process
                if time.time() - mutex.stat().st_mtime > 30:
                    mutex.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        os.close(fd)
        try:
            raw, owner, age = self.read()
            if raw is not None:
                if raw != judged or not self._judge(owner, age):
                    return False  # replaced meanwhile, or the owner came back to life
                self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            mutex.unlink(missing_ok=True)

    def still_held(self) -> bool:
        """True while the lock file is still ours (not taken over after a long freeze)."""
        _, owner, _ = self.read()
        return self.held and owner is not None and owner.get("token") == self.token

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self._heartbeat):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.still_held():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
