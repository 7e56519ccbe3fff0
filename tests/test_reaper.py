"""The reaper wakes steps nobody woke: lost messages, and retries due on a broker that
cannot deliver late (Redis); its quick pass (``engine.recover``, every worker process) re-runs
dead workers' steps and wakes unclaimed ones, each once whichever pass gets there first."""

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone
from django_q.conf import Conf
from django_q.signals import post_spawn

from flows import engine, jobs
from flows.engine import reaper, wakeup
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
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


# --- the quick pass: every worker process, every FLOW_REAP_EVERY_SECONDS ----------------------


def test_a_dead_workers_step_is_run_again_by_the_first_pass_and_by_no_other(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(flow_doc([task("a"), task("b")]))
    died = worker_dies_in(monkeypatch, engine.Dispatcher, "advance", execution.id)

    assert engine.recover()["lost"] == 1
    # The passes of the other worker processes, and the minute's schedule, find it done.
    assert engine.recover()["lost"] == 0
    assert engine.reap()["lost"] == 0

    assert [(s.task_name, s.status, s.attempt) for s in steps_of(execution)] == [
        ("a", TaskRunStatus.LOST, 1),
        ("a", TaskRunStatus.PENDING, 2),
    ]
    assert died.worker in TaskRun.objects.get(pk=died.pk).error
    execution = run_to_end(execution.id)
    assert ran(execution) == [
        ("a", TaskRunStatus.LOST),
        ("a", TaskRunStatus.SUCCESS),
        ("b", TaskRunStatus.SUCCESS),
    ]


def test_a_step_one_pass_took_is_left_to_it_until_that_pass_is_over_its_time(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(flow_doc([task("a")]))
    worker_dies_in(monkeypatch, engine.Dispatcher, "advance", execution.id)

    taken, _ = reaper.take_expired(timezone.now(), 50)  # a pass in another process took it ...
    assert len(taken) == 1
    assert engine.recover()["lost"] == 0  # ... so this one leaves it alone

    # That pass died before running it again: once its hold ends, the next pass does.
    TaskRun.objects.filter(pk=taken[0].pk).update(lease_expires_at=F("started_at"))
    assert engine.recover()["lost"] == 1
    assert ran(refresh(execution)) == [("a", TaskRunStatus.LOST), ("a", TaskRunStatus.PENDING)]


def test_a_slow_worker_that_renews_before_the_pass_runs_its_step_again_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
):
    execution = start_execution(flow_doc([task("a")]))
    stalled = worker_dies_in(monkeypatch, engine.Dispatcher, "advance", execution.id)
    real_take = reaper.take_expired

    def taken_then_the_worker_renews(now, limit):
        taken = real_take(now, limit)
        assert engine.renew_leases([stalled.pk], stalled.worker, timedelta(seconds=6)) is None
        return taken

    monkeypatch.setattr(reaper, "take_expired", taken_then_the_worker_renews)
    assert engine.recover()["lost"] == 0

    step = TaskRun.objects.get(pk=stalled.pk)
    assert (step.status, step.worker, step.attempt) == (
        TaskRunStatus.RUNNING,
        stalled.worker,
        1,
    )
    assert step.lease_expires_at > timezone.now()
    assert not TaskRun.objects.filter(status=TaskRunStatus.LOST).exists()


def test_steps_nobody_claimed_are_woken_once_with_a_message_per_worker_process_at_most(
    monkeypatch: pytest.MonkeyPatch, settings
):
    settings.FLOW_WAKE_AFTER_SECONDS = 3
    settings.FLOW_WORKER_CONCURRENCY = 2  # each woken worker claims 2 of them at most
    now = timezone.now()
    lost = [start_execution(flow_doc([task("a")], flow_id=f"lost_{n}")) for n in range(7)]
    for n, execution in enumerate(lost):  # their messages went with a flushed queue
        TaskRun.objects.filter(execution=execution).update(woken_at=now - timedelta(seconds=10 + n))
    fresh = start_execution(flow_doc([task("a")], flow_id="fresh"))
    TaskRun.objects.filter(execution=fresh).update(woken_at=now - timedelta(seconds=1))
    sent: list[Any] = []
    monkeypatch.setattr(wakeup, "wake", lambda execution_id, **_: sent.append(execution_id))

    assert engine.recover()["woken"] == 7
    assert engine.recover()["woken"] == 0  # another process's pass: already woken

    # A message wakes a dispatcher that claims every ready step it has room for: enough
    # messages for 7 steps at 2 a worker, and one more for each worker process of the cluster.
    oldest_first = [e.id for e in reversed(lost)]
    assert sent == oldest_first[: 4 + max(1, Conf.WORKERS)]
    assert pending_step(fresh).woken_at == now - timedelta(seconds=1)
    for execution in lost:
        assert pending_step(execution).woken_at > now - timedelta(seconds=1)
        assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED


def test_every_worker_process_starts_one_reaper_timer_whatever_the_broker(
    monkeypatch: pytest.MonkeyPatch,
):
    started: list[float] = []
    monkeypatch.setattr(engine.ReaperTimer, "__init__", lambda self, i: started.append(i))
    # Not the subject here (and, started in this process, they would handle other tests'
    # rows): the other timers a worker process starts.
    monkeypatch.setattr(engine.DueStepTimer, "started", object())
    monkeypatch.setattr(jobs.EndsTimer, "started", object())
    monkeypatch.setattr(jobs.NotifyTimer, "started", object())
    monkeypatch.setattr(Conf, "SYNC", False)
    for orm in ("default", None):  # the ORM broker, Redis
        monkeypatch.setattr(engine.ReaperTimer, "started", None)
        monkeypatch.setattr(Conf, "ORM", orm)
        post_spawn.send(sender="django_q", proc_name="Worker-1")
        post_spawn.send(sender="django_q", proc_name="Worker-1")  # once per process
    assert started == [settings.FLOW_REAP_EVERY_SECONDS] * 2

    monkeypatch.setattr(engine.ReaperTimer, "started", None)
    monkeypatch.setattr(Conf, "SYNC", True)  # jobs run inline: no worker process
    post_spawn.send(sender="django_q", proc_name="Worker-1")
    assert len(started) == 2


def finished_executions(count: int) -> None:
    """``count`` COMPLETED executions of three SUCCESS steps each, written in bulk."""
    model = start_execution(flow_doc([task("a")], flow_id="finished"))
    now = timezone.now()
    rows = Execution.objects.bulk_create(
        Execution(
            flow_id=model.flow_id,
            flow_version_id=model.flow_version_id,
            status=ExecutionStatus.COMPLETED,
            ended_at=now,
        )
        for _ in range(count)
    )
    TaskRun.objects.bulk_create(
        TaskRun(
            execution=row,
            seq=seq,
            task_name="a",
            task_type="noop",
            status=TaskRunStatus.SUCCESS,
            woken_at=now,
            lease_expires_at=None,
        )
        for row in rows
        for seq in (1, 2, 3)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (lambda now: reaper.expired_leases(now)[: reaper.TAKE_BATCH], "taskrun_running_lease_idx"),
        (
            lambda now: wakeup.pending(reaper.unclaimed(now)).order_by("woken_at")[:500],
            "taskrun_pending_idx",
        ),
    ],
    ids=["expired leases", "unclaimed steps"],
)
def test_the_reapers_queries_read_only_open_steps_through_their_index(query, index):
    # Finished steps are in neither partial index, so the pass costs the same with 100,000
    # finished executions as with none (bench/recovery.py times it).
    finished_executions(2000)

    plan = query(timezone.now()).explain()

    assert index in plan, plan


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
