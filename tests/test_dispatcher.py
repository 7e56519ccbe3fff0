"""One worker runs many executions at once: their tasks share one event loop.

These drive ``engine.Dispatcher`` (what a worker's job runs) inline; tests/test_worker_* do
the same through real qcluster processes.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from flows import engine, services
from flows.engine import outcome, record, timing
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry
from tests.controls import WorkerKilled
from tests.factories import flow_doc, ran, task, write_plugins

pytestmark = pytest.mark.django_db

PLUGINS = {
    "pause": """
        import asyncio


        class PauseTask(BaseTask):
            async def run(self):
                await asyncio.sleep(self.parameters.get("seconds", 0.3))
                return {"slept": True}
    """,
    "noop": """
        class NoopTask(BaseTask):
            async def run(self):
                return {}
    """,
    "block": """
        import time


        class BlockTask(BaseTask):
            async def run(self):
                time.sleep(self.parameters.get("seconds", 1.0))
                return {}
    """,
    "offload": """
        import asyncio
        import time


        class OffloadTask(BaseTask):
            async def run(self):
                # Blocking work the README way: on a thread, the loop stays free.
                await asyncio.to_thread(time.sleep, self.parameters.get("seconds", 1.0))
                return {}
    """,
    "whereami": """
        import threading


        class WhereamiTask(BaseTask):
            async def run(self):
                return {"thread": threading.get_ident()}
    """,
}


@pytest.fixture
def registry(tmp_path: Path) -> TaskRegistry:
    write_plugins(tmp_path, PLUGINS)
    return TaskRegistry(tmp_path)


def start(registry: TaskRegistry, document: dict) -> Execution:
    version = services.flow_create(document=document, registry=registry)
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id, registry=registry)
    return execution


def windows(execution: Execution) -> list[tuple]:
    return list(TaskRun.objects.filter(execution=execution).values_list("started_at", "ended_at"))


def test_one_job_runs_ready_executions_side_by_side(registry):
    executions = [
        start(registry, flow_doc([task("wait", "pause", seconds=0.3)], flow_id=f"f{i}"))
        for i in range(5)
    ]

    ran_steps = engine.Dispatcher(registry, concurrency=10).run()

    assert ran_steps == 5
    spans = [windows(e)[0] for e in executions]
    for execution in executions:
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.COMPLETED
    # Every wait was in flight at the same time: each started before any had ended.
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_concurrency_caps_how_many_executions_one_job_takes(registry):
    for i in range(4):
        start(registry, flow_doc([task("wait", "pause", seconds=0.05)], flow_id=f"f{i}"))

    engine.Dispatcher(registry, concurrency=2).run()

    statuses = sorted(Execution.objects.values_list("status", flat=True))
    # Two at a time, and a freed place is filled again: all four ran in this one job.
    assert statuses == [ExecutionStatus.COMPLETED] * 4


def test_each_execution_keeps_its_own_order_of_steps(registry):
    document = flow_doc([task("a", "noop"), task("b", "pause", seconds=0.05), task("c", "noop")])
    first = start(registry, {**document, "id": "one"})
    second = start(registry, {**document, "id": "two"})

    engine.Dispatcher(registry, concurrency=5).run()

    for execution in (first, second):
        assert ran(execution) == [("a", "SUCCESS"), ("b", "SUCCESS"), ("c", "SUCCESS")]


def test_a_jobs_first_step_starts_after_one_transaction_and_no_read_before_it(registry):
    execution = start(registry, flow_doc([task("a", "noop"), task("b", "noop")]))
    dispatcher = engine.Dispatcher(registry, concurrency=5)
    with CaptureQueriesContext(connection) as first_look:
        dispatcher.fill()
    sent = [
        (q["sql"].split(" ")[0], table.group(1) if table else "")
        for q in first_look.captured_queries
        for table in [re.search(r'(?:FROM|UPDATE|INTO) "([^"]+)"', q["sql"])]
    ]

    # No look for ready steps before the claim's transaction (the job's message says one is
    # ready), and no read of earlier results for an execution's first step: the claim, the
    # execution and its flow version, in one transaction.
    claimed = [
        ("SELECT", "flows_taskrun"),  # ... FOR UPDATE (SQLite: the IMMEDIATE transaction)
        ("UPDATE", "flows_taskrun"),
        ("SELECT", "flows_execution"),
        ("SELECT", "flows_flowversion"),
        ("UPDATE", "flows_execution"),  # QUEUED -> RUNNING
    ]
    assert [q for q in sent if q[0] in ("SELECT", "UPDATE")] == claimed
    assert list(dispatcher.slots) == [execution.id]
    # Later looks, which mostly find nothing, ask first, outside any transaction: here that
    # question alone (nothing else is ready).
    with CaptureQueriesContext(connection) as later_look:
        dispatcher.fill()
    assert [q["sql"].split(" ")[0] for q in later_look.captured_queries] == ["SELECT"]

    dispatcher.run()
    assert ran(execution) == [("a", "SUCCESS"), ("b", "SUCCESS")]


def test_a_job_whose_execution_was_taken_still_picks_up_other_ready_work(registry):
    taken = start(registry, flow_doc([task("a", "noop")], flow_id="taken"))
    other = start(registry, flow_doc([task("a", "noop")], flow_id="other"))
    elsewhere = engine.claim_steps("elsewhere:1", timedelta(seconds=30), 1, only=taken.id)
    assert elsewhere is not None and len(elsewhere.steps) == 1  # another worker has it

    engine.Dispatcher(registry, concurrency=5).run()

    other.refresh_from_db()
    assert other.status == ExecutionStatus.COMPLETED
    taken.refresh_from_db()
    assert taken.status == ExecutionStatus.RUNNING  # still the other worker's


def test_a_cancel_reaches_one_execution_and_leaves_the_others_running(registry, monkeypatch):
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)
    doomed = start(registry, flow_doc([task("wait", "pause", seconds=5)], flow_id="doomed"))
    kept = start(registry, flow_doc([task("wait", "pause", seconds=0.3)], flow_id="kept"))
    real_watch = engine.Dispatcher.watch

    def cancel_then_watch(self, **kwargs):
        if not Execution.objects.get(pk=doomed.id).cancel_requested:
            services.execution_cancel(execution_id=doomed.id)
        return real_watch(self, **kwargs)

    monkeypatch.setattr(engine.Dispatcher, "watch", cancel_then_watch)

    engine.Dispatcher(registry, concurrency=5).run()

    doomed.refresh_from_db()
    kept.refresh_from_db()
    assert doomed.status == ExecutionStatus.CANCELLED
    assert ran(doomed) == [("wait", TaskRunStatus.CANCELLED)]
    assert kept.status == ExecutionStatus.COMPLETED


def test_a_task_blocking_the_loop_fails_and_the_steps_it_held_up_run_again(registry, monkeypatch):
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(timing, "ABANDON_GRACE_SECONDS", 0.2)
    blocker = start(
        registry,
        flow_doc([{**task("block", "block", seconds=1.5), "timeout_seconds": 0.1}], flow_id="b"),
    )
    innocent = start(registry, flow_doc([task("wait", "pause", seconds=1.0)], flow_id="i"))

    engine.Dispatcher(registry, concurrency=5).run()

    blocker.refresh_from_db()
    assert blocker.status == ExecutionStatus.FAILED
    assert "blocked its event loop" in blocker.error
    # The innocent step could not finish on the stuck loop: recorded LOST and run again, on
    # a fresh loop, as a new attempt.
    assert ran(innocent) == [("wait", TaskRunStatus.LOST), ("wait", TaskRunStatus.SUCCESS)]
    assert "blocked this worker's event loop" in innocent.steps.get(seq=1).error
    assert innocent.steps.get(seq=2).attempt == 2
    innocent.refresh_from_db()
    assert innocent.status == ExecutionStatus.COMPLETED


def test_a_task_runs_on_the_thread_that_runs_the_dispatcher_without_a_hand_off(registry):
    # No thread hop a step (issue 26): the task loop runs on the dispatcher's own thread.
    execution = start(
        registry, flow_doc([task("a", "whereami"), task("b", "whereami")], flow_id="here")
    )

    engine.Dispatcher(registry).run()

    threads = {step.result["thread"] for step in TaskRun.objects.filter(execution=execution)}
    assert threads == {threading.get_ident()}


def test_blocking_work_a_task_runs_on_a_thread_holds_up_no_other_task(registry):
    slow = start(registry, flow_doc([task("sync", "offload", seconds=1.0)], flow_id="slow"))
    quick = start(
        registry,
        flow_doc([task(f"t{i}", "pause", seconds=0.05) for i in range(3)], flow_id="quick"),
    )

    engine.Dispatcher(registry, concurrency=5).run()

    for execution in (slow, quick):
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.COMPLETED
    # The quick flow's three steps all ended while the slow one's thread still slept.
    assert max(end for _, end in windows(quick)) < windows(slow)[0][1]


@pytest.mark.django_db(transaction=True)
def test_a_task_blocking_the_loop_for_good_is_given_up_by_the_watchdog(
    registry, monkeypatch, settings
):
    # Blocks far longer than its timeout: the watchdog, on its own thread and connection,
    # fails it and sends the step it held up back to the queue while it still blocks; the
    # dispatcher, once the blocking code returns, writes nothing more.
    settings.FLOW_STUCK_LOOP_SECONDS = 0.3
    monkeypatch.setattr(timing, "ABANDON_GRACE_SECONDS", 0.2)
    blocker = start(
        registry,
        flow_doc([{**task("block", "block", seconds=4), "timeout_seconds": 0.1}], flow_id="b"),
    )
    # Its own timeout runs out too while it waits behind the blocker: it is not the culprit.
    innocent = start(
        registry,
        flow_doc([{**task("wait", "pause", seconds=0.5), "timeout_seconds": 0.1}], flow_id="i"),
    )
    began = time.monotonic()

    assert engine.Dispatcher(registry, concurrency=5).run() == 0  # recorded none itself

    assert time.monotonic() - began >= 4  # it returned once the blocking code had
    blocker.refresh_from_db()
    assert blocker.status == ExecutionStatus.FAILED
    assert "blocked its event loop" in blocker.error
    failed = blocker.steps.get()
    # Failed at its timeout, grace and FLOW_STUCK_LOOP_SECONDS (plus a watchdog look), not
    # when its blocking code returned.
    assert (failed.ended_at - failed.started_at).total_seconds() < 2.5
    assert list(innocent.steps.order_by("seq").values_list("status", "attempt")) == [
        (TaskRunStatus.LOST, 1),
        (TaskRunStatus.PENDING, 2),  # queued for a worker that is not stuck
    ]
    assert "blocked this worker's event loop" in innocent.steps.get(seq=1).error


def test_a_step_held_up_by_another_tasks_blocking_is_not_counted_as_lost_with_its_worker(
    registry, monkeypatch, settings
):
    # Two losses in a row would fail it, but the first was another task's doing.
    settings.FLOW_MAX_LOST_ATTEMPTS = 2
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)
    monkeypatch.setattr(timing, "ABANDON_GRACE_SECONDS", 0.2)
    start(
        registry,
        flow_doc([{**task("block", "block", seconds=1.5), "timeout_seconds": 0.1}], flow_id="b"),
    )
    innocent = start(registry, flow_doc([task("wait", "pause", seconds=1.0)], flow_id="i"))
    real_advance = engine.Dispatcher.advance

    def worker_dies_in_the_second_attempt(self, slot, outcome):
        if slot.step.task_name == "wait" and slot.step.attempt == 2:
            raise WorkerKilled
        return real_advance(self, slot, outcome)

    monkeypatch.setattr(engine.Dispatcher, "advance", worker_dies_in_the_second_attempt)
    with pytest.raises(WorkerKilled):
        engine.Dispatcher(registry, concurrency=5).run()
    TaskRun.objects.filter(execution=innocent, status=TaskRunStatus.RUNNING).update(
        lease_expires_at=F("started_at")
    )

    assert engine.reap()["lost"] == 1

    assert ran(innocent) == [
        ("wait", TaskRunStatus.LOST),  # held up by the blocked loop
        ("wait", TaskRunStatus.LOST),  # its worker died
        ("wait", TaskRunStatus.PENDING),  # runs again: lost with its worker once only
    ]


def test_a_long_linear_flow_runs_to_the_end_in_one_job(registry):
    execution = start(registry, flow_doc([task(f"t{i}", "noop") for i in range(50)]))

    assert engine.Dispatcher(registry).run() == 50

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_database_hiccup_while_watching_is_retried_at_the_next_tick(registry, monkeypatch):
    from django.db import OperationalError

    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)
    execution = start(registry, flow_doc([task("wait", "pause", seconds=0.3)], flow_id="w"))
    real_watch = engine.Dispatcher.watch
    calls = []

    def flaky_watch(self, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real_watch(self, **kwargs)

    monkeypatch.setattr(engine.Dispatcher, "watch", flaky_watch)

    engine.Dispatcher(registry).run()

    execution.refresh_from_db()
    assert len(calls) > 1
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("wait", "SUCCESS")]


def test_recording_a_step_is_tried_once_more_after_a_database_error(registry, monkeypatch):
    from django.db import OperationalError

    execution = start(registry, flow_doc([task("a", "noop"), task("b", "noop")], flow_id="r"))
    failures = []

    def failing_once(real):
        def write(*args, **kwargs):
            if not failures:
                failures.append(1)
                raise OperationalError("connection reset")
            return real(*args, **kwargs)

        return write

    # Whichever way the step is written: in one statement (PostgreSQL) or the general way.
    monkeypatch.setattr(record, "write", failing_once(record.write))
    monkeypatch.setattr(record, "write_in_one", failing_once(record.write_in_one))

    engine.Dispatcher(registry).run()

    execution.refresh_from_db()
    assert failures == [1]
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", "SUCCESS"), ("b", "SUCCESS")]


def test_a_step_taken_over_mid_batch_does_not_cost_the_others_their_results(registry):
    taken_over_mid_batch(registry)


@pytest.mark.django_db(transaction=True)
def test_a_step_taken_over_mid_batch_rolls_back_outside_any_outer_transaction(registry):
    # As in a worker: no test transaction around it, so the batch is the outermost one
    # (with the ORM broker, BEGIN and COMMIT sent straight to the driver).
    taken_over_mid_batch(registry)


def taken_over_mid_batch(registry: TaskRegistry) -> None:
    executions = [
        start(registry, flow_doc([task("a", "noop")], flow_id=f"batch{i}")) for i in range(3)
    ]
    dispatcher = engine.Dispatcher(registry, concurrency=10)
    try:
        dispatcher.fill()  # claims all three at once and starts their tasks
        assert len(dispatcher.slots) == 3
        for slot in dispatcher.slots.values():
            slot.flight.future.result(timeout=5)
        # Meanwhile the reaper gave the middle one's step to another worker.
        taken = executions[1]
        TaskRun.objects.filter(execution=taken).update(worker="elsewhere:1")
        for slot in list(dispatcher.slots.values()):
            dispatcher.advance(slot, outcome.finish(slot.flight, slot.definition))
        dispatcher.flush()  # one batch of three
    finally:
        dispatcher.loop.close()

    for execution in (executions[0], executions[2]):
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.COMPLETED
        assert ran(execution) == [("a", "SUCCESS")]
    taken.refresh_from_db()
    # Nothing of the batch's rolled-back first try is left on it: not counted, not ended.
    assert (taken.status, taken.steps_taken) == (ExecutionStatus.RUNNING, 0)
    assert list(TaskRun.objects.filter(execution=taken).values_list("status", "worker")) == [
        (TaskRunStatus.RUNNING, "elsewhere:1")
    ]
    assert not dispatcher.slots


def test_a_busy_job_takes_executions_started_after_it_began(registry):
    first = start(registry, flow_doc([task("wait", "pause", seconds=0.5)], flow_id="first"))
    dispatcher = engine.Dispatcher(registry, concurrency=10)
    real_fill = dispatcher.fill
    later: list[Execution] = []

    def fill_then_start_another() -> None:
        real_fill()
        if not later:  # a client starts one while the job's own task waits
            later.append(start(registry, flow_doc([task("a", "noop")], flow_id="later")))

    dispatcher.fill = fill_then_start_another  # type: ignore[method-assign]
    dispatcher.run()

    first.refresh_from_db()
    second = Execution.objects.get(pk=later[0].pk)
    assert first.status == second.status == ExecutionStatus.COMPLETED
    # Claimed by this job's next look (within FILL_INTERVAL_SECONDS), not after the wait.
    assert TaskRun.objects.get(execution=second).worker == dispatcher.me
    assert second.ended_at < first.ended_at


def test_a_job_with_room_and_nothing_to_take_looks_less_and_less_often(registry):
    first = start(registry, flow_doc([task("wait", "pause", seconds=1.2)], flow_id="alone"))
    dispatcher = engine.Dispatcher(registry, concurrency=10)
    real_fill = dispatcher.fill
    looks: list[float] = []

    def counted_fill() -> None:
        looks.append(dispatcher.fill_every)
        real_fill()

    dispatcher.fill = counted_fill  # type: ignore[method-assign]
    dispatcher.run()

    first.refresh_from_db()
    assert first.status == ExecutionStatus.COMPLETED
    # At a steady 50 ms it would have looked about 24 times in 1.2 s; backing off (50, 100,
    # 200, 400, 800 ms) it looks a handful of times.
    assert 3 <= len(looks) <= 8, looks
    assert looks == sorted(looks)
