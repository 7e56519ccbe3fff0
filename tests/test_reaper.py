"""The reaper wakes steps nobody woke: lost messages, and retries due on a broker that
cannot deliver late (Redis)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.conf import Conf

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


# --- the due-step timer (each worker process, with the Redis broker) --------------------------


def test_the_timer_wakes_a_due_retry_once_and_leaves_lost_messages_to_the_reaper():
    due_retry = start_execution(flow_doc([task("a")], flow_id="due_retry"))
    due = timezone.now() - timedelta(seconds=1)
    TaskRun.objects.filter(execution=due_retry).update(not_before=due, woken_at=due)
    later_retry = start_execution(flow_doc([task("a")], flow_id="later_retry"))
    later = timezone.now() + timedelta(seconds=30)
    TaskRun.objects.filter(execution=later_retry).update(not_before=later, woken_at=later)
    lost = start_execution(flow_doc([task("a")], flow_id="lost_message"))
    long_ago = timezone.now() - timedelta(hours=1)
    TaskRun.objects.filter(execution=lost).update(woken_at=long_ago)

    assert engine.wake_due() == 1
    assert engine.wake_due() == 0  # a second timer (another worker) finds nothing left

    assert pending_step(due_retry).woken_at > due
    assert pending_step(later_retry).woken_at == later
    assert pending_step(lost).woken_at == long_ago  # the reaper's job (FLOW_WAKE_AFTER_SECONDS)
    assert run_to_end(due_retry.id).status == "COMPLETED"


def test_worker_processes_start_the_timer_only_where_the_broker_cannot_deliver_late(
    monkeypatch: pytest.MonkeyPatch,
):
    started: list[float] = []
    monkeypatch.setattr(engine.DueStepTimer, "started", None)
    monkeypatch.setattr(engine.DueStepTimer, "__init__", lambda self, i: started.append(i))
    monkeypatch.setattr(Conf, "SYNC", False)

    monkeypatch.setattr(Conf, "ORM", "default")  # the ORM broker delivers late itself
    engine.start_due_step_timer(proc_name="Worker-1")
    assert started == []

    monkeypatch.setattr(Conf, "ORM", None)  # Redis
    engine.start_due_step_timer(proc_name="Worker-1")
    engine.start_due_step_timer(proc_name="Worker-1")  # once per process
    assert started == [settings.FLOW_DUE_STEP_CHECK_SECONDS]
