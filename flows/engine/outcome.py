"""A step's outcome: what its task returned or raised, checked and put into words.

``finish`` reads the outcome of a flight whose task ended; ``stopped`` and ``blocked`` say
why one was cut short. Nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback as tb
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from flows.definition import FlowDefinition, unstorable_problem
from flows.engine import timing
from flows.engine.taskloop import StepTimeout
from flows.masking import Masker, finished
from flows.models import Execution, TaskRunStatus
from tasks.base_task import PermanentTaskError, Results, Waiting

if TYPE_CHECKING:
    from flows.engine.step import Flight

logger = logging.getLogger("flows.engine")

FLOW_TIMEOUT_SOURCE = "the flow's timeout_seconds"


@dataclass
class StepOutcome:
    status: str  # a TaskRunStatus value
    result: dict[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    duration: float = 0.0
    log_lines: list[tuple[str, str]] = field(default_factory=list)
    stop: bool = False  # the execution vanished or the step was taken away: record nothing
    permanent: bool = False  # no retry will fix it (PermanentTaskError, a bad reference, ...)
    flow_timed_out: bool = False  # the flow's own timeout_seconds ran out
    parameters: dict[str, Any] | None = None  # as resolved for this run
    # The step waits in the database (status PENDING): what for, and until when (None: until
    # something makes it due: a signal, its children). ``fanout``: the children it starts.
    waiting: dict[str, Any] | None = None
    wait_until: datetime | None = None
    fanout: Any = None  # a fanout.ChildrenPlan, or a redrive.TakeOver


def failure(
    message: str,
    *,
    trace: str = "",
    duration: float = 0.0,
    lines: Any = (),
    permanent: bool = False,
) -> StepOutcome:
    return StepOutcome(
        TaskRunStatus.FAILURE,
        permanent=permanent,
        error=_storable_text(message),
        traceback=_storable_text(trace),
        duration=duration,
        log_lines=list(lines),
    )


def _storable_text(text: str) -> str:
    """A task's error as text every database stores: a NUL or a lone surrogate (which a task
    may put in its exception) escaped, so that recording the step cannot fail."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def waiting(
    state: dict[str, Any], until: datetime | None, *, duration: float = 0.0, lines: Any = ()
) -> StepOutcome:
    """The step goes back to wait in the database, holding no worker, until ``until`` (or
    until something makes it due when None)."""
    return StepOutcome(
        TaskRunStatus.PENDING,
        duration=duration,
        log_lines=list(lines),
        waiting=state,
        wait_until=until,
    )


def remaining(execution: Execution) -> float | None:
    """Seconds left before the flow's timeout, or None when it has none."""
    if execution.deadline_at is None:
        return None
    return (execution.deadline_at - timezone.now()).total_seconds()


def flow_timeout(definition: FlowDefinition | None) -> StepOutcome:
    limit = (
        f" of {definition.timeout_seconds:g}s" if definition and definition.timeout_seconds else ""
    )
    outcome = failure(f"the flow's timeout{limit} (timeout_seconds) ran out", permanent=True)
    outcome.flow_timed_out = True
    return outcome


def _earlier_results(value: Any) -> Any:
    """JSON for what plain JSON cannot hold: a task may return (part of) its context's
    read-only ``results`` mapping."""
    if isinstance(value, Results):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def check_result(value: Any) -> tuple[dict[str, Any] | None, str]:
    """A step's return value as stored JSON, or why it cannot be stored."""
    if not isinstance(value, dict):
        return None, f"task returned {type(value).__name__}, expected a dict"
    try:
        text = json.dumps(value, allow_nan=False, default=_earlier_results)
    except (TypeError, ValueError) as exc:
        return None, f"task returned a dict that is not JSON-serialisable: {exc}"
    if "\\u0000" in text or "\\ud" in text:  # a NUL, or a surrogate (maybe half a pair)
        problem = unstorable_problem(json.loads(text), "result")
        if problem:
            return None, f"task {problem}"
    if len(text) > settings.FLOW_MAX_RESULT_BYTES:
        return None, (
            f"task result is {len(text)} bytes, over the limit of "
            f"{settings.FLOW_MAX_RESULT_BYTES} (FLOW_MAX_RESULT_BYTES)"
        )
    return (value if not value else json.loads(text)), ""


def masked(outcome: StepOutcome, masker: Masker | None) -> StepOutcome:
    """``outcome`` with the secrets its task got masked in all it writes (flows/masking.py)."""
    if not masker:
        return outcome
    outcome.result = masker.value(outcome.result)
    outcome.error = masker.text(outcome.error)
    outcome.traceback = masker.text(outcome.traceback)
    # Masked as they were logged (TaskLogger.mask), and again for lines a task added itself.
    outcome.log_lines = [(level, masker.text(text)) for level, text in outcome.log_lines]
    outcome.waiting = masker.value(outcome.waiting)
    outcome.parameters = masker.value(outcome.parameters)
    return outcome


def _landed(flight: Flight, outcome: StepOutcome) -> StepOutcome:
    """A flight's last word: its secrets masked, and no longer masked in this process's logs."""
    if flight.masking is not None:
        finished(flight.masking)
    return masked(outcome, flight.masker)


def finish(flight: Flight, definition: FlowDefinition) -> StepOutcome:
    """The outcome of a flight whose future is done."""
    outcome = _outcome_of(flight, definition)
    outcome.parameters = flight.parameters  # what this run really got, whatever its outcome
    return _landed(flight, outcome)


def _outcome_of(flight: Flight, definition: FlowDefinition) -> StepOutcome:
    duration = time.perf_counter() - flight.started
    lines = flight.log.lines
    try:
        value = flight.future.result()
    except StepTimeout:
        if flight.source == FLOW_TIMEOUT_SOURCE:
            outcome = flow_timeout(definition)
            outcome.duration, outcome.log_lines = duration, lines
            return outcome
        return failure(
            f"task timed out after {flight.timeout:g}s ({flight.source})",
            duration=duration,
            lines=lines,
        )
    except asyncio.CancelledError:
        return failure("task was cancelled", duration=duration, lines=lines)
    except Waiting as wait:
        return waiting(wait.state, wait.until, duration=duration, lines=lines)
    except Exception as exc:
        return failure(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            trace=tb.format_exc(),
            duration=duration,
            lines=lines,
            permanent=isinstance(exc, PermanentTaskError),
        )
    result, problem = check_result(value)
    if problem:
        return failure(problem, duration=duration, lines=lines)
    return StepOutcome(TaskRunStatus.SUCCESS, result=result, duration=duration, log_lines=lines)


def stopped(flight: Flight, verdict: str) -> StepOutcome:
    """Cancel a running task because its execution was cancelled ("cancel"), deleted
    ("deleted") or its step taken away ("lost")."""
    flight.future.cancel()
    # Give the coroutine a moment to run its own clean-up before the step is recorded.
    flight.future.wait(timing.ABANDON_GRACE_SECONDS)
    step = flight.step
    if verdict == "cancel":
        logger.info("execution=%s step=%s cancelled while running", step.execution_id, step.seq)
        return _landed(
            flight,
            StepOutcome(
                TaskRunStatus.CANCELLED,
                error="cancelled while running",
                duration=time.perf_counter() - flight.started,
                log_lines=flight.log.lines,
            ),
        )
    logger.info("execution=%s step=%s stopped: %s", step.execution_id, step.seq, verdict)
    return _landed(flight, StepOutcome(TaskRunStatus.CANCELLED, stop=True))


def blocked(
    flight: Flight,
    why: str = "blocked its event loop (blocking code in an async task?)",
    *,
    cancel: bool = True,
) -> StepOutcome:
    """A task still running past its timeout and grace: it fails, and is left behind
    (``cancel=False``: from another thread than the loop's, which must not touch it)."""
    if cancel:
        flight.future.cancel()
    outcome = failure(
        f"task did not finish within its timeout of {flight.timeout:g}s and {why}",
        duration=time.perf_counter() - flight.started,
        lines=flight.log.lines,
    )
    outcome.parameters = flight.parameters
    return _landed(flight, outcome)
