"""Retention: delete old finished executions in short batches (``manage.py purge_executions``
and the daily job in flows/retention.py). Which executions qualify is a read:
``selectors.execution_list_purgeable``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from flows import selectors
from flows.models import Execution, ExecutionEvent, TaskRun
from flows.services.errors import ServiceError

logger = logging.getLogger("flows.services")


def executions_purge(
    *,
    older_than: timedelta,
    statuses: list[str] | None,
    batch_size: int,
    on_batch: Any = None,
) -> int:
    """Delete the executions ``selectors.execution_list_purgeable`` selects, with their steps
    and log lines; return how many executions were deleted.

    Not one transaction: each batch is its own short one, so no lock is held for long and
    an interrupted purge keeps what it did (run it again to go on). Per batch:
    1. lock up to ``batch_size`` matching executions, skipping rows another transaction
       holds (a redrive or a delete in progress); status and age are checked again under
       the lock, so an execution redriven a moment ago is left alone;
    2. delete their log lines, then their steps, then the executions, each a plain DELETE
       on a list of ids, so no statement cascades over more than the batch.
    ``on_batch(executions, steps, events)`` is called after each batch is committed.
    """
    if batch_size < 1:
        raise ServiceError("batch_size must be at least 1")
    # One cutoff for the whole run: a long purge does not chase a moving boundary.
    candidates = selectors.execution_list_purgeable(
        older_than=older_than, statuses=statuses, now=timezone.now()
    )
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)[
                    :batch_size
                ]
            )
            if not ids:
                break
            events, _ = ExecutionEvent.objects.filter(execution_id__in=ids).delete()
            # only("pk"): the cascade check loads ids, not results and tracebacks.
            _, step_rows = TaskRun.objects.filter(execution_id__in=ids).only("pk").delete()
            _, execution_rows = Execution.objects.filter(pk__in=ids).only("pk").delete()
        steps = step_rows.get(TaskRun._meta.label, 0)
        deleted = execution_rows.get(Execution._meta.label, 0)
        total += deleted
        logger.info(
            "retention: deleted %d executions, %d steps, %d log lines", deleted, steps, events
        )
        if on_batch is not None:
            on_batch(deleted, steps, events)
        if deleted == 0:  # nothing could be deleted (never expected): do not spin
            break
    return total
