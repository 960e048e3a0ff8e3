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
from collections.abc import Iterator
from urllib.parse import urlparse


def hub_offline() -> bool:
    """True when the hub must not be tried: HF_HUB_OFFLINE is set, or the hub does not answer a quick probe."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    return not _hub_reachable(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
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
def offline_mode(on: bool) -> Iterator[None]:
    """Flip huggingface_hub's offline constant (read once at its import) for the duration of a load.

    Cached weights still load; missing ones fail at once. Libraries that log a multi-line ERROR before raising
    (open_clip) are muted meanwhile: the caller's one-line error says the same.
    """
    from huggingface_hub import constants

    def drop_library_errors(record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or on
    logging.getLogger().addFilter(drop_library_errors)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        logging.getLogger().removeFilter(drop_library_errors)
