"""The resource API on steps that waited and on signals: a waited step's start and duration,
a signal's payload checked, and the answer (who, when, decision, comment) kept on the step and
in the log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db.models import F

from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from tests.factories import (
    approval_flow,
    error_body,
    run_to_end,
    start_execution,
)

pytestmark = pytest.mark.django_db

APPROVAL = approval_flow()


@pytest.fixture
def operator(client_as: Any) -> Any:
    return client_as("operator")


@pytest.fixture
def waiting() -> Execution:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    return execution


def signal(client: Any, execution: Execution, body: dict[str, Any]) -> Any:
    return client.post(f"/api/executions/{execution.id}/signal/", body, format="json")


def step_of(client: Any, execution: Execution, name: str) -> dict[str, Any]:
    response = client.get(f"/api/executions/{execution.id}/")
    assert response.status_code == 200
    [step] = [s for s in response.json()["steps"] if s["task_name"] == name]
    return step


# --- item 1: a waited step's start and duration -------------------------------------------------
def test_a_step_that_waited_shows_when_it_began_and_a_duration_covering_the_wait(operator, waiting):
    open_now = step_of(operator, waiting, "approve")
    assert open_now["started_at"] is not None and open_now["duration"] is None
    # It began an hour ago (time moved, not waited for).
    TaskRun.objects.filter(execution=waiting, task_name="approve").update(
        started_at=F("started_at") - timedelta(hours=1)
    )
    began = TaskRun.objects.get(execution=waiting, task_name="approve").started_at

    assert (
        signal(operator, waiting, {"name": "deploy", "payload": {"version": "1"}}).status_code
        == 200
    )
    run_to_end(waiting.id)

    step = step_of(operator, waiting, "approve")
    assert datetime.fromisoformat(step["started_at"]) == began
    assert step["duration"] >= 3600
    ended = datetime.fromisoformat(step["ended_at"])
    assert step["duration"] == pytest.approx((ended - began).total_seconds(), abs=0.01)


# --- item 2: payload -------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [[1, 2], "x", 3, True])
def test_a_payload_that_is_not_an_object_is_400_and_the_wait_stays_open(operator, waiting, payload):
    body = error_body(signal(operator, waiting, {"name": "deploy", "payload": payload}), 400)

    assert [e["field"] for e in body["errors"]] == ["payload"]
    assert "JSON object" in body["errors"][0]["message"]
    step = TaskRun.objects.get(execution=waiting, task_name="approve")
    assert step.status == TaskRunStatus.PENDING and "signal" not in step.waiting
    # The wait is not used up: a good signal still ends it.
    assert (
        signal(operator, waiting, {"name": "deploy", "payload": {"version": "2"}}).status_code
        == 200
    )
    done = run_to_end(waiting.id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.steps.get(task_name="ship").result["message"] == "shipping 2"


# --- item 2: the answer kept and shown ------------------------------------------------------------
def test_the_step_shows_who_answered_when_the_decision_and_the_comment(operator, waiting):
    answered = signal(
        operator, waiting, {"name": "deploy", "decision": "reject", "comment": "not on a Friday"}
    )
    assert answered.status_code == 200
    assert answered.json()["signal"]["comment"] == "not on a Friday"

    run_to_end(waiting.id)

    step = step_of(operator, waiting, "approve")
    assert step["status"] == "FAILURE"
    came = step["signal"]
    assert (came["name"], came["decision"], came["by"]) == ("deploy", "reject", "operator_user")
    assert came["comment"] == "not on a Friday" and came["payload"] is None
    assert datetime.fromisoformat(came["at"]) <= datetime.fromisoformat(step["ended_at"])
    assert step_of(operator, waiting, "rejected")["signal"] is None


def test_an_approval_keeps_its_payload_and_comment_on_the_step(operator, waiting):
    body = {"name": "deploy", "payload": {"version": "1.2"}, "comment": "notes checked"}
    assert signal(operator, waiting, body).status_code == 200

    run_to_end(waiting.id)

    came = step_of(operator, waiting, "approve")["signal"]
    assert (came["decision"], came["comment"]) == ("approve", "notes checked")
    assert came["payload"] == {"version": "1.2"}


def test_the_event_log_shows_the_comment_and_who_answered(operator, waiting):
    signal(operator, waiting, {"name": "deploy", "decision": "reject", "comment": "wrong build"})

    events = operator.get(f"/api/executions/{waiting.id}/events/").json()["events"]

    [line] = [e for e in events if "signal 'deploy'" in e["message"]]
    assert "reject" in line["message"] and "operator_user" in line["message"]
    assert "wrong build" in line["message"]
    assert line["task_name"] == "approve"
