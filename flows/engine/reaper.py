"""The reaper: a django-q2 schedule (``flows.jobs.reap``, every minute; ``manage.py reap`` by
hand) that re-runs steps whose worker died, ends executions past their flow's timeout, and
wakes steps whose queue message was lost. Every step it touches, it takes with a conditional
UPDATE, so several reapers (or a reaper and a worker) never act twice on one step.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from flows.definition import FlowValidationError
from flows.engine import fanin, record, transitions
from flows.engine.fanout import WAITING_FOR_CHILDREN, registry
from flows.engine.inputs import flow_definition, results_so_far
from flows.engine.outcome import failure
from flows.engine.routing import decide
from flows.engine.wakeup import wake
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)
from flows.waiting import RESUME

logger = logging.getLogger("flows.engine")


# The error of a step lost because another task blocked its worker's event loop: the step
# did nothing wrong, so such a loss is not counted against FLOW_MAX_LOST_ATTEMPTS.
INTERRUPTED = "another task blocked this worker's event loop"


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
    kind = (step.waiting or {}).get("kind")
    lost = times_lost(step, max_lost or 1)
    if max_lost is not None and lost >= max_lost:
        return give_up(step, lost=lost, limit=max_lost, now=now, **held)
    with transaction.atomic():
        execution = Execution.objects.select_for_update().filter(pk=step.execution_id).first()
        if execution is None:
            return False
        running = TaskRun.objects.filter(pk=step.pk, status=TaskRunStatus.RUNNING, **held)
        if kind == WAITING_FOR_CHILDREN and not execution.cancel_requested:
            # A control step lost while it joined its children: they have ended and are
            # still its own, so the same step joins them again (a new attempt would start
            # every child afresh). It was waiting on this row already; it waits there again.
            # No new attempt to count its losses by: the row keeps their count.
            taken = transitions.rejoin(running, now, {**(step.waiting or {}), "lost": lost})
        else:
            taken = transitions.lose(running, now, why=why)
        if taken != 1:
            return False
        if execution.cancel_requested:
            end_execution(execution, ExecutionStatus.CANCELLED, "cancelled by request", now)
            return True
        if kind != WAITING_FOR_CHILDREN:
            transitions.new_step(
                step.execution_id,
                step,
                now,
                seq=step.seq + 1,
                attempt=step.attempt + 1,
                # A redrive's step lost before it took its earlier attempt's children over:
                # the new attempt takes them over instead (else it would start afresh).
                waiting=step.waiting if kind == RESUME else None,
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
    state = step.waiting or {}
    if state.get("kind") == WAITING_FOR_CHILDREN:
        return int(state.get("lost", 0)) + 1
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
    joining = (step.waiting or {}).get("kind") == WAITING_FOR_CHILDREN
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


def reap(limit: int = 500) -> dict[str, int]:
    """Re-run steps whose worker died and wake steps nobody picked up.

    1. A RUNNING step whose lease expired is marked LOST and a new attempt of the same task
       is queued, so a killed worker costs one re-run of the step it held. A step lost with
       its worker FLOW_MAX_LOST_ATTEMPTS times in a row fails instead (``give_up``): a task
       that kills its worker would otherwise be run again forever.
    2. An execution past its flow timeout with no step running ends FAILED (a running step
       times itself out).
    3. A PENDING step whose wake-up is older than FLOW_WAKE_AFTER_SECONDS is woken again (its
       queue message was lost), and so is a delayed step that is due but not yet woken (with
       Redis, the worker processes' DueStepTimer normally wakes it within a second).
    """
    now = timezone.now()
    counts = {"lost": 0, "timed_out": 0, "woken": 0}
    expired = list(
        TaskRun.objects.filter(status=TaskRunStatus.RUNNING, lease_expires_at__lt=now).order_by(
            "lease_expires_at"
        )[:limit]
    )
    for step in expired:
        worker = step.worker or "?"
        if run_again(
            step,
            why=f"worker {worker} stopped renewing its lease; step runs again",
            event=f"{step.task_name}: worker {worker} was lost; running it again",
            now=now,
            max_lost=settings.FLOW_MAX_LOST_ATTEMPTS,
            lease_expires_at__lt=now,
        ):
            counts["lost"] += 1
            logger.warning(
                "execution=%s step=%s task=%s lost with worker %s",
                step.execution_id,
                step.seq,
                step.task_name,
                worker,
            )

    overdue = list(
        Execution.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__lt=now)
        .exclude(steps__status=TaskRunStatus.RUNNING)
        .values_list("pk", flat=True)[:limit]
    )
    for eid in overdue:
        with transaction.atomic():
            execution = Execution.objects.select_for_update().filter(pk=eid).first()
            if execution is None or execution.status not in ACTIVE_STATUSES:
                continue
            if TaskRun.objects.filter(execution_id=eid, status=TaskRunStatus.RUNNING).exists():
                continue
            error = (
                f"the flow's timeout (timeout_seconds) ran out at "
                f"{execution.deadline_at:%Y-%m-%d %H:%M:%S}"
            )
            transitions.close_pending(
                TaskRun.objects.filter(execution_id=eid, status=TaskRunStatus.PENDING),
                now,
                error=f"{error} before it ran",
            )
            end_execution(execution, ExecutionStatus.FAILED, error, now)
            ExecutionEvent.objects.create(
                execution_id=eid, created_at=now, level="ERROR", message=error
            )
            counts["timed_out"] += 1
            logger.warning("execution=%s %s", eid, error)

    stale = now - timedelta(seconds=settings.FLOW_WAKE_AFTER_SECONDS)
    counts["woken"] = wake_pending(Q(woken_at__lt=stale) | due(now), now, limit, "the reaper")
    return counts


def due(now: datetime) -> Q:
    """PENDING steps whose delay (a retry's) has ended but that were not woken since."""
    return Q(not_before__lte=now, woken_at__lte=F("not_before"))


def wake_pending(which: Q, now: datetime, limit: int, by: str) -> int:
    """Wake the PENDING steps of active executions that ``which`` selects, each once: the
    conditional UPDATE lets only one of several wakers (reapers, timers) through."""
    sleepy = list(
        TaskRun.objects.filter(
            which, status=TaskRunStatus.PENDING, execution__status__in=ACTIVE_STATUSES
        ).values_list("pk", "execution_id")[:limit]
    )
    woken = 0
    for pk, eid in sleepy:
        with transaction.atomic():
            if (
                TaskRun.objects.filter(which, pk=pk, status=TaskRunStatus.PENDING)
                .update(woken_at=now)
            ):  # fmt: skip
                woken += 1
                logger.info("execution=%s pending step woken by %s", eid, by)
                wake(eid)
    return woken
