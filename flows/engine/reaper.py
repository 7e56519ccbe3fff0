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

from flows.engine.fanin import close_pending
from flows.engine.fanout import WAITING_FOR_CHILDREN
from flows.engine.record import end_execution
from flows.engine.redrive import RESUME
from flows.engine.wakeup import wake
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)

logger = logging.getLogger("flows.engine")


def run_again(step: TaskRun, *, why: str, event: str, now: datetime, **held: Any) -> bool:
    """Mark a RUNNING step LOST and queue a new attempt of the same task (a control step
    lost while joining its children goes back to PENDING instead, to join them again).

    ``held`` narrows the RUNNING row that may be taken (an expired lease, or this worker's
    own claim). False when the step was not in that state any more. A cancel or pause asked
    for meanwhile is honoured instead of queueing.
    """
    kind = (step.waiting or {}).get("kind")
    with transaction.atomic():
        execution = Execution.objects.select_for_update().filter(pk=step.execution_id).first()
        if execution is None:
            return False
        running = TaskRun.objects.filter(pk=step.pk, status=TaskRunStatus.RUNNING, **held)
        if kind == WAITING_FOR_CHILDREN and not execution.cancel_requested:
            # A control step lost while it joined its children: they have ended and are
            # still its own, so the same step joins them again (a new attempt would start
            # every child afresh). It was waiting on this row already; it waits there again.
            taken = running.update(
                status=TaskRunStatus.PENDING,
                worker="",
                lease_expires_at=None,
                woken_at=now,
                not_before=None,
            )
        else:
            taken = running.update(
                status=TaskRunStatus.LOST, ended_at=now, lease_expires_at=None, error=why
            )
        if taken != 1:
            return False
        if execution.cancel_requested:
            end_execution(execution, ExecutionStatus.CANCELLED, "cancelled by request", now)
            return True
        if kind != WAITING_FOR_CHILDREN:
            TaskRun.objects.create(
                execution_id=step.execution_id,
                seq=step.seq + 1,
                task_name=step.task_name,
                task_type=step.task_type,
                parameters=step.parameters,
                attempt=step.attempt + 1,
                woken_at=now,
                # A redrive's step lost before it took its earlier attempt's children over:
                # the new attempt takes them over instead (else it would start afresh).
                waiting=step.waiting if kind == RESUME else None,
            )
        ExecutionEvent.objects.create(
            execution_id=step.execution_id,
            task_run_id=step.pk,
            created_at=now,
            level="WARNING",
            message=event,
        )
        if execution.pause_requested:
            Execution.objects.filter(pk=execution.id).update(status=ExecutionStatus.PAUSED)
        else:
            wake(step.execution_id)
    return True


def reap(limit: int = 500) -> dict[str, int]:
    """Re-run steps whose worker died and wake steps nobody picked up.

    1. A RUNNING step whose lease expired is marked LOST and a new attempt of the same task
       is queued, so a killed worker costs one re-run of the step it held.
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
            close_pending(
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
