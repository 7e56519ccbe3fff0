"""The reaper: a django-q2 schedule (``flows.jobs.reap``, every minute; ``manage.py reap`` by
hand) that re-runs steps whose worker died, ends executions past their flow's timeout, and
wakes steps whose queue message was lost. Every step it touches, it takes with a conditional
UPDATE, so several reapers (or a reaper and a worker) never act twice on one step.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from flows.engine import transitions
from flows.engine.lost import end_execution, run_again
from flows.engine.wakeup import due, wake_pending
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)

logger = logging.getLogger("flows.engine")


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
