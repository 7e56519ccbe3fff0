"""Retention: delete old finished executions in short batches (``manage.py purge_executions``
and the daily job ``flows.jobs.purge_executions``), and keep that job's django-q2 schedule in
step with ``FLOW_PURGE_AFTER_DAYS``. Which executions qualify is a read:
``selectors.execution_list_purgeable``.

Why the schedule follows the setting from a ``post_migrate`` handler and not a data
migration: a migration runs once, so changing ``FLOW_PURGE_AFTER_DAYS`` later (or unsetting
it) would never reach the schedule. The handler runs at every ``manage.py migrate`` (the
Docker web role runs it at every start), creates, updates or deletes the one schedule row by
name, and is harmless to repeat.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.apps import apps as global_apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone

from flows import selectors
from flows.models import Execution, ExecutionEvent, TaskRun, WebhookDedup, WebhookDelivery
from flows.services.errors import ServiceError

logger = logging.getLogger("flows.services")

PURGE_SCHEDULE_NAME = "flowmanager.purge"
PURGE_JOB = "flows.jobs.purge_executions"
PURGE_BATCH_SIZE = 1000


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
    deliveries_purge(older_than=older_than, batch_size=batch_size)
    return total


def deliveries_purge(*, older_than: timedelta, batch_size: int) -> int:
    """Delete webhook deliveries (with the payloads they keep) received more than
    ``older_than`` ago, and the dedup rows whose window has closed; in short batches, as the
    executions. Part of every ``executions_purge``: deliveries go with the executions of
    their age. Returns how many deliveries were deleted."""
    now = timezone.now()
    cutoff = now - older_than
    total = 0
    while True:
        ids = list(
            WebhookDelivery.objects.filter(received_at__lt=cutoff).values_list("pk", flat=True)[
                :batch_size
            ]
        )
        if not ids:
            break
        deleted, _ = WebhookDelivery.objects.filter(pk__in=ids).delete()
        total += deleted
    expired, _ = WebhookDedup.objects.filter(expires_at__lte=now).delete()
    if total or expired:
        logger.info("retention: deleted %d webhook deliveries, %d expired delivery ids", total,
                    expired)  # fmt: skip
    return total


def purge_schedule_sync(
    sender: Any = None, *, using: str = DEFAULT_DB_ALIAS, apps: Any = None, **kwargs: Any
) -> None:
    """Make the daily purge schedule match ``FLOW_PURGE_AFTER_DAYS``: create or update it
    when set, delete it when not. Idempotent; connected to ``post_migrate`` in FlowsConfig."""
    try:
        schedule_model = (apps or global_apps).get_model("django_q", "Schedule")
    except LookupError:  # django_q not migrated (yet) in this plan
        return
    schedules = schedule_model.objects.using(using)
    days = settings.FLOW_PURGE_AFTER_DAYS
    if not days:
        deleted, _ = schedules.filter(name=PURGE_SCHEDULE_NAME).delete()
        if deleted:
            logger.info("retention: FLOW_PURGE_AFTER_DAYS unset, daily purge schedule removed")
        return
    schedules.update_or_create(
        name=PURGE_SCHEDULE_NAME,
        defaults={
            "func": PURGE_JOB,
            "args": "",
            "kwargs": f"days={int(days)}",
            "schedule_type": "D",  # Schedule.DAILY
            "repeats": -1,
        },
    )
