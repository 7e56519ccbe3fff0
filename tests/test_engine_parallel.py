"""Parallel branches, map items and sub-flows, run inline through the worker's dispatcher:
children are executions of their own, and the parent step ends from them."""

from __future__ import annotations

from typing import Any

import pytest

from flows import engine, services
from flows.models import Execution, ExecutionStatus, FanOut, TaskRun, TaskRunStatus
from tests.controls import worker_dies_in
from tests.factories import (
    children_of,
    cond,
    failing,
    flow_doc,
    mapped,
    parallel,
    ran,
    run_flow,
    run_to_end,
    start_execution,
    task,
)

pytestmark = pytest.mark.django_db


waits_for_approval = task("hold", "wait_for_signal", signal="go")


# --- parallel ----------------------------------------------------------------------------------
def test_a_parallel_task_completes_when_every_branch_does_with_their_results() -> None:
    document = flow_doc(
        [
            parallel(
                "both",
                {
                    "left": [
                        task("l1", "print", message="left one"),
                        task("l2", "print", message="left two"),
                    ],
                    "right": [task("r1", "print", message="right")],
                },
            ),
            task("after", "print", message="joined: ${results.both.data.left.message}"),
        ]
    )

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("both", "SUCCESS"), ("after", "SUCCESS")]
    both = execution.steps.get(task_name="both")
    assert both.result["left"]["message"] == "left two"
    assert both.result["right"]["message"] == "right"
    assert execution.steps.get(task_name="after").result["message"] == "joined: left two"
    left, right = children_of(execution, "both")
    assert (left.branch, left.status, left.root_id) == ("left", "COMPLETED", execution.id)
    assert [s.task_name for s in left.steps.order_by("seq")] == ["l1", "l2"]
    assert (right.branch, right.status) == ("right", "COMPLETED")


def test_a_failed_branch_fails_the_parallel_task_and_cancels_the_other_branches() -> None:
    document = flow_doc(
        [
            parallel("both", {"bad": [failing("boom")], "slow": [waits_for_approval]}),
            task("after"),
            task("recover", "print", message="recovered"),
        ],
        [cond("both", "success", "after", "recover")],
    )

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("both", "FAILURE"), ("recover", "SUCCESS")]
    assert "1 of 2 branches failed" in execution.steps.get(task_name="both").error
    bad, slow = children_of(execution, "both")
    assert bad.status == ExecutionStatus.FAILED
    assert slow.status == ExecutionStatus.CANCELLED
    assert not TaskRun.objects.filter(execution=slow, status__in=["PENDING", "RUNNING"]).exists()


def test_without_fail_fast_every_branch_runs_and_a_failure_still_fails_the_task() -> None:
    document = flow_doc(
        [parallel("both", {"bad": [failing("boom")], "good": [task("ok")]}, fail_fast=False)]
    )

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.FAILED
    bad, good = children_of(execution, "both")
    assert (bad.status, good.status) == ("FAILED", "COMPLETED")
    assert execution.steps.get(task_name="both").status == TaskRunStatus.FAILURE


def test_a_branch_gets_the_parallel_task_s_parameters_as_its_input() -> None:
    document = flow_doc(
        [
            task("count", "echo", n=3) if False else task("first", "print", message="7"),
            {
                **parallel("both", {"a": [task("say", "print", message="got ${input.n}")]}),
                "parameters": {"n": "${results.first.data.message}"},
            },
        ]
    )

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert execution.steps.get(task_name="both").result["a"]["message"] == "got 7"


# --- map -----------------------------------------------------------------------------------
def test_a_map_runs_its_iterator_once_per_item_and_keeps_item_order() -> None:
    document = flow_doc(
        [mapped("each", "${input.orders}", [task("say", "print", message="order ${item.id}")])]
    )

    execution = run_flow(document, input={"orders": [{"id": 3}, {"id": 1}, {"id": 2}]})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = execution.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == ["order 3", "order 1", "order 2"]
    assert (result["count"], result["failed"]) == (3, 0)
    assert [c.item for c in children_of(execution, "each")] == [{"id": 3}, {"id": 1}, {"id": 2}]


def test_a_map_s_parameters_are_resolved_per_item_and_become_its_input() -> None:
    iterator = [task("say", "print", message="${input.who}: order ${input.order.id} #${input.n}")]
    params = {"order": "${item}", "n": "${item_index}", "who": "${input.customer}"}
    document = flow_doc([mapped("each", "${input.orders}", iterator, parameters=params)])

    execution = run_flow(document, input={"customer": "ada", "orders": [{"id": 7}, {"id": 9}]})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = execution.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == ["ada: order 7 #0", "ada: order 9 #1"]
    assert [c.input for c in children_of(execution, "each")] == [
        {"order": {"id": 7}, "n": 0, "who": "ada"},
        {"order": {"id": 9}, "n": 1, "who": "ada"},
    ]


def test_per_item_parameters_hold_for_items_started_later_and_in_every_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("flows.engine.fanout.CREATE_CHUNK", 2)
    iterator = [task("say", "print", message="${input.x}")]
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                iterator,
                parameters={"x": "${item}-${item_index}"},
                max_concurrency=2,
            )
        ]
    )

    execution = run_flow(document, input={"items": ["a", "b", "c", "d", "e"]})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = execution.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == ["a-0", "b-1", "c-2", "d-3", "e-4"]


def test_per_item_inputs_hold_for_a_map_of_many_items(monkeypatch: pytest.MonkeyPatch) -> None:
    # Enough children for the bulk insert (COPY on PostgreSQL); each waits, so none runs yet.
    monkeypatch.setattr("flows.engine.fanout.CREATE_CHUNK", 100)
    iterator = [task("hold", "wait_for_signal", signal="go")]
    params = {"n": "${item_index}", "v": "${item.v}", "fixed": "${input.fixed}"}
    document = flow_doc(
        [mapped("each", "${input.items}", iterator, parameters=params, max_concurrency=150)]
    )
    items = [{"v": f"item {n}"} for n in range(250)]
    execution = start_execution(document, input={"items": items, "fixed": [1, 2]})

    run_to_end(execution.id)

    children = children_of(Execution.objects.get(pk=execution.id), "each")
    assert [c.input for c in children] == [
        {"n": n, "v": f"item {n}", "fixed": [1, 2]} for n in range(250)
    ]
    assert [c.status for c in children].count("CREATED") == 100


def test_in_a_map_inside_a_map_item_the_inner_map_s_parameters_see_its_own_item() -> None:
    # Its items come from the outer item (resolved where the map runs); its parameters are
    # resolved per inner item, as a top-level map's are.
    inner = mapped(
        "inner",
        "${item.lines}",
        [task("say", "print", message="${input.line} of ${input.order}")],
        parameters={"line": "${item}", "order": "${input.order}"},
    )
    outer = mapped("outer", "${input.orders}", [inner], parameters={"order": "${item.id}"})
    orders = [{"id": "A", "lines": ["a1", "a2"]}, {"id": "B", "lines": ["b1"]}]

    execution = run_flow(flow_doc([outer]), input={"orders": orders})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    per_order = execution.steps.get(task_name="outer").result["results"]
    assert [[r["message"] for r in order["results"]] for order in per_order] == [
        ["a1 of A", "a2 of A"],
        ["b1 of B"],
    ]


def test_a_map_whose_parameters_do_not_resolve_for_one_item_fails_and_starts_none() -> None:
    iterator = [task("say", "print", message="${input.id}")]
    document = flow_doc(
        [mapped("each", "${input.items}", iterator, parameters={"id": "${item.id}"})]
    )

    execution = run_flow(document, input={"items": [{"id": 1}, {"name": "no id"}]})

    assert execution.status == ExecutionStatus.FAILED
    error = execution.steps.get(task_name="each").error
    assert "item 1" in error and "has no key 'id'" in error, error
    assert children_of(execution, "each") == []


def test_a_map_s_parameters_without_item_are_every_item_s_input_as_before() -> None:
    iterator = [task("say", "print", message="${input.greeting} ${item}")]
    document = flow_doc(
        [mapped("each", "${input.items}", iterator, parameters={"greeting": "${input.hi}"})]
    )

    execution = run_flow(document, input={"hi": "hello", "items": ["a", "b"]})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert [c.input for c in children_of(execution, "each")] == [{"greeting": "hello"}] * 2
    result = execution.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == ["hello a", "hello b"]


def test_a_map_starts_at_most_max_concurrency_items_at_once() -> None:
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("hold", "wait_for_signal", signal="go")],
                max_concurrency=2,
            )
        ]
    )
    execution = start_execution(document, input={"items": [1, 2, 3, 4, 5]})

    run_to_end(execution.id)  # every started item now waits for its signal

    statuses = [c.status for c in children_of(Execution.objects.get(pk=execution.id), "each")]
    assert statuses.count("CREATED") == 3
    assert sorted(s for s in statuses if s != "CREATED") == ["RUNNING", "RUNNING"]
    first = children_of(Execution.objects.get(pk=execution.id), "each")[0]
    services.execution_signal(execution_id=first.id, name="go")
    run_to_end(execution.id)
    statuses = [c.status for c in children_of(Execution.objects.get(pk=execution.id), "each")]
    assert statuses[0] == "COMPLETED" and statuses.count("CREATED") == 2


@pytest.mark.parametrize(
    ("tolerated", "status"),
    [(1, "COMPLETED"), (0, "FAILED"), ("50%", "COMPLETED"), ("10%", "FAILED")],
)
def test_a_map_tolerates_failures_up_to_its_limit(tolerated: Any, status: str) -> None:
    iterator = [task("maybe", "fetch_data", failure_rate="${item.rate}")]
    document = flow_doc([mapped("each", "${input.items}", iterator, tolerated_failures=tolerated)])

    execution = run_flow(document, input={"items": [{"rate": 0}, {"rate": 1}, {"rate": 0}]})

    assert execution.status == status, execution.error
    step = execution.steps.get(task_name="each")
    if status == "COMPLETED":
        assert step.result["results"][1] is None and step.result["failed"] == 1
    else:
        assert "1 of 3 items failed" in step.error


def test_a_map_over_no_items_succeeds_with_no_results() -> None:
    document = flow_doc([mapped("each", "${input.items}", [task("x")])])

    execution = run_flow(document, input={"items": []})

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(task_name="each").result["results"] == []


def test_a_map_whose_items_are_not_a_list_fails_its_step_saying_so() -> None:
    document = flow_doc([mapped("each", "${input.items}", [task("x")])])

    execution = run_flow(document, input={"items": {"not": "a list"}})

    assert execution.status == ExecutionStatus.FAILED
    assert "is not a list" in execution.steps.get(task_name="each").error


def test_a_parallel_task_inside_a_map_item_runs_nested_children() -> None:
    inner = parallel("both", {"a": [task("x", "print", message="a${item}")], "b": [task("y")]})
    document = flow_doc([mapped("each", "${input.items}", [inner])])

    execution = run_flow(document, input={"items": [1, 2]})

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    results = execution.steps.get(task_name="each").result["results"]
    assert [r["a"]["message"] for r in results] == ["a1", "a2"]
    assert Execution.objects.filter(root=execution).count() == 2 + 4


# --- sub-flows -----------------------------------------------------------------------------
def test_a_sub_flow_runs_another_stored_flow_and_returns_its_result() -> None:
    services.flow_create(
        document=flow_doc([task("greet", "print", message="hello ${input.who}")], flow_id="child")
    )
    document = flow_doc(
        [
            {
                "name": "call",
                "task_type": "subflow",
                "parameters": {"flow_id": "child", "input": {"who": "ops"}},
            }
        ],
        flow_id="parent",
    )

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = execution.steps.get(task_name="call").result
    assert result["result"]["message"] == "hello ops"
    child = Execution.objects.get(pk=result["execution_id"])
    assert (child.flow_id, child.parent_step.execution_id) == ("child", execution.id)


def test_cancelling_the_parent_cancels_a_waiting_sub_flow() -> None:
    services.flow_create(document=flow_doc([waits_for_approval], flow_id="child"))
    document = flow_doc(
        [{"name": "call", "task_type": "subflow", "parameters": {"flow_id": "child"}}],
        flow_id="parent",
    )
    execution = start_execution(document)
    run_to_end(execution.id)
    [child] = children_of(Execution.objects.get(pk=execution.id), "call")
    assert child.status == ExecutionStatus.RUNNING

    services.execution_cancel(execution_id=execution.id)

    child.refresh_from_db()
    assert child.status == ExecutionStatus.CANCELLED
    assert Execution.objects.get(pk=execution.id).status == ExecutionStatus.CANCELLED


def test_a_child_cannot_be_redriven_or_deleted_on_its_own() -> None:
    document = flow_doc([parallel("both", {"a": [failing("x")]})])
    execution = run_flow(document)
    [child] = children_of(execution, "both")

    with pytest.raises(services.Conflict, match="redrive the parent"):
        services.execution_redrive(execution_id=child.id)
    with pytest.raises(services.Conflict, match="delete the parent"):
        services.execution_delete(execution_id=child.id)


def test_redriving_a_failed_parallel_task_runs_again_only_its_failed_branch() -> None:
    document = flow_doc([parallel("both", {"a": [failing("x")], "b": [task("y")]})])
    execution = run_flow(document)
    assert execution.status == ExecutionStatus.FAILED
    a, b = children_of(execution, "both")
    assert b.status == ExecutionStatus.COMPLETED

    services.execution_redrive(execution_id=execution.id)
    again = run_to_end(execution.id)

    assert again.status == ExecutionStatus.FAILED  # branch a fails whatever is tried
    assert [s for _, s in ran(again)] == ["FAILURE", "FAILURE"]
    assert FanOut.objects.filter(step__execution=again).count() == 2
    # The same branches, now under the new attempt: a ran again, b (completed) did not.
    assert [c.id for c in children_of(again, "both")] == [a.id, b.id]
    assert ran(Execution.objects.get(pk=a.id)) == [("x", "FAILURE"), ("x", "FAILURE")]
    assert ran(Execution.objects.get(pk=b.id)) == [("y", "SUCCESS")]


def test_branches_claimed_together_by_one_worker_each_run_their_own_tasks() -> None:
    document = flow_doc(
        [
            parallel(
                "both",
                {"a": [task("x", "print", message="a")], "b": [task("y", "print", message="b")]},
            )
        ]
    )
    execution = start_execution(document)

    # A worker's dispatcher (room for many) claims both branches' first steps in one batch.
    while engine.Dispatcher().run():
        pass

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = execution.steps.get(task_name="both").result
    assert (result["a"]["message"], result["b"]["message"]) == ("a", "b")


def test_a_map_whose_worker_died_while_joining_joins_the_same_children_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execution = start_execution(
        flow_doc([mapped("each", "${input.items}", [task("say", "print", message="${item}")])]),
        input={"items": ["a", "b", "c"]},
    )

    joining = worker_dies_in(monkeypatch, engine.step.fanin, "join", execution.id)
    assert joining.task_name == "each"  # claimed for the join when the worker died
    children = [c.id for c in children_of(execution, "each")]
    runs = TaskRun.objects.filter(execution__parent_step=joining).count()

    assert engine.reap()["lost"] == 1
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    # The same step joined the same children: none ran again, no new attempt was opened.
    assert ran(execution) == [("each", TaskRunStatus.SUCCESS)]
    assert [c.id for c in children_of(execution, "each")] == children
    assert TaskRun.objects.filter(execution__parent_step=joining).count() == runs
    result = execution.steps.get(task_name="each").result
    assert [r["message"] for r in result["results"]] == ["a", "b", "c"]
    assert "worker" in execution.events.filter(level="WARNING").first().message
