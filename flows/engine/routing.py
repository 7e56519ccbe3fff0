"""Deciding what follows a finished step, from its flow and its outcome alone.

``decide`` runs once per step, before any write, so writing the step again (a batch rolled
back, a reconnect) decides nothing twice. The database has its say when the step is written
(``record.write``): a cancel, the flow's timeout or its step limit overrule the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from flows.definition import FlowDefinition
from flows.engine.inputs import results_scope
from flows.engine.outcome import StepOutcome
from flows.expressions import ExpressionError
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from flows.waiting import CHILDREN, SIGNAL, Waiting

logger = logging.getLogger("flows.engine")


@dataclass
class Route:
    """The routing decision for a finished step, before the database has its say."""

    target: str | None = None  # the next task, when the flow goes on
    final: str = ""  # the execution's end status, when it ends
    error: str = ""
    why: str = ""
    attempt: int = 1  # of the next step
    delay: float = 0.0  # seconds the next step waits (a retry's delay)
    noteworthy: bool = False  # worth a line in the execution's log
    wait: bool = False  # the step waits in the database and runs again later


@dataclass
class Finished:
    """A finished step with its routing decided, ready to be written."""

    execution: Execution
    definition: FlowDefinition | None
    step: TaskRun
    outcome: StepOutcome
    plan: Route
    events: list[tuple[str, str]]


def decide(
    execution: Execution,
    definition: FlowDefinition | None,
    step: TaskRun,
    outcome: StepOutcome,
    results: dict[str, Any],
) -> Finished:
    """The routing decision and log lines for a finished step, before any write.

    ``definition`` is None when the flow no longer validates: the execution then fails.
    """
    events: list[tuple[str, str]] = list(outcome.log_lines)
    if outcome.status != TaskRunStatus.PENDING:
        outcome.duration = took(step, outcome, timezone.now())
    decided = plan(execution, definition, step, outcome, results)
    if outcome.error:
        events.append(("ERROR", f"{step.task_name} failed: {outcome.error}"))
    if outcome.status == TaskRunStatus.PENDING:
        # Not an end: the step waits on (its duration comes when it ends).
        logger.info(
            "execution=%s step=%s task=%s attempt=%s waits (this run took %.3fs)",
            execution.id, step.seq, step.task_name, step.attempt, outcome.duration,
        )  # fmt: skip
    else:
        logger.log(
            logging.INFO if outcome.status == TaskRunStatus.SUCCESS else logging.WARNING,
            "execution=%s step=%s task=%s attempt=%s ended %s in %.3fs%s",
            execution.id, step.seq, step.task_name, step.attempt, outcome.status,
            outcome.duration, f": {outcome.error}" if outcome.error else "",
        )  # fmt: skip
    return Finished(execution, definition, step, outcome, decided, events)


def took(step: TaskRun, outcome: StepOutcome, now: datetime) -> float:
    """How long ``step``, ending ``now``, took. A step that waited (its children, a sleep, a
    signal) ends in a later run than the one that began it: the wall time since it began,
    not its last run's few milliseconds."""
    if Waiting.from_json(step.waiting) is not None and step.started_at:
        return max((now - step.started_at).total_seconds(), 0.0)
    return outcome.duration


def _waiting_for(outcome: StepOutcome) -> str:
    state = Waiting.from_json(outcome.waiting) or Waiting(kind=None)
    if state.kind == SIGNAL:
        what = f"signal '{state.name}'"
    elif state.kind == CHILDREN:
        what = f"its {state.children_for if 'for' in state.keys else 'child'} children"
    else:
        what = "its time"
    until = f" until {outcome.wait_until.isoformat()}" if outcome.wait_until else ""
    return f"waiting for {what}{until}"


def plan(
    execution: Execution,
    definition: FlowDefinition | None,
    step: TaskRun,
    outcome: StepOutcome,
    results: dict[str, Any],
) -> Route:
    """What follows this step, decided from the definition and the outcome alone.

    Updates ``results`` and, when a condition's expression fails, ``outcome`` (the step
    then fails with that error).
    """
    if outcome.status == TaskRunStatus.CANCELLED:
        return Route(final=ExecutionStatus.CANCELLED, error="cancelled by request", why="cancelled")
    if definition is None or outcome.flow_timed_out:
        return Route(final=ExecutionStatus.FAILED, error=outcome.error, why=outcome.error)
    if outcome.waiting is not None:
        return Route(target=step.task_name, why=_waiting_for(outcome), wait=True)
    succeeded = outcome.status == TaskRunStatus.SUCCESS
    spec = definition.task(step.task_name)
    if succeeded:
        results.pop(step.task_name, None)
        results[step.task_name] = outcome.result
    elif not outcome.permanent and step.attempt < spec.retry.max_attempts:
        delay = spec.retry.delay_before(step.attempt + 1)
        why = (
            f"{step.task_name} failed (attempt {step.attempt} of {spec.retry.max_attempts}); "
            f"retry in {delay:g}s"
        )
        return Route(
            target=step.task_name,
            why=why,
            attempt=step.attempt + 1,
            delay=delay,
            noteworthy=True,
        )
    status = "success" if succeeded else "failure"
    condition = definition.condition_for(step.task_name)
    # Expressions see results in the same shape as ${results.<task>.data} references.
    scope = results_scope(results) if condition and condition.expression else {}
    try:
        target, why = definition.route(
            step.task_name,
            status,
            result=outcome.result,
            results=scope,
            input=execution.input,
            budget_seconds=settings.FLOW_EXPRESSION_BUDGET_SECONDS,
        )
    except ExpressionError as exc:
        # A condition that cannot be evaluated fails its step, and routes as a failure.
        outcome.status, outcome.error, outcome.permanent = TaskRunStatus.FAILURE, str(exc), True
        results.pop(step.task_name, None)
        target, why = definition.route(step.task_name, "failure")
        status = "failure"
    noteworthy = condition is not None
    if target is None:
        if status == "success":
            return Route(final=ExecutionStatus.COMPLETED, why=why)
        error = f"task '{step.task_name}' failed: {outcome.error}"
        return Route(final=ExecutionStatus.FAILED, error=error, why=why)
    return Route(target=target, why=why, noteworthy=noteworthy)
