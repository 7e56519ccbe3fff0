"""Redrive: a FAILED or CANCELLED execution resumes at the step that did not finish,
keeping its history and attempt numbers.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows import services
from flows.models import ExecutionStatus
from tests.controls import (
    CANCELLED,
    FAIL,
    OK,
    after_each_step,
    attempts,
    cancel_while_the_task_runs,
    expression_cond,
    in_state,
    log_of,
    refresh,
    retrying,
)
from tests.factories import (
    cond,
    flow_doc,
    ran,
    run_flow,
    run_to_end,
    start_execution,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def marker_flow(marker: Path, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    check = task("check", "needs_marker", marker=str(marker))
    if retry:
        check["retry"] = retry
    return flow_doc([task("prepare"), check, task("after")])


def test_redriving_a_failed_execution_resumes_at_the_failed_step(marker: Path) -> None:
    failed = run_flow(marker_flow(marker))
    assert failed.status == ExecutionStatus.FAILED
    marker.touch()  # whatever made it fail is fixed

    redriven = services.execution_redrive(execution_id=failed.id)

    assert redriven.id == failed.id
    assert redriven.status == ExecutionStatus.QUEUED
    assert redriven.error == ""
    assert redriven.redrive_count == 1
    execution = run_to_end(failed.id)
    assert execution.status == ExecutionStatus.COMPLETED
    # The history is kept and the finished step is not run again.
    assert ran(execution) == [("prepare", OK), ("check", FAIL), ("check", OK), ("after", OK)]
    assert attempts(execution, "check") == [1, 2]
    assert "marker file missing" in execution.steps.get(task_name="check", status=FAIL).error
    assert any("redriven from check" in line for line in log_of(execution))


def test_redrive_continues_the_attempt_numbers_of_a_retried_task(marker: Path) -> None:
    failed = run_flow(marker_flow(marker, {"max_attempts": 2, "delay_seconds": 0.05}))
    assert attempts(failed, "check") == [1, 2]
    marker.touch()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert attempts(execution, "check") == [1, 2, 3]
    assert execution.steps.get(task_name="check", status=OK).result == {"attempt": 3}


def test_a_redriven_step_can_still_read_the_results_of_finished_steps(marker: Path) -> None:
    document = flow_doc(
        [
            task("count", "numbers"),
            task("check", "needs_marker", marker=str(marker)),
            task("report", "print", message="${results.count.data.count} records"),
        ]
    )
    failed = run_flow(document)
    marker.touch()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.steps.get(task_name="report").result["message"] == "3 records"
    assert [name for name, _ in ran(execution)].count("count") == 1


def test_redriving_an_execution_cancelled_while_queued_runs_its_step() -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    services.execution_cancel(execution_id=execution.id)

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", CANCELLED), ("a", OK), ("b", OK)]


def test_redriving_an_execution_cancelled_between_steps_runs_the_next_task(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_cancel(execution_id=execution.id),
    )
    assert run_to_end(execution.id).status == ExecutionStatus.CANCELLED
    monkeypatch.undo()

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", OK), ("b", OK)]


def test_redriving_an_execution_cancelled_while_its_task_ran_runs_that_task_again(
    monkeypatch: pytest.MonkeyPatch, marker: Path
) -> None:
    execution = start_execution(
        flow_doc([task("slow", "hang_until_marker", marker=str(marker)), task("after")])
    )
    cancel_while_the_task_runs(monkeypatch, execution)
    assert run_to_end(execution.id).status == ExecutionStatus.CANCELLED
    monkeypatch.undo()
    marker.touch()

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("slow", CANCELLED), ("slow", OK), ("after", OK)]
    assert attempts(execution, "slow") == [1, 2]


def test_redrive_after_the_step_limit_goes_on_with_the_next_task() -> None:
    failed = run_flow(flow_doc([task("a"), task("b")], max_steps=1))
    assert "step limit" in failed.error

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", OK), ("b", OK)]


def test_redrive_after_the_step_limit_follows_a_condition_over_the_input() -> None:
    document = flow_doc(
        [task("a"), task("go"), task("stop")],
        [
            expression_cond("a", "input.go == true", "go", "stop"),
            cond("go", "success", "end", "end"),
        ],
        max_steps=1,
    )
    failed = run_flow(document, input={"go": True})
    assert ran(failed) == [("a", OK)]

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert ran(execution) == [("a", OK), ("go", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_redrive_after_the_step_limit_follows_a_condition_over_earlier_results() -> None:
    document = flow_doc(
        [task("count", "numbers"), task("a"), task("big"), task("small")],
        [
            expression_cond("a", "results.count.data.count > 2", "big", "small"),
            cond("big", "success", "end", "end"),
        ],
        max_steps=2,
    )
    failed = run_flow(document)
    assert ran(failed) == [("count", OK), ("a", OK)]

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert ran(execution) == [("count", OK), ("a", OK), ("big", OK)]


def test_a_redriven_execution_gets_the_flow_timeout_afresh(marker: Path) -> None:
    document = flow_doc(
        [task("slow", "hang_until_marker", marker=str(marker)), task("after")],
        timeout_seconds=0.2,
    )
    failed = run_flow(document)
    assert "timeout_seconds" in failed.error
    marker.touch()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("slow", FAIL), ("slow", OK), ("after", OK)]


def test_a_step_cancelled_before_it_ran_does_not_use_up_an_attempt(
    monkeypatch: pytest.MonkeyPatch, marker: Path
) -> None:
    check = retrying(
        "check", "needs_marker", {"max_attempts": 2, "delay_seconds": 0.05}, marker=str(marker)
    )
    execution = start_execution(flow_doc([task("a"), check]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_pause(execution_id=execution.id),
    )
    assert run_to_end(execution.id).status == ExecutionStatus.PAUSED
    services.execution_cancel(execution_id=execution.id)
    assert ran(execution) == [("a", OK), ("check", CANCELLED)]
    monkeypatch.undo()

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    # "check" never ran before the redrive, so it still has both of its attempts.
    assert ran(execution) == [("a", OK), ("check", CANCELLED), ("check", FAIL), ("check", FAIL)]


@pytest.mark.parametrize("state", ["CREATED", "QUEUED", "PAUSED", "COMPLETED"])
def test_redrive_is_refused_unless_the_execution_failed_or_was_cancelled(state: str) -> None:
    execution = in_state(state)

    with pytest.raises(services.Conflict, match="only a FAILED or CANCELLED"):
        services.execution_redrive(execution_id=execution.id)
    assert refresh(execution).status == state


def test_redrive_is_refused_while_the_execution_runs(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    refusals: list[str] = []

    def try_redrive(name: str) -> None:
        with pytest.raises(services.Conflict) as refused:
            services.execution_redrive(execution_id=execution.id)
        refusals.append(refused.value.message)

    after_each_step(monkeypatch, try_redrive)

    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED
    assert len(refusals) == 2
    assert ran(execution) == [("a", OK), ("b", OK)]
