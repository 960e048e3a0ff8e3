"""The failure barrier between a run and its trackers: every call to every tracker goes through `Fanout`.

A tracker that raises (its library not installed, no network, over quota, a bug in it) is reported once as a
`TrackerWarning` naming the tracker and the error, and dropped for the rest of the run; the other trackers and the
run go on. Each call also runs with the process's random states saved and put back (Python's, NumPy's, torch's on
the CPU and on CUDA), so a tracker's library drawing random numbers (run ids, sampling of its own) cannot change
what the run draws next.
"""

from __future__ import annotations

import importlib
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.tracking import TRACKERS, RunInfo


class TrackerWarning(UserWarning):
    """A tracker failed; the run goes on without it and its record is unaffected."""


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the body with Python's, NumPy's and torch's random states put back afterwards, whatever it draws."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class Fanout:
    """The trackers of one run; `call(name, *args)` calls method `name` on each one still alive."""

    def __init__(self, trackers: list[tuple[str, Any]]) -> None:
        self.trackers = list(trackers)
        self.failed: dict[str, str] = {}
        """Tracker name -> the one line it was dropped with."""

    @classmethod
    def open(cls, names: tuple[str, ...], run: RunInfo, registry: dict[str, tuple[str, str]] | None = None
             ) -> Fanout:
        """Build and start each named tracker for `run`; one that cannot be built or started is warned about and
        left out. `registry`: name -> ("module:Class", extra), default `TRACKERS`."""
        fanout = cls([])
        for name in names:
            target, extra = (registry or TRACKERS)[name]
            try:
                with isolated_rng():
                    module, _, attr = target.partition(":")
                    tracker = getattr(importlib.import_module(module), attr)()
                    tracker.start(run)
            except ModuleNotFoundError as err:
                fanout._drop(name, f"its client library is not installed ({err.name}; pip install "
                                   f"\"onestep-bench[{extra}]\")")
                continue
            except Exception as err:  # noqa: BLE001 - a tracker never fails a run
                fanout._drop(name, f"{type(err).__name__}: {err}")
                continue
            fanout.trackers.append((name, tracker))
        return fanout

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, tracker in list(self.trackers):
            try:
                with isolated_rng():
                    getattr(tracker, method)(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a tracker never fails a run
                self.trackers = [(n, t) for n, t in self.trackers if n != name]
                self._drop(name, f"{type(err).__name__}: {err}")
                if method != "finish":  # let it release what it holds (files, a service process)
                    try:
                        with isolated_rng():
                            tracker.finish("failed", {})
                    except Exception:  # noqa: BLE001, S110 - already reported once
                        pass

    def _drop(self, name: str, why: str) -> None:
        line = f"--report-to {name} failed and is off for this run ({str(why).strip().splitlines()[0][:300]}); " \
               f"the run goes on and its record is unaffected"
        self.failed[name] = line
        warnings.warn(line, TrackerWarning, stacklevel=3)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.trackers]
