"""Running one execution to its end in this process: ``manage.py runflow`` and the tests.

The same ``Dispatcher`` a worker's job runs, at concurrency 1 and limited to this execution,
so everything run inline goes through the production path.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.db.models import F, Q
from django.utils import timezone

from flows.engine.dispatcher import Dispatcher
from flows.engine.fanout import FOREVER
from flows.models import ACTIVE_STATUSES, Execution, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry


def run_inline(
    execution_id: uuid.UUID | str,
    registry: TaskRegistry | None = None,
    *,
    sleep: Any = time.sleep,
    signal_timeouts: bool = True,
) -> Execution:
    """Run an execution (and its children) to its end in this process, waiting out delays
    (retries, sleeps) here.

    It returns when the execution ends, pauses, waits for something no clock brings (a
    signal), or has nothing left this process can run. Steps the dispatcher hands back to
    the queue (its step budget spent) run here too.

    ``signal_timeouts=False``: a step waiting for a signal is not waited out to its timeout
    (``runflow``: no signal can reach this process while it sleeps, so the wait would only end
    in that timeout's failure); steps of other kinds still run and are waited for.
    """
    execution_id = uuid.UUID(str(execution_id))
    while True:
        looked_at = timezone.now()
        ran = Dispatcher(registry, concurrency=1, only=execution_id).run()
        execution = Execution.objects.get(pk=execution_id)
        if execution.status not in ACTIVE_STATUSES:
            return execution
        # The next step of the tree a clock will make due: the execution's own or a child's.
        pending = TaskRun.objects.filter(
            Q(execution_id=execution.id) | Q(execution__root_id=execution.id),
            status=TaskRunStatus.PENDING,
            execution__status__in=ACTIVE_STATUSES,
        ).exclude(not_before__gte=FOREVER)
        if not signal_timeouts:
            pending = pending.exclude(waiting__kind="signal")
        pending = pending.order_by(F("not_before").asc(nulls_first=True)).first()
        if pending is None:
            return execution
        wait = (pending.not_before - timezone.now()).total_seconds() if pending.not_before else 0.0
        if wait > 0:
            sleep(wait)
        elif not ran and (pending.not_before is None or pending.not_before <= looked_at):
            # Due before the dispatcher looked, and still it ran nothing: nothing this process
            # can do will run it. A step that fell due while the dispatcher was looking (a
            # retry's short delay) is tried again instead of ending the run early.
            return execution
