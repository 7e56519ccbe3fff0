"""Durable waits: a ``sleep`` step and a ``wait_for_signal`` step wait in the database,
holding no worker, and go on when their time or their signal comes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from flows import engine, services
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from tests.factories import (
    approval_flow,
    flow_doc,
    ran,
    run_flow,
    run_to_end,
    start_execution,
    task,
)

pytestmark = pytest.mark.django_db


def open_step(execution: Execution) -> TaskRun:
    return TaskRun.objects.get(execution=execution, status__in=["PENDING", "RUNNING"])


# --- sleep ---------------------------------------------------------------------------------
def test_a_sleep_waits_its_seconds_in_the_database_then_goes_on() -> None:
    before = timezone.now()

    execution = run_flow(flow_doc([task("nap", "sleep", seconds=0.3), task("after")]))

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("nap", "SUCCESS"), ("after", "SUCCESS")]
    nap = execution.steps.get(task_name="nap")
    assert nap.waiting["kind"] == "until"
    slept_until = timezone.datetime.fromisoformat(nap.result["slept_until"])
    assert slept_until >= before + timedelta(seconds=0.3)
    assert execution.steps.get(task_name="after").started_at >= slept_until


def test_a_sleep_until_a_past_time_goes_on_at_once() -> None:
    past = (timezone.now() - timedelta(hours=1)).isoformat()

    execution = run_flow(flow_doc([task("nap", "sleep", until=past)]))

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get().waiting is None  # it never had to wait


def test_a_sleeping_execution_holds_no_worker_slot() -> None:
    sleeper = start_execution(flow_doc([task("nap", "sleep", seconds=600)], flow_id="sleeper"))
    other = start_execution(flow_doc([task("quick")], flow_id="other"))

    # A worker with room for ONE execution at a time, running jobs until none finds work:
    # the sleep gives its slot back at once, so the other flow runs meanwhile.
    while engine.Dispatcher(concurrency=1).run():
        pass

    assert Execution.objects.get(pk=other.id).status == ExecutionStatus.COMPLETED
    nap = open_step(sleeper)
    assert nap.status == TaskRunStatus.PENDING and nap.worker == ""
    assert nap.not_before >= timezone.now() + timedelta(seconds=590)


def test_a_sleep_counts_once_against_the_step_limit() -> None:
    document = flow_doc([task("nap", "sleep", seconds=0.1), task("after")], max_steps=2)

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert execution.steps_taken == 2


def test_a_sleep_of_more_than_a_year_is_refused_at_validation() -> None:
    with pytest.raises(services.InvalidFlow) as refused:
        services.validate_flow(flow_doc([task("nap", "sleep", seconds=400 * 86400)]))
    assert refused.value.errors[0]["field"] == "tasks[0].parameters.seconds"


# --- wait_for_signal -----------------------------------------------------------------------
APPROVAL = approval_flow()


def test_an_approval_waits_until_the_signal_and_its_payload_is_the_result() -> None:
    execution = start_execution(APPROVAL)
    waiting = run_to_end(execution.id)
    assert waiting.status == ExecutionStatus.RUNNING
    step = open_step(execution)
    assert step.status == TaskRunStatus.PENDING and step.waiting["name"] == "deploy"
    assert step.waiting["prompt"] == "Ship it?"

    services.execution_signal(execution_id=execution.id, name="deploy", payload={"version": "1.2"})
    done = run_to_end(execution.id)

    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert ran(done) == [("approve", "SUCCESS"), ("ship", "SUCCESS")]
    assert done.steps.get(task_name="approve").result["version"] == "1.2"
    assert done.steps.get(task_name="ship").result["message"] == "shipping 1.2"


def test_a_rejection_fails_the_step_and_takes_its_failure_route() -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)

    services.execution_signal(
        execution_id=execution.id, name="deploy", decision="reject", comment="not today"
    )
    done = run_to_end(execution.id)

    assert ran(done) == [("approve", "FAILURE"), ("rejected", "SUCCESS")]
    assert "rejected" in done.steps.get(task_name="approve").error
    assert "not today" in done.steps.get(task_name="approve").error


def test_no_signal_within_its_timeout_fails_the_step() -> None:
    document = flow_doc([task("approve", "wait_for_signal", timeout_seconds=0.2)])

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.FAILED
    assert "no signal 'approval' came before" in execution.steps.get().error


@pytest.mark.parametrize(
    ("name", "message"),
    [("other", "waits for signal 'deploy', not 'other'")],
)
def test_a_signal_of_another_name_is_refused(name: str, message: str) -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)

    with pytest.raises(services.Conflict, match=message):
        services.execution_signal(execution_id=execution.id, name=name)


def test_a_second_signal_is_refused_and_a_finished_execution_takes_none() -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    services.execution_signal(execution_id=execution.id, name="deploy")

    with pytest.raises(services.Conflict, match="already came"):
        services.execution_signal(execution_id=execution.id, name="deploy")
    run_to_end(execution.id)
    with pytest.raises(services.Conflict, match="waits for no signal"):
        services.execution_signal(execution_id=execution.id, name="deploy")


def test_a_bad_decision_is_refused() -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)

    with pytest.raises(services.ServiceError, match="approve' or 'reject"):
        services.execution_signal(execution_id=execution.id, name="deploy", decision="maybe")


def test_cancelling_a_waiting_execution_ends_it_and_its_step() -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)

    services.execution_cancel(execution_id=execution.id)

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.steps.get().status == TaskRunStatus.CANCELLED


def test_a_paused_execution_takes_its_signal_and_goes_on_when_resumed() -> None:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    services.execution_pause(execution_id=execution.id)
    services.execution_signal(execution_id=execution.id, name="deploy", payload={"version": "2"})

    assert run_to_end(execution.id).status == ExecutionStatus.PAUSED
    services.execution_resume(execution_id=execution.id)
    done = run_to_end(execution.id)

    assert done.status == ExecutionStatus.COMPLETED, done.error
