"""CEL expressions on their own (flows/expressions.py): the budget and the nesting rule."""

from __future__ import annotations

import celpy
import pytest

from flows.expressions import (
    ExpressionBudgetError,
    ExpressionError,
    compile_expression,
    comprehension_depth,
)

# Each nests two comprehensions over 3,000 items: millions of interpreter steps, minutes.
ENDLESS = [
    "input.xs.all(x, input.xs.all(y, x + y >= 0))",
    "input.xs.exists(x, input.xs.exists(y, x + y < 0))",
    "input.xs.exists_one(x, input.xs.exists_one(y, x + y < 0))",
    "input.xs.map(x, input.xs.map(y, x + y)) == []",
    "input.xs.filter(x, input.xs.filter(y, x + y < 0).size() > 0) == []",
]


@pytest.mark.parametrize("source", ENDLESS)
def test_every_comprehension_is_stopped_at_the_budget(source: str) -> None:
    expression = compile_expression(source)

    with pytest.raises(ExpressionBudgetError) as stopped:
        expression.evaluate(
            result={}, results={}, input={"xs": list(range(3000))}, budget_seconds=0.1
        )

    assert isinstance(stopped.value, ExpressionError)  # handled like any failing expression
    assert str(stopped.value) == (
        f"expression '{source}' exceeded its budget of 0.1 s "
        "(FLOW_EXPRESSION_BUDGET_SECONDS) and was stopped"
    )


def test_an_expression_within_its_budget_gives_its_value() -> None:
    expression = compile_expression("input.xs.all(x, input.xs.exists(y, y == x))")

    assert expression.evaluate(result={}, results={}, input={"xs": [1, 2, 3]}) is True


@pytest.mark.parametrize(
    ("source", "depth"),
    [
        ("result.ok", 0),
        ("xs.all(x, x > 0)", 1),
        ("xs.map(x, x).filter(y, y > 0).all(z, z > 0)", 1),
        ("xs.all(x, ys.exists(y, x == y)) && zs.all(z, z > 0)", 2),
        ("xs.map(x, ys.filter(y, zs.exists_one(z, z == x + y)).size())", 3),
        ("xs.filter(x, ys.all(y, x < y)).all(x, zs.map(z, z).size() > x)", 2),
    ],
)
def test_comprehension_depth_counts_nesting_not_chaining(source: str, depth: int) -> None:
    assert comprehension_depth(celpy.Environment().compile(source)) == depth


def test_a_third_nested_comprehension_does_not_compile() -> None:
    with pytest.raises(ExpressionError, match="nested 3 deep; at most 2"):
        compile_expression("a.all(x, b.all(y, c.all(z, x + y + z > 0)))")
