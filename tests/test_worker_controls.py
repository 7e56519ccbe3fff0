"""Engine controls on a real ``manage.py qcluster``: cancel, retry delays, pause/resume across a
restart, and redrive.

A module fixture migrates a fresh database of the CI pass's backend (tests/live.py's
``live_backend``: a SQLite file with the ORM broker, a PostgreSQL database of its own, or that
plus the suite's Redis broker with a queue name of its own) and starts one cluster with ONE
worker process against it, with ``FLOW_TASKS_DIR`` pointing at a folder holding the built-in
``noop`` and ``wait`` types plus two plugins written here. Flows are started and controlled
through ``flows.services`` in ``manage.py shell`` processes, as an operator's script would
(there is no HTTP endpoint for every control); what the worker did is read from the database,
read-only, from the test process. Deadlines only bound "it never happened"; nothing asserts how
fast anything was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.factories import NEEDS_MARKER_PLUGIN, flow_doc, task, write_plugins
from tests.live import (
    BASE_DIR,
    Backend,
    live_backend,
    log_tails,
    manage,
    poll,
    start,
    stop,
    timestamp,
)

pytestmark = pytest.mark.worker

DEADLINE_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# Far longer than DEADLINE_SECONDS: a task that was not really stopped cannot finish on its
# own before a poll gives up.
HOLD_SECONDS = 60

PLUGINS = {
    "needs_marker": NEEDS_MARKER_PLUGIN,
    "flaky": """
        class FlakyTask(BaseTask):
            \"\"\"Fails on its first attempt, succeeds after.\"\"\"

            async def run(self):
                if self.context.attempt == 1:
                    raise RuntimeError("first attempt failed")
                return {"attempt": self.context.attempt}
    """,
}

# Runs in `manage.py shell`: call a service with JSON arguments, print the execution ids.
SERVICE_SCRIPT = """
import json, os
from flows import services
args = json.loads(os.environ["CONTROL_ARGS"])
if args["action"] == "submit":
    for document in args["documents"]:
        version = services.flow_create(document=document)
        execution, _ = services.execution_submit(flow_version=version)
        print(execution.id)
else:
    control = getattr(services, "execution_" + args["action"])
    print(control(execution_id=args["execution_id"]).id)
"""


@dataclass
class Live:
    """A migrated database (and, with Redis, a queue), the cluster working on it, and how to
    reach both."""

    home: Path
    env: dict[str, str]
    backend: Backend
    logs: dict[str, Path] = field(default_factory=dict)
    cluster: subprocess.Popen | None = None

    # -- the cluster ---------------------------------------------------------------------
    def start_cluster(self) -> subprocess.Popen:
        log = self.home / f"qcluster-{len(self.logs) + 1}.log"
        self.logs[log.stem] = log
        self.cluster = start([sys.executable, "manage.py", "qcluster"], self.env, log)
        return self.cluster

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            stop(self.cluster, grace=STOP_GRACE_SECONDS)

    # -- acting as an operator -------------------------------------------------------------
    def control(self, action: str, **args: Any) -> list[str]:
        """Run a service in a ``manage.py shell`` against the same database and queue."""
        env = {**self.env, "CONTROL_ARGS": json.dumps({"action": action, **args})}
        out = manage(env, "shell", "--verbosity", "0", "-c", SERVICE_SCRIPT)
        return out.split()

    def submit(self, *documents: dict[str, Any]) -> list[str]:
        """Store and start each flow, in order, in one process; their execution ids."""
        return self.control("submit", documents=list(documents))

    # -- looking at what the worker did ----------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read the backend's database (``%s`` placeholders on either engine)."""
        return self.backend.query(sql, *params)

    def execution(self, execution_id: str) -> dict[str, Any]:
        [(status, error, redrive_count)] = self.query(
            "SELECT status, error, redrive_count FROM flows_execution WHERE id = %s",
            self.backend.key(execution_id),
        )
        return {"status": status, "error": error, "redrive_count": redrive_count}

    def steps(self, execution_id: str) -> list[dict[str, Any]]:
        columns = ("task_name", "status", "attempt", "error", "worker", "started_at", "ended_at")
        rows = self.query(
            f"SELECT {', '.join(columns)} FROM flows_taskrun WHERE execution_id = %s ORDER BY seq",
            self.backend.key(execution_id),
        )
        steps = [dict(zip(columns, row, strict=True)) for row in rows]
        for step in steps:
            for key in ("started_at", "ended_at"):
                step[key] = timestamp(step[key])
        return steps

    def ran(self, execution_id: str) -> list[tuple[str, str]]:
        return [(s["task_name"], s["status"]) for s in self.steps(execution_id)]

    def poll(self, what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
        return poll(what, read, done, logs=self.logs, seconds=DEADLINE_SECONDS)

    def wait_for_status(self, execution_id: str, *statuses: str) -> dict[str, Any]:
        return self.poll(
            f"execution {execution_id} reaching {'/'.join(statuses)}",
            lambda: self.execution(execution_id),
            lambda doc: doc["status"] in statuses,
        )

    def wait_until_running(self, execution_id: str, task_name: str) -> None:
        self.poll(
            f"the worker starting {task_name}",
            lambda: self.ran(execution_id),
            lambda ran: (task_name, "RUNNING") in ran,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("worker_controls")
    plugins = home / "tasks"
    plugins.mkdir()
    for built_in in ("noop", "wait"):
        shutil.copy(BASE_DIR / "tasks" / f"task_{built_in}.py", plugins)
    write_plugins(plugins, PLUGINS)
    # live_backend has migrated the database already. Every process gets the same env, so the
    # cluster after a restart (and every `manage.py shell`) uses the same database and, with
    # Redis, the same queue name (Q_CLUSTER_NAME).
    with live_backend(home, "controls") as backend:
        env = backend.process_env(
            SECRET_KEY="insecure-key-for-the-worker-controls-tests-only",
            DEBUG="0",
            FLOW_TASKS_DIR=str(plugins),
            Q_WORKERS="1",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        running = Live(home, env, backend)
        try:
            running.start_cluster()
            yield running
        finally:
            running.stop_cluster()


# -------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------
def test_a_cancel_stops_a_task_sleeping_in_the_worker(live: Live) -> None:
    [execution_id] = live.submit(
        flow_doc([task("hold", "wait", seconds=HOLD_SECONDS), task("after")], flow_id="live_cancel")
    )
    live.wait_until_running(execution_id, "hold")

    live.control("cancel", execution_id=execution_id)

    doc = live.wait_for_status(execution_id, *TERMINAL)
    assert doc["status"] == "CANCELLED", doc
    assert doc["error"] == "cancelled by request"
    [hold] = live.steps(execution_id)
    assert (hold["task_name"], hold["status"]) == ("hold", "CANCELLED")
    assert hold["error"] == "cancelled while running"
    # The only worker is free again long before the wait would have ended on its own.
    [next_id] = live.submit(flow_doc([task("only")], flow_id="live_after_cancel"))
    assert live.wait_for_status(next_id, *TERMINAL)["status"] == "COMPLETED"
    assert live.steps(next_id)[0]["worker"] == hold["worker"]
    assert live.cluster.poll() is None, log_tails(live.logs)


def test_a_retry_waiting_out_its_delay_does_not_hold_the_only_worker(live: Live) -> None:
    retried = task("flaky", "flaky")
    retried["retry"] = {"max_attempts": 2, "delay_seconds": 3}
    a_id, b_id = live.submit(
        flow_doc([retried], flow_id="live_retry_a"),
        flow_doc([task("quick")], flow_id="live_retry_b"),
    )

    assert live.wait_for_status(b_id, *TERMINAL)["status"] == "COMPLETED"
    assert live.wait_for_status(a_id, *TERMINAL)["status"] == "COMPLETED"

    first, second = live.steps(a_id)
    [quick] = live.steps(b_id)
    assert (first["status"], first["attempt"]) == ("FAILURE", 1)
    assert first["error"] == "RuntimeError: first attempt failed"
    assert (second["status"], second["attempt"]) == ("SUCCESS", 2)
    # One worker process ran all three steps, and B was done before A's retry started: the
    # worker was not held while A's retry waited.
    assert first["worker"] == quick["worker"] == second["worker"]
    assert quick["ended_at"] <= second["started_at"]


def test_a_paused_execution_resumes_on_a_new_cluster_without_rerunning_steps(
    live: Live,
) -> None:
    [execution_id] = live.submit(
        flow_doc(
            [task("first", "wait", seconds=5), task("second", "wait", seconds=0.1), task("third")],
            flow_id="live_pause",
        )
    )
    live.wait_until_running(execution_id, "first")

    live.control("pause", execution_id=execution_id)

    # The step in flight finishes; the next one waits.
    assert live.wait_for_status(execution_id, "PAUSED", *TERMINAL)["status"] == "PAUSED"
    assert live.ran(execution_id) == [("first", "SUCCESS"), ("second", "PENDING")]

    old_worker = live.steps(execution_id)[0]["worker"]
    live.stop_cluster()
    live.start_cluster()
    live.control("resume", execution_id=execution_id)

    assert live.wait_for_status(execution_id, *TERMINAL)["status"] == "COMPLETED"
    steps = live.steps(execution_id)
    assert [(s["task_name"], s["status"]) for s in steps] == [
        ("first", "SUCCESS"),
        ("second", "SUCCESS"),
        ("third", "SUCCESS"),
    ]
    # The rest ran on the new cluster's worker.
    assert all(s["worker"] and s["worker"] != old_worker for s in steps[1:])


def test_a_redriven_execution_completes_once_its_failing_task_succeeds(live: Live) -> None:
    marker = live.home / "redrive-marker"
    [execution_id] = live.submit(
        flow_doc(
            [task("prepare"), task("check", "needs_marker", marker=str(marker)), task("after")],
            flow_id="live_redrive",
        )
    )
    failed = live.wait_for_status(execution_id, *TERMINAL)
    assert failed["status"] == "FAILED", failed
    assert "marker file missing" in failed["error"]
    marker.touch()

    [redriven_id] = live.control("redrive", execution_id=execution_id)

    assert redriven_id == execution_id
    doc = live.wait_for_status(execution_id, *TERMINAL)
    assert doc["status"] == "COMPLETED", doc
    assert doc["redrive_count"] == 1
    steps = live.steps(execution_id)
    assert [(s["task_name"], s["status"], s["attempt"]) for s in steps] == [
        ("prepare", "SUCCESS", 1),
        ("check", "FAILURE", 1),
        ("check", "SUCCESS", 2),
        ("after", "SUCCESS", 1),
    ]
