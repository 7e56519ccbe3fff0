"""When a step that waits began, and how long it took: a ``parallel``, ``map``, ``subflow``,
``sleep`` or ``wait_for_signal`` step began when it started its children or its wait, and its
duration is the wall time until it ended (not the few milliseconds of its last run).

Time is moved, not waited for: a step's recorded start is set an hour back while it waits, as
if it had begun then."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from flows import engine, services
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from tests.controls import past_deadline
from tests.factories import flow_doc, mapped, parallel, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db

HOUR = 3600.0
hold = task("hold", "wait_for_signal", signal="go")


def run_until_it_waits(execution: Execution) -> None:
    """Run what is ready now, and no more (``run_to_end`` would wait a sleep out)."""
    while engine.Dispatcher(concurrency=1, only=execution.id).run():
        pass


def waiting_step(execution: Execution, name: str) -> TaskRun:
    step = TaskRun.objects.get(execution=execution, task_name=name)
    assert step.status == TaskRunStatus.PENDING and step.waiting, (step.status, step.waiting)
    return step


def began_an_hour_ago(step: TaskRun) -> TaskRun:
    """The waiting ``step`` began an hour earlier than it did (its first run's time moved)."""
    assert step.started_at is not None, "a step that waits has begun: it has a start time"
    TaskRun.objects.filter(pk=step.pk).update(started_at=F("started_at") - timedelta(hours=1))
    step.refresh_from_db()
    return step


def answer_every_hold(execution: Execution) -> None:
    """Signal every execution of the tree that waits for 'go'."""
    tree = Execution.objects.filter(pk=execution.pk) | Execution.objects.filter(root=execution)
    for waiting in TaskRun.objects.filter(
        execution__in=tree, status=TaskRunStatus.PENDING, waiting__kind="signal"
    ):
        services.execution_signal(execution_id=waiting.execution_id, name="go")


def time_is_up(execution: Execution) -> None:
    """A sleep's time has come: its end and due time moved to now."""
    now = timezone.now()
    step = TaskRun.objects.get(execution=execution, status=TaskRunStatus.PENDING)
    waiting = {**step.waiting, "until": now.isoformat()}
    TaskRun.objects.filter(pk=step.pk).update(waiting=waiting, not_before=now, woken_at=now)


def _subflow() -> dict[str, Any]:
    services.flow_create(document=flow_doc([hold], flow_id="child"))
    return {"name": "step", "task_type": "subflow", "parameters": {"flow_id": "child"}}


KINDS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[Execution], None]]] = {
    "parallel": (
        lambda: parallel("step", {"a": [hold], "b": [task("quick")]}),
        answer_every_hold,
    ),
    "map": (lambda: mapped("step", [1, 2, 3], [hold]), answer_every_hold),
    "subflow": (_subflow, answer_every_hold),
    "sleep": (lambda: task("step", "sleep", seconds=HOUR), time_is_up),
    "wait_for_signal": (lambda: task("step", "wait_for_signal", signal="go"), answer_every_hold),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_step_that_waits_keeps_when_it_began_and_lasts_until_it_ended(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flows.engine")
    build, end_the_wait = KINDS[kind]
    execution = start_execution(flow_doc([build(), task("after")], flow_id="parent"))
    run_until_it_waits(execution)
    step = began_an_hour_ago(waiting_step(execution, "step"))
    began = step.started_at
    # Children (a control step's) started when it began, not when it ended.
    children = Execution.objects.filter(parent_step=step)
    assert all(began <= child.created_at for child in children)

    end_the_wait(execution)
    done = run_to_end(execution.id)

    assert done.status == ExecutionStatus.COMPLETED, done.error
    step.refresh_from_db()
    assert step.status == TaskRunStatus.SUCCESS
    assert step.started_at == began  # running again to end did not restart it
    assert step.duration >= HOUR
    assert step.duration == pytest.approx((step.ended_at - step.started_at).total_seconds())
    # The worker's log line says so too.
    ended = [
        r.getMessage() for r in caplog.records if f"step={step.seq} task=step" in r.getMessage()
    ]
    seconds = [float(m) for line in ended for m in re.findall(r"ended SUCCESS in ([\d.]+)s", line)]
    assert seconds and seconds[-1] >= HOUR, ended
    assert not any("ended PENDING" in line for line in ended)  # a wait is not an end


def test_a_map_step_began_before_its_items_and_ended_after_them() -> None:
    """Without moving time: its start is before its first item, its end after its last."""
    execution = start_execution(flow_doc([mapped("step", [1, 2, 3], [task("item")])]))

    done = run_to_end(execution.id)

    step = done.steps.get(task_name="step")
    items = list(Execution.objects.filter(parent_step=step))
    assert step.started_at <= min(item.created_at for item in items)
    assert step.ended_at >= max(item.ended_at for item in items)
    assert step.duration == pytest.approx((step.ended_at - step.started_at).total_seconds())


def test_a_waiting_step_has_no_duration_until_it_ends() -> None:
    execution = start_execution(flow_doc([task("step", "wait_for_signal", signal="go")]))
    run_to_end(execution.id)

    step = waiting_step(execution, "step")

    assert step.started_at is not None and step.duration is None


def test_a_wait_cancelled_lasted_until_the_cancel() -> None:
    execution = start_execution(flow_doc([mapped("step", [1, 2], [hold])]))
    run_to_end(execution.id)
    began = began_an_hour_ago(waiting_step(execution, "step")).started_at
    items = TaskRun.objects.filter(execution__parent_step__execution=execution)
    items.update(started_at=F("started_at") - timedelta(hours=1))

    services.execution_cancel(execution_id=execution.id)

    step = TaskRun.objects.get(execution=execution, task_name="step")
    assert (step.status, step.started_at) == (TaskRunStatus.CANCELLED, began)
    assert step.duration >= HOUR
    for item in items.all():
        assert item.status == TaskRunStatus.CANCELLED and item.duration >= HOUR


def test_a_wait_the_flows_timeout_ended_lasted_until_then() -> None:
    execution = start_execution(flow_doc([hold], timeout_seconds=7200))
    run_to_end(execution.id)
    began_an_hour_ago(waiting_step(execution, "hold"))
    past_deadline(execution)

    engine.reap()

    step = TaskRun.objects.get(execution=execution, task_name="hold")
    assert step.status == TaskRunStatus.CANCELLED and step.duration >= HOUR
    assert Execution.objects.get(pk=execution.id).status == ExecutionStatus.FAILED
