"""How the engine handles a step that goes wrong: raises, hangs, blocks, returns junk, exits.

Each test runs custom task types written into a temporary plugin folder, through the real
engine inline. Whatever a task does, its step fails with a clear message and the engine goes on
routing (here: to a ``recover`` task on failure).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows import engine, services
from flows.engine import timing
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry
from tests.factories import HANG_PLUGIN, write_plugins

pytestmark = pytest.mark.django_db

PLUGINS = {
    "hang": HANG_PLUGIN,
    "succeed": """
        class SucceedTask(BaseTask):
            async def run(self):
                return {"ok": True}
    """,
    "boom": """
        class BoomTask(BaseTask):
            async def run(self):
                self.context.logger.info("about to fail")
                raise ValueError("bad thing 42")
    """,
    "slow_type": """
        import asyncio


        class SlowTypeTask(BaseTask):
            default_timeout = 0.2

            async def run(self):
                await asyncio.sleep(30)
                return {}
    """,
    "block": """
        import time


        class BlockTask(BaseTask):
            async def run(self):
                time.sleep(self.parameters["seconds"])
                return {}
    """,
    "own_timeout": """
        class OwnTimeoutTask(BaseTask):
            async def run(self):
                raise TimeoutError("upstream took too long")
    """,
    "returns": """
        VALUES = {
            "list": [1, 2],
            "none": None,
            "text": "done",
            "set": {"tags": {1, 2}},
            "nan": {"value": float("nan")},
            "object": {"when": object()},
            "big": {"blob": "x" * 5000},
            "surrogate": {"text": "x\\ud800"},
            "nul_key": {"a\\x00": 1},
        }


        class ReturnsTask(BaseTask):
            async def run(self):
                return VALUES[self.parameters["kind"]]
    """,
    "yells": """
        class YellsTask(BaseTask):
            async def run(self):
                raise RuntimeError("half a pair \\ud800 and a NUL \\x00 here")
    """,
    "mumbles": """
        class MumblesTask(BaseTask):
            async def run(self):
                self.context.logger.info("half a pair \\ud800 and a NUL \\x00 here")
                return {}
    """,
    "exits": """
        import sys


        class ExitsTask(BaseTask):
            async def run(self):
                sys.exit(3)
    """,
    "bad_init": """
        class BadInitTask(BaseTask):
            def __init__(self, name, parameters=None):
                raise TypeError("needs a database connection")

            async def run(self):
                return {}
    """,
    "remember": """
        class RememberTask(BaseTask):
            async def run(self):
                return {"value": 41}
    """,
    "meddle": """
        class MeddleTask(BaseTask):
            async def run(self):
                mine = self.context.results["a"]
                mine["value"] = 0
                try:
                    self.context.results["a"] = {"value": -1}
                except TypeError:
                    refused = True
                return {"refused": refused, "changed": mine}
    """,
    "inspect": """
        class InspectTask(BaseTask):
            async def run(self):
                ctx = self.context
                ctx.logger.info("saw %d earlier results", len(ctx.results))
                ctx.logger.warning("careful with %s", self.name)
                return {
                    "execution_id": ctx.execution_id,
                    "earlier": ctx.results,
                    "input": ctx.input,
                    "attempt": ctx.attempt,
                }
    """,
}


@pytest.fixture
def registry(tmp_path: Path) -> TaskRegistry:
    write_plugins(tmp_path, PLUGINS)
    reg = TaskRegistry(tmp_path)
    assert reg.errors == {}
    return reg


@pytest.fixture(autouse=True)
def short_abandon_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # A task stuck in blocking code is abandoned its timeout plus this grace after it started;
    # the default (2 s) is shortened so that these tests stay quick.
    monkeypatch.setattr(timing, "ABANDON_GRACE_SECONDS", 0.3)


def step(name: str, task_type: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "task_type": task_type, **extra}


def with_recovery(first: dict[str, Any]) -> dict[str, Any]:
    """``first``, then ``recover`` on failure (or ``after`` on success)."""
    return {
        "id": "failures",
        "tasks": [first, step("after", "succeed"), step("recover", "succeed")],
        "conditions": [
            {
                "source_task": first["name"],
                "outcome": "success",
                "target_task_success": "after",
                "target_task_failure": "recover",
            },
            {
                "source_task": "after",
                "outcome": "success",
                "target_task_success": "end",
                "target_task_failure": "end",
            },
        ],
    }


def run(registry: TaskRegistry, document: dict[str, Any], **kwargs: Any) -> Execution:
    version = services.flow_create(document=document, registry=registry)
    execution = services.execution_create(flow_version=version, **kwargs)
    services.execution_start(execution_id=execution.id, registry=registry)
    return engine.run_inline(execution.id, registry)


def steps(execution: Execution) -> list[tuple[str, str]]:
    return list(execution.steps.order_by("seq").values_list("task_name", "status"))


def first_step(execution: Execution) -> TaskRun:
    return execution.steps.get(seq=1)


def assert_recovered(execution: Execution) -> None:
    """The first step failed and the engine routed on to ``recover``, which completed."""
    assert steps(execution) == [
        (first_step(execution).task_name, TaskRunStatus.FAILURE),
        ("recover", TaskRunStatus.SUCCESS),
    ]
    assert execution.status == ExecutionStatus.COMPLETED


# --- Raising ---------------------------------------------------------------------------------
def test_a_task_that_raises_fails_its_step_with_the_error_and_traceback(registry) -> None:
    execution = run(registry, with_recovery(step("explode", "boom")))

    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert failed.error == "ValueError: bad thing 42"
    assert "task_boom.py" in failed.traceback
    assert "ValueError: bad thing 42" in failed.traceback
    assert failed.result is None
    assert failed.ended_at is not None
    assert_recovered(execution)


def test_without_a_recovery_route_a_raising_task_fails_the_execution(registry) -> None:
    execution = run(registry, {"id": "solo", "tasks": [step("explode", "boom")]})
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "task 'explode' failed: ValueError: bad thing 42"


def test_the_log_lines_of_a_failing_task_are_kept(registry) -> None:
    execution = run(registry, with_recovery(step("explode", "boom")))
    messages = list(first_step(execution).events.values_list("level", "message"))
    assert ("INFO", "about to fail") in messages
    assert any(level == "ERROR" and "bad thing 42" in m for level, m in messages)


def test_a_task_whose_constructor_raises_fails_its_step(registry) -> None:
    execution = run(registry, with_recovery(step("needy", "bad_init")))
    failed = first_step(execution)
    assert "could not create task" in failed.error
    assert "needs a database connection" in failed.error
    assert_recovered(execution)


# --- Timeouts --------------------------------------------------------------------------------
def test_a_task_that_hangs_past_its_timeout_fails_naming_the_timeout(registry, tmp_path) -> None:
    marker = tmp_path / "cancelled.txt"
    execution = run(
        registry,
        with_recovery(
            step("stuck", "hang", timeout_seconds=0.2, parameters={"marker": str(marker)})
        ),
    )
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert "timed out after 0.2s" in failed.error
    # It awaited politely: it did not block its event loop, and it was told to stop.
    assert "blocked" not in failed.error
    assert marker.read_text() == "cancelled"
    assert_recovered(execution)


def test_a_task_type_default_timeout_applies_when_the_flow_sets_none(registry) -> None:
    execution = run(registry, with_recovery(step("slow", "slow_type")))
    failed = first_step(execution)
    assert "timed out after 0.2s" in failed.error
    assert_recovered(execution)


def test_a_task_raising_timeout_error_itself_fails_with_its_own_message(registry) -> None:
    # e.g. an HTTP call with its own shorter timeout: that is the task's error, not the engine's.
    execution = run(registry, with_recovery(step("call", "own_timeout", timeout_seconds=1)))
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert "upstream took too long" in failed.error
    assert_recovered(execution)


def test_a_task_that_blocks_its_event_loop_is_abandoned_and_fails(registry) -> None:
    execution = run(
        registry,
        with_recovery(
            step("sleepy", "block", timeout_seconds=0.2, parameters={"seconds": 1.5}),
        ),
    )
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert "timeout of 0.2s" in failed.error
    assert "blocked its event loop" in failed.error
    # The engine went on with a fresh event loop while the stuck one was left behind.
    assert_recovered(execution)


def _task_loop_threads() -> set[threading.Thread]:
    # Tasks run on the dispatcher's own thread since issue 26; its watchdog thread (and any
    # task loop thread) must end with the run all the same.
    return {t for t in threading.enumerate() if t.name in ("flow-task-loop", "flow-watchdog")}


def test_an_abandoned_event_loop_stops_once_its_blocking_code_returns(registry) -> None:
    before = _task_loop_threads()
    execution = run(
        registry,
        with_recovery(step("sleepy", "block", timeout_seconds=0.2, parameters={"seconds": 0.7})),
    )
    assert "blocked its event loop" in first_step(execution).error

    # The blocking call ends about 0.2 s after the step was abandoned; give it ample time.
    deadline = time.monotonic() + 2
    while _task_loop_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = _task_loop_threads() - before
    assert not leaked, f"{len(leaked)} abandoned task loop thread(s) still running"


# --- Results that cannot be stored -----------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("list", "task returned list, expected a dict"),
        ("none", "task returned NoneType, expected a dict"),
        ("text", "task returned str, expected a dict"),
        ("set", "not JSON-serialisable"),
        ("nan", "not JSON-serialisable"),
        ("object", "not JSON-serialisable"),
        ("surrogate", "lone surrogate (\\ud800) at result.text"),
        ("nul_key", "NUL character"),
    ],
)
def test_a_result_that_is_not_a_json_object_fails_the_step(registry, kind, fragment) -> None:
    execution = run(registry, with_recovery(step("bad", "returns", parameters={"kind": kind})))
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert fragment in failed.error
    assert failed.result is None
    assert_recovered(execution)


def test_a_log_line_with_text_no_database_stores_is_kept_escaped(registry) -> None:
    """A lone surrogate in a log line crashed the worker as it stored the line (the step went
    LOST each time the reaper retried it); the line is stored with the character escaped."""
    execution = run(registry, with_recovery(step("talk", "mumbles")))

    assert steps(execution)[0] == ("talk", TaskRunStatus.SUCCESS)
    messages = list(execution.events.values_list("message", flat=True))
    assert "half a pair \\ud800 and a NUL \\x00 here" in messages


def test_an_error_with_text_no_database_stores_fails_the_step_with_it_escaped(registry) -> None:
    execution = run(registry, with_recovery(step("shout", "yells")))

    failed = first_step(execution)
    assert "half a pair \\ud800 and a NUL \\x00 here" in failed.error
    assert "\\ud800" in failed.traceback
    assert_recovered(execution)


def test_a_result_with_a_set_names_the_offending_type(registry) -> None:
    execution = run(registry, with_recovery(step("bad", "returns", parameters={"kind": "set"})))
    assert "set" in first_step(execution).error


def test_an_over_size_result_fails_the_step_naming_the_limit(registry, settings) -> None:
    settings.FLOW_MAX_RESULT_BYTES = 1024
    execution = run(registry, with_recovery(step("big", "returns", parameters={"kind": "big"})))
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert "over the limit of 1024" in failed.error
    assert "FLOW_MAX_RESULT_BYTES" in failed.error
    assert failed.result is None
    assert_recovered(execution)


# --- Trying to stop the process --------------------------------------------------------------
def test_a_task_calling_sys_exit_fails_its_step_and_the_process_lives_on(registry) -> None:
    # The timeout only bounds the test if the exit is not caught at once.
    execution = run(registry, with_recovery(step("quitter", "exits", timeout_seconds=1)))
    failed = first_step(execution)
    assert failed.status == TaskRunStatus.FAILURE
    assert "SystemExit" in failed.error
    assert "stop the process" in failed.error
    assert_recovered(execution)
    assert threading.main_thread().is_alive()


# --- What a task sees ------------------------------------------------------------------------
def test_a_task_sees_earlier_results_the_execution_id_and_its_input(registry) -> None:
    document = {"id": "ctx", "tasks": [step("a", "remember"), step("b", "inspect")]}
    execution = run(registry, document, input={"customer": 7})

    assert execution.status == ExecutionStatus.COMPLETED
    result = execution.steps.get(task_name="b").result
    assert result["execution_id"] == str(execution.id)
    assert result["earlier"] == {"a": {"value": 41}}
    assert result["input"] == {"customer": 7}
    assert result["attempt"] == 1


def test_a_task_cannot_change_the_results_later_tasks_see(registry) -> None:
    document = {
        "id": "ctx",
        "tasks": [step("a", "remember"), step("m", "meddle"), step("b", "inspect")],
    }
    execution = run(registry, document)

    assert execution.status == ExecutionStatus.COMPLETED
    meddled = execution.steps.get(task_name="m").result
    assert meddled == {"refused": True, "changed": {"value": 0}}
    # Its own copy changed; what the next task reads did not.
    assert execution.steps.get(task_name="b").result["earlier"]["a"] == {"value": 41}


def test_a_task_logger_lines_land_in_the_execution_events(registry) -> None:
    document = {"id": "ctx", "tasks": [step("a", "remember"), step("b", "inspect")]}
    execution = run(registry, document)

    b = execution.steps.get(task_name="b")
    lines = list(
        ExecutionEvent.objects.filter(execution=execution, task_run=b)
        .order_by("id")
        .values_list("level", "message")
    )
    assert ("INFO", "saw 1 earlier results") in lines
    assert ("WARNING", "careful with b") in lines
    # The task's own lines come before the engine's routing decision about it.
    assert lines.index(("INFO", "saw 1 earlier results")) < len(lines) - 1
