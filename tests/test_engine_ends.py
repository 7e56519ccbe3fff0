"""The outbox of execution ends: one row for each top-level execution that ends, written with
its end, handled once by ``services.handle_ends``."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from flows import jobs, services
from flows.models import Execution, ExecutionEnd, ExecutionStatus, Flow
from flows.services import ends
from tests.factories import ended, failing, flow_doc, mapped, run_flow, start_execution, task

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def handled(monkeypatch):
    """Replace the registered handlers with one that notes what it is given."""
    seen: list[tuple[str, str, str]] = []

    def note(end: ExecutionEnd, execution: Execution) -> None:
        seen.append((end.flow_id, end.status, execution.status))

    monkeypatch.setattr(ends, "_handlers", {"note": note})
    return seen


def test_each_top_level_end_writes_one_row_and_a_map_s_items_none(handled) -> None:
    done = run_flow(flow_doc([task("a")], flow_id="ok_flow"))
    failed = run_flow(flow_doc([failing("a")], flow_id="bad_flow"))
    mapped_run = run_flow(flow_doc([mapped("each", [1, 2, 3], [task("item")])], flow_id="map_flow"))

    rows = list(ExecutionEnd.objects.values_list("execution_id", "flow_id", "status"))
    assert rows == [
        (done.id, "ok_flow", ExecutionStatus.COMPLETED),
        (failed.id, "bad_flow", ExecutionStatus.FAILED),
        (mapped_run.id, "map_flow", ExecutionStatus.COMPLETED),
    ]

    assert services.handle_ends() == 3
    assert handled == [
        ("ok_flow", "COMPLETED", "COMPLETED"),
        ("bad_flow", "FAILED", "FAILED"),
        ("map_flow", "COMPLETED", "COMPLETED"),
    ]
    assert not ExecutionEnd.objects.exists()
    assert services.handle_ends() == 0  # handled once
    assert len(handled) == 3


def test_a_cancel_writes_its_end(handled) -> None:
    execution = start_execution(flow_doc([task("a")]))
    services.execution_cancel(execution_id=execution.id)

    assert list(ExecutionEnd.objects.values_list("execution_id", "status")) == [
        (execution.id, ExecutionStatus.CANCELLED)
    ]


def test_a_handler_that_fails_rolls_its_work_back_and_is_tried_again_later(monkeypatch) -> None:
    calls: list[str] = []

    def writes_then_fails(end: ExecutionEnd, execution: Execution) -> None:
        calls.append(end.flow_id)
        Flow.objects.filter(pk=end.flow_id).update(name="changed by a handler")
        if len(calls) == 1:
            raise RuntimeError("the first time")

    monkeypatch.setattr(ends, "_handlers", {"flaky": writes_then_fails})
    run_flow(flow_doc([task("a")], flow_id="kept"))

    assert services.handle_ends() == 0
    end = ExecutionEnd.objects.get()
    assert (end.attempts, end.last_error) == (1, "RuntimeError: the first time")
    assert end.not_before is not None
    assert Flow.objects.get(pk="kept").name != "changed by a handler"  # rolled back
    assert services.handle_ends() == 0  # not due yet: its backoff

    ExecutionEnd.objects.update(not_before=None)
    assert services.handle_ends() == 1
    assert Flow.objects.get(pk="kept").name == "changed by a handler"
    assert calls == ["kept", "kept"]


def test_one_pass_handles_every_due_end_so_ends_never_fall_behind(handled) -> None:
    # A worker's timer runs one pass a second: a pass that handled a fixed hundred would
    # leave ends behind whenever more than a hundred executions a second end, and what
    # follows them (triggered flows, alerts) would lag further and further.
    ended(350)

    jobs.handle_ends()

    assert not ExecutionEnd.objects.exists()
    assert len(handled) == 350


def test_a_failing_handler_in_a_chunk_holds_back_only_its_own_row(
    monkeypatch, django_capture_on_commit_callbacks
) -> None:
    ids = ended(5)
    committed: list[int] = []

    def fails_on_the_third(end: ExecutionEnd, execution: Execution) -> None:
        # What a handler's transaction commits (a callback of a rolled-back one never runs).
        transaction.on_commit(lambda pk=end.pk: committed.append(pk))
        if end.pk == ids[2]:
            raise RuntimeError("the third end's handler")

    monkeypatch.setattr(ends, "_handlers", {"flaky": fails_on_the_third})

    with django_capture_on_commit_callbacks(execute=True):
        assert services.handle_ends() == 4
    assert list(ExecutionEnd.objects.values_list("pk", "attempts")) == [(ids[2], 1)]
    assert committed == [ids[0], ids[1], ids[3], ids[4]]  # each once, in order

    ExecutionEnd.objects.update(not_before=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.handle_ends() == 0  # it fails again: tried later again
    assert ExecutionEnd.objects.get().attempts == 2


def test_a_chunk_commits_when_its_time_is_up_and_the_pass_goes_on(handled, monkeypatch) -> None:
    # Handlers that take long (starting triggered flows) must not keep the chunk's
    # transaction, SQLite's one write lock, for a hundred ends: past CHUNK_SECONDS it commits
    # what it has handled, and the pass goes on with the rest, in order.
    monkeypatch.setattr(ends, "CHUNK_SECONDS", 0.0)
    ended(5)

    with CaptureQueriesContext(connection) as queries:
        assert services.handle_ends() == 5

    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "flows_executionend"')]
    assert len(deletes) == 5  # one end a transaction
    assert not ExecutionEnd.objects.exists()
    assert len(handled) == 5
