"""Named concurrency limits in the engine (flows/engine/limits.py), run inline on the real
claim, dispatcher and record: a slot is taken with the claim, freed with the record, handed
to the next waiter; a step that cannot take one waits in the database."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from flows import engine, services
from flows.engine.dispatcher import Dispatcher
from flows.models import (
    ACTIVE_STATUSES,
    ConcurrencyLimit,
    Execution,
    ExecutionStatus,
    LimitHold,
    TaskRun,
    TaskRunStatus,
)
from flows.waiting import waiting_of
from tests.factories import flow_doc, task

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=30)


def limited(name: str = "call", seconds: float = 0.0, **parameters: Any) -> dict[str, Any]:
    return {**task(name, "wait", seconds=seconds, **parameters), "limits": ["api"]}


def submit(document: dict[str, Any], count: int, **input: Any) -> list[Execution]:
    version = services.flow_create(document=document)
    return [
        services.execution_submit(flow_version=version, input=dict(input))[0] for _ in range(count)
    ]


def drain(concurrency: int = 20, give_up_after: float = 60.0) -> None:
    """Run dispatchers until no execution is active (a dispatcher stops when nothing is in
    flight: a waiter woken by the last step it recorded is the next one's; a step waiting
    for a rate's window is due later)."""
    deadline = time.monotonic() + give_up_after
    while Execution.objects.filter(status__in=ACTIVE_STATUSES).exists():
        assert time.monotonic() < deadline, "executions still active"
        if not Dispatcher(concurrency=concurrency).run():
            time.sleep(0.02)


def peak(steps: list[TaskRun]) -> int:
    """The most steps in flight at once, from their recorded start and end times."""
    edges = sorted(
        [(s.started_at, 1) for s in steps] + [(s.ended_at, -1) for s in steps],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    top = now = 0
    for _, change in edges:
        now += change
        top = max(top, now)
    return top


def test_a_limit_of_three_runs_at_most_three_steps_at_once_and_every_step_completes() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=3)
    submit(flow_doc([limited(seconds=0.02), task("after", "noop")]), 24)

    drain()

    assert set(Execution.objects.values_list("status", flat=True)) == {ExecutionStatus.COMPLETED}
    calls = list(TaskRun.objects.filter(task_name="call"))
    assert len(calls) == 24
    assert peak(calls) == 3
    assert not LimitHold.objects.exists()  # every slot freed with its step


def test_a_step_that_cannot_take_a_slot_waits_in_the_database_with_its_place() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=1)
    submit(flow_doc([limited()]), 3)

    claimed = engine.claim_steps("w1", LEASE, 10)

    assert claimed is not None and len(claimed.steps) == 1
    waiting = TaskRun.objects.filter(status=TaskRunStatus.PENDING).order_by("id")
    assert [w.worker for w in waiting] == ["", ""]  # no worker held
    assert [waiting_of(w) for w in waiting] == [
        {
            "kind": "limit", "signal": None, "prompt": "", "until": None,
            "received": False, "limit": "api", "place": place,
        }
        for place in (1, 2)
    ]  # fmt: skip
    assert all(w.woken_at == engine.FOREVER for w in waiting)  # not polled: woken by a slot
    assert engine.claim_steps("w2", LEASE, 10) is None  # nothing ready: they wait


def test_a_freed_slot_goes_to_the_oldest_waiter_in_the_recording_transaction() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=1)
    _first, second, third = submit(flow_doc([limited()]), 3)
    engine.claim_steps("w1", LEASE, 10)  # first runs, the others wait

    _finish(TaskRun.objects.get(status=TaskRunStatus.RUNNING))  # hands the slot to second's

    second_step = TaskRun.objects.get(execution=second)
    assert second_step.woken_at < engine.FOREVER  # due now: the next claim takes it
    assert LimitHold.objects.get(step=second_step).held
    assert TaskRun.objects.get(execution=third).woken_at == engine.FOREVER
    drain()
    assert Execution.objects.filter(status=ExecutionStatus.COMPLETED).count() == 3


def test_a_step_whose_worker_died_frees_its_slot_when_the_reaper_takes_it() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=1)
    _dead, waiter = submit(flow_doc([limited()]), 2)
    engine.claim_steps("dead-worker", timedelta(seconds=-1), 10)  # its lease already over
    assert TaskRun.objects.get(execution=waiter).woken_at == engine.FOREVER

    assert engine.recover()["lost"] == 1

    assert TaskRun.objects.get(execution=waiter).woken_at < engine.FOREVER
    drain()
    assert set(Execution.objects.values_list("status", flat=True)) == {ExecutionStatus.COMPLETED}
    assert not LimitHold.objects.exists()


def test_a_waiting_step_cancelled_leaves_no_slot_taken() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=1)
    _running, granted, last = submit(flow_doc([limited()]), 3)
    engine.claim_steps("w1", LEASE, 10)
    _finish(TaskRun.objects.get(status=TaskRunStatus.RUNNING))  # the slot goes to `granted`

    services.execution_cancel(execution_id=granted.id)
    engine.recover()  # the reaper's pass hands the slot on

    assert TaskRun.objects.get(execution=last).woken_at < engine.FOREVER
    drain()
    assert Execution.objects.get(pk=last.pk).status == ExecutionStatus.COMPLETED


def test_round_robin_starts_the_second_tenant_within_the_next_two_freed_slots() -> None:
    ConcurrencyLimit.objects.create(
        name="api", max_in_flight=10, key="parameters.tenant", fairness="round_robin"
    )
    document = flow_doc([limited(tenant="${input.tenant}")])
    submit(document, 1000, tenant="A")
    engine.claim_steps("w1", LEASE, 1000)  # 10 of A's run, the other 990 wait
    submit(document, 10, tenant="B")
    engine.claim_steps("w1", LEASE, 100)  # B's 10 wait behind them
    assert LimitHold.objects.filter(key="B", held=False).count() == 10

    starts = []
    for _ in range(2):  # two slots free, one after the other
        step = TaskRun.objects.filter(status=TaskRunStatus.RUNNING).order_by("id").first()
        assert step is not None
        _finish(step)
        claimed = engine.claim_steps("w2", LEASE, 10)
        assert claimed is not None
        starts += [claimed.executions[s.execution_id].input["tenant"] for s in claimed.steps]

    assert "B" in starts, starts


def _finish(step: TaskRun) -> None:
    """Record ``step`` as a worker would, through the one record path."""
    from flows.engine import record
    from flows.engine.inputs import flow_definition
    from flows.engine.outcome import StepOutcome
    from flows.engine.routing import decide

    execution = Execution.objects.select_related("flow_version").get(pk=step.execution_id)
    definition = flow_definition(execution, engine.fanout.registry())
    finished = decide(
        execution, definition, step, StepOutcome(TaskRunStatus.SUCCESS, result={}), {}
    )
    record.write_alone(finished, step.worker, LEASE, continue_here=False)


def most_starts_in_a_window(starts: list[Any], seconds: float) -> int:
    """The most recorded starts in any window of ``seconds`` (each window opening at one)."""
    starts = sorted(starts)
    return max(
        sum(1 for t in starts[i:] if t - at < timedelta(seconds=seconds))
        for i, at in enumerate(starts)
    )


def test_100_steps_at_20_a_second_take_4_5_s_and_no_second_holds_more_than_20() -> None:
    ConcurrencyLimit.objects.create(
        name="api", max_in_flight=100, rate_count=20, rate_per_seconds=1
    )
    submit(flow_doc([limited(seconds=0.5)]), 100)

    drain(concurrency=100)

    steps = list(TaskRun.objects.all())
    assert len(steps) == 100
    assert most_starts_in_a_window([s.started_at for s in steps], 1.0) <= 20
    # 5 windows of 20 starts: the last starts 4 s after the first and runs its 0.5 s.
    first = min(s.started_at for s in steps)
    last = max(s.ended_at for s in steps)
    assert last - first >= timedelta(seconds=4.5)


def test_a_deleted_limit_lets_its_waiters_run() -> None:
    ConcurrencyLimit.objects.create(name="api", max_in_flight=1)
    submit(flow_doc([limited()]), 3)
    engine.claim_steps("w1", LEASE, 10)

    services.limit_delete(name="api")

    assert not TaskRun.objects.filter(woken_at=engine.FOREVER).exists()
    _finish(TaskRun.objects.get(status=TaskRunStatus.RUNNING))
    drain()
    assert set(Execution.objects.values_list("status", flat=True)) == {ExecutionStatus.COMPLETED}
