"""Engine controls through the real engine run inline: retries, the flow's timeout, cancel,
redrive, pause/resume, ``${...}`` parameter references and CEL conditions.

Task types that behave in a particular way (fail on the first attempts, fail until a marker
file exists, hang until cancelled) are written into a temporary plugin folder beside copies
of the built-in ones, and ``FLOW_TASKS_DIR`` points there, so the services, the engine and
the factories all see the same task types.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from django_q.conf import Conf
from django_q.models import OrmQ

from flows import engine, services
from flows.definition import RetryPolicy
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun, TaskRunStatus
from tests.factories import (
    HANG_PLUGIN,
    NEEDS_MARKER_PLUGIN,
    cond,
    failing,
    flow_doc,
    ran,
    run_flow,
    run_to_end,
    start_execution,
    task,
    write_plugins,
)

pytestmark = pytest.mark.django_db

OK = TaskRunStatus.SUCCESS
FAIL = TaskRunStatus.FAILURE
PENDING = TaskRunStatus.PENDING
CANCELLED = TaskRunStatus.CANCELLED
BUILT_IN = Path(__file__).resolve().parent.parent / "tasks"
QUICK = {"max_attempts": 3, "delay_seconds": 0.05}

PLUGINS = {
    "hang": HANG_PLUGIN,
    "needs_marker": NEEDS_MARKER_PLUGIN,
    "flaky": """
        class FlakyTask(BaseTask):
            \"\"\"Fails on attempts 1..failures, then succeeds.\"\"\"

            async def run(self):
                attempt = self.context.attempt
                if attempt <= self.parameters.get("failures", 1):
                    raise RuntimeError(f"attempt {attempt} failed")
                return {"attempt": attempt}
    """,
    "flaky_by_default": """
        class FlakyByDefaultTask(BaseTask):
            \"\"\"Fails on its first attempt; its type asks for one retry.\"\"\"

            default_retry = {"max_attempts": 2, "delay_seconds": 0.05}

            async def run(self):
                if self.context.attempt == 1:
                    raise RuntimeError("first attempt failed")
                return {"attempt": self.context.attempt}
    """,
    "refuses": """
        class RefusesTask(BaseTask):
            async def run(self):
                raise PermanentTaskError("the input is wrong; retrying will not help")
    """,
    "hang_until_marker": """
        import asyncio
        from pathlib import Path


        class HangUntilMarkerTask(BaseTask):
            \"\"\"Hangs until cancelled, unless the file named by ``marker`` exists.\"\"\"

            async def run(self):
                if not Path(self.parameters["marker"]).exists():
                    await asyncio.sleep(30)
                return {"attempt": self.context.attempt}
    """,
    "numbers": """
        class NumbersTask(BaseTask):
            async def run(self):
                return {
                    "count": 3,
                    "records": [{"id": 1}, {"id": 2}, {"id": 3}],
                    "meta": {"ok": True, "source": "api"},
                }
    """,
    "echo": """
        class EchoTask(BaseTask):
            \"\"\"Returns the parameters it was given, after references were resolved.\"\"\"

            async def run(self):
                return {"got": self.parameters}
    """,
    "echo_then_fail": """
        class EchoThenFailTask(BaseTask):
            async def run(self):
                raise RuntimeError(f"called with {self.parameters}")
    """,
}


@pytest.fixture(scope="module")
def plugin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in task types and the ones above, in one folder (loaded once per module)."""
    folder = tmp_path_factory.mktemp("plugins")
    for module in BUILT_IN.glob("task_*.py"):
        shutil.copy(module, folder / module.name)
    return write_plugins(folder, PLUGINS)


@pytest.fixture(autouse=True)
def plugins(plugin_folder: Path, settings: Any) -> Path:
    settings.FLOW_TASKS_DIR = plugin_folder
    return plugin_folder


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


def retrying(name: str, task_type: str, retry: dict[str, Any], **parameters: Any) -> dict:
    return {**task(name, task_type, **parameters), "retry": retry}


def attempts(execution: Execution, name: str) -> list[int]:
    return list(
        execution.steps.filter(task_name=name).order_by("seq").values_list("attempt", flat=True)
    )


def steps_of(execution: Execution) -> list[TaskRun]:
    return list(execution.steps.order_by("seq"))


def log_of(execution: Execution) -> list[str]:
    return list(
        ExecutionEvent.objects.filter(execution=execution)
        .order_by("id")
        .values_list("message", flat=True)
    )


def refresh(execution: Execution) -> Execution:
    return Execution.objects.get(pk=execution.id)


def field_errors(document: dict[str, Any]) -> dict[str, str]:
    """Validate ``document``, expecting it to be refused; the errors by field path."""
    with pytest.raises(services.InvalidFlow) as refused:
        services.validate_flow(document)
    return {e["field"]: e["message"] for e in refused.value.errors}


def after_each_step(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Call ``action(step_name)`` right after each task returns, before its step is recorded.

    The step is still RUNNING in the database then, as it is when a request arrives while a
    worker runs it.
    """
    real_run_step = engine.Runner.run_step

    def run_step_then_act(self, execution, definition, step, results):
        outcome = real_run_step(self, execution, definition, step, results)
        action(step.task_name)
        return outcome

    monkeypatch.setattr(engine.Runner, "run_step", run_step_then_act)


def expression_cond(source: str, expression: str, success: str, failure: str) -> dict[str, Any]:
    return {
        "source_task": source,
        "expression": expression,
        "target_task_success": success,
        "target_task_failure": failure,
    }


def in_state(state: str) -> Execution:
    """A new execution in ``state``, got there the way a user would."""
    document = flow_doc([failing("a")] if state == "FAILED" else [task("a")], flow_id=state)
    if state == "CREATED":
        version = services.flow_create(document=document)
        return services.execution_create(flow_version=version)
    if state in ("COMPLETED", "FAILED"):
        return run_flow(document)
    execution = start_execution(document)
    if state == "PAUSED":
        services.execution_pause(execution_id=execution.id)
    elif state == "CANCELLED":
        services.execution_cancel(execution_id=execution.id)
    return refresh(execution)


def cancel_while_the_task_runs(monkeypatch: pytest.MonkeyPatch, execution: Execution) -> None:
    """Ask for a cancel while a task runs, as a request from elsewhere would.

    The worker looks at the execution while its task runs (once a second; here every 0.05 s);
    the request is made just before one of those looks, in the worker's own thread, since a
    test's database transaction is not visible to other threads.
    """
    monkeypatch.setattr(engine, "WATCH_INTERVAL_SECONDS", 0.05)
    real_watch = engine.Runner._watch

    def cancel_then_watch(self, step, *, renew_lease):
        if not refresh(execution).cancel_requested:
            assert services.execution_cancel(execution_id=execution.id).cancel_requested
        return real_watch(self, step, renew_lease=renew_lease)

    monkeypatch.setattr(engine.Runner, "_watch", cancel_then_watch)


def run_one_job(execution: Execution) -> Execution:
    """What one worker job does: run steps until the execution ends or has to wait."""
    engine.run_execution(execution.id)
    return refresh(execution)


# =============================================================================================
# 1. Retries
# =============================================================================================
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
    assert engine.run_execution(execution.id) == 0
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


# =============================================================================================
# 2. The flow's timeout
# =============================================================================================
def test_a_flow_past_its_timeout_fails_naming_the_timeout_and_cuts_the_running_step() -> None:
    execution = run_flow(
        flow_doc([task("long", "wait", seconds=30), task("after")], timeout_seconds=0.2)
    )

    assert execution.status == ExecutionStatus.FAILED
    assert "timeout" in execution.error
    assert "timeout_seconds" in execution.error
    assert "0.2s" in execution.error
    assert ran(execution) == [("long", FAIL)]
    assert "timeout_seconds" in execution.steps.get().error


def test_a_flow_timeout_ends_the_flow_instead_of_routing_to_recovery_or_retrying() -> None:
    execution = run_flow(
        flow_doc(
            [retrying("long", "wait", QUICK, seconds=30), task("recover")],
            [cond("long", "success", "end", "recover")],
            timeout_seconds=0.2,
        )
    )

    assert ran(execution) == [("long", FAIL)]
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error


def test_steps_that_finish_in_time_keep_their_results_when_a_later_step_times_out() -> None:
    execution = run_flow(
        flow_doc(
            [task("quick"), task("long", "wait", seconds=30), task("never")],
            timeout_seconds=0.2,
        )
    )

    assert ran(execution) == [("quick", OK), ("long", FAIL)]
    assert "timeout_seconds" in execution.error


def test_the_reaper_ends_an_execution_past_its_deadline_when_no_step_runs() -> None:
    execution = start_execution(flow_doc([task("a")], timeout_seconds=0.05))
    time.sleep(0.1)  # the deadline passes with nobody working on it

    counts = engine.reap()

    execution = refresh(execution)
    assert counts["timed_out"] == 1
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("a", CANCELLED)]
    assert execution.ended_at is not None
    assert any("timeout" in line for line in log_of(execution))


def test_a_retry_that_would_be_due_after_the_deadline_ends_the_execution_at_once() -> None:
    execution = start_execution(
        flow_doc(
            [retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})],
            timeout_seconds=5,
        )
    )
    run_one_job(execution)

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("flaky", FAIL)]


def test_the_reaper_ends_an_execution_whose_retry_waits_past_its_deadline() -> None:
    execution = start_execution(
        flow_doc(
            [retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 0.3})],
            timeout_seconds=0.6,
        )
    )
    run_one_job(execution)
    time.sleep(0.7)  # past the deadline, and the retry is due: no worker has taken it yet

    engine.reap()

    execution = refresh(execution)
    assert execution.status == ExecutionStatus.FAILED
    assert "timeout_seconds" in execution.error
    assert ran(execution) == [("flaky", FAIL), ("flaky", CANCELLED)]


def test_the_reaper_leaves_a_running_step_to_time_itself_out() -> None:
    execution = start_execution(flow_doc([task("a")], timeout_seconds=0.05))
    assert engine.Runner(execution.id).claim() is not None  # a worker holds the step
    time.sleep(0.1)

    counts = engine.reap()

    assert counts["timed_out"] == 0
    assert refresh(execution).status == ExecutionStatus.RUNNING


def test_the_reaper_leaves_executions_within_their_deadline_or_without_one() -> None:
    within = start_execution(flow_doc([task("a")], flow_id="within", timeout_seconds=60))
    unbounded = start_execution(flow_doc([task("a")], flow_id="unbounded"))

    assert engine.reap()["timed_out"] == 0
    assert refresh(within).status == ExecutionStatus.QUEUED
    assert refresh(unbounded).status == ExecutionStatus.QUEUED


@pytest.mark.parametrize("value", [0, -5, "60", True, [60]])
def test_an_invalid_flow_timeout_is_refused_at_its_field_path(value: Any) -> None:
    errors = field_errors(flow_doc([task("a")], timeout_seconds=value))

    assert list(errors) == ["timeout_seconds"]


# =============================================================================================
# 3. Cancel
# =============================================================================================
def test_cancelling_a_running_task_stops_its_coroutine_and_cancels_the_execution(
    monkeypatch: pytest.MonkeyPatch, marker: Path
) -> None:
    execution = start_execution(flow_doc([task("stuck", "hang", marker=str(marker)), task("b")]))
    cancel_while_the_task_runs(monkeypatch, execution)

    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.CANCELLED
    assert execution.error == "cancelled by request"
    assert execution.ended_at is not None
    assert ran(execution) == [("stuck", CANCELLED)]
    assert execution.steps.get().error == "cancelled while running"
    assert marker.read_text() == "cancelled"  # the coroutine was told to stop


def test_cancelling_between_steps_stops_before_the_next_task(monkeypatch) -> None:
    execution = start_execution(flow_doc([task("a"), task("b")]))
    after_each_step(
        monkeypatch,
        lambda name: name == "a" and services.execution_cancel(execution_id=execution.id),
    )

    execution = run_to_end(execution.id)

    assert execution.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", OK)]


def test_cancelling_a_queued_execution_cancels_its_waiting_step() -> None:
    execution = start_execution(flow_doc([task("a")]))

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", CANCELLED)]
    assert execution.steps.get().error == "cancelled before it started"
    # The job already queued for it finds nothing to run.
    assert engine.run_execution(execution.id) == 0
    assert refresh(execution).status == ExecutionStatus.CANCELLED


def test_cancelling_while_a_retry_waits_cancels_the_retry() -> None:
    execution = start_execution(
        flow_doc([retrying("flaky", "flaky", {"max_attempts": 2, "delay_seconds": 30})])
    )
    run_one_job(execution)

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("flaky", FAIL), ("flaky", CANCELLED)]


def test_cancelling_a_paused_execution_cancels_it() -> None:
    execution = start_execution(flow_doc([task("a")]))
    services.execution_pause(execution_id=execution.id)

    cancelled = services.execution_cancel(execution_id=execution.id)

    assert cancelled.status == ExecutionStatus.CANCELLED
    assert ran(execution) == [("a", CANCELLED)]


@pytest.mark.parametrize("document", [flow_doc([task("a")]), flow_doc([failing("a")])])
def test_cancelling_a_finished_execution_is_a_conflict(document: dict[str, Any]) -> None:
    execution = run_flow(document)

    with pytest.raises(services.Conflict, match=f"already {execution.status}"):
        services.execution_cancel(execution_id=execution.id)


def test_cancelling_a_cancelled_execution_is_a_conflict() -> None:
    execution = start_execution(flow_doc([task("a")]))
    services.execution_cancel(execution_id=execution.id)

    with pytest.raises(services.Conflict):
        services.execution_cancel(execution_id=execution.id)


# =============================================================================================
# 4. Redrive
# =============================================================================================
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


# =============================================================================================
# 5. Pause and resume
# =============================================================================================
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
    assert engine.run_execution(execution.id) == 0


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


# =============================================================================================
# 6. Data passing
# =============================================================================================
def test_a_whole_value_reference_keeps_its_json_type() -> None:
    execution = run_flow(
        flow_doc(
            [
                task("fetch", "numbers"),
                task(
                    "use",
                    "echo",
                    records="${results.fetch.data.records}",
                    count="${results.fetch.data.count}",
                    ok="${results.fetch.data.meta.ok}",
                    first="${results.fetch.data.records[0].id}",
                    status="${results.fetch.status}",
                ),
            ]
        )
    )

    assert execution.status == ExecutionStatus.COMPLETED
    expected = {
        "records": [{"id": 1}, {"id": 2}, {"id": 3}],
        "count": 3,
        "ok": True,
        "first": 1,
        "status": "SUCCESS",
    }
    use = execution.steps.get(task_name="use")
    assert use.result == {"got": expected}
    assert use.parameters == expected  # stored as resolved for this run


def test_a_reference_inside_a_string_is_interpolated() -> None:
    execution = run_flow(
        flow_doc(
            [
                task("fetch", "numbers"),
                task(
                    "say",
                    "print",
                    message="${results.fetch.data.count} records from "
                    "${results.fetch.data.meta.source} for ${input.customer}: "
                    "${results.fetch.data.records[1]}",
                ),
            ]
        ),
        input={"customer": "acme"},
    )

    assert execution.steps.get(task_name="say").result["message"] == (
        '3 records from api for acme: {"id": 2}'
    )


def test_input_given_to_submit_is_what_references_read() -> None:
    version = services.flow_create(
        document=flow_doc([task("use", "echo", who="${input.customer.name}", n="${input.n}")])
    )

    execution, _ = services.execution_submit(
        flow_version=version, input={"customer": {"name": "acme"}, "n": 7}
    )

    use = run_to_end(execution.id).steps.get()
    assert use.result == {"got": {"who": "acme", "n": 7}}


def test_input_given_at_start_replaces_the_input_given_at_create() -> None:
    version = services.flow_create(document=flow_doc([task("use", "echo", n="${input.n}")]))
    execution = services.execution_create(flow_version=version, input={"n": 1})

    services.execution_start(execution_id=execution.id, input={"n": 2})

    execution = run_to_end(execution.id)
    assert execution.input == {"n": 2}
    assert execution.steps.get().result == {"got": {"n": 2}}


def test_an_input_that_is_not_an_object_is_refused() -> None:
    version = services.flow_create(document=flow_doc([task("a")]))

    with pytest.raises(services.ServiceError) as refused:
        services.execution_submit(flow_version=version, input=[1, 2])  # type: ignore[arg-type]

    assert refused.value.errors == [{"field": "input", "message": "must be an object"}]


def test_a_reference_to_the_whole_input_gives_the_input_object() -> None:
    execution = run_flow(flow_doc([task("use", "echo", whole="${input}")]), input={"a": [1, 2]})

    assert execution.steps.get().result == {"got": {"whole": {"a": [1, 2]}}}


def test_a_reference_to_a_task_not_in_the_flow_is_refused_at_the_parameter_path() -> None:
    document = flow_doc(
        [
            task("fetch", "numbers"),
            task("call", "http_request", url="${results.fetcher.data.url}"),
        ]
    )

    errors = field_errors(document)

    assert list(errors) == ["tasks[1].parameters.url"]
    assert "fetcher" in errors["tasks[1].parameters.url"]


def test_a_nested_reference_to_an_unknown_task_is_refused_at_its_full_path() -> None:
    document = flow_doc(
        [
            task(
                "call",
                "http_request",
                url="https://example.com",
                headers={"X-Token": "Bearer ${results.login.data.token}"},
            )
        ]
    )

    assert list(field_errors(document)) == ["tasks[0].parameters.headers.X-Token"]


def test_a_malformed_reference_is_refused_at_the_parameter_path() -> None:
    errors = field_errors(flow_doc([task("say", "print", message="${secrets.password}")]))

    assert list(errors) == ["tasks[0].parameters.message"]
    assert "results. or input." in errors["tasks[0].parameters.message"]


def test_a_reference_where_the_schema_wants_a_number_is_accepted_until_run_time() -> None:
    services.validate_flow(flow_doc([task("pause", "wait", seconds="${input.seconds}")]))


def test_a_reference_unresolvable_at_run_time_fails_its_step_with_a_clear_error() -> None:
    execution = run_flow(
        flow_doc(
            [task("say", "print", message="hello ${input.customer}"), task("recover")],
            [cond("say", "success", "end", "recover")],
        ),
        input={"client": "acme"},
    )

    failed = execution.steps.get(task_name="say")
    assert failed.status == FAIL
    assert "${input.customer}" in failed.error
    assert "'customer'" in failed.error
    # It fails the step, not the worker: the failure routes as usual.
    assert ran(execution) == [("say", FAIL), ("recover", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_resolved_value_that_breaks_the_schema_fails_the_step() -> None:
    execution = run_flow(
        flow_doc([task("pause", "wait", seconds="${input.seconds}")]),
        input={"seconds": "soon"},
    )

    failed = execution.steps.get()
    assert failed.status == FAIL
    assert "parameters.seconds" in failed.error
    assert "'soon' is not of type 'number'" in failed.error


def test_resolved_parameters_are_stored_on_a_step_that_fails() -> None:
    execution = run_flow(
        flow_doc([task("call", "echo_then_fail", customer="${input.customer}")]),
        input={"customer": "acme"},
    )

    failed = execution.steps.get()
    assert failed.status == FAIL
    assert "acme" in failed.error  # the task did get the resolved value
    assert failed.parameters == {"customer": "acme"}


def test_the_flow_document_keeps_its_references_after_a_run() -> None:
    execution = run_flow(flow_doc([task("use", "echo", n="${input.n}")]), input={"n": 1})

    assert execution.flow_version.definition["tasks"][0]["parameters"] == {"n": "${input.n}"}


@pytest.mark.parametrize(
    "parameters",
    [
        {"message": "cost: $${price}"},
        {"message": "cost: $${price}", "extra": "${input.n}"},
    ],
    ids=["alone", "beside-a-reference"],
)
def test_a_doubled_dollar_writes_a_literal_dollar_brace(parameters: dict[str, str]) -> None:
    execution = run_flow(flow_doc([task("say", "echo", **parameters)]), input={"n": 1})

    assert execution.steps.get().result["got"]["message"] == "cost: ${price}"


# =============================================================================================
# 7. Conditions with CEL expressions
# =============================================================================================
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
