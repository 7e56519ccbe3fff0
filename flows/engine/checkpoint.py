"""SQLite: the write-ahead log copied back into the database file by a timer, not by a step.

In WAL mode every commit appends its pages to the ``-wal`` file. Once that log holds more
than ``wal_autocheckpoint`` pages (1,000 by default), the connection whose commit crossed the
mark copies the log back into the database file and syncs both before its commit returns. A
step writes about five pages, so one step in two hundred paid milliseconds for it: about 0.04
ms a step on average, on the engine's path (bench/engine_overhead.py, the cluster's per-step
figure 15 % lower without it on this machine).

In a worker process the engine's connections leave that to ``CheckpointTimer``: a thread that
checkpoints every FLOW_CHECKPOINT_EVERY_SECONDS, PASSIVE (it never waits for a reader or the
writer, and neither waits for it; SQLite releases the GIL while it copies). A worker's own
connections still checkpoint past ``FALLBACK_PAGES`` (ten times SQLite's mark), should no timer
keep up (every worker process runs one; the first to look does the work). The web server's
and the cluster's other processes keep SQLite's default. PostgreSQL has nothing like it to
move: its checkpoints run in the server.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django_q.conf import Conf

from flows.engine.worker import every

logger = logging.getLogger("flows.engine")

# A worker's connections checkpoint themselves only past this many pages of log (40 MiB of
# 4 KiB pages): the timer normally keeps the log far below it.
FALLBACK_PAGES = 10_000


def uses_wal_file(db: BaseDatabaseWrapper) -> bool:
    """Whether ``db`` is a SQLite file (in WAL mode: settings.py), not an in-memory one."""
    if db.vendor != "sqlite":
        return False
    return not db.is_in_memory_db()


def checkpoint() -> tuple[int, int, int]:
    """Copy the log's pages back into the database file, as far as no reader still needs
    them (PASSIVE): SQLite's (busy, pages in the log, pages copied back)."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, logged, copied = cursor.fetchone()
    return busy, logged, copied


def defer_checkpoints(sender: Any, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """``connection_created`` receiver in a worker process: this connection's commits leave
    the checkpoints to the timer, up to ``FALLBACK_PAGES``."""
    if uses_wal_file(connection):
        connection.connection.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")


class CheckpointTimer:
    """A daemon thread that calls ``checkpoint`` every ``interval`` seconds in this worker
    process, on a connection of its own (Django's are per thread)."""

    started: CheckpointTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-checkpoint", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        every(self.interval, checkpoint, logger)


def start_checkpoint_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver (a worker process started), on a SQLite file: the
    connections this process opens from now on leave checkpoints to its CheckpointTimer.
    Not when jobs run inline (no worker process: SQLite's own checkpoints stay)."""
    if Conf.SYNC or CheckpointTimer.started is not None or not uses_wal_file(connection):
        return
    connection_created.connect(defer_checkpoints, dispatch_uid="flows.engine.defer_checkpoints")
    if connection.connection is not None:  # opened before the spawn signal
        defer_checkpoints(None, connection)
    CheckpointTimer.started = CheckpointTimer(settings.FLOW_CHECKPOINT_EVERY_SECONDS)
