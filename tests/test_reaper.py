"""The reaper wakes steps nobody woke: lost messages, and retries due on a broker that
cannot deliver late (Redis)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from flows import engine
from flows.models import TaskRun, TaskRunStatus
from tests.factories import flow_doc, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


def pending_step(execution):
    return TaskRun.objects.get(execution=execution, status=TaskRunStatus.PENDING)


def test_a_due_retry_nobody_woke_is_woken_and_then_runs():
    execution = start_execution(flow_doc([task("a")]))
    due = timezone.now() - timedelta(seconds=1)
    TaskRun.objects.filter(execution=execution).update(not_before=due, woken_at=due)

    counts = engine.reap()

    assert counts["woken"] == 1
    assert pending_step(execution).woken_at > due
    assert run_to_end(execution.id).status == "COMPLETED"


def test_a_retry_not_yet_due_is_left_alone():
    execution = start_execution(flow_doc([task("a")]))
    due = timezone.now() + timedelta(seconds=30)
    TaskRun.objects.filter(execution=execution).update(not_before=due, woken_at=due)

    assert engine.reap()["woken"] == 0
    assert pending_step(execution).woken_at == due


def test_a_step_woken_recently_is_not_woken_again():
    execution = start_execution(flow_doc([task("a")]))
    woken = pending_step(execution).woken_at
    assert engine.reap()["woken"] == 0
    assert pending_step(execution).woken_at == woken


def test_a_step_whose_message_was_lost_long_ago_is_woken_once():
    execution = start_execution(flow_doc([task("a")]))
    long_ago = timezone.now() - timedelta(hours=1)
    TaskRun.objects.filter(execution=execution).update(woken_at=long_ago)

    assert engine.reap()["woken"] == 1
    assert engine.reap()["woken"] == 0
