"""End to end: a real web server and a real ``qcluster`` on a shared database.

Nothing here uses pytest-django's test database. A module fixture migrates a fresh database of
the CI pass's backend (tests/live.py: a SQLite file, or a PostgreSQL database of its own, with
the suite's Redis in the third pass), starts gunicorn and ``manage.py qcluster`` against it as
subprocesses, and the tests talk to them over HTTP as a client of the seed API would. The
database is only read (never written) from the test process, to check what the worker left
behind.

The stack (tests/seed_api.py) runs ONE worker process, so "the worker ran the next flow" can
only mean the worker that held a deleted execution let go of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.factories import cond, failing, flow_doc, sample_flow, task
from tests.live import log_tails, timestamp
from tests.seed_api import SeedStack, seed_stack

pytestmark = pytest.mark.worker

# A retry's delay, and how soon after it the retry must have started: the reaper, which would
# otherwise be what starts it on a broker that cannot deliver late, runs about once a minute.
RETRY_DELAY_SECONDS = 2
RETRY_ON_TIME_SECONDS = 10
# Far longer than the stack's deadlines: a worker that kept holding a deleted execution's step
# could not run anything else before a poll gives up.
HOLD_SECONDS = 300


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedStack]:
    with seed_stack(tmp_path_factory.mktemp("worker_e2e"), "e2e") as running:
        yield running


# -------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------
def test_the_seed_sample_flow_runs_to_completed_on_a_real_worker(stack: SeedStack) -> None:
    execution_id = stack.create_and_execute(sample_flow())

    doc = stack.wait_until_ended(execution_id)

    assert doc["status"] == "COMPLETED", doc
    assert doc["executed_tasks"] == ["task1", "task2", "task3"]
    assert {name: r["status"] for name, r in doc["task_results"].items()} == {
        "task1": "SUCCESS",
        "task2": "SUCCESS",
        "task3": "SUCCESS",
    }
    assert doc["started_at"] and doc["ended_at"]
    assert doc["error"] is None


def test_a_failure_routed_to_a_recovery_task_ends_completed(stack: SeedStack) -> None:
    document = flow_doc(
        [failing("fetch"), task("store", "store_data"), task("recover", "print", message="fixed")],
        [
            cond("fetch", "success", "store", "recover"),
            cond("store", "success", "end", "end"),
        ],
        flow_id="e2e_recovery",
    )
    execution_id = stack.create_and_execute(document)

    doc = stack.wait_until_ended(execution_id)

    assert doc["status"] == "COMPLETED", doc
    assert doc["executed_tasks"] == ["fetch", "recover"]
    assert doc["task_results"]["fetch"]["status"] == "FAILURE"
    assert "Simulated failure" in doc["task_results"]["fetch"]["error"]
    assert doc["task_results"]["recover"]["status"] == "SUCCESS"
    assert doc["task_results"]["recover"]["data"] == {
        "message": "fixed",
        "message_printed": "fixed",
    }
    assert "store" not in doc["task_results"]


def test_a_retry_starts_when_its_delay_ends_on_every_broker(stack: SeedStack) -> None:
    fetch = failing("fetch")
    fetch["retry"] = {"max_attempts": 2, "delay_seconds": RETRY_DELAY_SECONDS}
    execution_id = stack.create_and_execute(flow_doc([fetch], flow_id="e2e_retry_on_time"))

    doc = stack.wait_until_ended(execution_id)

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


def test_deleting_a_running_execution_frees_its_worker_for_the_next_flow(stack: SeedStack) -> None:
    document = flow_doc(
        [task("hold", "wait", seconds=HOLD_SECONDS), task("after")], flow_id="e2e_delete_running"
    )
    execution_id = stack.create_and_execute(document)
    stack.poll(
        "the worker picking up the wait task",
        lambda: stack.status(execution_id),
        lambda doc: doc["status"] == "RUNNING" and doc["current_task"] == "hold",
    )
    [(_, step_status, holder)] = stack.steps(execution_id)
    assert step_status == "RUNNING"

    deleted = stack.client.delete(f"/flow/{execution_id}")

    assert deleted.status_code == 200, deleted.text
    assert execution_id in deleted.json()["message"]
    gone = stack.client.get(f"/flow/{execution_id}/status")
    assert gone.status_code == 404, gone.text

    # One worker process: the next flow runs only once that worker has let go of the deleted
    # execution, long before its wait would have ended on its own.
    next_id = stack.create_and_execute(flow_doc([task("only")], flow_id="e2e_after_delete"))
    doc = stack.wait_until_ended(next_id)
    assert doc["status"] == "COMPLETED", doc
    assert [worker for _, _, worker in stack.steps(next_id)] == [holder]

    assert stack.cluster.poll() is None, log_tails(stack.logs)
    os.kill(int(holder.rsplit(":", 1)[1]), 0)  # the same worker process is still alive
    key = stack.backend.key(execution_id)
    for table in ("flows_execution", "flows_taskrun", "flows_executionevent"):
        column = "id" if table == "flows_execution" else "execution_id"
        rows = stack.backend.query(f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", key)
        assert rows == [(0,)], f"{table} has rows of the deleted execution again"
    assert stack.client.get(f"/flow/{execution_id}/status").status_code == 404


def test_a_condition_over_its_budget_fails_its_step_while_another_flow_completes(
    stack: SeedStack,
) -> None:
    # Two nested comprehensions over 3,000 items: nine million interpreter steps, many minutes
    # of the stack's one worker process without the expression budget (1 s by default).
    endless = "input.xs.all(x, input.xs.all(y, x + y >= 0))"
    document = flow_doc(
        [task("count"), task("big"), task("small")],
        [{"source_task": "count", "expression": endless,
          "target_task_success": "big", "target_task_failure": "end"}],
        flow_id="e2e_expression_budget",
    )  # fmt: skip
    slow_id = stack.create(document)
    started = stack.client.post(
        "/flow/execute", json={"execution_id": slow_id, "input": {"xs": list(range(3000))}}
    )
    assert started.status_code == 200, started.text

    # One worker process: this flow ends only if the expression let go of it.
    quick_id = stack.create_and_execute(flow_doc([task("only")], flow_id="e2e_beside_budget"))
    quick = stack.wait_until_ended(quick_id)
    slow = stack.wait_until_ended(slow_id)

    assert quick["status"] == "COMPLETED", quick
    assert slow["status"] == "FAILED", slow
    assert "budget of 1 s (FLOW_EXPRESSION_BUDGET_SECONDS)" in slow["error"]
    # Failed once, not lost and run again by a worker that found its lease expired.
    assert [(name, status) for name, status, _ in stack.steps(slow_id)] == [("count", "FAILURE")]
    assert stack.cluster.poll() is None, log_tails(stack.logs)


def test_health_reports_the_running_cluster(stack: SeedStack) -> None:
    def health() -> dict[str, Any]:
        response = stack.client.get("/health")
        assert response.status_code == 200, response.text
        return response.json()

    doc = stack.poll("/health reporting a worker cluster", health, lambda d: d["workers"] >= 1)

    assert doc["status"] == "healthy"
    assert doc["database"] == "ok"
