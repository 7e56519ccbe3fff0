"""The flow's own timeout (``timeout_seconds``): it cuts the running step, overrules
retries and recovery, and the reaper ends executions past it that nobody runs.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

from typing import Any

import pytest

from flows import engine
from flows.models import ExecutionStatus
from tests.controls import (
    CANCELLED,
    FAIL,
    OK,
    PENDING,
    QUICK,
    field_errors,
    held_elsewhere,
    log_of,
    past_deadline,
    refresh,
    retry_now_due,
    retrying,
    run_one_job,
)
from tests.factories import (
    cond,
    flow_doc,
    ran,
    run_flow,
    start_execution,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def test_a_flow_past_its_timeout_fails_naming_the_timeout_and_cuts_the_running_step() -> None:
    execution = run_flow(
        flow_doc([task("long", "wait", seconds=30), task("after")], timeout_seconds=0.2)
    )

    assert execution.status == ExecutionStatus.FAILED
    assert "timeout" in execution.error
    assert "timeout_seconds" in execution.error
    assert "0.2s" in execution.error
    assert ran(execution) == [("long", FAIL)]
    assert "timeout_seconds" in execution.steps.get().error


def test_a_flow_timeout_ends_the_flow_instead_of_routing_to_recovery_or_retrying() -> None:
    execution = run_flow(
        flow_doc(
            [retrying("long", "wait", QUICK, seconds=30), task("recover")],
            [cond("long", "success", "end", "recover")],
            timeout_seconds=0.2,
        )
    )

    assert ran(execution) == [("long", FAIL)]
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error


def test_steps_that_finish_in_time_keep_their_results_when_a_later_step_times_out() -> None:
    execution = run_flow(
        flow_doc(
            [task("quick"), task("long", "wait", seconds=30), task("never")],
            timeout_seconds=0.2,
        )
    )

    assert ran(execution) == [("quick", OK), ("long", FAIL)]
    assert "timeout_seconds" in execution.error


def test_the_reaper_ends_an_execution_past_its_deadline_when_no_step_runs() -> None:
    execution = start_execution(flow_doc([task("a")], timeout_seconds=60))
    past_deadline(execution)  # the deadline passed with nobody working on it

    counts = engine.reap()

    execution = refresh(execution)
    assert counts["timed_out"] == 1
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("a", CANCELLED)]
    assert execution.ended_at is not None
    assert any("timeout" in line for line in log_of(execution))


def test_a_retry_that_would_be_due_after_the_deadline_ends_the_execution_at_once() -> None:
    execution = start_execution(
        flow_doc(
            [retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})],
            timeout_seconds=5,
        )
    )
    run_one_job(execution)

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("flaky", FAIL)]


def test_the_reaper_ends_an_execution_whose_retry_waits_past_its_deadline() -> None:
    execution = start_execution(
        flow_doc(
            [retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})],
            timeout_seconds=60,
        )
    )
    assert ran(run_one_job(execution)) == [("flaky", FAIL), ("flaky", PENDING)]
    # Past the deadline, and the retry is due: no worker has taken it yet.
    past_deadline(execution)
    retry_now_due(execution)

    engine.reap()

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("flaky", FAIL), ("flaky", CANCELLED)]


def test_the_reaper_leaves_a_running_step_to_time_itself_out() -> None:
    execution = start_execution(flow_doc([task("a")], timeout_seconds=60))
    held_elsewhere(execution)  # a worker holds the step
    past_deadline(execution)

    counts = engine.reap()

    assert counts["timed_out"] == 0
    assert refresh(execution).status == ExecutionStatus.RUNNING


def test_the_reaper_leaves_executions_within_their_deadline_or_without_one() -> None:
    within = start_execution(flow_doc([task("a")], flow_id="within", timeout_seconds=60))
    unbounded = start_execution(flow_doc([task("a")], flow_id="unbounded"))

    assert engine.reap()["timed_out"] == 0
    assert refresh(within).status == ExecutionStatus.QUEUED
    assert refresh(unbounded).status == ExecutionStatus.QUEUED


@pytest.mark.parametrize("value", [0, -5, "60", True, [60]])
def test_an_invalid_flow_timeout_is_refused_at_its_field_path(value: Any) -> None:
    errors = field_errors(flow_doc([task("a")], timeout_seconds=value))

    assert list(errors) == ["timeout_seconds"]
