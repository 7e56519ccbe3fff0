"""PostgreSQL: a batch of a map's items recorded in ONE statement (issue 26).

``flows/sql/onetrip.py`` with ``MapItems``: the items that ended counted on their map step's
FanOut row and as many of its next items started (claimed by the worker that recorded them,
their first steps written) in the statement that closes their steps. Recorded the general way,
a batch held the FanOut row for ten round trips and the Python between them, and two workers
running one map took turns on it. What the statement cannot decide goes the general way: an
item that fails, the map's last items, a cancel, children of a parallel step. These tests run
on PostgreSQL (CI's second and third passes); SQLite records the general way.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from flows import engine, services
from flows.engine import timing
from flows.models import Execution, ExecutionStatus, FanOut, TaskRun
from flows.sql import onetrip
from tests.factories import children_of, flow_doc, mapped, parallel, start_execution, task

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL only: one round trip a batch"
    ),
]


def fields(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def map_flow(items: int, *, iterator: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
    iterator = iterator or [task("echo", "print", message="${item}")]
    return flow_doc(
        [mapped("each", "${input.items}", iterator, max_concurrency=1, **extra)],
        flow_id=f"items_{items}",
    )


def run_as_a_worker(execution: Execution) -> Execution:
    """Jobs as a worker with one slot runs them (one item ends a batch) until the execution
    ends; the execution as it ends."""
    for _ in range(40):
        engine.Dispatcher(concurrency=1).run()
        done = Execution.objects.get(pk=execution.id)
        if done.status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, "CANCELLED"):
            return done
    return Execution.objects.get(pk=execution.id)


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """Every call of the statement with a map's items: (items ended, items started, wrote)."""
    calls: list[tuple[int, int, bool]] = []
    real = onetrip.record

    def watched(*args: Any, items: onetrip.MapItems | None = None, **kwargs: Any) -> bool:
        wrote = real(*args, items=items, **kwargs)
        if items is not None:
            calls.append((items.ended, len(items.started), wrote))
        return wrote

    monkeypatch.setattr(onetrip, "record", watched)
    return calls


def _map_statements(items: int) -> int:
    """Statements a worker sends to run a map of ``items`` printing items, one at a time."""
    execution = start_execution(map_flow(items), input={"items": list(range(items))})
    with CaptureQueriesContext(connection) as run:
        parent = run_as_a_worker(execution)
    assert parent.status == ExecutionStatus.COMPLETED, parent.error
    result = parent.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == [str(i) for i in range(items)]
    return len(run.captured_queries)


def test_each_item_of_a_map_costs_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    # The looks a dispatcher takes on its clock (for more work, for cancels) out of the count.
    monkeypatch.setattr(timing, "FILL_INTERVAL_SECONDS", 3600.0)
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 3600.0)
    _map_statements(3)  # a first run fills what the process caches
    # A map of 12 and one of 6 differ by 6 items that ended, each of which started the next:
    # the claim of the first item, the last item's end and the map step's join are in both.
    six = _map_statements(6)
    assert _map_statements(12) - six == 6


def test_a_batch_counts_its_items_and_starts_as_many_claimed_here(records: list) -> None:
    execution = start_execution(map_flow(5), input={"items": list(range(5))})

    parent = run_as_a_worker(execution)

    assert parent.status == ExecutionStatus.COMPLETED, parent.error
    # Items 0-3 ended one at a time, each starting the next; item 4's end decided the map
    # step, which the statement leaves to the general way (it wrote nothing).
    assert records == [(1, 1, True)] * 4 + [(1, 0, False)]
    step = parent.steps.get(task_name="each")
    assert (step.status, step.result["count"], step.result["failed"]) == ("SUCCESS", 5, 0)
    fan = FanOut.objects.get(step=step)
    assert (fan.total, fan.started, fan.done, fan.failed) == (5, 5, 5, 0)
    children = children_of(parent, "each")
    assert [c.status for c in children] == ["COMPLETED"] * 5
    assert [c.result["message"] for c in children] == [str(i) for i in range(5)]
    assert all(c.steps_taken == 1 and c.ended_at is not None for c in children)


def test_the_started_items_are_the_rows_the_orm_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[dict, dict, dict, dict]] = []
    real = onetrip.record

    def compared(*args: Any, items: onetrip.MapItems | None = None, **kwargs: Any) -> bool:
        wrote = real(*args, items=items, **kwargs)
        for execution, step in items.started if items is not None else []:
            # Committed by the statement: what the worker runs is what is stored.
            stored_execution = Execution.objects.get(pk=execution.pk)
            stored_step = TaskRun.objects.get(pk=step.pk)
            seen.append((fields(execution), fields(stored_execution), fields(step),
                         fields(stored_step)))  # fmt: skip
            assert not step._state.adding
        return wrote

    monkeypatch.setattr(onetrip, "record", compared)
    items = ["ü ' \" ; DROP TABLE x; --", 1.5, "", "x" * 300]
    execution = start_execution(map_flow(4), input={"items": items})

    parent = run_as_a_worker(execution)

    assert parent.status == ExecutionStatus.COMPLETED, parent.error
    assert len(seen) == 3  # items 1, 2 and 3, each started by its predecessor's end
    for returned, stored, step, stored_step in seen:
        assert returned == stored
        assert (returned["status"], returned["queued_at"]) == ("RUNNING", returned["started_at"])
        assert step == stored_step
        assert (step["status"], step["seq"], step["task_name"]) == ("RUNNING", 1, "echo")
    result = parent.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == [str(i) for i in items]


@pytest.mark.parametrize(
    ("tolerated", "status"), [(2, "COMPLETED"), ("50%", "COMPLETED"), ("10%", "FAILED")]
)
def test_a_failed_item_goes_the_general_way_and_the_tolerance_holds_after_it(
    records: list, tolerated: Any, status: str
) -> None:
    rates = [0, 1, 0, 1, 0, 0]
    iterator = [task("maybe", "fetch_data", failure_rate="${item.rate}")]
    document = map_flow(6, iterator=iterator, tolerated_failures=tolerated)
    execution = start_execution(document, input={"items": [{"rate": r} for r in rates]})

    parent = run_as_a_worker(execution)

    assert parent.status == status, parent.error
    step = parent.steps.get(task_name="each")
    if status == "COMPLETED":
        assert [r is None for r in step.result["results"]] == [bool(r) for r in rates]
        assert (step.result["count"], step.result["failed"]) == (6, 2)
        # Item 0 in the statement; items 1 and 3 failed (the general way); 2 and 4, after a
        # tolerated failure, in the statement again; 5 the last (the general way).
        assert records == [(1, 1, True), (1, 1, True), (1, 1, True), (1, 0, False)]
    else:
        # 1 of 6 is past 10 %: the failure decides the map step; nothing starts after it.
        assert "1 of 6 items failed" in step.error
        assert records == [(1, 1, True)]
        statuses = [c.status for c in children_of(parent, "each")]
        assert statuses[:2] == ["COMPLETED", "FAILED"]
        assert "RUNNING" not in statuses and "COMPLETED" not in statuses[2:]


def test_a_cancel_asked_before_the_statement_goes_the_general_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = onetrip.record
    calls: list[bool] = []

    def cancelled_first(*args: Any, items: onetrip.MapItems | None = None, **kwargs: Any) -> bool:
        if items is not None and not calls:
            # The operator cancels the whole run while the first item's end is on its way.
            services.execution_cancel(execution_id=execution.id)
        wrote = real(*args, items=items, **kwargs)
        if items is not None:
            calls.append(wrote)
        return wrote

    monkeypatch.setattr(onetrip, "record", cancelled_first)
    execution = start_execution(map_flow(4), input={"items": list(range(4))})

    parent = run_as_a_worker(execution)

    assert calls == [False]  # the item's execution was asked to cancel: nothing written
    assert parent.status == "CANCELLED"
    statuses = [c.status for c in children_of(parent, "each")]
    assert statuses == ["CANCELLED"] * 4
    assert FanOut.objects.get(step__execution=parent).started == 1  # no item started after


def test_branches_of_a_parallel_step_go_the_general_way(records: list) -> None:
    document = flow_doc(
        [parallel("both", {"a": [task("a1"), task("a2")], "b": [task("b1")]})],
        flow_id="branches_general",
    )
    execution = start_execution(document)

    parent = run_as_a_worker(execution)

    assert parent.status == ExecutionStatus.COMPLETED, parent.error
    assert records == []  # never tried: a branch's end decides nothing the statement knows
    assert FanOut.objects.get(step__execution=parent).done == 2
