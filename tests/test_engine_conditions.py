"""Conditions with CEL expressions over the result, earlier results and the input.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

import pytest

from flows import services
from flows.models import ExecutionStatus
from tests.controls import (
    FAIL,
    OK,
    expression_cond,
    field_errors,
)
from tests.factories import (
    cond,
    failing,
    flow_doc,
    ran,
    run_flow,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


@pytest.mark.parametrize(
    ("expression", "chosen"),
    [
        ("result.count > 2", "big"),
        ("result.count > 5", "small"),
        ("result.meta.source == 'api' && size(result.records) == 3", "big"),
        ("result.records.exists(r, r.id == 4)", "small"),
    ],
)
def test_an_expression_over_the_result_chooses_the_target(expression: str, chosen: str) -> None:
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big"), task("small")],
            [
                expression_cond("count", expression, "big", "small"),
                cond("big", "success", "end", "end"),
            ],
        )
    )

    assert ran(execution) == [("count", OK), (chosen, OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_an_expression_can_read_earlier_results_and_the_input() -> None:
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("check"), task("yes"), task("no")],
            [
                expression_cond(
                    "check", "results.count.data.count == input.expected && input.go", "yes", "no"
                ),
                cond("yes", "success", "end", "end"),
            ],
        ),
        input={"expected": 3, "go": True},
    )

    assert ran(execution) == [("count", OK), ("check", OK), ("yes", OK)]


def test_the_route_of_an_expression_condition_is_explained_on_the_step() -> None:
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big"), task("small")],
            [expression_cond("count", "result.count > 2", "big", "small")],
        )
    )

    assert "result.count > 2" in execution.steps.get(task_name="count").route


def test_a_failed_task_with_an_expression_condition_takes_the_failure_target() -> None:
    execution = run_flow(
        flow_doc(
            [failing("fetch"), task("big"), task("recover")],
            [expression_cond("fetch", "true", "big", "recover")],
        )
    )

    assert ran(execution) == [("fetch", FAIL), ("recover", OK)]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("result.missing > 1", "no such member"),
        ("result.count / 0 > 1", "divide by zero"),
        ("result.count", "not true or false"),
        ("'yes'", "not true or false"),
    ],
)
def test_an_expression_that_fails_or_is_not_boolean_fails_its_step(expression, fragment) -> None:
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big"), task("recover")],
            [expression_cond("count", expression, "big", "recover")],
        )
    )

    failed = execution.steps.get(task_name="count")
    assert failed.status == FAIL
    assert expression in failed.error
    assert fragment in failed.error
    # The worker carried on: the failure routed to recovery in the same run.
    assert ran(execution) == [("count", FAIL), ("recover", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_an_expression_that_fails_without_a_recovery_route_fails_the_execution() -> None:
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big")],
            [expression_cond("count", "result.missing", "big", "end")],
        )
    )

    assert execution.status == ExecutionStatus.FAILED
    assert "result.missing" in execution.error


@pytest.mark.parametrize("expression", ["result.count >", "))", "result.count > > 1", ""])
def test_an_expression_that_does_not_compile_is_refused_at_its_path(expression: str) -> None:
    document = flow_doc(
        [task("a"), task("count", "numbers"), task("big")],
        [cond("a", "success", "count", "end"), expression_cond("count", expression, "big", "end")],
    )

    assert list(field_errors(document)) == ["conditions[1].expression"]


def test_an_expression_condition_may_not_expect_a_failure() -> None:
    condition = {**expression_cond("a", "true", "b", "end"), "outcome": "failure"}

    errors = field_errors(flow_doc([task("a"), task("b")], [condition]))

    assert list(errors) == ["conditions[0].outcome"]


def test_a_condition_with_an_expression_needs_no_outcome() -> None:
    definition = services.validate_flow(
        flow_doc([task("a"), task("b")], [expression_cond("a", "true", "b", "end")])
    )

    assert definition.condition_for("a").outcome == "success"


# -- The expression budget -------------------------------------------------------------------
# Two nested comprehensions over the input's 3,000 items: about nine million steps of the CEL
# interpreter, many minutes of one worker's time without a budget.
ENDLESS = "input.xs.all(x, input.xs.all(y, x + y >= 0))"
MANY = {"xs": list(range(3000))}


def test_an_expression_over_its_budget_fails_its_step_naming_the_budget(settings) -> None:
    settings.FLOW_EXPRESSION_BUDGET_SECONDS = 0.2
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big"), task("recover")],
            [expression_cond("count", ENDLESS, "big", "recover")],
        ),
        input=MANY,
    )

    failed = execution.steps.get(task_name="count")
    assert failed.status == FAIL
    assert ENDLESS in failed.error
    assert "budget of 0.2 s (FLOW_EXPRESSION_BUDGET_SECONDS)" in failed.error
    # Like any expression that fails: the failure route applies, the flow goes on.
    assert ran(execution) == [("count", FAIL), ("recover", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_an_error_absorbing_or_does_not_hide_an_expression_over_its_budget(settings) -> None:
    # CEL's `||` turns an error on one side into the other side's value: a budget that was an
    # ordinary error inside the interpreter would be swallowed here and the loop run on.
    settings.FLOW_EXPRESSION_BUDGET_SECONDS = 0.2
    execution = run_flow(
        flow_doc(
            [task("count", "numbers"), task("big")],
            [expression_cond("count", f"({ENDLESS}) || true", "big", "end")],
        ),
        input=MANY,
    )

    assert execution.status == ExecutionStatus.FAILED
    assert "FLOW_EXPRESSION_BUDGET_SECONDS" in execution.error


@pytest.mark.parametrize(
    "expression",
    [
        "input.xs.all(x, input.xs.all(y, input.xs.all(z, x + y + z >= 0)))",
        "input.xs.map(x, input.xs.filter(y, input.xs.exists_one(z, z == x + y)).size()) == []",
        "input.xs.exists(a, [a].map(c, input.xs.exists(d, d == c)).size() > 0 && a > 0)",
    ],
)
def test_comprehensions_nested_three_deep_are_refused_at_their_path(expression: str) -> None:
    document = flow_doc([task("a"), task("b")], [expression_cond("a", expression, "b", "end")])

    errors = field_errors(document)

    assert list(errors) == ["conditions[0].expression"]
    assert "nested 3 deep" in errors["conditions[0].expression"]
    assert "at most 2" in errors["conditions[0].expression"]


@pytest.mark.parametrize(
    "expression",
    [
        "input.xs.all(x, input.xs.exists(y, x == y))",
        # Chained, not nested: each runs once over the list the one before it made.
        "input.xs.map(x, x * 2).filter(y, y > 2).all(z, z > 0).exists(w, w)",
        "input.xs.all(x, x > 0) && input.ys.all(x, input.xs.exists(y, x == y))",
    ],
)
def test_comprehensions_nested_at_most_two_deep_are_accepted(expression: str) -> None:
    definition = services.validate_flow(
        flow_doc([task("a"), task("b")], [expression_cond("a", expression, "b", "end")])
    )

    assert definition.condition_for("a").expression.source == expression
