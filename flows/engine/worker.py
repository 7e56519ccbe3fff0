"""Who this worker is, and how it gets back on its feet after a database error."""

from __future__ import annotations

import os
import socket

from django.db import connection


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
