"""Redrive: a FAILED or CANCELLED execution resumes at the step that did not finish,
keeping its history and attempt numbers.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows import engine, services
from flows.models import Execution, ExecutionStatus, FanOut, TaskRun
from tests.controls import (
    CANCELLED,
    FAIL,
    OK,
    Tally,
    after_each_step,
    attempts,
    cancel_while_the_task_runs,
    expression_cond,
    in_state,
    log_of,
    refresh,
    retrying,
    worker_dies_in,
)
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


# --- parallel, map and sub-flow steps: only what did not complete runs again ------------------
@pytest.fixture
def tally(tmp_path: Path) -> Tally:
    return Tally(tmp_path)


def counting_map(tally: Tally, items: list[Any], **extra: Any) -> dict[str, Any]:
    """A map whose items each run one ``tally`` task keyed by the item."""
    return mapped("each", items, [tally.task("count", "${item}")], **extra)


def joined(execution: Execution, name: str) -> TaskRun:
    """The step of ``name`` that succeeded (the redriven attempt)."""
    return execution.steps.get(task_name=name, status=OK)


def counts(step: TaskRun) -> tuple[int, int, int, int]:
    fan = FanOut.objects.get(pk=step.pk)
    return fan.total, fan.started, fan.done, fan.failed


def test_redriving_a_map_runs_again_only_the_items_that_did_not_complete(tally: Tally) -> None:
    tally.fail(1, 3)
    document = flow_doc(
        [counting_map(tally, list(range(6)), max_concurrency=1, tolerated_failures=1),
         task("after")]
    )  # fmt: skip
    failed = run_flow(document)
    assert failed.status == ExecutionStatus.FAILED
    first = children_of(failed, "each")
    assert [c.status for c in first] == [
        "COMPLETED", "FAILED", "COMPLETED", "FAILED", "CANCELLED", "CANCELLED",
    ]  # fmt: skip
    assert tally.runs() == Counter({"0": 1, "1": 1, "2": 1, "3": 1})
    tally.fail()  # whatever made items 1 and 3 fail is fixed

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("each", FAIL), ("each", OK), ("after", OK)]
    # Items 0 and 2 did not run again; 1 and 3 did; 4 and 5, never started, ran once.
    assert tally.runs() == Counter({"0": 1, "1": 2, "2": 1, "3": 2, "4": 1, "5": 1})
    result = joined(execution, "each").result
    assert [r["key"] for r in result["results"]] == ["0", "1", "2", "3", "4", "5"]
    assert [r["attempt"] for r in result["results"]] == [1, 2, 1, 2, 1, 1]
    assert (result["count"], result["failed"]) == (6, 0)
    assert counts(joined(execution, "each")) == (6, 6, 6, 0)
    # The same children, each redriven in place with its history.
    again = children_of(execution, "each")
    assert [c.id for c in again] == [c.id for c in first]
    assert [c.redrive_count for c in again] == [0, 1, 0, 1, 1, 1]
    assert ran(again[1]) == [("count", FAIL), ("count", OK)]
    assert attempts(again[1], "count") == [1, 2]
    assert ran(again[4]) == [("count", OK)]
    assert "each: 2 of 6 children kept from step 1, 4 run again (3 waiting for a slot)" in (
        log_of(execution)
    )


def test_a_redriven_map_runs_its_items_again_at_most_max_concurrency_at_once(
    monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    tally.fail(*range(1, 8))
    failed = run_flow(
        flow_doc([counting_map(tally, list(range(8)), max_concurrency=2, tolerated_failures=6)])
    )
    assert failed.status == ExecutionStatus.FAILED
    assert [c.status for c in children_of(failed, "each")].count("FAILED") == 7
    tally.fail()
    started: list[int] = []

    def count_started(name: str) -> None:
        # Children started and not ended, each time a task ends.
        active = Execution.objects.filter(root=failed, status__in=["QUEUED", "RUNNING"])
        started.append(active.count())

    after_each_step(monkeypatch, count_started)

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert max(started) == 2, started
    assert tally.runs() == Counter({"0": 1, **{str(i): 2 for i in range(1, 8)}})
    assert counts(joined(execution, "each")) == (8, 8, 8, 0)


def test_a_redriven_map_tolerates_failures_counted_in_its_new_attempt_only(tally: Tally) -> None:
    tally.fail(0, 2)
    document = flow_doc([counting_map(tally, list(range(5)), max_concurrency=1,
                                      tolerated_failures=1)])  # fmt: skip
    failed = run_flow(document)
    assert failed.status == ExecutionStatus.FAILED
    assert "2 of 5 items failed" in failed.steps.get(task_name="each").error
    tally.fail(2)  # item 0 is fixed, item 2 still fails

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    # One failure in this attempt is tolerated, whatever failed in the one before.
    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    result = joined(execution, "each").result
    assert [r and r["key"] for r in result["results"]] == ["0", "1", None, "3", "4"]
    assert result["failed"] == 1
    assert counts(joined(execution, "each")) == (5, 5, 5, 1)
    assert tally.runs() == Counter({"0": 2, "1": 1, "2": 2, "3": 1, "4": 1})


def test_redriving_a_fail_fast_map_starts_the_items_that_never_started(tally: Tally) -> None:
    tally.fail(1)
    failed = run_flow(flow_doc([counting_map(tally, list(range(5)), max_concurrency=1)]))
    first = children_of(failed, "each")
    assert [c.status for c in first] == ["COMPLETED", "FAILED", *["CANCELLED"] * 3]
    assert [ran(c) for c in first[2:]] == [[], [], []]
    tally.fail()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert tally.runs() == Counter({"0": 1, "1": 2, "2": 1, "3": 1, "4": 1})
    again = children_of(execution, "each")
    assert [ran(c) for c in again[2:]] == [[("count", OK)]] * 3
    assert [r["key"] for r in joined(execution, "each").result["results"]] == list("01234")


def test_redriving_a_cancelled_map_resumes_each_item_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    iterator = [tally.task("first", "${item}"), tally.task("second", "${item}b")]
    execution = start_execution(
        flow_doc([mapped("each", list(range(4)), iterator, max_concurrency=1), task("after")])
    )
    ended: list[str] = []

    def cancel_as_item_1_ends_its_first_task(name: str) -> None:
        ended.append(name)
        if ended.count("first") == 2:
            services.execution_cancel(execution_id=execution.id)

    after_each_step(monkeypatch, cancel_as_item_1_ends_its_first_task)
    assert run_to_end(execution.id).status == ExecutionStatus.CANCELLED
    monkeypatch.undo()
    first = children_of(execution, "each")
    assert [c.status for c in first] == ["COMPLETED", *["CANCELLED"] * 3]
    assert tally.runs() == Counter({"0": 1, "0b": 1, "1": 1})

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("each", CANCELLED), ("each", OK), ("after", OK)]
    assert attempts(execution, "each") == [1, 2]
    # Item 0 is kept; item 1 goes on with its second task; items 2 and 3 start: every task
    # of every item ran once.
    assert tally.runs() == Counter({f"{i}{b}": 1 for i in range(4) for b in ("", "b")})
    assert ran(children_of(execution, "each")[1]) == [("first", OK), ("second", OK)]
    assert counts(joined(execution, "each")) == (4, 4, 4, 0)


def test_redriving_a_parallel_task_runs_again_only_its_failed_branches(tally: Tally) -> None:
    tally.fail("b", "c")
    branches = {name: [tally.task("work", name)] for name in ("a", "b", "c")}
    failed = run_flow(flow_doc([parallel("all", branches, fail_fast=False)]))
    assert "2 of 3 branches failed" in failed.steps.get(task_name="all").error
    first = children_of(failed, "all")
    tally.fail()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert tally.runs() == Counter({"a": 1, "b": 2, "c": 2})
    result = joined(execution, "all").result
    assert {b: result[b] for b in "abc"} == {
        "a": {"key": "a", "attempt": 1},
        "b": {"key": "b", "attempt": 2},
        "c": {"key": "c", "attempt": 2},
    }
    assert counts(joined(execution, "all")) == (3, 3, 3, 0)
    assert [c.id for c in children_of(execution, "all")] == [c.id for c in first]


def test_a_parallel_task_cancelled_after_its_branches_completed_joins_them_when_redriven(
    monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    branches = {name: [tally.task("work", name)] for name in ("a", "b")}
    execution = start_execution(flow_doc([parallel("both", branches), task("after")]))
    after_each_step(
        monkeypatch,
        lambda name: (
            name == "work"
            and not refresh(execution).pause_requested
            and services.execution_pause(execution_id=execution.id)
        ),
    )
    # Paused, the parent holds its join while both branches complete; then it is cancelled.
    assert run_to_end(execution.id).status == ExecutionStatus.PAUSED
    monkeypatch.undo()
    for branch in children_of(execution, "both"):
        run_to_end(branch.id)  # a paused parent's children run on
    assert [c.status for c in children_of(execution, "both")] == ["COMPLETED"] * 2
    services.execution_cancel(execution_id=execution.id)

    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("both", CANCELLED), ("both", OK), ("after", OK)]
    assert tally.runs() == Counter({"a": 1, "b": 1})
    assert joined(execution, "both").result["b"] == {"key": "b", "attempt": 1}


def test_a_map_item_whose_parallel_failed_runs_only_that_branch_again(tally: Tally) -> None:
    tally.fail("1y")
    both = parallel(
        "both",
        {"x": [tally.task("work", "${item}x")], "y": [tally.task("work", "${item}y")]},
        fail_fast=False,
    )
    failed = run_flow(flow_doc([mapped("each", [0, 1, 2], [both], max_concurrency=1)]))
    assert [c.status for c in children_of(failed, "each")] == ["COMPLETED", "FAILED", "CANCELLED"]
    item = children_of(failed, "each")[1]
    branches = children_of(item, "both")
    tally.fail()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    # Item 0 did not run again; in item 1, only branch y; item 2 ran for the first time.
    assert tally.runs() == Counter({"0x": 1, "0y": 1, "1x": 1, "1y": 2, "2x": 1, "2y": 1})
    item = refresh(item)
    assert ran(item) == [("both", FAIL), ("both", OK)]
    assert [c.id for c in children_of(item, "both")] == [c.id for c in branches]
    assert counts(joined(item, "both")) == (2, 2, 2, 0)
    results = joined(execution, "each").result["results"]
    assert [(r["x"]["key"], r["y"]["key"], r["y"]["attempt"]) for r in results] == [
        ("0x", "0y", 1), ("1x", "1y", 2), ("2x", "2y", 1),
    ]  # fmt: skip


def test_a_failed_sub_flow_is_redriven_in_place_from_its_failed_step(tally: Tally) -> None:
    services.flow_create(
        document=flow_doc([tally.task("s1", "s1"), tally.task("s2", "s2")], flow_id="child")
    )
    tally.fail("s2")
    document = flow_doc(
        [{"name": "call", "task_type": "subflow", "parameters": {"flow_id": "child"}},
         task("after")],
        flow_id="parent",
    )  # fmt: skip
    failed = run_flow(document)
    [child] = children_of(failed, "call")
    assert (child.status, ran(child)) == ("FAILED", [("s1", OK), ("s2", FAIL)])
    tally.fail()

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    [again] = children_of(execution, "call")
    assert again.id == child.id
    assert ran(again) == [("s1", OK), ("s2", FAIL), ("s2", OK)]
    assert tally.runs() == Counter({"s1": 1, "s2": 2})
    result = joined(execution, "call").result
    assert (result["execution_id"], result["status"]) == (str(child.id), "COMPLETED")
    assert result["result"] == {"key": "s2", "attempt": 2}


def test_a_redrive_cancelled_before_it_ran_takes_over_the_same_children_when_redriven_again(
    tally: Tally,
) -> None:
    tally.fail(1)
    failed = run_flow(flow_doc([counting_map(tally, [0, 1, 2], max_concurrency=1)]))
    tally.fail()
    services.execution_redrive(execution_id=failed.id)
    services.execution_cancel(execution_id=failed.id)  # before any worker took it

    services.execution_redrive(execution_id=failed.id)
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("each", FAIL), ("each", CANCELLED), ("each", OK)]
    assert tally.runs() == Counter({"0": 1, "1": 2, "2": 1})


def test_redrive_is_refused_while_a_child_of_the_tree_is_still_ending() -> None:
    failed = run_flow(flow_doc([parallel("both", {"bad": [failing("x")], "ok": [task("y")]})]))
    assert failed.status == ExecutionStatus.FAILED
    _, other = children_of(failed, "both")
    # As when a worker elsewhere has not reached the cancel of its branch yet.
    Execution.objects.filter(pk=other.id).update(status=ExecutionStatus.RUNNING)

    with pytest.raises(services.Conflict, match="1 of its child executions have not ended"):
        services.execution_redrive(execution_id=failed.id)
    assert (refresh(failed).status, refresh(failed).redrive_count) == ("FAILED", 0)


def test_a_redrive_whose_worker_died_before_taking_over_still_runs_only_the_failed_items(
    monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    tally.fail(1)
    failed = run_flow(flow_doc([counting_map(tally, [0, 1, 2], max_concurrency=1)]))
    assert failed.status == ExecutionStatus.FAILED
    first = [c.id for c in children_of(failed, "each")]
    tally.fail()
    services.execution_redrive(execution_id=failed.id)

    lost = worker_dies_in(monkeypatch, engine.step.redrive, "resume", failed.id)
    assert lost.task_name == "each"

    assert engine.reap()["lost"] == 1
    execution = run_to_end(failed.id)

    assert execution.status == ExecutionStatus.COMPLETED, execution.error
    assert ran(execution) == [("each", FAIL), ("each", "LOST"), ("each", OK)]
    # The reaper's new attempt took the same children over: only item 1 ran again.
    assert tally.runs() == Counter({"0": 1, "1": 2, "2": 1})
    assert [c.id for c in children_of(execution, "each")] == first
