"""Retention: the age parser of ``purge_executions``, the scheduled purge job, and the
``post_migrate`` handler that keeps its django-q2 schedule in step with
``FLOW_PURGE_AFTER_DAYS``.

Why ``post_migrate`` and not a data migration: a migration runs once, so changing
``FLOW_PURGE_AFTER_DAYS`` later (or unsetting it) would never reach the schedule. The
handler runs at every ``manage.py migrate`` (the Docker web role runs it at every start),
creates, updates or deletes the one schedule row by name, and is harmless to repeat.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from django.apps import apps as global_apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

logger = logging.getLogger("flows.retention")

SCHEDULE_NAME = "flowmanager.purge"
PURGE_JOB = "flows.retention.purge_job"
PURGE_BATCH_SIZE = 1000

_AGE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h`` or ``90m`` as a timedelta; ValueError saying what is accepted."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(
            f"{text!r} is not an age: use a whole number followed by d (days), h (hours) "
            "or m (minutes), e.g. 30d, 12h, 90m"
        )
    amount = int(match[1])
    if amount == 0:
        raise ValueError(f"{text!r} would purge every finished execution: use more than 0")
    return timedelta(**{_UNITS[match[2]]: amount})


def purge_job(days: int) -> None:
    """django-q2 entry point of the daily schedule; logs, never raises (see flows.jobs)."""
    from flows import services

    try:
        deleted = services.executions_purge(
            older_than=timedelta(days=days), statuses=None, batch_size=PURGE_BATCH_SIZE
        )
        logger.info("retention: purged %d executions older than %d days", deleted, days)
    except Exception:
        logger.exception("retention: purge failed; it runs again tomorrow")


def sync_purge_schedule(
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
        deleted, _ = schedules.filter(name=SCHEDULE_NAME).delete()
        if deleted:
            logger.info("retention: FLOW_PURGE_AFTER_DAYS unset, daily purge schedule removed")
        return
    schedules.update_or_create(
        name=SCHEDULE_NAME,
        defaults={
            "func": PURGE_JOB,
            "args": "",
            "kwargs": f"days={int(days)}",
            "schedule_type": "D",  # Schedule.DAILY
            "repeats": -1,
        },
    )
