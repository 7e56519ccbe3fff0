"""End to end: a real web server and a real ``qcluster`` on a shared database.

Nothing here uses pytest-django's test database. A module fixture migrates a fresh database of
the CI pass's backend (tests/live.py: a SQLite file, or a PostgreSQL database of its own, with
the suite's Redis in the third pass), starts gunicorn and ``manage.py qcluster`` against it as
subprocesses, and the tests talk to them over HTTP as a client of the seed API would. The
database is only read (never written) from the test process, to check what the worker left
behind.

The cluster runs ONE worker process, so "the worker ran the next flow" can only mean the
worker that held a deleted execution let go of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import cond, failing, flow_doc, sample_flow, task
from tests.live import (
    Backend,
    live_backend,
    log_tails,
    manage,
    poll,
    running_stack,
    start,
    stop,
    timestamp,
)

pytestmark = pytest.mark.worker

# Deadlines for "it never happened"; nothing asserts how fast anything was.
DEADLINE_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# A retry's delay, and how soon after it the retry must have started: the reaper, which would
# otherwise be what starts it on a broker that cannot deliver late, runs about once a minute.
RETRY_DELAY_SECONDS = 2
RETRY_ON_TIME_SECONDS = 10
# Far longer than DEADLINE_SECONDS: a worker that kept holding a deleted execution's step
# could not run anything else before a poll gives up.
HOLD_SECONDS = 300

SETUP_USER = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user('e2e', password='e2e-pass-123')
user.groups.add(Group.objects.get(name='editor'))
print(Token.objects.create(user=user).key)
"""


@dataclass
class Stack:
    """The running web server and cluster, their database, and where to find their traces."""

    url: str
    client: httpx.Client
    backend: Backend
    cluster: subprocess.Popen
    logs: dict[str, Path]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("worker_e2e")
    with live_backend(home, "e2e") as backend:
        env = backend.process_env(
            SECRET_KEY="insecure-key-for-the-worker-e2e-tests-only",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1",
            FLOW_DEMO_DELAY_SECONDS="0",
            Q_WORKERS="1",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
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
                yield Stack(url, client, backend, cluster, {"qcluster": cluster_log, **logs})
        finally:
            stop(cluster, grace=STOP_GRACE_SECONDS)


# -------------------------------------------------------------------------------------------
# Helpers that act like an API client
# -------------------------------------------------------------------------------------------
def _poll(stack: Stack, what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    return poll(what, read, done, logs=stack.logs, seconds=DEADLINE_SECONDS)


def _create_and_execute(stack: Stack, document: dict[str, Any]) -> str:
    created = stack.client.post("/flow/create", json=document)
    assert created.status_code == 200, created.text
    execution_id = created.json()["execution_id"]
    started = stack.client.post("/flow/execute", json={"execution_id": execution_id})
    assert started.status_code == 200, started.text
    return execution_id


def _status(stack: Stack, execution_id: str) -> dict[str, Any]:
    response = stack.client.get(f"/flow/{execution_id}/status")
    assert response.status_code == 200, response.text
    return response.json()


def _wait_until_ended(stack: Stack, execution_id: str) -> dict[str, Any]:
    return _poll(
        stack,
        f"execution {execution_id} ending",
        lambda: _status(stack, execution_id),
        lambda doc: doc["status"] in TERMINAL,
    )


def _steps(stack: Stack, execution_id: str) -> list[tuple[str, str, str]]:
    return stack.backend.query(
        "SELECT task_name, status, worker FROM flows_taskrun WHERE execution_id = %s ORDER BY seq",
        stack.backend.key(execution_id),
    )


# -------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------
def test_the_seed_sample_flow_runs_to_completed_on_a_real_worker(stack: Stack) -> None:
    execution_id = _create_and_execute(stack, sample_flow())

    doc = _wait_until_ended(stack, execution_id)

    assert doc["status"] == "COMPLETED", doc
    assert doc["executed_tasks"] == ["task1", "task2", "task3"]
    assert {name: r["status"] for name, r in doc["task_results"].items()} == {
        "task1": "SUCCESS",
        "task2": "SUCCESS",
        "task3": "SUCCESS",
    }
    assert doc["started_at"] and doc["ended_at"]
    assert doc["error"] is None


def test_a_failure_routed_to_a_recovery_task_ends_completed(stack: Stack) -> None:
    document = flow_doc(
        [failing("fetch"), task("store", "store_data"), task("recover", "print", message="fixed")],
        [
            cond("fetch", "success", "store", "recover"),
            cond("store", "success", "end", "end"),
        ],
        flow_id="e2e_recovery",
    )
    execution_id = _create_and_execute(stack, document)

    doc = _wait_until_ended(stack, execution_id)

    assert doc["status"] == "COMPLETED", doc
    assert doc["executed_tasks"] == ["fetch", "recover"]
    assert doc["task_results"]["fetch"]["status"] == "FAILURE"
    assert "Simulated failure" in doc["task_results"]["fetch"]["error"]
    assert doc["task_results"]["recover"]["status"] == "SUCCESS"
    assert doc["task_results"]["recover"]["data"] == {"message": "fixed"}
    assert "store" not in doc["task_results"]


def test_a_retry_starts_when_its_delay_ends_on_every_broker(stack: Stack) -> None:
    fetch = failing("fetch")
    fetch["retry"] = {"max_attempts": 2, "delay_seconds": RETRY_DELAY_SECONDS}
    execution_id = _create_and_execute(stack, flow_doc([fetch], flow_id="e2e_retry_on_time"))

    doc = _wait_until_ended(stack, execution_id)

    assert doc["status"] == "FAILED", doc
    rows = stack.backend.query(
        "SELECT attempt, status, started_at, ended_at FROM flows_taskrun "
        "WHERE execution_id = %s ORDER BY seq",
        stack.backend.key(execution_id),
    )
    (a1, s1, _, ended), (a2, s2, restarted, _) = [
        (attempt, status, *(timestamp(t) for t in times)) for attempt, status, *times in rows
    ]
    assert (a1, s1, a2, s2) == (1, "FAILURE", 2, "FAILURE")
    waited = (restarted - ended).total_seconds()
    # Not before its delay, and not at the reaper's next run either (with Redis, a worker
    # process's due-step timer wakes it).
    assert RETRY_DELAY_SECONDS <= waited < RETRY_DELAY_SECONDS + RETRY_ON_TIME_SECONDS, waited


def test_deleting_a_running_execution_frees_its_worker_for_the_next_flow(stack: Stack) -> None:
    document = flow_doc(
        [task("hold", "wait", seconds=HOLD_SECONDS), task("after")], flow_id="e2e_delete_running"
    )
    execution_id = _create_and_execute(stack, document)
    _poll(
        stack,
        "the worker picking up the wait task",
        lambda: _status(stack, execution_id),
        lambda doc: doc["status"] == "RUNNING" and doc["current_task"] == "hold",
    )
    [(_, step_status, holder)] = _steps(stack, execution_id)
    assert step_status == "RUNNING"

    deleted = stack.client.delete(f"/flow/{execution_id}")

    assert deleted.status_code == 200, deleted.text
    assert execution_id in deleted.json()["message"]
    gone = stack.client.get(f"/flow/{execution_id}/status")
    assert gone.status_code == 404, gone.text

    # One worker process: the next flow runs only once that worker has let go of the deleted
    # execution, long before its wait would have ended on its own.
    next_id = _create_and_execute(stack, flow_doc([task("only")], flow_id="e2e_after_delete"))
    doc = _wait_until_ended(stack, next_id)
    assert doc["status"] == "COMPLETED", doc
    assert [worker for _, _, worker in _steps(stack, next_id)] == [holder]

    assert stack.cluster.poll() is None, log_tails(stack.logs)
    os.kill(int(holder.rsplit(":", 1)[1]), 0)  # the same worker process is still alive
    key = stack.backend.key(execution_id)
    for table in ("flows_execution", "flows_taskrun", "flows_executionevent"):
        column = "id" if table == "flows_execution" else "execution_id"
        rows = stack.backend.query(f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", key)
        assert rows == [(0,)], f"{table} has rows of the deleted execution again"
    assert stack.client.get(f"/flow/{execution_id}/status").status_code == 404


def test_health_reports_the_running_cluster(stack: Stack) -> None:
    def health() -> dict[str, Any]:
        response = stack.client.get("/health")
        assert response.status_code == 200, response.text
        return response.json()

    doc = _poll(stack, "/health reporting a worker cluster", health, lambda d: d["workers"] >= 1)

    assert doc["status"] == "healthy"
    assert doc["database"] == "ok"
