"""Retries: each attempt its own step, delays waiting in the database, the policy's
fields and what is never retried.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django_q.conf import Conf
from django_q.models import OrmQ

from flows import engine, services
from flows.definition import RetryPolicy
from flows.models import ExecutionStatus
from tests.controls import (
    FAIL,
    OK,
    PENDING,
    QUICK,
    attempts,
    expression_cond,
    field_errors,
    log_of,
    refresh,
    retrying,
    run_one_job,
    steps_of,
)
from tests.factories import (
    cond,
    flow_doc,
    ran,
    run_flow,
    start_execution,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def test_a_task_failing_twice_is_retried_until_it_succeeds_and_the_flow_goes_on() -> None:
    execution = run_flow(flow_doc([retrying("flaky", "flaky", QUICK, failures=2), task("after")]))

    assert execution.status == ExecutionStatus.COMPLETED
    assert ran(execution) == [("flaky", FAIL), ("flaky", FAIL), ("flaky", OK), ("after", OK)]
    assert attempts(execution, "flaky") == [1, 2, 3]
    assert execution.steps.get(task_name="flaky", status=OK).result == {"attempt": 3}


def test_every_attempt_is_its_own_step_with_its_error_and_timings() -> None:
    execution = run_flow(flow_doc([retrying("flaky", "flaky", QUICK, failures=2)]))

    first, second, third = steps_of(execution)
    assert (first.error, second.error, third.error) == (
        "RuntimeError: attempt 1 failed",
        "RuntimeError: attempt 2 failed",
        "",
    )
    for step in (first, second, third):
        assert step.started_at is not None
        assert step.ended_at is not None
        assert step.duration is not None
    assert "retry in 0.05s" in first.route
    assert any("attempt 1 of 3" in line for line in log_of(execution))


def test_a_delayed_retry_waits_as_a_pending_step_and_the_worker_lets_go() -> None:
    execution = start_execution(
        flow_doc([retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})])
    )

    execution = run_one_job(execution)

    failed, waiting = steps_of(execution)
    assert (failed.status, failed.attempt) == (FAIL, 1)
    assert (waiting.status, waiting.attempt) == (PENDING, 2)
    assert waiting.not_before is not None
    assert waiting.not_before > failed.ended_at
    assert execution.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    if Conf.ORM:
        # The ORM broker's job that wakes the retry stays invisible until the retry is due.
        # (Redis has no delayed delivery: there the reaper wakes the step once it is due.)
        assert OrmQ.objects.filter(lock__gte=waiting.not_before).count() == 1
    # A job arriving before the retry is due runs nothing.
    assert engine.dispatch(execution.id) == 0
    assert steps_of(refresh(execution))[-1].status == PENDING


def test_after_the_last_attempt_the_failure_routes_to_the_recovery_task() -> None:
    execution = run_flow(
        flow_doc(
            [
                retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 0.05}, failures=5),
                task("next"),
                task("recover"),
            ],
            [cond("flaky", "success", "next", "recover")],
        )
    )

    assert ran(execution) == [("flaky", FAIL), ("flaky", FAIL), ("recover", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_after_the_last_attempt_without_a_recovery_route_the_execution_fails() -> None:
    execution = run_flow(flow_doc([retrying("flaky", "flaky", QUICK, failures=5)]))

    assert ran(execution) == [("flaky", FAIL)] * 3
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "task 'flaky' failed: RuntimeError: attempt 3 failed"


def test_a_task_that_outlives_its_own_timeout_is_retried(marker: Path) -> None:
    slow = retrying("slow", "hang_until_marker", QUICK, marker=str(marker))
    slow["timeout_seconds"] = 0.05

    execution = run_flow(flow_doc([slow]))

    assert ran(execution) == [("slow", FAIL)] * 3
    assert all("timed out after 0.05s" in step.error for step in steps_of(execution))


def test_a_permanent_task_error_is_never_retried() -> None:
    execution = run_flow(flow_doc([retrying("strict", "refuses", QUICK)]))

    assert ran(execution) == [("strict", FAIL)]
    assert "retrying will not help" in execution.error
    assert execution.status == ExecutionStatus.FAILED


def test_a_reference_that_cannot_be_resolved_is_never_retried() -> None:
    # "later" is in the flow (so validation accepts it) but has not run when "use" runs.
    execution = run_flow(
        flow_doc(
            [
                retrying("use", "print", QUICK, message="${results.later.data.message}"),
                task("later", "print", message="hi"),
            ]
        )
    )

    assert ran(execution) == [("use", FAIL)]
    assert "task 'later' has no result yet" in execution.steps.get().error


def test_a_condition_expression_that_fails_is_never_retried() -> None:
    execution = run_flow(
        flow_doc(
            [retrying("count", "numbers", QUICK), task("big"), task("small")],
            [expression_cond("count", "result.missing > 1", "big", "small")],
        )
    )

    assert ran(execution) == [("count", FAIL), ("small", OK)]


def test_a_task_type_default_retry_applies_when_the_flow_sets_none() -> None:
    execution = run_flow(flow_doc([task("flaky", "flaky_by_default")]))

    assert ran(execution) == [("flaky", FAIL), ("flaky", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_retry_in_the_flow_overrides_the_task_type_default() -> None:
    execution = run_flow(flow_doc([retrying("flaky", "flaky_by_default", {"max_attempts": 1})]))

    assert ran(execution) == [("flaky", FAIL)]


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (RetryPolicy(max_attempts=5, delay_seconds=2, backoff="fixed"), [2, 2, 2, 2]),
        (RetryPolicy(max_attempts=5, delay_seconds=2, backoff="exponential"), [2, 4, 8, 16]),
        (
            RetryPolicy(
                max_attempts=5, delay_seconds=2, backoff="exponential", max_delay_seconds=5
            ),
            [2, 4, 5, 5],
        ),
        (RetryPolicy(max_attempts=5, delay_seconds=10, max_delay_seconds=3), [3, 3, 3, 3]),
        (RetryPolicy(max_attempts=5), [0, 0, 0, 0]),
    ],
    ids=["fixed", "exponential", "exponential-capped", "fixed-capped", "no-delay"],
)
def test_retry_delays_are_fixed_exponential_or_capped(policy: RetryPolicy, delays) -> None:
    assert [policy.delay_before(attempt) for attempt in (2, 3, 4, 5)] == delays


def test_a_retry_document_becomes_the_task_policy() -> None:
    retry = {"max_attempts": 4, "delay_seconds": 1.5, "backoff": "exponential"}
    definition = services.validate_flow(flow_doc([retrying("a", "noop", retry)]))

    assert definition.task("a").retry == RetryPolicy(
        max_attempts=4, delay_seconds=1.5, backoff="exponential", max_delay_seconds=3600
    )


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"max_attempts": 0}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": 101}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": "3"}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": True}, "tasks[0].retry.max_attempts"),
        ({"max_attempts": 2.5}, "tasks[0].retry.max_attempts"),
        ({"delay_seconds": -1}, "tasks[0].retry.delay_seconds"),
        ({"delay_seconds": "2s"}, "tasks[0].retry.delay_seconds"),
        ({"max_delay_seconds": 10**6}, "tasks[0].retry.max_delay_seconds"),
        ({"backoff": "linear"}, "tasks[0].retry.backoff"),
        ({"jitter": True}, "tasks[0].retry.jitter"),
        ([3], "tasks[0].retry"),
        (3, "tasks[0].retry"),
    ],
)
def test_an_invalid_retry_is_refused_at_its_field_path(retry: Any, field: str) -> None:
    errors = field_errors(flow_doc([retrying("a", "noop", retry)]))

    assert list(errors) == [field]


def test_every_invalid_retry_field_is_reported_at_once() -> None:
    document = flow_doc(
        [
            task("a"),
            retrying("b", "noop", {"max_attempts": 0, "backoff": "sometimes"}),
        ]
    )

    assert set(field_errors(document)) == {"tasks[1].retry.max_attempts", "tasks[1].retry.backoff"}
