"""A live stack driven through the seed-compatible endpoints, as the seed's own clients do.

``seed_stack`` migrates a fresh database of the CI pass's backend (``live_backend``), starts
``manage.py qcluster`` and gunicorn against it as subprocesses, and yields a ``SeedStack``
whose methods are what a client of ``/flow/...`` does: create and execute a flow, read its
status, wait for it to end. Shared by ``test_worker_e2e.py`` and ``test_seed_flows.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.live import Backend, live_backend, manage, poll, running_stack, start, stop

# Deadlines for "it never happened"; nothing asserts how fast anything was.
DEADLINE_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}

SETUP_USER = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user('e2e', password='e2e-pass-123')
user.groups.add(Group.objects.get(name='editor'))
print(Token.objects.create(user=user).key)
"""


@dataclass
class SeedStack:
    """The running web server and cluster, their database, and where to find their traces."""

    url: str
    client: httpx.Client
    backend: Backend
    cluster: subprocess.Popen
    logs: dict[str, Path]
    env: dict[str, str]  # what the processes run with, for ``manage`` in a test

    def poll(self, what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
        return poll(what, read, done, logs=self.logs, seconds=DEADLINE_SECONDS)

    def create(self, document: dict[str, Any]) -> str:
        """``POST /flow/create``; the new execution's id."""
        created = self.client.post("/flow/create", json=document)
        assert created.status_code == 200, created.text
        return created.json()["execution_id"]

    def execute(self, execution_id: str) -> None:
        started = self.client.post("/flow/execute", json={"execution_id": execution_id})
        assert started.status_code == 200, started.text

    def create_and_execute(self, document: dict[str, Any]) -> str:
        execution_id = self.create(document)
        self.execute(execution_id)
        return execution_id

    def status(self, execution_id: str) -> dict[str, Any]:
        response = self.client.get(f"/flow/{execution_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_until_ended(self, execution_id: str) -> dict[str, Any]:
        return self.poll(
            f"execution {execution_id} ending",
            lambda: self.status(execution_id),
            lambda doc: doc["status"] in TERMINAL,
        )

    def steps(self, execution_id: str) -> list[tuple[str, str, str]]:
        """(task name, status, worker) of every step in order, read from the database."""
        return self.backend.query(
            "SELECT task_name, status, worker FROM flows_taskrun "
            "WHERE execution_id = %s ORDER BY seq",
            self.backend.key(execution_id),
        )


@contextlib.contextmanager
def seed_stack(
    home: Path, label: str, extra_env: dict[str, str] | None = None
) -> Iterator[SeedStack]:
    """One worker process (so "the worker ran the next flow" names one process) and a web
    server of one thread, on a database of their own; stopped and dropped afterwards.
    ``extra_env``: settings of the test's own, for every process."""
    with live_backend(home, label) as backend:
        env = backend.process_env(
            SECRET_KEY=f"insecure-key-for-the-{label}-tests-only",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1",
            FLOW_DEMO_DELAY_SECONDS="0",
            Q_WORKERS="1",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            **(extra_env or {}),
        )
        token = manage(env, "shell", "--verbosity", "0", "-c", SETUP_USER).split()[-1]
        cluster_log = home / "qcluster.log"
        cluster = start([sys.executable, "manage.py", "qcluster"], env, cluster_log)
        try:
            with (
                running_stack(home, env, cluster=False, threads=1) as (url, logs),
                httpx.Client(
                    base_url=url, headers={"Authorization": f"Token {token}"}, timeout=10
                ) as client,
            ):
                yield SeedStack(
                    url, client, backend, cluster, {"qcluster": cluster_log, **logs}, env
                )
        finally:
            stop(cluster, grace=STOP_GRACE_SECONDS)
