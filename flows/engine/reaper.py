"""The reaper: re-runs steps whose worker died, wakes steps whose queue message was lost, and
ends executions past their flow's timeout.

Two ways in:

- ``recover``, the quick pass, every FLOW_REAP_EVERY_SECONDS in every worker process
  (``ReaperTimer``, started by django-q2's ``post_spawn``): expired leases and PENDING steps
  nobody claimed. Two indexed queries that find nothing, most times (the partial indexes
  ``taskrun_running_lease_idx`` and ``taskrun_pending_idx`` hold only open steps, so their
  cost does not grow with finished executions).
- ``reap``, the whole pass: the same, plus flow timeouts; a django-q2 schedule runs it every
  minute, ``manage.py reap`` by hand.

Every step it touches it first takes with a conditional UPDATE, so several reapers (one per
worker process, on every machine) never act twice on one step, and passes that run at once
take different steps instead of queueing behind each other.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django_q.conf import Conf

from flows.engine import limits, transitions
from flows.engine.lost import end_execution, run_again
from flows.engine.wakeup import due, wake_pending
from flows.engine.worker import reconnect
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)

logger = logging.getLogger("flows.engine")


# Expired steps one pass takes at a time: passes running at once in other worker processes
# take the next ones, so a dead cluster's hundreds of steps are run again by all of them.
TAKE_BATCH = 50


def reap(limit: int = 500) -> dict[str, int]:
    """The whole pass: re-run steps whose worker died, end executions past their timeout,
    wake steps nobody picked up.

    1. A RUNNING step whose lease expired is marked LOST and a new attempt of the same task
       is queued (``run_expired``).
    2. An execution past its flow timeout with no step running ends FAILED (a running step
       times itself out).
    3. A PENDING step nobody claimed within FLOW_WAKE_AFTER_SECONDS is woken again (its queue
       message was lost), and so is a delayed step that is due but not yet woken (with Redis,
       the worker processes' DueStepTimer normally wakes it within a second).
    """
    now = timezone.now()
    counts = {"lost": run_expired(now, limit), "timed_out": 0, "woken": 0}
    for eid in overdue(now, limit):
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

    # Two looks, each on its own partial index (an OR of the two would read every step on
    # SQLite): steps whose message was lost, and delayed steps due but never woken.
    counts["woken"] = wake_pending(unclaimed(now), now, limit, "the reaper")
    counts["woken"] += wake_pending(due(now), now, limit, "the reaper")
    counts["slots"] = sweep_slots(now)
    return counts


def past_deadline(now: datetime) -> QuerySet[Execution]:
    """Active executions whose flow's deadline has passed, unordered: in the model's
    -created_at order SQLite reads every execution. (On SQLite, once ANALYZE has seen that
    nearly all executions share one finished status, it reads them all anyway, a few tens of
    ms at 100,000: this is the minute's pass, not the quick one.)"""
    return Execution.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__lt=now).order_by()


def overdue(now: datetime, limit: int) -> list[Any]:
    """Active executions past their flow's deadline with no step running (a running step
    times itself out). The running steps are read by execution (the (execution, seq) index):
    a NOT IN over every RUNNING step would read all steps on SQLite, whose status has no
    index of its own."""
    late = list(past_deadline(now).values_list("pk", flat=True)[: limit * 4])
    running = set(
        TaskRun.objects.filter(execution_id__in=late, status=TaskRunStatus.RUNNING).values_list(
            "execution_id", flat=True
        )
    )
    return [eid for eid in late if eid not in running][:limit]


def recover(limit: int = 500) -> dict[str, int]:
    """The quick pass each worker process runs every FLOW_REAP_EVERY_SECONDS: steps whose
    worker died (``run_expired``), PENDING steps nobody claimed (``unclaimed``) and slots of
    named limits nobody freed (``sweep_slots``)."""
    now = timezone.now()
    return {
        "lost": run_expired(now, limit),
        "woken": wake_pending(unclaimed(now), now, limit, "the reaper"),
        "slots": sweep_slots(now),
    }


def sweep_slots(now: datetime) -> int:
    """Slots of named limits left by steps that ended without freeing them (a waiting step
    cancelled), handed on (``limits.sweep``; one query when no step takes a limit)."""
    return limits.sweep(now)


def unclaimed(now: datetime) -> Q:
    """PENDING steps woken more than FLOW_WAKE_AFTER_SECONDS ago and still not claimed: their
    queue message was lost. (A delayed step's ``woken_at`` is its due time, a wait's is
    ``FOREVER``: neither is selected before it is due.)"""
    return Q(woken_at__lt=now - timedelta(seconds=settings.FLOW_WAKE_AFTER_SECONDS))


def expired_leases(now: datetime) -> QuerySet[TaskRun]:
    """RUNNING steps whose lease ended before ``now``, oldest first (read on the partial index
    ``taskrun_running_lease_idx``)."""
    return TaskRun.objects.filter(status=TaskRunStatus.RUNNING, lease_expires_at__lt=now).order_by(
        "lease_expires_at"
    )


def take_expired(now: datetime, limit: int) -> tuple[list[TaskRun], datetime | None]:
    """Take up to ``limit`` RUNNING steps whose lease expired before ``now``, for this pass.

    1. Asked first outside a transaction: most passes find nothing (one probe of the
       partial index ``taskrun_running_lease_idx``).
    2. One transaction locks them (``SKIP LOCKED`` on PostgreSQL: a pass running at once
       elsewhere takes other steps, never waits; SQLite's IMMEDIATE transaction serialises
       the passes) and moves their lease to ``held``, a time of this pass's own a lease
       ahead: no other pass sees them expired now, and should this one die, they expire
       again and the next pass takes them.

    The worker name is kept (the LOST row says whose worker was lost). A worker that was
    only slow and renews meanwhile (its UPDATE matches on its name) wins the step back:
    ``run_again`` then finds the lease no longer ``held`` and leaves the step alone.
    """
    expired = expired_leases(now)
    if not expired.exists():
        return [], None
    held = now + timedelta(seconds=settings.FLOW_LEASE_SECONDS)
    with transaction.atomic():
        steps = list(expired.select_for_update(skip_locked=True)[:limit])
        if steps:
            TaskRun.objects.filter(
                pk__in=[step.pk for step in steps], status=TaskRunStatus.RUNNING
            ).update(lease_expires_at=held)
    return steps, held


def run_expired(now: datetime, limit: int) -> int:
    """Mark each RUNNING step whose lease expired LOST and queue a new attempt of its task,
    so a killed worker costs one re-run of the step it held. A step lost with its worker
    FLOW_MAX_LOST_ATTEMPTS times in a row fails instead (``give_up``): a task that kills its
    worker would otherwise be run again forever. Returns how many."""
    lost = taken = 0
    while taken < limit:
        steps, held = take_expired(now, min(TAKE_BATCH, limit - taken))
        if not steps:
            break
        taken += len(steps)
        for step in steps:
            worker = step.worker or "?"
            if run_again(
                step,
                why=f"worker {worker} stopped renewing its lease; step runs again",
                event=f"{step.task_name}: worker {worker} was lost; running it again",
                now=now,
                max_lost=settings.FLOW_MAX_LOST_ATTEMPTS,
                lease_expires_at=held,
            ):
                lost += 1
                logger.warning(
                    "execution=%s step=%s task=%s lost with worker %s",
                    step.execution_id,
                    step.seq,
                    step.task_name,
                    worker,
                )
    return lost


class ReaperTimer:
    """A daemon thread that runs ``recover`` every ``interval`` seconds in this worker process.

    Started in each django-q2 worker process (``start_reaper_timer``), whatever the broker:
    every live worker looks, so a dead cluster's steps are found by any other within
    FLOW_REAP_EVERY_SECONDS of their lease's end, with no scheduler to wait for. It dies with
    its process, and the next worker process starts its own. Its database connection is its
    own (Django's are per thread).
    """

    started: ReaperTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-reaper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                close_old_connections()  # past CONN_MAX_AGE, or broken: a fresh one
                counts = recover()
                if any(counts.values()):
                    logger.info("reaper: %s", counts)
            except Exception as exc:  # a database or broker hiccup: try again next time
                logger.warning("reaper pass failed, will retry: %s", exc)
                reconnect()


def start_reaper_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver (a worker process started): start this process's
    ReaperTimer, unless jobs run inline (sync mode: no worker process to host it)."""
    if Conf.SYNC or ReaperTimer.started is not None:
        return
    ReaperTimer.started = ReaperTimer(settings.FLOW_REAP_EVERY_SECONDS)
