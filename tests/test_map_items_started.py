"""A map's next items started in one statement (``transitions.start_items`` on
``flows.sql.writes.update_matching``), and launched by the worker that started them from the rows
that statement returned, without reading their executions or flow version again."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flows import engine
from flows.engine import claim, transitions
from flows.models import Execution, ExecutionStatus, FanOut
from tests.factories import children_of, flow_doc, mapped, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


def fields(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def waiting_map(items: int, at_once: int) -> Execution:
    """A map whose first ``at_once`` items started and wait for a signal; the others
    CREATED."""
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("hold", "wait_for_signal", signal="go")],
                max_concurrency=at_once,
            )
        ],
        flow_id=f"started_{items}_{at_once}",
    )
    execution = start_execution(document, input={"items": [f"ü{i}" for i in range(items)]})
    run_to_end(execution.id)
    return Execution.objects.get(pk=execution.id)


def printing_map(items: list[Any], at_once: int) -> Execution:
    """A started map printing each of ``items``, ``at_once`` at a time."""
    document = flow_doc(
        [mapped("each", "${input.items}", [task("echo", "print", message="${item}")],
                max_concurrency=at_once)],
        flow_id=f"printing_{len(items)}_{at_once}",
    )  # fmt: skip
    return start_execution(document, input={"items": items})


def run_as_a_worker(execution: Execution, concurrency: int) -> Execution:
    """Jobs as a worker runs them until the execution completes (not inline: a worker starts
    map items for itself); the execution as it ends."""
    for _ in range(20):
        engine.Dispatcher(concurrency=concurrency).run()
        if Execution.objects.get(pk=execution.id).status == ExecutionStatus.COMPLETED:
            break
    return Execution.objects.get(pk=execution.id)


def test_items_start_in_one_statement_returning_the_rows_the_orm_reads_after() -> None:
    parent = waiting_map(items=6, at_once=2)
    step_id = parent.steps.get(task_name="each").pk
    children = children_of(parent, "each")
    assert [c.status for c in children] == ["RUNNING"] * 2 + ["CREATED"] * 4
    transitions.cancel_now([children[3].id], timezone.now(), error="cancelled by request")

    now = timezone.now()
    with transaction.atomic():
        started = transitions.start_items(step_id, 1, 5, now, claimed=True)

    # Item 1 had started and item 3 was cancelled: only 2 and 4 moved, in item order.
    assert [item.item_index for item in started] == [2, 4]
    for item in started:
        assert fields(item) == fields(Execution.objects.get(pk=item.pk))
        assert (item.status, item.queued_at, item.started_at) == ("RUNNING", now, now)
    statuses = [c.status for c in children_of(parent, "each")]
    assert statuses == ["RUNNING", "RUNNING", "RUNNING", "CANCELLED", "RUNNING", "CREATED"]


def test_items_started_for_any_worker_are_queued_without_a_start_time() -> None:
    parent = waiting_map(items=3, at_once=1)
    step_id = parent.steps.get(task_name="each").pk
    now = timezone.now()
    with transaction.atomic():
        started = transitions.start_items(step_id, 1, 3, now, claimed=False)

    assert [(i.item_index, i.status, i.queued_at, i.started_at) for i in started] == [
        (1, ExecutionStatus.QUEUED, now, None),
        (2, ExecutionStatus.QUEUED, now, None),
    ]
    assert [fields(i) for i in started] == [fields(c) for c in children_of(parent, "each")[1:]]


def test_a_worker_launches_the_items_it_started_without_reading_them_again(monkeypatch) -> None:
    execution = printing_map([f"v{i}" for i in range(12)], at_once=3)
    loads: list[list[Any]] = []
    real_load = claim.load

    def counted(steps: list[Any], *args: Any, **kwargs: Any) -> Any:
        loads.append([step.execution_id for step in steps])
        return real_load(steps, *args, **kwargs)

    monkeypatch.setattr(claim, "load", counted)
    parent = run_as_a_worker(execution, concurrency=10)

    assert parent.status == ExecutionStatus.COMPLETED
    children = children_of(parent, "each")
    assert [c.status for c in children] == ["COMPLETED"] * 12
    result = parent.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == [f"v{i}" for i in range(12)]
    # Claims loaded the parent's steps and the first 3 items; the 9 items started as others
    # ended were launched from the rows their start returned.
    later = {c.id for c in children[3:]}
    assert not any(later & set(ids) for ids in loads)
    assert FanOut.objects.get(step__execution=parent).done == 12


def test_counting_ended_items_reads_no_fanout_row_apart_from_its_update(monkeypatch) -> None:
    execution = printing_map(list(range(8)), at_once=2)
    with CaptureQueriesContext(connection) as queries:
        parent = run_as_a_worker(execution, concurrency=1)  # one item ends a batch: 8 batches

    assert parent.status == ExecutionStatus.COMPLETED
    fanout = [q["sql"] for q in queries.captured_queries if '"flows_fanout"' in q["sql"]]
    counts = [sql for sql in fanout if sql.startswith("UPDATE") and '"done" + ' in sql]
    if connection.vendor == "postgresql":
        # Items 0-6 counted by the statement that records them (test_sql_one_trip_items.py);
        # item 7, the last, tried there too, then counted the general way.
        assert len([sql for sql in fanout if sql.startswith("WITH f AS")]) == 8
        assert len(counts) == 1
    else:
        assert len(counts) == 8  # each item's end counted, the counts returned by that UPDATE
    reads_of_it = [sql for sql in fanout if sql.startswith("SELECT") and "FOR UPDATE" not in sql]
    assert len(reads_of_it) == 1  # the join's, when the map step runs again
