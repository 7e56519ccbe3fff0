"""Waking workers: the queue carries only an execution id, and only wakes a worker.

``wake_pending`` wakes again the PENDING steps nobody woke or nobody claimed (a lost message:
the reaper's pass in every worker process; a delay over: with Redis the due-step timer of
each worker process).

The job it names is ``flows.jobs.run_execution`` (``JOB_FUNC``, stored in queued jobs: keep
it importable), which calls ``flows.engine.dispatch``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.tasks import async_task

from flows.models import ACTIVE_STATUSES, TaskRun, TaskRunStatus
from flows.sql import writes

logger = logging.getLogger("flows.engine")

JOB_FUNC = "flows.jobs.run_execution"


@functools.lru_cache(maxsize=4)
def _broker(pid: int) -> Any:
    # One broker per process: a fresh Redis broker per enqueue costs ~8x more (DJANGO-Q2.md).
    return get_broker()


class _DelayedOrmBroker(ORM):
    """The ORM broker, enqueueing a message that stays invisible until ``due``.

    The ORM broker hands out rows whose ``lock`` is in the past (its visibility timeout), so
    a row written with ``lock = due`` is delivered at ``due``: a retry waits in the database,
    not in a worker.
    """

    def __init__(self, due: datetime) -> None:
        super().__init__(list_key=Conf.CLUSTER_NAME)
        self.due = due

    def enqueue(self, task: str) -> int:
        return self.get_connection().create(key=self.list_key, payload=task, lock=self.due).pk


def wake_ready(execution_ids: list[Any], *, sent: int = 0) -> int:
    """Wake workers for executions whose first steps just became ready, together: one queue
    message per worker process at most (``sent`` of them went out already for the same batch),
    since each dispatcher that gets one claims every ready step it has room for. Returns how
    many it sent. Call inside the transaction that made the steps ready, as ``wake``."""
    count = max(0, max(1, Conf.WORKERS) - sent)
    for execution_id in execution_ids[:count]:
        wake(execution_id)
    return min(count, len(execution_ids))


def wake(execution_id: uuid.UUID | str, *, at: datetime | None = None) -> None:
    """Ask a worker to run the execution's PENDING step (at ``at``, if given).

    Call inside the transaction that made the step PENDING. With the ORM broker the queue row
    is written in that same transaction, so it commits (or rolls back) with the state. With
    Redis, or in sync mode where the job would run inline, it is sent after the commit; a
    delayed step is then woken once due by a worker process's DueStepTimer (or the reaper).
    """
    delayed = at is not None and at > timezone.now()
    if delayed and not Conf.ORM:
        # Redis has no delayed delivery in django-q2: a message now would find nothing due.
        # Each worker process's DueStepTimer wakes the step once it is due (wake_due).
        return

    def push() -> None:
        broker = _DelayedOrmBroker(at) if delayed and Conf.ORM else _broker(os.getpid())
        async_task(JOB_FUNC, str(execution_id), task_name=f"flow-{execution_id}", broker=broker)

    if Conf.SYNC or not Conf.ORM:
        writes.on_commit(push)
    else:
        push()


def due(now: datetime) -> Q:
    """PENDING steps whose delay (a retry's) has ended but that were not woken since."""
    return Q(not_before__lte=now, woken_at__lte=F("not_before"))


def pending(which: Q) -> QuerySet[TaskRun]:
    """The PENDING steps of active executions that ``which`` selects: what ``wake_pending``
    looks at (read on the partial index ``taskrun_pending_idx``)."""
    return TaskRun.objects.filter(
        which, status=TaskRunStatus.PENDING, execution__status__in=ACTIVE_STATUSES
    )


def wake_pending(which: Q, now: datetime, limit: int, by: str) -> int:
    """Wake the PENDING steps of active executions that ``which`` selects, each once; returns
    how many.

    1. Most looks find nothing: that is asked first, outside a transaction (on SQLite a
       transaction takes the database's one write lock).
    2. One transaction takes them (``SKIP LOCKED`` on PostgreSQL, so wakers looking at once
       take different rows; SQLite's IMMEDIATE transaction serialises them) and moves their
       ``woken_at`` to now in one UPDATE: a step ``which`` selects by an old ``woken_at`` is
       not selected again, so of several wakers (the reapers of every worker process, the
       due-step timers) only one wakes it.
    3. A few queue messages, however many steps: one per worker process of this cluster,
       and one per FLOW_WORKER_CONCURRENCY steps if that is more. Each dispatcher a message
       wakes claims every ready step it has room for, so a lost queue of thousands costs a
       few messages, not thousands, and still wakes enough workers to take them all.
    """
    candidates = pending(which)
    if not candidates.exists():
        return 0
    with transaction.atomic():
        sleepy = list(
            candidates.order_by("woken_at")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", "execution_id")[:limit]
        )
        if not sleepy:
            return 0
        TaskRun.objects.filter(
            pk__in=[pk for pk, _ in sleepy], status=TaskRunStatus.PENDING
        ).update(woken_at=now)
        executions = list(dict.fromkeys(eid for _, eid in sleepy))
        room = max(1, settings.FLOW_WORKER_CONCURRENCY)
        for execution_id in executions[: max(1, Conf.WORKERS, math.ceil(len(sleepy) / room))]:
            wake(execution_id)
    logger.info(
        "%d pending steps woken by %s (executions %s)",
        len(sleepy),
        by,
        ", ".join(str(e) for e in executions[:5]) + (", ..." if len(executions) > 5 else ""),
    )
    return len(sleepy)
