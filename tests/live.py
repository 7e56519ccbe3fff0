"""Run the real thing for end-to-end tests: a migrated database, gunicorn and a qcluster.

Shared by the worker tests (``test_worker_e2e.py``), the browser test (``test_web_e2e.py``)
and the fault tests (``test_worker_faults.py``); the bench scripts take the process helpers
(``free_port``, ``manage``, ``start``, ``stop``, ``descendants``) from here through
``bench/_stack.py``. ``live_backend`` gives a stack the CI pass's
backend: a fresh PostgreSQL database when the suite's ``DATABASE_URL`` is PostgreSQL (else a
SQLite file), and the suite's Redis with a queue name of its own when ``REDIS_URL`` is set.
Processes get a session of their own and are stopped with SIGTERM to their main pid only
(DJANGO-Q2.md, "Shutdown"), then SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``manage.py ARGS`` in the project; its stdout, or AssertionError with its stderr."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:  # not an assert: the bench scripts may run under python -O
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def descendants(pid: int) -> list[int]:
    """Child pids, recursively, from /proc (empty where /proc has no children files)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def stop(proc: subprocess.Popen, *, grace: float = 30.0) -> None:
    """SIGTERM the main pid only (never its group: DJANGO-Q2.md, "Shutdown"); SIGKILL it after
    ``grace`` s, and the children it left."""
    if proc.poll() is not None:
        return
    leftovers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    # A SIGKILLed main process leaves its worker processes behind; end exactly those.
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``args`` in the project with output to ``log``, in a session of its own."""
    with log.open("wb") as out:
        # A session of its own keeps a Ctrl-C at the terminal (a signal to the whole
        # foreground group) away from qcluster, which hangs on group signals; the
        # finalizer stops it properly instead.
        return subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def gunicorn_args(port: int, *, workers: int = 1, threads: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "flowmanager.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--no-control-socket",
    ]


def poll(
    what: str,
    read: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    logs: dict[str, Path],
    seconds: float,
) -> Any:
    """``read()`` every 0.1 s until ``done`` says yes, and return that value; after ``seconds``
    fail the test with the last value seen and the tails of the stack's logs."""
    import pytest  # here, not at the top: bench/_stack.py imports this module without pytest

    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = read()
        if done(last):
            return last
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen; last seen: {last}\n{log_tails(logs)}")


def log_tails(logs: dict[str, Path], lines: int = 40) -> str:
    parts = []
    for name, path in logs.items():
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        parts.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


@contextlib.contextmanager
def running_stack(
    home: Path,
    env: dict[str, str],
    *,
    deadline: float = 30.0,
    cluster: bool = True,
    workers: int = 1,
    threads: int = 4,
) -> Iterator[tuple[str, dict[str, Path]]]:
    """Start ``qcluster`` (unless not ``cluster``) and gunicorn (``workers`` processes of
    ``threads`` threads) with ``env``; yield (base URL, log paths) once /health answers."""
    port = free_port()
    logs = {"qcluster": home / "qcluster.log"} if cluster else {}
    logs["gunicorn"] = home / "gunicorn.log"
    procs: list[tuple[subprocess.Popen, float]] = []
    try:
        if cluster:
            qcluster = start([sys.executable, "manage.py", "qcluster"], env, logs["qcluster"])
            procs.append((qcluster, 15))
        web = gunicorn_args(port, workers=workers, threads=threads)
        procs.append((start(web, env, logs["gunicorn"]), 10))
        url = f"http://127.0.0.1:{port}"
        until = time.monotonic() + deadline
        while True:
            for proc, _ in procs:
                assert proc.poll() is None, f"{proc.args} exited\n{log_tails(logs)}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < until, f"web server never answered\n{log_tails(logs)}"
            time.sleep(0.1)
        yield url, logs
    finally:
        for proc, grace in reversed(procs):
            stop(proc, grace=grace)


def timestamp(value: Any) -> datetime | None:
    """A timestamp read with ``Backend.query``, as either database returns it: PostgreSQL an
    aware datetime, SQLite ISO text in UTC (made aware here, so the two compare)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The CI pass's backend, for a live stack of its own
# ---------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """Where one live stack keeps its state: a database of its own and, in the Redis pass, a
    queue name of its own on the suite's Redis.

    ``env`` holds the variables to lay over ``os.environ`` for every process of the stack.
    ``query`` reads the database from the test process with ``%s`` placeholders whatever the
    engine; ``key`` turns an execution id into the form its engine stores.
    """

    kind: str  # "sqlite" or "postgresql"
    database_url: str
    redis_url: str
    cluster_name: str
    sqlite_path: Path | None = None

    @property
    def postgresql(self) -> bool:
        return self.kind == "postgresql"

    @property
    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "Q_CLUSTER_NAME": self.cluster_name}

    def process_env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` with this stack's backend, real workers and ``extra`` on top."""
        env = {**os.environ, **self.env, **extra}
        env.pop("Q_SYNC", None)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        else:
            env.pop("REDIS_URL", None)
        return env

    def key(self, execution_id: str) -> str:
        return str(uuid.UUID(execution_id)) if self.postgresql else uuid.UUID(execution_id).hex

    def query(self, sql: str, *params: Any) -> list[tuple]:
        if self.postgresql:
            import psycopg

            with psycopg.connect(self.database_url, connect_timeout=10) as con:
                return con.execute(sql, params).fetchall()
        con = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=20)
        try:
            return con.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            con.close()

    def execute(self, sql: str, *params: Any) -> int:
        """Write to the database from the test process (a fault a test injects): the rows
        the statement changed."""
        if self.postgresql:
            import psycopg

            with psycopg.connect(self.database_url, connect_timeout=10) as con:
                return con.execute(sql, params).rowcount
        con = sqlite3.connect(self.sqlite_path, timeout=20, isolation_level=None)
        try:
            return con.execute(sql.replace("%s", "?"), params).rowcount
        finally:
            con.close()

    # -- Redis: only this stack's keys --------------------------------------------------------
    def flush_redis(self) -> int:
        """Delete every key of this stack at once (what FLUSHDB would take from it).

        Returns how many queued messages went with them.
        """
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"django_q:{self.cluster_name}:*"))
            if not keys:
                return 0
            with client.pipeline(transaction=True) as pipe:
                pipe.llen(f"django_q:{self.cluster_name}:q")
                pipe.delete(*keys)
                queued, _ = pipe.execute()
            return int(queued)
        finally:
            client.close()


def _suite_database_url() -> str:
    return os.environ.get("DATABASE_URL", "").strip()


def suite_uses_postgresql() -> bool:
    """True in the CI passes that run with a PostgreSQL ``DATABASE_URL``."""
    url = _suite_database_url()
    return bool(url) and urlsplit(url).scheme in {"postgres", "postgresql", "pgsql", "postgis"}


def suite_uses_redis() -> bool:
    """True in the CI pass that runs with ``REDIS_URL`` (the Redis broker and cache)."""
    return bool(os.environ.get("REDIS_URL", "").strip())


@contextlib.contextmanager
def live_backend(home: Path, label: str) -> Iterator[Backend]:
    """A fresh, migrated database on the suite's backend, and a queue name of its own.

    PostgreSQL in the suite's ``DATABASE_URL``: a database ``flowmanager_live_<random>`` on
    that server, dropped ``WITH (FORCE)`` afterwards. Otherwise a SQLite file under ``home``.
    ``REDIS_URL`` set: passed through, with a cluster name of our own (django-q2's Redis keys
    all carry it), whose keys are deleted afterwards. Stop the stack's processes first.
    """
    suffix = uuid.uuid4().hex[:10]
    redis_url = os.environ.get("REDIS_URL", "").strip()
    cluster_name = f"live-{label}-{suffix}"
    if suite_uses_postgresql():
        import psycopg

        server = _suite_database_url()
        name = f"flowmanager_live_{suffix}"
        with psycopg.connect(server, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(server)
        backend = Backend("postgresql", urlunsplit(parts._replace(path=f"/{name}")), redis_url,
                          cluster_name)  # fmt: skip
    else:
        name = ""
        path = home / "db.sqlite3"
        backend = Backend("sqlite", f"sqlite:///{path}", redis_url, cluster_name, path)
    try:
        manage(backend.process_env(SECRET_KEY="insecure-live-key"), "migrate", "--noinput",
               "--verbosity", "0")  # fmt: skip
        yield backend
    finally:
        if redis_url:
            with contextlib.suppress(Exception):
                backend.flush_redis()
        if name:
            import psycopg

            with psycopg.connect(server, dbname="postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# A task type that records its runs, for tests that count how often a step really ran
# ---------------------------------------------------------------------------------------------
RECORD_PLUGIN = '''
import asyncio
import os
import sqlite3

from tasks.base_task import BaseTask

RUNS_DB = {runs_db!r}


class RecordTask(BaseTask):
    """Records each run (execution, task, attempt, pid), waits ``seconds``, returns ``value``."""

    description = "Inserts (execution, task, attempt, pid) into its runs table; waits seconds."
    parameters_schema = {{
        "type": "object",
        "properties": {{"seconds": {{"type": "number", "minimum": 0, "default": 0}}}},
        "additionalProperties": True,
    }}

    async def run(self):
        con = sqlite3.connect(RUNS_DB, timeout=60, isolation_level=None)
        try:
            con.execute(
                "INSERT INTO runs (execution_id, task_name, attempt, pid) VALUES (?, ?, ?, ?)",
                (self.context.execution_id, self.name, self.context.attempt, os.getpid()),
            )
        finally:
            con.close()
        await asyncio.sleep(float(self.parameters.get("seconds", 0)))
        return {{"value": self.parameters.get("value"), "pid": os.getpid()}}
'''


def record_plugin(plugins: Path, home: Path) -> Path:
    """Write ``task_record.py`` into ``plugins``: a ``record`` task type whose every run adds
    a row to a SQLite table of its own (WAL, so worker processes write side by side).
    Returns that database's path (table ``runs``)."""
    runs_db = home / "runs.sqlite3"
    con = sqlite3.connect(runs_db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, execution_id TEXT NOT NULL, "
            "task_name TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
        )
        con.commit()
    finally:
        con.close()
    (plugins / "task_record.py").write_text(RECORD_PLUGIN.format(runs_db=str(runs_db)))
    return runs_db


def recorded_runs(runs_db: Path) -> list[tuple[str, str, int, int]]:
    """(execution id as stored, task, attempt, pid) of every run ``record_plugin``'s task
    type made."""
    con = sqlite3.connect(runs_db, timeout=30)
    try:
        return con.execute("SELECT execution_id, task_name, attempt, pid FROM runs").fetchall()
    finally:
        con.close()


# Runs in `manage.py shell`: the reaper, twice a second, surviving a database restart (what a
# django-q2 schedule does once a minute, faster for tests).
REAPER_SCRIPT = """
import time
from django.db import close_old_connections, connections
from flows import engine
while True:
    try:
        close_old_connections()
        counts = engine.reap()
        if any(counts.values()):
            print("reaped", counts, flush=True)
    except Exception as exc:
        print("reaper error:", type(exc).__name__, exc, flush=True)
        connections.close_all()
    time.sleep(0.5)
"""
