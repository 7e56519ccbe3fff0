"""Who this worker is, how it gets back on its feet after a database error, and its timers'
loop."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from django.db import close_old_connections, connection


def worker_id() -> str:
    """The name a claim stores on its steps: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def reconnect() -> None:
    """After a database error: drop the connection so the next query opens a fresh one.

    Never inside a transaction (an outer atomic block, as in tests), which closing would
    break; there the next statement shows whether the connection still works.
    """
    if not connection.in_atomic_block:
        connection.close()


def every(interval: float, work: Callable[[], object], logger: logging.Logger) -> None:
    """A worker process's timer loop: ``work`` every ``interval`` seconds, on this thread's
    own connection (closed past its age, or broken), never ending on an error: a database
    hiccup is tried again at the next pass (``logger`` says so)."""
    while True:
        time.sleep(interval)
        try:
            close_old_connections()
            work()
        except Exception as exc:
            logger.warning("%s failed, will retry: %s", work.__name__, exc)
