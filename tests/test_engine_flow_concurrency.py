"""A flow's own limit on its running executions: ``max_concurrent_executions`` with the
policies ``queue`` (FIFO, holding no worker), ``skip`` and ``cancel_oldest``, per
``concurrency_key``. Admitted in ``services.execution_start``; the next queued one in the
transaction that ends one (flows/engine/admission.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections

from flows import engine, services
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from flows.waiting import waiting_of
from tests.factories import flow_doc, run_to_end, task

pytestmark = pytest.mark.django_db


def limited_flow(**concurrency: Any) -> dict[str, Any]:
    return flow_doc([task("work", "noop")], flow_id="limited", **concurrency)


def start(document: dict[str, Any], count: int, **input: Any) -> list[Execution]:
    version = services.flow_create(document=document)
    return [
        services.execution_submit(flow_version=version, input=dict(input))[0] for _ in range(count)
    ]


def fresh(execution: Execution) -> Execution:
    return Execution.objects.get(pk=execution.pk)


def first_step(execution: Execution) -> TaskRun:
    return TaskRun.objects.get(execution=execution, seq=1)


def test_queue_holds_the_ones_over_the_limit_waiting_in_order_and_admits_them_fifo() -> None:
    runs = start(limited_flow(max_concurrent_executions=2), 5)

    assert [fresh(r).concurrency_held for r in runs] == [True, True, False, False, False]
    queued = [first_step(r) for r in runs[2:]]
    assert [waiting_of(s)["place"] for s in queued] == [1, 2, 3]  # type: ignore[index]
    assert {waiting_of(s)["limit"] for s in queued} == {"flow"}  # type: ignore[index]
    assert all(s.woken_at == engine.FOREVER for s in queued)  # no worker, no polling
    assert (
        engine.claim_steps("w", timedelta(seconds=30), 10).steps
        == [  # type: ignore[union-attr]
            *[first_step(r) for r in runs[:2]]
        ]
    )

    # The claimed ones end; each end admits the next queued one, oldest first.
    order = []
    while Execution.objects.filter(status__in=("QUEUED", "RUNNING")).exists():
        for run in runs:
            if fresh(run).status == ExecutionStatus.RUNNING:
                step = TaskRun.objects.get(execution=run, status=TaskRunStatus.RUNNING)
                _finish(step)
                order.append(runs.index(run))
        for run in runs:
            if fresh(run).status == ExecutionStatus.QUEUED and fresh(run).concurrency_held:
                run_to_end(run.id)
                order.append(runs.index(run))
    assert order[:2] == [0, 1] and sorted(order) == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]
    assert {fresh(r).status for r in runs} == {ExecutionStatus.COMPLETED}


def test_an_end_admits_the_next_in_its_own_transaction() -> None:
    first, second, third = start(limited_flow(max_concurrent_executions=1), 3)

    run_to_end(first.id)

    assert fresh(second).concurrency_held and first_step(second).woken_at < engine.FOREVER
    assert first_step(second).waiting is None
    assert not fresh(third).concurrency_held


def test_skip_ends_the_one_over_the_limit_cancelled_with_the_reason() -> None:
    first, second = start(limited_flow(max_concurrent_executions=1, concurrency_policy="skip"), 2)

    second = fresh(second)
    assert fresh(first).status == ExecutionStatus.QUEUED
    assert second.status == ExecutionStatus.CANCELLED
    assert "skipped" in second.error and "max_concurrent_executions 1" in second.error
    assert not TaskRun.objects.filter(execution=second).exists()


def test_cancel_oldest_stops_the_oldest_and_starts_the_new_one() -> None:
    document = limited_flow(max_concurrent_executions=1, concurrency_policy="cancel_oldest")
    (oldest,) = start(document, 1)
    (newest,) = start(document, 1)

    assert fresh(oldest).status == ExecutionStatus.CANCELLED  # no step ran: ended at once
    assert fresh(newest).concurrency_held
    assert run_to_end(newest.id).status == ExecutionStatus.COMPLETED


def test_cancel_oldest_with_a_running_step_admits_the_new_one_when_it_ends() -> None:
    document = limited_flow(max_concurrent_executions=1, concurrency_policy="cancel_oldest")
    (oldest,) = start(document, 1)
    engine.claim_steps("w", timedelta(seconds=30), 10)
    (newest,) = start(document, 1)

    assert fresh(oldest).cancel_requested and not fresh(newest).concurrency_held  # never two
    _finish(TaskRun.objects.get(execution=oldest, status=TaskRunStatus.RUNNING))

    assert fresh(oldest).status == ExecutionStatus.CANCELLED
    assert fresh(newest).concurrency_held
    assert run_to_end(newest.id).status == ExecutionStatus.COMPLETED


def test_each_key_has_its_own_places() -> None:
    document = limited_flow(max_concurrent_executions=1, concurrency_key="input.tenant")
    a1, a2 = start(document, 2, tenant="A")
    (b1,) = start(document, 1, tenant="B")

    assert [fresh(e).concurrency_held for e in (a1, a2, b1)] == [True, False, True]
    assert fresh(a2).concurrency_key == "A" and waiting_of(first_step(a2))["place"] == 1  # type: ignore[index]


def test_a_key_the_input_cannot_give_is_a_400_and_starts_nothing(api: Any) -> None:
    services.flow_create(
        document=limited_flow(max_concurrent_executions=1, concurrency_key="input.tenant.size()")
    )
    response = api.post("/api/flows/limited/executions/", {"input": {}}, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "concurrency_key"
    assert not Execution.objects.exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_concurrent_executions": 0}, "max_concurrent_executions"),
        ({"max_concurrent_executions": 2, "concurrency_policy": "drop"}, "concurrency_policy"),
        ({"max_concurrent_executions": 2, "concurrency_key": "input.("}, "concurrency_key"),
        ({"concurrency_policy": "skip"}, "concurrency_policy"),
    ],
)
def test_a_bad_setting_is_refused_at_its_path(api: Any, extra: dict, field: str) -> None:
    response = api.post("/api/flows/", limited_flow(**extra), format="json")

    assert response.status_code == 400, response.content
    assert field in [e["field"] for e in response.json()["errors"]]


def _finish(step: TaskRun) -> None:
    from tests.test_engine_limits import _finish as finish

    finish(step)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent starts: PostgreSQL")
def test_concurrent_starts_never_admit_one_too_many() -> None:
    version = services.flow_create(document=limited_flow(max_concurrent_executions=3))
    created = [services.execution_create(flow_version=version) for _ in range(16)]
    barrier = threading.Barrier(len(created))
    errors: list[BaseException] = []

    def go(execution: Execution) -> None:
        try:
            barrier.wait()
            services.execution_start(execution_id=execution.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=go, args=(e,)) for e in created]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Execution.objects.filter(concurrency_held=True).count() == 3
    assert Execution.objects.filter(concurrency_held=False, status="QUEUED").count() == 13


def test_a_redrive_takes_a_free_place_or_is_refused() -> None:
    document = limited_flow(max_concurrent_executions=1, concurrency_policy="skip")
    (first,) = start(document, 1)
    services.execution_cancel(execution_id=first.id)
    (second,) = start(document, 1)  # the place is free again: it starts

    with pytest.raises(services.Conflict, match="max_concurrent_executions 1"):
        services.execution_redrive(execution_id=first.id)
    run_to_end(second.id)
    services.execution_redrive(execution_id=first.id)

    assert fresh(first).concurrency_held
    assert run_to_end(first.id).status == ExecutionStatus.COMPLETED
