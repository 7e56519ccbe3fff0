"""The routing rules of DESIGN.md, case by case, through the real engine run inline."""

from __future__ import annotations

from typing import Any

import pytest

from flows.models import ExecutionEvent, ExecutionStatus, TaskRunStatus
from tests.factories import cond, failing, flow_doc, ran, run_flow, task

pytestmark = pytest.mark.django_db

OK = TaskRunStatus.SUCCESS
FAIL = TaskRunStatus.FAILURE


def named(condition: dict[str, Any], name: str) -> dict[str, Any]:
    return {**condition, "name": name}


def events(execution: Any) -> list[str]:
    return list(
        ExecutionEvent.objects.filter(execution=execution)
        .order_by("id")
        .values_list("message", flat=True)
    )


# Rule 1: a condition decides -----------------------------------------------------------------
def test_it_routes_a_matched_outcome_to_the_success_target() -> None:
    execution = run_flow(
        flow_doc(
            [task("a"), task("skipped"), task("b")],
            [cond("a", "success", "b", "skipped")],
        )
    )
    assert ran(execution) == [("a", OK), ("b", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_it_routes_an_unmatched_outcome_to_the_failure_target() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), task("b"), task("recover")],
            [cond("a", "success", "b", "recover")],
        )
    )
    assert ran(execution) == [("a", FAIL), ("recover", OK)]


def test_it_routes_failure_to_recovery_task() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), task("b"), task("recover")],
            [cond("a", "success", "b", "recover"), cond("b", "success", "end", "end")],
        )
    )
    assert ran(execution) == [("a", FAIL), ("recover", OK)]
    # The failure was handled: the execution ends right after a successful task.
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.error == ""


def test_a_failure_outcome_condition_matches_when_the_task_failed() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), task("on_failure"), task("on_success")],
            [
                cond("a", "failure", "on_failure", "on_success"),
                cond("on_failure", "success", "end", "end"),
            ],
        )
    )
    assert ran(execution) == [("a", FAIL), ("on_failure", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_failure_outcome_condition_does_not_match_when_the_task_succeeded() -> None:
    execution = run_flow(
        flow_doc(
            [task("a"), task("on_failure"), task("on_success")],
            [
                cond("a", "failure", "on_failure", "on_success"),
                cond("on_failure", "success", "end", "end"),
            ],
        )
    )
    assert ran(execution) == [("a", OK), ("on_success", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_condition_target_of_end_stops_after_a_success_as_completed() -> None:
    execution = run_flow(
        flow_doc([task("a"), task("b")], [cond("a", "success", "end", "b")]),
    )
    assert ran(execution) == [("a", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_condition_target_of_end_stops_after_a_failure_as_failed() -> None:
    execution = run_flow(
        flow_doc([failing("a"), task("b")], [cond("a", "success", "b", "end")]),
    )
    assert ran(execution) == [("a", FAIL)]
    assert execution.status == ExecutionStatus.FAILED


def test_a_condition_target_of_end_stops_even_when_a_task_is_named_end() -> None:
    execution = run_flow(
        flow_doc([task("a"), task("end")], [cond("a", "success", "end", "end")]),
    )
    assert ran(execution) == [("a", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_task_named_end_runs_when_reached_in_list_order() -> None:
    execution = run_flow(flow_doc([task("a"), task("end"), task("after")]))
    assert ran(execution) == [("a", OK), ("end", OK), ("after", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_task_named_end_runs_when_it_is_the_start_task() -> None:
    execution = run_flow(flow_doc([task("end"), task("after")], start_task="end"))
    assert ran(execution) == [("end", OK), ("after", OK)]


# Rule 2: no condition ------------------------------------------------------------------------
def test_without_a_condition_success_goes_to_the_next_task_in_list_order() -> None:
    execution = run_flow(flow_doc([task("a"), task("b"), task("c")]))
    assert ran(execution) == [("a", OK), ("b", OK), ("c", OK)]


def test_list_order_is_followed_after_a_jump() -> None:
    # a jumps to c; c has no condition, so the task after c in the list runs next.
    execution = run_flow(
        flow_doc(
            [task("a"), task("b"), task("c"), task("d")],
            [cond("a", "success", "c", "end")],
        )
    )
    assert ran(execution) == [("a", OK), ("c", OK), ("d", OK)]


def test_the_last_task_succeeding_completes_the_execution() -> None:
    execution = run_flow(flow_doc([task("a"), task("last")]))
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.error == ""
    assert execution.current_task == ""
    assert execution.ended_at is not None


def test_without_a_condition_a_failure_fails_the_execution() -> None:
    execution = run_flow(flow_doc([task("a"), failing("b"), task("c")]))
    assert ran(execution) == [("a", OK), ("b", FAIL)]
    assert execution.status == ExecutionStatus.FAILED


def test_the_execution_error_names_the_failed_task() -> None:
    execution = run_flow(flow_doc([task("a"), failing("load_orders")]))
    assert execution.status == ExecutionStatus.FAILED
    assert "load_orders" in execution.error
    assert "Simulated failure in task load_orders" in execution.error


def test_a_recovery_task_that_fails_ends_the_execution_failed() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), failing("recover")],
            [cond("a", "success", "end", "recover")],
        )
    )
    assert ran(execution) == [("a", FAIL), ("recover", FAIL)]
    assert execution.status == ExecutionStatus.FAILED
    assert "recover" in execution.error


# Start task ----------------------------------------------------------------------------------
def test_it_starts_at_the_start_task_even_when_it_is_not_first() -> None:
    execution = run_flow(flow_doc([task("a"), task("b"), task("c")], start_task="b"))
    assert ran(execution) == [("b", OK), ("c", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


# Rule 4: loops and the step limit ------------------------------------------------------------
def test_a_retry_loop_that_never_succeeds_stops_at_the_step_limit() -> None:
    execution = run_flow(
        flow_doc([failing("flaky")], [cond("flaky", "success", "end", "flaky")], max_steps=4)
    )
    assert ran(execution) == [("flaky", FAIL)] * 4
    assert execution.status == ExecutionStatus.FAILED
    assert "step limit of 4" in execution.error
    assert "max_steps" in execution.error
    assert execution.steps_taken == 4


def test_a_loop_between_two_tasks_stops_at_the_step_limit() -> None:
    execution = run_flow(
        flow_doc(
            [task("ping"), task("pong")],
            [cond("ping", "success", "pong", "end"), cond("pong", "success", "ping", "end")],
            max_steps=5,
        )
    )
    assert [name for name, _ in ran(execution)] == ["ping", "pong", "ping", "pong", "ping"]
    assert execution.status == ExecutionStatus.FAILED
    assert "step limit of 5" in execution.error
    assert any("step limit of 5" in message for message in events(execution))


def test_a_flow_that_ends_exactly_at_the_step_limit_completes() -> None:
    execution = run_flow(flow_doc([task("a"), task("b"), task("c")], max_steps=3))
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps_taken == 3


# Bookkeeping ---------------------------------------------------------------------------------
def test_steps_taken_counts_every_step_run() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), task("b"), task("recover"), task("report")],
            [cond("a", "success", "b", "recover")],
        )
    )
    assert ran(execution) == [("a", FAIL), ("recover", OK), ("report", OK)]
    assert execution.steps_taken == 3


def test_events_record_each_routing_decision() -> None:
    execution = run_flow(
        flow_doc(
            [failing("a"), task("b"), task("recover")],
            [named(cond("a", "success", "b", "recover"), "check_a")],
        )
    )
    messages = events(execution)
    assert any("a failed" in m and "Simulated failure" in m for m in messages)
    assert any(
        "condition 'check_a'" in m and "did not match" in m and m.endswith("-> recover")
        for m in messages
    ), messages
    assert any(
        "recover succeeded" in m and "last task" in m and m.endswith("COMPLETED") for m in messages
    ), messages


def test_each_step_records_its_routing_decision_and_conditions_reach_the_log() -> None:
    execution = run_flow(
        flow_doc(
            [task("a"), task("b"), task("c")],
            [named(cond("b", "success", "c", "end"), "b_ok")],
        )
    )
    routes = dict(execution.steps.values_list("task_name", "route"))
    assert "next task in order" in routes["a"] and routes["a"].endswith("-> b")
    assert "condition 'b_ok'" in routes["b"] and routes["b"].endswith("-> c")
    assert routes["c"].endswith("-> execution COMPLETED")
    messages = events(execution)
    assert any(
        "condition 'b_ok'" in m and ": matched" in m and m.endswith("-> c") for m in messages
    ), messages
    # List order is plain from the step rows; the log is kept for decisions worth reading.
    assert not any("next task in order" in m for m in messages), messages


def test_routing_events_belong_to_the_step_they_follow() -> None:
    execution = run_flow(
        flow_doc([task("a"), task("b")], [named(cond("a", "success", "b", "end"), "go")])
    )
    step_a = execution.steps.get(task_name="a")
    messages = list(step_a.events.values_list("message", flat=True))
    assert any(m.endswith("-> b") for m in messages), messages
