"""SQLite: a worker process copies the write-ahead log back into the database file with a timer
of its own (flows/engine/checkpoint.py), so that no step's commit pays for it.

The unit tests use a SQLite file of their own (the suite's database is in memory, or
PostgreSQL); the live test runs a real cluster on a SQLite file and reads, from the file that
SQLite shares between its processes (``-shm``), how much of the log is still to copy back.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.utils import ConnectionHandler
from django_q.conf import Conf
from django_q.signals import post_spawn

from flows import engine, jobs
from flows.engine import checkpoint
from tests.factories import flow_doc, task
from tests.live import live_backend, manage, poll, start, stop, suite_uses_postgresql

SQLITE_DEFAULT_PAGES = 1000  # SQLite's own wal_autocheckpoint


def sqlite_file(path: Path) -> BaseDatabaseWrapper:
    """A connection to a SQLite file in WAL mode, as settings.py configures one."""
    # A handler of its own (its alias must be "default"): the suite's connections stay as they are.
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(path),
                "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;"},
            }
        }
    )
    return handler["default"]


def autocheckpoint(db: BaseDatabaseWrapper) -> int:
    with db.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        return cursor.fetchone()[0]


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """``post_spawn`` as a worker process sends it, the timer's start recorded (no thread)
    and the other timers a worker starts left out; the intervals the timer was started with."""
    started: list[float] = []
    monkeypatch.setattr(checkpoint.CheckpointTimer, "__init__", lambda self, i: started.append(i))
    monkeypatch.setattr(checkpoint.CheckpointTimer, "started", None)
    for timer in (engine.ReaperTimer, engine.DueStepTimer, jobs.EndsTimer, jobs.NotifyTimer):
        monkeypatch.setattr(timer, "started", object())
    monkeypatch.setattr(Conf, "SYNC", False)
    try:
        yield started
    finally:
        connection_created.disconnect(dispatch_uid="flows.engine.defer_checkpoints")


@pytest.mark.django_db  # lifts pytest-django's block on connections
def test_a_worker_process_on_a_sqlite_file_leaves_checkpoints_to_its_timer(
    spawned: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite_file(tmp_path / "db.sqlite3")
    before = sqlite_file(tmp_path / "db.sqlite3")
    assert autocheckpoint(before) == SQLITE_DEFAULT_PAGES  # opened before the worker started
    monkeypatch.setattr(checkpoint, "connection", db)
    try:
        post_spawn.send(sender="django_q", proc_name="Worker-1")
        post_spawn.send(sender="django_q", proc_name="Worker-1")  # once per process

        assert spawned == [settings.FLOW_CHECKPOINT_EVERY_SECONDS]
        # Every connection the process opens from now on, the engine's included.
        assert autocheckpoint(db) == checkpoint.FALLBACK_PAGES
        assert autocheckpoint(before) == SQLITE_DEFAULT_PAGES
        before.close()
        assert autocheckpoint(before) == checkpoint.FALLBACK_PAGES
    finally:
        db.close()
        before.close()


@pytest.mark.django_db  # lifts pytest-django's block on connections
def test_checkpoints_stay_sqlites_where_there_is_no_log_file_or_no_worker_process(
    spawned: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The suite's own database: in memory (no log file) or PostgreSQL.
    post_spawn.send(sender="django_q", proc_name="Worker-1")
    assert spawned == []
    assert not checkpoint.uses_wal_file(connection)

    db = sqlite_file(tmp_path / "db.sqlite3")
    monkeypatch.setattr(checkpoint, "connection", db)
    monkeypatch.setattr(Conf, "SYNC", True)  # jobs run inline: no worker process
    try:
        post_spawn.send(sender="django_q", proc_name="Worker-1")
        assert spawned == []
        assert autocheckpoint(db) == SQLITE_DEFAULT_PAGES
    finally:
        db.close()


@pytest.mark.django_db  # lifts pytest-django's block on connections
def test_checkpoint_copies_the_log_back_into_the_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite_file(tmp_path / "db.sqlite3")
    monkeypatch.setattr(checkpoint, "connection", db)
    try:
        with db.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint=0")  # nobody else copies it back
            cursor.execute("CREATE TABLE t (x TEXT)")
            for _ in range(20):
                cursor.execute("INSERT INTO t VALUES (?)", ["x" * 3000])
        busy, logged, copied = checkpoint.checkpoint()
        assert (busy, copied) == (0, logged)
        assert logged >= 20
        assert unbackfilled(tmp_path / "db.sqlite3") == 0
    finally:
        db.close()


# -------------------------------------------------------------------------------------------
# Live: a real cluster on a SQLite file
# -------------------------------------------------------------------------------------------
def unbackfilled(database: Path) -> int:
    """Pages of the log not yet copied back into the database file, from the header SQLite
    keeps in ``<database>-shm`` for all its connections (its "WAL-index" format, native byte
    order): mxFrame at byte 16 of the index header, nBackfill at byte 96."""
    header = Path(f"{database}-shm").read_bytes()[:100]
    order = "<" if sys.byteorder == "little" else ">"
    (frames,) = struct.unpack_from(f"{order}I", header, 16)
    (backfilled,) = struct.unpack_from(f"{order}I", header, 96)
    return frames - backfilled


SUBMIT = """
import json, os
from flows import services
version = services.flow_create(document=json.loads(os.environ["FLOW_DOC"]))
execution, _ = services.execution_submit(flow_version=version)
print(execution.id)
"""


@pytest.mark.worker
@pytest.mark.skipif(suite_uses_postgresql(), reason="the write-ahead log is SQLite's")
def test_a_cluster_on_sqlite_copies_the_log_back_without_a_step_crossing_sqlites_mark(
    tmp_path: Path,
) -> None:
    steps = 60  # about five pages of log a step: far from SQLite's 1,000-page mark
    document = flow_doc([task(f"s{i}") for i in range(steps)], flow_id="wal")
    with live_backend(tmp_path, "wal") as backend:
        assert backend.sqlite_path is not None
        env = backend.process_env(SECRET_KEY="insecure-live-key", Q_WORKERS="1")
        log = tmp_path / "qcluster.log"
        cluster = start([sys.executable, "manage.py", "qcluster"], env, log)
        try:
            out = manage({**env, "FLOW_DOC": json.dumps(document)}, "shell", "-c", SUBMIT)
            execution_id = out.split()[-1]
            key, logs = backend.key(execution_id), {"qcluster": log}
            poll(
                "the execution's end",
                lambda: backend.query("SELECT status FROM flows_execution WHERE id = %s", key),
                lambda rows: rows[0][0] == "COMPLETED",
                logs=logs,
                seconds=60,
            )
            [(ran,)] = backend.query(
                "SELECT count(*) FROM flows_taskrun WHERE execution_id = %s", key
            )
            assert ran == steps
            # The log of those steps is copied back while the cluster runs, by its timer.
            poll(
                "the log's copy back into the database file",
                lambda: unbackfilled(backend.sqlite_path),
                lambda pages: pages == 0,
                logs=logs,
                seconds=10,
            )
        finally:
            stop(cluster, grace=15)
