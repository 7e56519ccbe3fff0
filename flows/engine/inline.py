"""Running one execution to its end in this process: ``manage.py runflow`` and the tests.

The same ``Dispatcher`` a worker's job runs, at concurrency 1 and limited to this execution,
so everything run inline goes through the production path.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.utils import timezone

from flows.engine.dispatcher import Dispatcher
from flows.models import ACTIVE_STATUSES, Execution, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry


def run_inline(
    execution_id: uuid.UUID | str,
    registry: TaskRegistry | None = None,
    *,
    sleep: Any = time.sleep,
) -> Execution:
    """Run an execution to its end in this process, waiting out retry delays here.

    It returns when the execution ends, pauses, or has nothing left this process can run.
    Steps the dispatcher hands back to the queue (its step budget spent) run here too.
    """
    execution_id = uuid.UUID(str(execution_id))
    while True:
        ran = Dispatcher(registry, concurrency=1, only=execution_id).run()
        execution = Execution.objects.get(pk=execution_id)
        if execution.status not in ACTIVE_STATUSES:
            return execution
        pending = TaskRun.objects.filter(
            execution_id=execution.id, status=TaskRunStatus.PENDING
        ).first()
        if pending is None:
            return execution
        wait = (pending.not_before - timezone.now()).total_seconds() if pending.not_before else 0.0
        if wait > 0:
            sleep(wait)
        elif not ran:
            return execution
