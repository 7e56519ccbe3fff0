"""The reaper wakes steps nobody woke: lost messages, and retries due on a broker that
cannot deliver late (Redis)."""

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db.models import F
from django.utils import timezone
from django_q.conf import Conf

from flows import engine
from flows.models import ExecutionStatus, TaskRun, TaskRunStatus
from tests.controls import (
    QUICK,
    WorkerKilled,
    log_of,
    refresh,
    retry_now_due,
    retrying,
    run_one_job,
    steps_of,
    worker_dies_in,
)
from tests.factories import (
    children_of,
    cond,
    flow_doc,
    mapped,
    ran,
    run_to_end,
    start_execution,
    task,
)

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


# --- a step that kills its worker every time (a poison step) -----------------------------------
LOST_WITH_ITS_WORKER = "lost with its worker 3 times (FLOW_MAX_LOST_ATTEMPTS=3)"


def dies_and_is_reaped(monkeypatch: pytest.MonkeyPatch, execution_id: Any) -> TaskRun:
    """The worker running the execution's current step dies in it (the task crashed the
    process, say); the reaper finds the step once its lease has expired. Returns the step
    as it was when the worker died."""
    died = worker_dies_in(monkeypatch, engine.Dispatcher, "advance", execution_id)
    assert engine.reap()["lost"] == 1
    return died


def test_a_step_lost_with_its_worker_three_times_fails_for_good_and_routes_as_a_failure(
    monkeypatch: pytest.MonkeyPatch,
):
    # A retry policy does not bring it back: losing the worker is not a failure to retry.
    document = flow_doc(
        [retrying("crash", "noop", {"max_attempts": 5}), task("next"), task("recover")],
        [cond("crash", "success", "next", "recover")],
    )
    execution = start_execution(document)

    for _ in range(3):
        dies_and_is_reaped(monkeypatch, execution.id)

    crash = list(execution.steps.filter(task_name="crash").order_by("seq"))
    assert [(s.status, s.attempt) for s in crash] == [
        (TaskRunStatus.LOST, 1),
        (TaskRunStatus.LOST, 2),
        (TaskRunStatus.FAILURE, 3),
    ]
    assert LOST_WITH_ITS_WORKER in crash[-1].error
    assert "it is not run again" in crash[-1].error
    log = log_of(execution)
    assert any(LOST_WITH_ITS_WORKER in line and "crash" in line for line in log), log
    # Its failure route applies: the flow goes on to the recovery task.
    execution = run_to_end(execution.id)
    assert ran(execution)[2:] == [
        ("crash", TaskRunStatus.FAILURE),
        ("recover", TaskRunStatus.SUCCESS),
    ]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_poison_step_with_no_failure_route_fails_its_execution_saying_why(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(flow_doc([task("crash"), task("never")]))

    for _ in range(3):
        dies_and_is_reaped(monkeypatch, execution.id)

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "task 'crash' failed" in execution.error
    assert LOST_WITH_ITS_WORKER in execution.error
    assert not execution.steps.filter(task_name="never").exists()
    assert not execution.steps.filter(status__in=[TaskRunStatus.PENDING, "RUNNING"]).exists()


def test_the_limit_of_lost_attempts_is_a_setting(monkeypatch: pytest.MonkeyPatch, settings):
    settings.FLOW_MAX_LOST_ATTEMPTS = 1
    execution = start_execution(flow_doc([task("crash")]))

    dies_and_is_reaped(monkeypatch, execution.id)

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "lost with its worker 1 times (FLOW_MAX_LOST_ATTEMPTS=1)" in execution.error


@pytest.mark.usefixtures("control_plugins")
def test_only_losses_in_a_row_count_and_ordinary_retries_go_on(monkeypatch: pytest.MonkeyPatch):
    # flaky fails its attempts 1..3 when they run to the end: attempts 1 and 2 are lost with
    # their worker, 3 fails and is retried, 4 is lost again, 5 succeeds.
    document = flow_doc([retrying("f", "flaky", {**QUICK, "max_attempts": 5}, failures=3)])
    execution = start_execution(document)

    dies_and_is_reaped(monkeypatch, execution.id)
    dies_and_is_reaped(monkeypatch, execution.id)
    execution = run_one_job(execution)  # attempt 3 fails as a task does; its retry waits
    retry_now_due(execution)
    dies_and_is_reaped(monkeypatch, execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert [(s.status, s.attempt) for s in steps_of(execution)] == [
        (TaskRunStatus.LOST, 1),
        (TaskRunStatus.LOST, 2),
        (TaskRunStatus.FAILURE, 3),
        (TaskRunStatus.LOST, 4),
        (TaskRunStatus.SUCCESS, 5),
    ]


def test_a_control_step_that_kills_its_worker_while_joining_fails_after_three_losses(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(
        flow_doc(
            [mapped("each", "${input.items}", [task("say", "print", message="${item}")])],
        ),
        input={"items": ["a", "b"]},
    )

    for lost in range(3):
        joining = worker_dies_in(monkeypatch, engine.step.fanin, "join", execution.id)
        assert engine.reap()["lost"] == 1
        if lost < 2:  # it joins its children again, the same step
            assert TaskRun.objects.get(pk=joining.pk).status == TaskRunStatus.PENDING

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    step = TaskRun.objects.get(pk=joining.pk)
    assert step.status == TaskRunStatus.FAILURE
    assert LOST_WITH_ITS_WORKER in step.error
    assert ran(execution) == [("each", TaskRunStatus.FAILURE)]


def test_a_map_item_that_kills_its_worker_fails_and_its_map_step_says_why(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(
        flow_doc([mapped("each", "${input.items}", [task("crash")])]), input={"items": [1]}
    )
    real_advance = engine.Dispatcher.advance

    def dies_in_crash(self, slot, outcome):
        if slot.step.task_name == "crash":
            raise WorkerKilled
        return real_advance(self, slot, outcome)

    for _ in range(3):
        with monkeypatch.context() as patched:
            patched.setattr(engine.Dispatcher, "advance", dies_in_crash)
            with pytest.raises(WorkerKilled):
                run_to_end(execution.id)
        TaskRun.objects.filter(task_name="crash", status=TaskRunStatus.RUNNING).update(
            lease_expires_at=F("started_at")
        )
        assert engine.reap()["lost"] == 1

    [item] = children_of(execution, "each")
    assert item.status == ExecutionStatus.FAILED
    assert LOST_WITH_ITS_WORKER in item.error
    execution = run_to_end(execution.id)
    assert execution.status == ExecutionStatus.FAILED
    assert "1 of 1 items failed" in execution.error
    assert LOST_WITH_ITS_WORKER in execution.steps.get(task_name="each").error


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "FLOW_MAX_LOST_ATTEMPTS=0 must be at least 1"), ("three", "is not a whole number")],
)
def test_a_bad_limit_of_lost_attempts_stops_the_process_at_start(value: str, message: str):
    env = {**os.environ, "FLOW_MAX_LOST_ATTEMPTS": value, "ENV_FILE": ""}
    env.setdefault("SECRET_KEY", "insecure-key-for-this-test-only")
    done = subprocess.run(
        [sys.executable, "-c", "import flowmanager.settings"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and message in done.stderr, done.stderr
