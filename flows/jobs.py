"""django-q2 entry points: plain ``def`` functions that take ids and never raise.

A job that raised would be redelivered by the ORM broker every ``retry`` seconds; the engine
records failures on the steps themselves, so nothing here needs the queue's retry. (The
django-q2 worker closes stale database connections before each job.)
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from django.conf import settings
from django_q.conf import Conf

from flows import engine, services
from flows.engine.worker import every

logger = logging.getLogger("flows.jobs")


def run_execution(execution_id: str) -> None:
    try:
        # This execution, and beside it other ready ones, concurrently (engine.Dispatcher).
        engine.dispatch(execution_id)
    except Exception:
        # The step stays RUNNING under its lease; the reaper re-runs it when the lease expires.
        logger.exception("execution=%s engine error; the reaper will retry the step", execution_id)


def run_scheduled(flow_id: str) -> None:
    """Fired by a flow's django-q2 Schedule: start one execution of its latest version."""
    try:
        services.flow_run_scheduled(flow_id=flow_id)
    except services.ServiceError as exc:
        # Refused (an input its flow's input_schema does not accept, a flow no longer
        # valid): nothing was started, and the reason is the news, not a traceback.
        logger.warning("flow=%s scheduled run refused: %s", flow_id, exc.message)
    except Exception:
        logger.exception("flow=%s scheduled run failed to start", flow_id)


def handle_ends() -> None:
    """What follows executions' ends (flow triggers, notifications, error-handler flows),
    from the outbox: run by every worker process's timer, and by the reaper's schedule."""
    try:
        handled = services.handle_ends()
        if handled:
            logger.info("execution ends handled: %d", handled)
    except Exception:
        logger.exception("handling execution ends failed; the next pass tries again")


class EndsTimer:
    """A daemon thread that runs ``handle_ends`` every ``interval`` seconds in this worker
    process: what follows an execution's end happens about a second after it, on whichever
    worker looks first (the rows are taken with skip_locked; each is handled once)."""

    started: EndsTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-ends", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        every(self.interval, handle_ends, logger)


def start_ends_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver: start this worker process's EndsTimer (not when
    jobs run inline: ``runflow`` and the tests call ``services.handle_ends`` themselves)."""
    if Conf.SYNC or EndsTimer.started is not None:
        return
    EndsTimer.started = EndsTimer(settings.FLOW_ENDS_EVERY_SECONDS)


def send_notifications() -> None:
    """The alerts' periodic check (long runs, steps waiting for a signal), then the sending of
    due notifications (flows/services/notifications.py): run by every worker process's
    NotifyTimer, apart from the engine and from the ends' timer, so that a slow channel
    delays nothing but its own messages."""
    try:
        services.alerts_check()
    except Exception:
        logger.exception("the alerts' check failed; the next pass tries again")
    try:
        sent = services.notifications_send()
        if sent:
            logger.info("notifications sent: %d", sent)
    except Exception:
        logger.exception("sending notifications failed; the next pass tries again")


class NotifyTimer:
    """A daemon thread that runs ``send_notifications`` every ``interval`` seconds in this
    worker process (a notification is claimed by one worker: skip_locked and a conditional
    update)."""

    started: NotifyTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-notify", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        every(self.interval, send_notifications, logger)


def start_notify_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver: start this worker process's NotifyTimer (not when
    jobs run inline)."""
    if Conf.SYNC or NotifyTimer.started is not None:
        return
    NotifyTimer.started = NotifyTimer(settings.FLOW_NOTIFY_EVERY_SECONDS)


def reap() -> None:
    try:
        counts = engine.reap()
        if any(counts.values()):
            logger.info("reaper: %s", counts)
    except Exception:
        logger.exception("reaper failed; it runs again at its next schedule")


def purge_executions(days: int) -> None:
    """The daily retention schedule (``FLOW_PURGE_AFTER_DAYS``): delete finished executions
    older than ``days``."""
    try:
        deleted = services.executions_purge(
            older_than=timedelta(days=days), statuses=None, batch_size=services.PURGE_BATCH_SIZE
        )
        logger.info("retention: purged %d executions older than %d days", deleted, days)
    except Exception:
        logger.exception("retention: purge failed; it runs again tomorrow")
