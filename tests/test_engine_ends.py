"""The outbox of execution ends: one row for each top-level execution that ends, written with
its end, handled once by ``services.handle_ends``."""

from __future__ import annotations

import pytest

from flows import services
from flows.models import Execution, ExecutionEnd, ExecutionStatus, Flow
from flows.services import ends
from tests.factories import failing, flow_doc, mapped, run_flow, start_execution, task

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
