"""Parallel, map and sub-flow tasks in a flow document: what parses, and every mistake named
at its field path (no Django, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from flows.definition import (
    FlowDefinition,
    FlowValidationError,
    check_subflows,
    parse_flow,
)
from flows.registry import default_registry


def parse(document: Any) -> FlowDefinition:
    return parse_flow(document, default_registry())


def errors_of(document: Any) -> dict[str, str]:
    with pytest.raises(FlowValidationError) as caught:
        parse(document)
    return {e.field: e.message for e in caught.value.errors}


def branch(*names: str, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"tasks": [{"name": n, "task_type": "noop"} for n in names]}
    if conditions is not None:
        body["conditions"] = conditions
    return body


def flow(*tasks: dict[str, Any], flow_id: str = "fan") -> dict[str, Any]:
    return {"id": flow_id, "tasks": list(tasks)}


PARALLEL = {
    "name": "both",
    "task_type": "parallel",
    "branches": {"left": branch("a1", "a2"), "right": branch("b1")},
}
MAP = {
    "name": "each",
    "task_type": "map",
    "items": "${input.orders}",
    "max_concurrency": 10,
    "iterator": {
        "tasks": [{"name": "say", "task_type": "print", "parameters": {"message": "${item.id}"}}]
    },
}


def test_a_parallel_task_holds_each_branch_as_a_flow_of_its_own() -> None:
    definition = parse(flow({"name": "first", "task_type": "noop"}, PARALLEL))

    spec = definition.task("both")
    assert [name for name, _ in spec.branches] == ["left", "right"]
    assert [t.name for t in definition.scope(["both", "left"]).tasks] == ["a1", "a2"]
    assert definition.scope(["both", "right"]).start_task == "b1"
    assert spec.fail_fast is True


def test_branch_task_names_are_their_own_namespace() -> None:
    document = flow(
        {"name": "a1", "task_type": "noop"},
        {
            "name": "both",
            "task_type": "parallel",
            "branches": {"x": branch("a1"), "y": branch("a1")},
        },
    )
    assert parse(document).scope(["both", "y"]).tasks[0].name == "a1"


def test_a_map_task_keeps_its_items_reference_limits_and_iterator() -> None:
    spec = parse(flow({**MAP, "tolerated_failures": "10%"})).task("each")

    assert spec.items == "${input.orders}"
    assert spec.max_concurrency == 10
    assert spec.tolerated_failures.allows(10, 100) and not spec.tolerated_failures.allows(11, 100)
    assert [t.name for t in spec.iterator.tasks] == ["say"]


def test_tolerated_failures_as_a_count() -> None:
    spec = parse(flow({**MAP, "tolerated_failures": 2})).task("each")
    assert spec.tolerated_failures.allows(2, 1000) and not spec.tolerated_failures.allows(3, 1000)


def test_parallel_and_map_nest_and_scopes_follow_the_path() -> None:
    inner_map = {**MAP, "name": "inner"}
    document = flow(
        {"name": "outer", "task_type": "parallel", "branches": {"m": {"tasks": [inner_map]}}}
    )

    definition = parse(document)

    assert definition.scope(["outer", "m", "inner", ""]).tasks[0].name == "say"


@pytest.mark.parametrize(
    ("task", "field", "message"),
    [
        (
            {"name": "both", "task_type": "parallel"},
            "tasks[0].branches",
            "required: an object of named branches",
        ),
        (
            {"name": "both", "task_type": "parallel", "branches": {"a": branch("x")}, "retry": {}},
            "tasks[0].retry",
            "not taken by a parallel task",
        ),
        (
            {"name": "both", "task_type": "parallel", "branches": {"bad name!": branch("x")}},
            "tasks[0].branches.bad name!",
            "a branch name is",
        ),
        (
            {
                "name": "both",
                "task_type": "parallel",
                "branches": {
                    "a": branch(
                        "x",
                        conditions=[
                            {
                                "source_task": "x",
                                "outcome": "success",
                                "target_task_success": "nowhere",
                                "target_task_failure": "end",
                            }
                        ],
                    )
                },
            },
            "tasks[0].branches.a.conditions[0].target_task_success",
            "'nowhere' is not one of the tasks or 'end'",
        ),
        (
            {"name": "both", "task_type": "parallel", "branches": {"a": {"tasks": []}}},
            "tasks[0].branches.a.tasks",
            "needs at least one task",
        ),
        (
            {
                "name": "both",
                "task_type": "parallel",
                "branches": {"a": branch("x")},
                "fail_fast": 1,
            },
            "tasks[0].fail_fast",
            "must be true or false",
        ),
        ({**MAP, "items": None}, "tasks[0].items", "required: the list to map over"),
        ({**MAP, "items": "orders"}, "tasks[0].items", "must be one ${...} reference"),
        ({**MAP, "max_concurrency": 0}, "tasks[0].max_concurrency", "from 1 to 10000"),
        ({**MAP, "tolerated_failures": "150%"}, "tasks[0].tolerated_failures", "percentage"),
        ({**MAP, "tolerated_failures": -1}, "tasks[0].tolerated_failures", "number of items"),
        ({**MAP, "iterator": None}, "tasks[0].iterator", "must be an object"),
        (
            {**MAP, "iterator": {"tasks": [{"name": "x", "task_type": "nope"}]}},
            "tasks[0].iterator.tasks[0].task_type",
            "nope",
        ),
        ({"name": "s", "task_type": "subflow"}, "tasks[0].parameters", "'flow_id' is a required"),
        (
            {"name": "s", "task_type": "subflow", "parameters": {"flow_id": "x", "version": 0}},
            "tasks[0].parameters.version",
            "less than the minimum",
        ),
    ],
    ids=[
        "parallel-without-branches",
        "parallel-with-retry",
        "bad-branch-name",
        "unknown-branch-target",
        "empty-branch",
        "fail-fast-not-boolean",
        "map-without-items",
        "items-not-a-reference",
        "max-concurrency-below-one",
        "tolerance-over-100-percent",
        "negative-tolerance",
        "map-without-iterator",
        "unknown-type-in-iterator",
        "subflow-without-flow-id",
        "subflow-version-zero",
    ],
)
def test_each_mistake_is_reported_at_its_field_path(
    task: dict[str, Any], field: str, message: str
) -> None:
    errors = errors_of(flow(task))

    assert field in errors, errors
    assert message in errors[field]


def test_item_is_only_known_inside_a_map_iterator() -> None:
    errors = errors_of(
        flow({"name": "t", "task_type": "print", "parameters": {"message": "${item}"}})
    )

    assert "only known inside a map's iterator" in errors["tasks[0].parameters.message"]


def test_a_branch_may_not_refer_to_the_parent_flow_s_tasks() -> None:
    document = flow(
        {"name": "fetch", "task_type": "noop"},
        {
            "name": "both",
            "task_type": "parallel",
            "branches": {
                "a": {
                    "tasks": [
                        {
                            "name": "x",
                            "task_type": "print",
                            "parameters": {"message": "${results.fetch.data}"},
                        }
                    ]
                }
            },
        },
    )

    errors = errors_of(document)

    # A branch sees its own tasks' results; the parent's come in through the parallel
    # task's parameters, which become the branch's input.
    assert "not in this flow" in errors["tasks[1].branches.a.tasks[0].parameters.message"]


def test_nesting_deeper_than_five_is_refused() -> None:
    task: dict[str, Any] = {"name": "leaf", "task_type": "noop"}
    for level in range(6):
        task = {"name": f"p{level}", "task_type": "parallel", "branches": {"b": {"tasks": [task]}}}

    errors = errors_of(flow(task))

    assert any("nest at most 5 deep" in message for message in errors.values()), errors


def test_unreachable_tasks_inside_a_branch_are_warned_about() -> None:
    body = branch(
        "x",
        "y",
        conditions=[
            {
                "source_task": "x",
                "outcome": "success",
                "target_task_success": "end",
                "target_task_failure": "end",
            }
        ],
    )
    definition = parse(flow({"name": "both", "task_type": "parallel", "branches": {"a": body}}))

    assert [w.field for w in definition.warnings] == ["tasks[0].branches.a.tasks[1]"]


# --- Sub-flow calls against the flows stored -------------------------------------------------
def _subflow(name: str, target: str) -> dict[str, Any]:
    return {"name": name, "task_type": "subflow", "parameters": {"flow_id": target}}


def test_a_sub_flow_cycle_is_named_with_its_path() -> None:
    stored = {
        "b": parse(flow(_subflow("call_c", "c"), flow_id="b")),
        "c": parse(flow(_subflow("call_a", "a"), flow_id="c")),
    }
    a = parse(flow({"name": "x", "task_type": "noop"}, _subflow("call_b", "b"), flow_id="a"))

    errors = check_subflows(a, lambda flow_id, version: stored.get(flow_id, f"no flow '{flow_id}'"))

    assert [(e.field, e.message) for e in errors] == [
        ("tasks[1].parameters.flow_id", "sub-flow cycle: a -> b -> c -> a")
    ]


def test_a_flow_calling_itself_is_a_cycle() -> None:
    a = parse(flow(_subflow("again", "a"), flow_id="a"))

    errors = check_subflows(a, lambda flow_id, version: "unreachable")

    assert errors[0].message == "sub-flow cycle: a -> a"


def test_a_sub_flow_naming_no_stored_flow_says_so() -> None:
    a = parse(
        flow({**PARALLEL, "branches": {"x": {"tasks": [_subflow("s", "ghost")]}}}, flow_id="a")
    )

    errors = check_subflows(a, lambda flow_id, version: f"no flow '{flow_id}' is stored")

    assert [(e.field, e.message) for e in errors] == [
        ("tasks[0].branches.x.tasks[0].parameters.flow_id", "no flow 'ghost' is stored")
    ]


def test_sub_flows_without_a_cycle_pass() -> None:
    stored = {"b": parse(flow({"name": "x", "task_type": "noop"}, flow_id="b"))}
    a = parse(flow(_subflow("one", "b"), _subflow("two", "b"), flow_id="a"))

    assert check_subflows(a, lambda flow_id, version: stored[flow_id]) == []


# --- a map's parameters: each item's input (like Step Functions' ItemSelector) ----------------
def test_a_map_s_parameters_may_use_its_item_and_item_index() -> None:
    task = {
        **MAP,
        "parameters": {"order": "${item}", "id": "${item.id}", "n": "item ${item_index}"},
    }

    spec = parse(flow(task)).task("each")

    assert spec.parameters["n"] == "item ${item_index}"


def test_item_index_is_only_known_in_a_map_s_parameters() -> None:
    inside = {
        **MAP,
        "iterator": {
            "tasks": [
                {"name": "say", "task_type": "print", "parameters": {"message": "${item_index}"}}
            ]
        },
    }
    outside = {"name": "t", "task_type": "print", "parameters": {"message": "${item_index}"}}

    for document in (flow(inside), flow(outside)):
        (message,) = errors_of(document).values()
        assert "only known in a map's parameters" in message
        assert '"index": "${item_index}"' in message  # says how to pass it on


def test_item_index_takes_no_path() -> None:
    task = {**MAP, "parameters": {"n": "${item_index.x}"}}

    assert "is a number" in errors_of(flow(task))["tasks[0].parameters.n"]


def test_a_map_s_items_still_may_not_use_item_outside_a_map() -> None:
    task = {**MAP, "items": "${item.lines}"}

    assert "only known inside a map" in errors_of(flow(task))["tasks[0].items"]
