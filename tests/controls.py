"""Shared by the engine control tests (tests/test_engine_<feature>.py): task types that
behave in a particular way, and helpers that act on an execution the way a user would.

The task types (fail on the first attempts, fail until a marker file exists, hang until
cancelled, count their runs and fail while listed in a file) are written into one
temporary plugin folder beside copies of the built-in ones, and ``FLOW_TASKS_DIR`` points
there (the ``control_plugins`` fixture in conftest.py), so the services, the engine and the
factories all see the same task types.

Everything runs through the public engine API: ``engine.run_inline`` (the worker's
``Dispatcher`` at concurrency 1) and ``engine.dispatch`` (what one worker job does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from flows import engine, services
from flows.engine import timing
from flows.models import Execution, ExecutionEvent, TaskRun, TaskRunStatus
from tests.factories import (
    HANG_PLUGIN,
    NEEDS_MARKER_PLUGIN,
    failing,
    flow_doc,
    run_flow,
    run_to_end,
    start_execution,
    task,
)

OK = TaskRunStatus.SUCCESS
FAIL = TaskRunStatus.FAILURE
PENDING = TaskRunStatus.PENDING
CANCELLED = TaskRunStatus.CANCELLED
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
    "leaky": """
        import base64
        import json
        import logging


        class LeakyTask(BaseTask):
            \"\"\"Gives its ``token`` away every way a careless task might: in its log, in a
            library's log, in its result (plain, as a key, inside JSON text, base64 in a Basic
            header, deep in a list) and, with ``fail``, in its error.\"\"\"

            async def run(self):
                token = self.parameters["token"]
                self.context.logger.info("calling with token %s", token)
                logging.getLogger("httpx").warning("GET https://api.example/?key=%s", token)
                if self.parameters.get("fail"):
                    raise RuntimeError(f"the server refused {token!r}")
                basic = base64.b64encode(f"user:{token}".encode()).decode()
                return {
                    "echo": token,
                    "header": self.parameters.get("header"),
                    "as_json": json.dumps({"t": token}),
                    "basic": f"Basic {basic}",
                    "nested": [{"deep": [token]}],
                    token: "as a key",
                }
    """,
    "echo_then_fail": """
        class EchoThenFailTask(BaseTask):
            async def run(self):
                raise RuntimeError(f"called with {self.parameters}")
    """,
    "tally": """
        from pathlib import Path


        class TallyTask(BaseTask):
            \"\"\"Adds a line ``key`` to the file ``tally`` each time it runs; then fails while
            ``key`` is a line of the file ``failing``.\"\"\"

            async def run(self):
                key = str(self.parameters["key"])
                with open(self.parameters["tally"], "a") as out:
                    out.write(key + "\\n")
                failing = Path(self.parameters["failing"])
                if failing.exists() and key in failing.read_text().split():
                    raise RuntimeError(f"{key} is failing")
                return {"key": key, "attempt": self.context.attempt}
    """,
}


@dataclass
class Tally:
    """The files of the ``tally`` task type in ``folder``: the runs it counts, and the keys
    that fail (a flag a test flips, as an operator fixes what made them fail)."""

    folder: Path

    def task(self, name: str, key: str) -> dict[str, Any]:
        """A ``tally`` task counting its runs under ``key`` (references allowed)."""
        return task(
            name,
            "tally",
            key=key,
            tally=str(self.folder / "tally"),
            failing=str(self.folder / "failing"),
        )

    def fail(self, *keys: Any) -> None:
        """From now on, these keys fail (none: every key succeeds)."""
        (self.folder / "failing").write_text("\n".join(str(k) for k in keys))

    def runs(self) -> Counter[str]:
        """How many times each key ran."""
        path = self.folder / "tally"
        return Counter(path.read_text().split()) if path.exists() else Counter()


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


def after_each_step(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Call ``action(step_name)`` right after each step's task ends (or fails to start),
    before its step is recorded.

    The step is still RUNNING in the database then, as it is when a request arrives while a
    worker runs it. ``Dispatcher.advance`` is where the dispatcher takes a step's outcome.
    """
    real_advance = engine.Dispatcher.advance

    def act_then_advance(self, slot, outcome):
        action(slot.step.task_name)
        return real_advance(self, slot, outcome)

    monkeypatch.setattr(engine.Dispatcher, "advance", act_then_advance)


def cancel_while_the_task_runs(monkeypatch: pytest.MonkeyPatch, execution: Execution) -> None:
    """Ask for a cancel while a task runs, as a request from elsewhere would.

    The worker looks at the executions in flight while their tasks run (once a second; here
    every 0.05 s); the request is made just before one of those looks, in the worker's own
    thread, since a test's database transaction is not visible to other threads.
    """
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 0.05)
    real_watch = engine.Dispatcher.watch

    def cancel_then_watch(self):
        if not refresh(execution).cancel_requested:
            assert services.execution_cancel(execution_id=execution.id).cancel_requested
        return real_watch(self)

    monkeypatch.setattr(engine.Dispatcher, "watch", cancel_then_watch)


def run_one_job(execution: Execution) -> Execution:
    """What one worker job does: run steps until the execution ends or has to wait."""
    engine.dispatch(execution.id)
    return refresh(execution)


def held_elsewhere(execution: Execution) -> TaskRun:
    """Another worker claims the execution's ready step (and is still running it)."""
    claimed = engine.claim_steps("elsewhere:1", timedelta(seconds=30), 1, only=execution.id)
    assert claimed is not None and len(claimed.steps) == 1
    return claimed.steps[0]


def past_deadline(execution: Execution) -> None:
    """The flow's deadline is behind us (set in the past instead of slept through)."""
    Execution.objects.filter(pk=execution.id).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )


def retry_now_due(execution: Execution) -> None:
    """The execution's waiting retry is due (its delay set in the past, not slept through)."""
    TaskRun.objects.filter(execution=execution, status=TaskRunStatus.PENDING).update(
        not_before=timezone.now() - timedelta(seconds=1)
    )


class WorkerKilled(BaseException):
    """Stands for a kill -9: the dispatcher catches Exception, not this, so the worker does
    nothing more."""


def worker_dies_in(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, execution_id: Any
) -> TaskRun:
    """Run an execution inline until it calls ``owner.name``, where its worker dies: the step
    it held stays RUNNING, and its lease is made to have expired, as the reaper will find it.
    Returns that step."""

    def killed(*args: Any) -> None:
        raise WorkerKilled

    with monkeypatch.context() as patched:
        patched.setattr(owner, name, killed)
        with pytest.raises(WorkerKilled):
            run_to_end(execution_id)
    step = TaskRun.objects.get(execution_id=execution_id, status=TaskRunStatus.RUNNING)
    TaskRun.objects.filter(pk=step.pk).update(lease_expires_at=step.started_at)
    return step
