"""A claim's reads with their SQL built once (``flows.sql.reads.ready_steps``, ``by_keys``)
give what the ORM's queries give: the same steps in the same order, the same rows with every
value converted as the ORM converts it; and the claim built on them starts executions as
before (a re-queued one keeps its first start)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from flows import engine
from flows.engine import claim
from flows.models import Execution, ExecutionStatus, FlowVersion, TaskRun, TaskRunStatus
from flows.sql import reads, rules
from tests.factories import flow_doc, start_execution, task

pytestmark = pytest.mark.django_db


def fields(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def both(room: int = 10, **looks: Any) -> tuple[list[dict], list[dict]]:
    """(the built-once look's steps, the ORM's), every field of each, in order."""
    now = timezone.now()
    exclude, only = list(looks.get("exclude", [])), looks.get("only")
    with transaction.atomic():
        quick = reads.ready_steps(now, exclude, only, room)
        orm = list(
            claim.ready(now, exclude=exclude, only=only)
            .order_by("woken_at")
            .select_for_update(skip_locked=True, of=("self",))[:room]
        )
    return [fields(s) for s in quick], [fields(s) for s in orm]


def test_the_ready_steps_are_those_the_orm_finds_in_its_order_with_every_value() -> None:
    assert both() == ([], [])
    executions = [
        start_execution(
            flow_doc([task("a", "print", message=f"n{i}")], flow_id=f"ready_{i}"), input={"n": i}
        )
        for i in range(4)
    ]
    quick, orm = both()
    assert quick == orm and len(quick) == 4
    assert [s["execution_id"] for s in quick] == [e.id for e in executions]  # oldest first
    assert both(room=2) == (orm[:2], orm[:2])
    assert both(exclude=[executions[0].id])[0] == orm[1:]
    assert both(only=executions[2].id)[0] == [orm[2]]

    Execution.objects.filter(pk=executions[1].id).update(pause_requested=True)
    TaskRun.objects.filter(execution_id=executions[3].id).update(
        not_before=timezone.now() + timedelta(hours=1)
    )
    quick, orm = both()
    assert quick == orm
    assert [s["execution_id"] for s in quick] == [executions[0].id, executions[2].id]


@pytest.mark.django_db(transaction=True)  # no test transaction around it
def test_the_look_for_ready_steps_locks_so_it_runs_only_inside_a_transaction() -> None:
    with pytest.raises(rules.SqlRuleError, match="inside a transaction"):
        reads.ready_steps(timezone.now(), [], None, 1)


def test_rows_by_key_are_the_orms_rows_value_for_value() -> None:
    execution = start_execution(
        flow_doc([task("a", "print", message="ünï 'x'")], flow_id="by_keys"), input={"k": [1, None]}
    )
    other = start_execution(flow_doc([task("a")], flow_id="by_keys_2"))
    keys = [execution.id, other.id]
    for model, wanted in (
        (Execution, keys),
        (FlowVersion, [execution.flow_version_id, other.flow_version_id]),
        (TaskRun, list(TaskRun.objects.values_list("pk", flat=True))),
    ):
        quick = reads.by_keys(model, wanted)
        orm = model.objects.in_bulk(wanted)
        assert set(quick) == set(orm) == set(wanted)
        assert {k: fields(v) for k, v in quick.items()} == {k: fields(v) for k, v in orm.items()}
        assert all(not obj._state.adding for obj in quick.values())  # saved rows, as the ORM's
    assert reads.by_keys(Execution, []) == {}


def test_a_claim_starts_a_queued_execution_and_a_requeued_one_keeps_its_first_start() -> None:
    fresh = start_execution(flow_doc([task("a")], flow_id="fresh"))
    again = start_execution(flow_doc([task("a")], flow_id="again"))
    first_start = timezone.now() - timedelta(hours=2)
    Execution.objects.filter(pk=again.id).update(started_at=first_start)  # resumed: QUEUED again

    claimed = engine.claim_steps("w", timedelta(seconds=30), 10)

    assert claimed is not None and len(claimed.steps) == 2
    stored = Execution.objects.in_bulk([fresh.id, again.id])
    for key, start in ((fresh.id, claimed.now), (again.id, first_start)):
        assert stored[key].status == ExecutionStatus.RUNNING
        assert stored[key].started_at == start
        # What the dispatcher runs with is what was stored.
        assert claimed.executions[key].status == ExecutionStatus.RUNNING
        assert claimed.executions[key].started_at == start
    assert {(s.status, s.worker) for s in claimed.steps} == {(TaskRunStatus.RUNNING, "w")}
    assert all(s.started_at == claimed.now for s in claimed.steps)


def test_a_claim_leaves_an_execution_cancelled_meanwhile_as_it_is() -> None:
    execution = start_execution(flow_doc([task("a")], flow_id="cancelled"))
    loaded = reads.by_keys(Execution, [execution.id])
    Execution.objects.filter(pk=execution.id).update(status=ExecutionStatus.CANCELLED)

    engine.transitions.executions_started(loaded.values(), timezone.now())

    assert Execution.objects.get(pk=execution.id).status == ExecutionStatus.CANCELLED
    assert loaded[execution.id].status == ExecutionStatus.QUEUED  # not set RUNNING in memory


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL only: SQLite serialises the claims"
)
def test_two_claims_at_once_take_different_steps_and_neither_waits() -> None:
    for i in range(2):
        start_execution(flow_doc([task("a")], flow_id=f"race_{i}"))
    taken: list[list[int]] = []
    holding, done = threading.Event(), threading.Event()

    def other_worker() -> None:
        try:
            holding.wait(10)
            with transaction.atomic():
                taken.append([s.pk for s in reads.ready_steps(timezone.now(), [], None, 2)])
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=other_worker)
    thread.start()
    with transaction.atomic():
        mine = [s.pk for s in reads.ready_steps(timezone.now(), [], None, 1)]
        holding.set()
        assert done.wait(10), "the other claim waited on this one's lock"
    thread.join()
    assert len(mine) == 1 and len(taken[0]) == 1
    assert mine != taken[0]
