"""Controls on a running or ended execution: cancel, pause, resume, redrive.

Each locks the execution's row first (``_locked``) so that it never races the engine's
record step, which locks the same row before it writes a step's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from flows import engine, selectors
from flows.expressions import ExpressionError
from flows.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)
from flows.registry import TaskRegistry
from flows.services.errors import Conflict, ServiceError, check_storable
from flows.services.executions import flow_deadline, not_a_child, runnable_definition
from flows.services.flows import recorded_user
from flows.waiting import SIGNAL, Waiting

logger = logging.getLogger("flows.services")


@transaction.atomic
def execution_cancel(*, execution_id: Any) -> Execution:
    """Stop an execution. A step that is running is cancelled by its worker within a second.

    Its children (and theirs) stop with it. Lock order, as a worker's: the FanOut rows of the
    steps whose children this touches (its own waiting control step; its parent's, when it
    is a child) before any execution row.
    """
    execution = selectors.execution_get(execution_id)
    steps = list(
        TaskRun.objects.filter(
            execution_id=execution.id, status=TaskRunStatus.PENDING, waiting__isnull=False
        ).values_list("pk", flat=True)
    )
    engine.lock_fanouts([*steps, *([execution.parent_step_id] if execution.parent_step_id else [])])
    locked = _locked(execution_id)
    if locked.parent_step_id != execution.parent_step_id:
        # A redrive of its parent took it over meanwhile: the FanOut row locked above is not
        # its parent step's any more.
        raise Conflict(f"execution {locked.id} was just redriven with its parent; try again")
    if locked.is_terminal:
        raise Conflict(f"execution {locked.id} is already {locked.status}")
    now = timezone.now()
    running = TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.RUNNING).exists()
    if running:
        # The worker that holds the step sees the flag, cancels the coroutine and ends it.
        engine.transitions.ask_to_cancel([locked.id])
    else:
        engine.transitions.cancel_now([locked.id], now, error="cancelled by request")
    # Its children (parallel branches, map items, a sub-flow) and theirs stop with it.
    waiting = list(
        TaskRun.objects.filter(execution_id=locked.id, waiting__isnull=False).values_list(
            "pk", flat=True
        )
    )
    children = engine.cancel_children(waiting, why=f"parent execution {locked.id} cancelled")
    if not running and locked.parent_step_id is not None:
        # A child that ended here is counted on its parent step, as if its worker ended it.
        engine.child_ended(locked, ExecutionStatus.CANCELLED, None, now)
    _event(locked.id, "WARNING", "cancel requested")
    logger.info(
        "execution=%s cancel requested (step running: %s, children asked: %d)",
        locked.id, running, children,
    )  # fmt: skip
    locked.refresh_from_db()
    return locked


def _take_place(execution: Execution, definition: Any) -> None:
    """A redriven execution of a flow with max_concurrent_executions runs again only in a
    free place of its key (under the key's lock, after its own: an end's order); else 409."""
    try:
        key = engine.admission.key_of(definition, execution.input)
    except ExpressionError as exc:
        raise Conflict(f"concurrency_key could not be computed from the input: {exc}") from None
    limit = definition.max_concurrent_executions
    engine.admission.lock(execution.flow_id, key, limit)
    taken = engine.admission.holding(execution.flow_id, key).count()
    if taken >= limit:
        raise Conflict(
            f"execution {execution.id} cannot be redriven now: {taken} executions of its flow "
            f"hold every place (max_concurrent_executions {limit}); redrive it once one ends"
        )
    Execution.objects.filter(pk=execution.id).update(concurrency_key=key, concurrency_held=True)


@transaction.atomic
def execution_pause(*, execution_id: Any) -> Execution:
    """Pause: the step in flight finishes, then the execution waits as PAUSED until resumed."""
    locked = _locked(execution_id)
    if locked.status not in ACTIVE_STATUSES or locked.pause_requested:
        raise Conflict(
            f"execution {locked.id} is {locked.status}"
            f"{' and already pausing' if locked.pause_requested else ''}; "
            "only a QUEUED or RUNNING execution can be paused"
        )
    running = TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.RUNNING).exists()
    # Nothing in flight: paused right away.
    engine.transitions.ask_to_pause(locked.id, at_once=not running)
    _event(locked.id, "WARNING", "pause requested")
    logger.info("execution=%s pause requested (step running: %s)", locked.id, running)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_resume(*, execution_id: Any) -> Execution:
    """Resume a paused execution where it stopped (or withdraw a pause not yet reached)."""
    locked = _locked(execution_id)
    if locked.status == ExecutionStatus.PAUSED:
        engine.transitions.resume(locked.id, timezone.now())
    elif locked.pause_requested and locked.status in ACTIVE_STATUSES:
        Execution.objects.filter(pk=locked.id).update(pause_requested=False)
    else:
        raise Conflict(f"execution {locked.id} is {locked.status}; only a PAUSED one can resume")
    _event(locked.id, "INFO", "resumed")
    logger.info("execution=%s resumed", locked.id)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_redrive(*, execution_id: Any, registry: TaskRegistry | None = None) -> Execution:
    """Resume a FAILED or CANCELLED execution from the step that stopped it.

    Same execution id; every step run so far stays in its history and finished steps are not
    run again. The step limit and the flow's timeout start afresh.

    When that step is a ``parallel``, ``map`` or ``subflow`` step that started children, its
    new attempt takes them over when it runs (``engine.redrive``): the COMPLETED ones are kept
    with their results, the others are redriven in place, each from the step that stopped it.
    So every execution of its tree must have ended first (a cancelled child still stopping
    is refused with a Conflict: redrive again in a moment).
    """
    locked = _locked(execution_id)
    not_a_child(locked, "redrive")
    if locked.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise Conflict(
            f"execution {locked.id} is {locked.status}; only a FAILED or CANCELLED execution "
            "can be redriven"
        )
    definition = runnable_definition(locked, registry, "be redriven")
    if definition.max_concurrent_executions is not None and locked.parent_step_id is None:
        _take_place(locked, definition)
    last = TaskRun.objects.filter(execution_id=locked.id).order_by("-seq").first()
    try:
        redrive = engine.plan_redrive(locked, definition, last, results=lambda: _results_of(locked))
    except engine.CannotRedrive as exc:
        raise Conflict(f"execution {locked.id} {exc}") from None
    if redrive.takes_over is not None:
        # Its children are taken over as they are: none may still be stopping (a child
        # whose cancel its worker has not reached yet). The whole tree is asked, which
        # covers the children of children that are taken over in turn.
        ending = (
            Execution.objects.filter(root_id=locked.id)
            .exclude(status__in=TERMINAL_STATUSES)
            .count()
        )
        if ending:
            raise Conflict(
                f"execution {locked.id} cannot be redriven yet: {ending} of its child "
                "executions have not ended (a cancel or a timeout has not reached them yet); try "
                "again once they have"
            )
    spec = definition.task(redrive.task_name)
    now = timezone.now()
    redrive.step(locked.id, spec, now).save()
    engine.transitions.redrive_reset(
        [locked.id], task_name=spec.name, deadline_at=flow_deadline(definition, now), now=now
    )
    engine.wake(locked.id)
    _event(locked.id, "INFO", f"redriven from {spec.name} (attempt {redrive.attempt})")
    logger.info("execution=%s redriven from %s", locked.id, spec.name)
    locked.refresh_from_db()
    return locked


def _results_of(execution: Execution) -> dict[str, Any]:
    """Successful results by task name, latest last."""
    return engine.results_so_far([execution.id]).get(execution.id, {})


def _locked(execution_id: Any) -> Execution:
    """The execution, row-locked for a state change (PostgreSQL; SQLite locks the database)."""
    execution = selectors.execution_get(execution_id)
    return Execution.objects.select_for_update().select_related("flow_version").get(pk=execution.id)


def _event(execution_id: Any, level: str, message: str, step: TaskRun | None = None) -> None:
    ExecutionEvent.objects.create(
        execution_id=execution_id,
        task_run=step,
        created_at=timezone.now(),
        level=level,
        message=message,
    )


# --- signals ---------------------------------------------------------------------------------
SIGNAL_DECISIONS = ("approve", "reject")


@transaction.atomic
def execution_signal(
    *,
    execution_id: Any,
    name: str,
    decision: str = "approve",
    payload: Any = None,
    comment: str = "",
    user: Any = None,
) -> TaskRun:
    """Deliver signal ``name`` to the step waiting for it (a ``wait_for_signal`` task): the
    step becomes due at once and a worker runs it on. Approve: the payload is its result;
    reject: it fails, and its failure route applies. Returns the step."""
    if decision not in SIGNAL_DECISIONS:
        raise ServiceError(
            "decision must be 'approve' or 'reject'",
            errors=[{"field": "decision", "message": "must be 'approve' or 'reject'"}],
        )
    check_storable(name, "name")
    check_storable(payload, "payload")
    check_storable(comment, "comment")
    if payload is not None and not isinstance(payload, dict):
        # Approve makes the payload the step's result, an object like every task's.
        raise ServiceError(
            "payload must be a JSON object",
            errors=[{"field": "payload", "message": 'must be a JSON object, e.g. {"key": 1}'}],
        )
    locked = _locked(execution_id)
    step = (
        TaskRun.objects.select_for_update()
        .filter(execution_id=locked.id, status=TaskRunStatus.PENDING, waiting__kind="signal")
        .first()
    )
    if locked.is_terminal or step is None:
        raise Conflict(f"execution {locked.id} is {locked.status} and waits for no signal")
    waiting = Waiting.from_json(step.waiting) or Waiting(kind=SIGNAL)
    if waiting.name != name:
        raise Conflict(f"execution {locked.id} waits for signal '{waiting.name}', not '{name}'")
    if waiting.received:
        raise Conflict(f"signal '{name}' already came for execution {locked.id}")
    now = timezone.now()
    who = getattr(recorded_user(user), "username", "") or ""
    answered = waiting.answered(
        {
            "decision": decision,
            "payload": payload,
            "comment": comment,
            "by": who,
            "at": now.isoformat(),
        }
    )
    # Due now (not a delayed step for the due-step timer); a paused execution takes it when
    # resumed.
    engine.transitions.signalled(
        step, answered.to_json(), now, wake_now=locked.status != ExecutionStatus.PAUSED
    )
    said = f": {comment}" if comment else ""
    _event(locked.id, "INFO", f"signal '{name}' ({decision}) from {who or 'someone'}{said}", step)
    logger.info("execution=%s signal %s %s by %s", locked.id, name, decision, who)
    return step
