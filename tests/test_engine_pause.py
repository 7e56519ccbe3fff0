"""Pause and resume: a pause lets the running step finish and holds the next one; resume
queues it again.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

import time

import pytest

from flows import engine, services
from flows.engine import inline
from flows.models import ExecutionStatus
from tests.controls import (
    FAIL,
    OK,
    PENDING,
    after_each_step,
    in_state,
    log_of,
    refresh,
    retrying,
    run_one_job,
)
from tests.factories import (
    flow_doc,
    ran,
    run_to_end,
    start_execution,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def test_pausing_a_running_execution_lets_the_step_finish_then_waits_before_the_next(
    monkeypatch,
) -> None:
    execution = start_execution(flow_doc([task("a"), task("b"), task("c")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_pause(execution_id=execution.id),
    )

    paused = run_to_end(execution.id)

    assert paused.status == ExecutionStatus.PAUSED
    assert ran(paused) == [("a", OK), ("b", PENDING)]
    # A job that arrives meanwhile runs nothing.
    assert engine.dispatch(execution.id) == 0


def test_resuming_a_paused_execution_continues_where_it_stopped(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b"), task("c")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_pause(execution_id=execution.id),
    )
    run_to_end(execution.id)

    resumed = services.execution_resume(execution_id=execution.id)

    assert resumed.status == ExecutionStatus.QUEUED
    execution = run_to_end(execution.id)
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", OK), ("b", OK), ("c", OK)]
    assert any("paused before b" in line for line in log_of(execution))


def test_resuming_keeps_the_time_the_execution_first_started(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_pause(execution_id=execution.id),
    )
    first_started = run_to_end(execution.id).started_at
    assert first_started is not None

    services.execution_resume(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.started_at == first_started


def test_pausing_a_queued_execution_pauses_it_at_once() -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))

    paused = services.execution_pause(execution_id=execution.id)

    assert paused.status == ExecutionStatus.PAUSED
    assert run_to_end(execution.id).status == ExecutionStatus.PAUSED
    assert ran(execution) == [("a", PENDING)]

    services.execution_resume(execution_id=execution.id)

    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", OK), ("b", OK)]


def test_resuming_before_the_pause_takes_effect_withdraws_it(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))

    def pause_and_change_mind(name: str) -> None:
        if name == "a":
            services.execution_pause(execution_id=execution.id)
            assert services.execution_resume(execution_id=execution.id).status == "RUNNING"

    after_each_step(monkeypatch, pause_and_change_mind)

    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("a", OK), ("b", OK)]


def test_a_retry_waiting_when_paused_runs_after_resume() -> None:
    execution = start_execution(
        flow_doc([retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 0.05})])
    )
    run_one_job(execution)
    assert services.execution_pause(execution_id=execution.id).status == ExecutionStatus.PAUSED

    services.execution_resume(execution_id=execution.id)
    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("flaky", FAIL), ("flaky", OK)]


def test_a_retry_falling_due_while_the_inline_run_looks_still_runs(monkeypatch) -> None:
    """The retry's delay ends between the dispatcher's look (nothing due yet) and the inline
    run's check of what is left: the run goes on to it instead of returning half done. (CI
    caught this with the resume above: a 0.05 s retry delay ending in that gap.)"""
    execution = start_execution(
        flow_doc([retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 0.2})])
    )
    run_one_job(execution)
    looks = []
    real_run = inline.Dispatcher.run

    def look_then_let_the_delay_pass(dispatcher: inline.Dispatcher) -> int:
        ran_now = real_run(dispatcher)
        looks.append(ran_now)
        if len(looks) == 1:
            time.sleep(0.3)  # the retry falls due after the look
        return ran_now

    monkeypatch.setattr(inline.Dispatcher, "run", look_then_let_the_delay_pass)

    execution = run_to_end(execution.id)

    assert looks[0] == 0
    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("flaky", FAIL), ("flaky", OK)]


def test_pausing_an_execution_already_pausing_is_a_conflict(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    refusals: list[str] = []

    def pause_twice(name: str) -> None:
        if name == "a":
            services.execution_pause(execution_id=execution.id)
            with pytest.raises(services.Conflict) as refused:
                services.execution_pause(execution_id=execution.id)
            refusals.append(refused.value.message)

    after_each_step(monkeypatch, pause_twice)
    run_to_end(execution.id)

    assert len(refusals) == 1
    assert "already pausing" in refusals[0]


def test_resuming_a_running_execution_that_is_not_pausing_is_a_conflict(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a")]))
    refusals: list[str] = []

    def try_resume(name: str) -> None:
        with pytest.raises(services.Conflict) as refused:
            services.execution_resume(execution_id=execution.id)
        refusals.append(refused.value.message)

    after_each_step(monkeypatch, try_resume)

    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED
    assert refusals == [f"execution {execution.id} is RUNNING; only a PAUSED one can resume"]


@pytest.mark.parametrize("state", ["CREATED", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"])
def test_pause_is_refused_unless_the_execution_is_queued_or_running(state: str) -> None:
    execution = in_state(state)

    with pytest.raises(services.Conflict, match="only a QUEUED or RUNNING"):
        services.execution_pause(execution_id=execution.id)
    assert refresh(execution).status == state


@pytest.mark.parametrize("state", ["CREATED", "QUEUED", "COMPLETED", "FAILED", "CANCELLED"])
def test_resume_is_refused_unless_the_execution_is_paused(state: str) -> None:
    execution = in_state(state)

    with pytest.raises(services.Conflict, match="only a PAUSED one can resume"):
        services.execution_resume(execution_id=execution.id)
    assert refresh(execution).status == state


def test_controls_for_an_unknown_execution_answer_not_found() -> None:
    for control in (
        services.execution_pause,
        services.execution_resume,
        services.execution_redrive,
        services.execution_cancel,
    ):
        with pytest.raises(services.NotFound):
            control(execution_id="5b6c1f1e-0000-4000-8000-000000000000")
