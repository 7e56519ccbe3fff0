"""Process and backend helpers shared by the bench scripts (not a benchmark itself).

The process helpers (``free_port``, ``manage``, ``start``, ``stop``, ``descendants``) are the
live tests' (tests/live.py), re-exported here: processes get a session of their own and are
stopped with SIGTERM to their main pid only, then SIGKILL for what is left (DJANGO-Q2.md,
"Shutdown": signalling qcluster's whole group hangs its main process). Backends: a SQLite
file, or a fresh PostgreSQL database plus a Redis db number of its own, both removed
afterwards.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = BASE_DIR / "bench" / "results"

PG_SERVER = "postgres://postgres@127.0.0.1:5432"
REDIS_SERVER = "redis://127.0.0.1:6379"

# `python bench/<script>.py` puts bench/ on sys.path, not the project root that holds tests/.
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from tests.live import descendants, free_port, gunicorn_args, manage, start, stop  # noqa: E402

__all__ = [
    "BASE_DIR",
    "PG_SERVER",
    "REDIS_SERVER",
    "RESULTS_DIR",
    "Backend",
    "descendants",
    "ensure_services",
    "flush_redis_db",
    "free_port",
    "free_redis_db",
    "gunicorn_args",
    "machine",
    "manage",
    "pg_redis_backend",
    "sqlite_backend",
    "start",
    "stop",
    "utc_stamp",
    "wait_for_cluster",
]


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def wait_for_cluster(proc: subprocess.Popen, log: Path, deadline_s: float = 60.0) -> None:
    """Until the cluster publishes its status in the shared cache (what /health reads).

    Needs Django set up in this process, on the same settings as the cluster."""
    from django_q.status import Stat

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"qcluster exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if any(stat.status in ("Idle", "Working") for stat in Stat.get_all()):
            return
        time.sleep(0.1)
    sys.exit(f"qcluster did not come up within {deadline_s:g}s:\n{log.read_text()[-4000:]}")


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "django": version("Django"),
        "django_q2": version("django-q2"),
        "sqlite": sqlite3.sqlite_version,
    }


# -------------------------------------------------------------------------------------------
# Backends
# -------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """Where one stack keeps its state; ``env`` goes on top of ``os.environ`` for every
    process of the stack (REDIS_URL absent means the ORM broker)."""

    name: str  # "sqlite" or "pg-redis"
    label: str
    env: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)


def stack_env(backend: Backend, label: str, **extra: str) -> dict[str, str]:
    """The environment of a stack's processes: ``os.environ`` with the backend's database
    (and Redis, or none), a throwaway SECRET_KEY, DEBUG off, real workers (no Q_SYNC), a
    cluster name of this run's own, and ``extra`` on top."""
    env = {
        **os.environ,
        **backend.env,
        # Signs nothing that outlives the run.
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "flowmanager.settings",
        "Q_CLUSTER_NAME": f"bench-{label}-{os.getpid()}",
        **extra,
    }
    env.pop("Q_SYNC", None)
    if "REDIS_URL" not in backend.env:
        env.pop("REDIS_URL", None)
    return env


def _postgres_up() -> bool:
    import psycopg

    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _redis_up() -> bool:
    import redis

    client = redis.Redis.from_url(REDIS_SERVER, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
    finally:
        client.close()


def _wait(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not come up within {seconds:g}s")
        time.sleep(0.5)


def ensure_services() -> list[str]:
    """Start the local PostgreSQL cluster and redis-server if they are down; what was started."""
    started = []
    if not _postgres_up():
        clusters = sorted(os.listdir("/etc/postgresql"))
        if not clusters:
            sys.exit("PostgreSQL is down and /etc/postgresql holds no cluster to start")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "start"],
            check=True,
        )
        _wait(_postgres_up, "PostgreSQL")
        started.append(f"postgresql {clusters[-1]}/main")
    if not _redis_up():
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
             "--save", "", "--appendonly", "no"],
            check=True,
        )  # fmt: skip
        _wait(_redis_up, "redis-server")
        started.append("redis-server 127.0.0.1:6379")
    return started


def free_redis_db() -> int:
    """The highest Redis db number holding no keys (db 0 is everybody's default)."""
    import redis

    client = redis.Redis.from_url(REDIS_SERVER)
    try:
        count = int(client.config_get("databases").get("databases", 16))
        used = set(client.info("keyspace"))  # {"db0": {...}, ...}
    finally:
        client.close()
    for number in range(count - 1, 0, -1):
        if f"db{number}" not in used:
            return number
    sys.exit("every Redis db number holds keys; pass --redis-db N to pick one to flush")


def flush_redis_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def sqlite_backend(home: Path) -> Iterator[Backend]:
    """A SQLite file under ``home`` and the ORM broker (the caller removes ``home``)."""
    path = home / "db.sqlite3"
    yield Backend(
        "sqlite",
        "SQLite file (WAL) + ORM broker",
        {"DATABASE_URL": f"sqlite:///{path}"},
        {"database": "sqlite file", "broker": "orm", "sqlite": sqlite3.sqlite_version},
    )


@contextlib.contextmanager
def pg_redis_backend(redis_db: int | None = None) -> Iterator[Backend]:
    """A fresh PostgreSQL database (dropped WITH (FORCE) afterwards) and a Redis db number of
    its own (flushed before and after)."""
    import psycopg

    ensure_services()
    name = f"flowbench_{uuid.uuid4().hex[:10]}"
    number = free_redis_db() if redis_db is None else redis_db
    redis_url = f"{REDIS_SERVER}/{number}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        server_version = admin.execute("SHOW server_version").fetchone()[0]
    flush_redis_db(redis_url)
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        redis_version = client.info("server")["redis_version"]
        client.close()
        yield Backend(
            "pg-redis",
            "PostgreSQL + Redis broker",
            {"DATABASE_URL": f"{PG_SERVER}/{name}", "REDIS_URL": redis_url},
            {
                "database": f"postgresql {server_version}, database {name}",
                "broker": f"redis {redis_version}, db {number}",
            },
        )
    finally:
        with contextlib.suppress(Exception):
            flush_redis_db(redis_url)
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
