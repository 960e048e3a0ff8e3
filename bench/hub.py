"""Talking to the model hub without hanging: decide once whether it is reachable, else stay offline.

huggingface_hub retries a dead network for about 25 s per file; one short TCP probe says the same at once, so a
missing model fails in a second with a useful message instead of after minutes of retries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from urllib.parse import urlparse

QUIET_LOGGERS = ("huggingface_hub", "timm", "open_clip")
"""Libraries whose log records below ERROR are muted while a component loads (huggingface_hub's "Could not reach
the Hub ... Using cached commit hash", timm's download notes); diffusers and transformers are muted for good by
`bench.models.loading.quiet_libraries`."""


def hub_offline() -> bool:
    """True when the hub must not be tried: HF_HUB_OFFLINE is set, or the hub does not answer a quick probe."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return not _hub_reachable(constants.ENDPOINT)


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the real request decide
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Mute the libraries' advisory output while weights load; the harness reports a failure in its own line.

    Inside: every Python warning is ignored (huggingface_hub's `local_dir_use_symlinks` deprecation, which
    diffusers triggers on each download attempt, and the like), the `QUIET_LOGGERS` drop records below ERROR,
    and open_clip's multi-line ERROR on the root logger is dropped. Everything is restored on exit.
    """
    def drop_library_errors(record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.ERROR:
                logger.setLevel(logging.ERROR)
        root.addFilter(drop_library_errors)
        try:
            yield
        finally:
            root.removeFilter(drop_library_errors)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@contextlib.contextmanager
def offline_mode(on: bool) -> Iterator[None]:
    """Flip huggingface_hub's offline constant (read once at its import) for the duration of a load.

    Cached weights still load; missing ones fail at once. The libraries' warnings and log lines are muted
    meanwhile (`quiet_loading`): the caller's one-line error says what they would.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or on
    try:
        with quiet_loading():
            yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def quiet_libraries() -> None:
    """The harness draws its own progress; silence the libraries' bars and advisory warnings."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
