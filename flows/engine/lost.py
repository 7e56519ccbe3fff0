"""A step lost with its worker (the lease expired, or the worker saw its event loop blocked):
run again, or failed for good after ``FLOW_MAX_LOST_ATTEMPTS`` losses in a row. Called by the
reaper (expired leases), the dispatcher and its watchdog (steps held up by a blocking task)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction

from flows.definition import FlowValidationError
from flows.engine import fanin, limits, record, transitions
from flows.engine.fanout import registry
from flows.engine.inputs import flow_definition, results_so_far
from flows.engine.outcome import failure
from flows.engine.routing import decide
from flows.engine.wakeup import wake
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun, TaskRunStatus
from flows.waiting import CHILDREN, RESUME, Waiting

logger = logging.getLogger("flows.engine")


# The error of a step lost because another task blocked its worker's event loop: the step
# did nothing wrong, so such a loss is not counted against FLOW_MAX_LOST_ATTEMPTS.
INTERRUPTED = "another task blocked this worker's event loop"


def interrupted(step: TaskRun, *, now: datetime, worker: str) -> bool:
    """``run_again`` for a step another task's blocking code held up on ``worker``'s loop
    (the dispatcher once the loop is back, or its watchdog while it is still stuck)."""
    return run_again(
        step,
        why=f"{INTERRUPTED}; step runs again",
        event=f"{step.task_name}: interrupted by a blocked event loop; running it again",
        now=now,
        worker=worker,
    )


def run_again(
    step: TaskRun,
    *,
    why: str,
    event: str,
    now: datetime,
    max_lost: int | None = None,
    **held: Any,
) -> bool:
    """Mark a RUNNING step LOST and queue a new attempt of the same task (a control step
    lost while joining its children goes back to PENDING instead, to join them again).

    ``held`` narrows the RUNNING row that may be taken (an expired lease, or this worker's
    own claim). False when the step was not in that state any more. A cancel or pause asked
    for meanwhile is honoured instead of queueing. With ``max_lost`` (the reaper's), a step
    lost with its worker that many times in a row fails for good instead (``give_up``).
    """
    state = Waiting.from_json(step.waiting)
    kind = state.kind if state is not None else None
    lost = times_lost(step, max_lost or 1)
    if max_lost is not None and lost >= max_lost:
        return give_up(step, lost=lost, limit=max_lost, now=now, **held)
    with transaction.atomic():
        execution = Execution.objects.select_for_update().filter(pk=step.execution_id).first()
        if execution is None:
            return False
        running = TaskRun.objects.filter(pk=step.pk, status=TaskRunStatus.RUNNING, **held)
        if kind == CHILDREN and not execution.cancel_requested:
            # A control step lost while it joined its children: they have ended and are
            # still its own, so the same step joins them again (a new attempt would start
            # every child afresh). It was waiting on this row already; it waits there again.
            # No new attempt to count its losses by: the row keeps their count.
            joins_again = replace(state or Waiting(kind=CHILDREN), lost=lost)
            taken = transitions.rejoin(running, now, joins_again.to_json())
        else:
            taken = transitions.lose(running, now, why=why)
        if taken != 1:
            return False
        if step.limits:
            limits.release([step.pk], now)  # its slots go to the next waiters
        if execution.cancel_requested:
            end_execution(execution, ExecutionStatus.CANCELLED, "cancelled by request", now)
            return True
        if kind != CHILDREN:
            transitions.new_step(
                step.execution_id,
                step,
                now,
                seq=step.seq + 1,
                attempt=step.attempt + 1,
                # A redrive's step lost before it took its earlier attempt's children over:
                # the new attempt takes them over instead (else it would start afresh).
                waiting=state.to_json() if state is not None and kind == RESUME else None,
            ).save(force_insert=True)
        ExecutionEvent.objects.create(
            execution_id=step.execution_id,
            task_run_id=step.pk,
            created_at=now,
            level="WARNING",
            message=event,
        )
        if execution.pause_requested:
            transitions.pause([execution.id])
        else:
            wake(step.execution_id)
    return True


def end_execution(execution: Execution, status: str, error: str, now: datetime) -> None:
    """End one execution nobody runs (``transitions.end_execution``), counted on its parent
    step when it is a child (``fanin.child_ended``)."""
    transitions.end_execution(execution, status, error, now)
    if execution.parent_step_id is not None:
        fanin.child_ended(execution, status, None, now)


def times_lost(step: TaskRun, limit: int) -> int:
    """How many times in a row the step's task has been lost with its worker, counting this
    time (up to ``limit``): the LOST attempts of the same task just before it. A control step
    lost while joining its children keeps the count on its own row, which it joins on again.
    """
    state = Waiting.from_json(step.waiting)
    if state is not None and state.kind == CHILDREN:
        return int(state.lost or 0) + 1
    if limit <= 1:
        return 1
    earlier = (
        TaskRun.objects.filter(execution_id=step.execution_id, seq__lt=step.seq)
        .exclude(status=TaskRunStatus.LOST, error__startswith=INTERRUPTED)
        .order_by("-seq")
        .values_list("task_name", "status")[: limit - 1]
    )
    lost = 1
    for name, status in earlier:
        if name != step.task_name or status != TaskRunStatus.LOST:
            break
        lost += 1
    return lost


def give_up(step: TaskRun, *, lost: int, limit: int, now: datetime, **held: Any) -> bool:
    """The step's task was lost with its worker ``lost`` times in a row: the step fails for
    good, recorded as a worker records any failed step (``record.write``), so the flow goes
    on as after any failure of that task: its failure route, else the execution fails. A
    retry policy does not bring it back. False when the step was not held so any more.

    Locks in a worker's order (record.write, fanin.cancel_children): FanOut rows (the
    parent's, this step's own), the execution, then the step.
    """
    error = (
        f"lost with its worker {lost} times (FLOW_MAX_LOST_ATTEMPTS={limit}): the task may "
        "crash or exit its worker process; it is not run again"
    )
    execution = (
        Execution.objects.select_related("flow_version").filter(pk=step.execution_id).first()
    )
    if execution is None:
        return False
    try:
        definition = flow_definition(execution, registry())
    except FlowValidationError:
        definition = None  # the step fails all the same, and so does the execution
    results = results_so_far([execution.id]).get(execution.id, {})
    state = Waiting.from_json(step.waiting)
    joining = state is not None and state.kind == CHILDREN
    try:
        with transaction.atomic():
            fanin.lock_fanouts(
                [k for k in (execution.parent_step_id, step.pk if joining else None) if k]
            )
            if Execution.objects.select_for_update().filter(pk=execution.pk).first() is None:
                return False
            held_step = (
                TaskRun.objects.select_for_update()
                .filter(pk=step.pk, status=TaskRunStatus.RUNNING, **held)
                .first()
            )
            if held_step is None:
                return False
            if joining:
                # Children still running would be left without a parent to join them.
                fanin.cancel_children([step.pk], why=f"{step.task_name} failed: {error}")
            finished = decide(
                execution, definition, held_step, failure(error, permanent=True), results
            )
            lease = timedelta(seconds=settings.FLOW_LEASE_SECONDS)
            record.write([finished], held_step.worker, lease, continue_here=False)
    except record.TakenOver:
        return False
    logger.warning(
        "execution=%s step=%s task=%s lost with its worker %s times; failed for good",
        step.execution_id,
        step.seq,
        step.task_name,
        lost,
    )
    return True
