"""Cancel: a running task's coroutine is stopped, a waiting step is cancelled, and a
finished execution cannot be cancelled.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows import engine, services
from flows.models import ExecutionStatus
from tests.controls import (
    CANCELLED,
    FAIL,
    OK,
    after_each_step,
    cancel_while_the_task_runs,
    refresh,
    retrying,
    run_one_job,
)
from tests.factories import (
    failing,
    flow_doc,
    ran,
    run_flow,
    run_to_end,
    start_execution,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def test_cancelling_a_running_task_stops_its_coroutine_and_cancels_the_execution(
    monkeypatch: pytest.MonkeyPatch, marker: Path
) -> None:
    execution = start_execution(flow_doc([task("stuck", "hang", marker=str(marker)), task("b")]))
    cancel_while_the_task_runs(monkeypatch, execution)

    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.error == "cancelled by request"
    assert execution.ended_at is not None
    assert ran(execution) == [("stuck", CANCELLED)]
    assert execution.steps.get().error == "cancelled while running"
    assert marker.read_text() == "cancelled"  # the coroutine was told to stop


def test_cancelling_between_steps_stops_before_the_next_task(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_cancel(execution_id=execution.id),
    )

    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", OK)]


def test_cancelling_a_queued_execution_cancels_its_waiting_step() -> None:
    execution = start_execution(flow_doc([task("a")]))

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", CANCELLED)]
    assert execution.steps.get().error == "cancelled before it started"
    # The job already queued for it finds nothing to run.
    assert engine.dispatch(execution.id) == 0
    assert refresh(execution).status == ExecutionStatus.CANCELLED


def test_cancelling_while_a_retry_waits_cancels_the_retry() -> None:
    execution = start_execution(
        flow_doc([retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})])
    )
    run_one_job(execution)

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("flaky", FAIL), ("flaky", CANCELLED)]


def test_cancelling_a_paused_execution_cancels_it() -> None:
    execution = start_execution(flow_doc([task("a")]))
    services.execution_pause(execution_id=execution.id)

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", CANCELLED)]


@pytest.mark.parametrize("document", [flow_doc([task("a")]), flow_doc([failing("a")])])
def test_cancelling_a_finished_execution_is_a_conflict(document: dict[str, Any]) -> None:
    execution = run_flow(document)

    with pytest.raises(services.Conflict, match=f"already {execution.status}"):
        services.execution_cancel(execution_id=execution.id)


def test_cancelling_a_cancelled_execution_is_a_conflict() -> None:
    execution = start_execution(flow_doc([task("a")]))
    services.execution_cancel(execution_id=execution.id)

    with pytest.raises(services.Conflict):
        services.execution_cancel(execution_id=execution.id)
