"""The due-step timer: with a broker that cannot deliver late (Redis), each worker process
wakes delayed steps (a retry's) once they are due, about once a second."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.utils import timezone
from django_q.conf import Conf

from flows.engine.wakeup import due, wake_pending
from flows.engine.worker import reconnect

logger = logging.getLogger("flows.engine")


def wake_due(limit: int = 500) -> int:
    """Wake the delayed steps that are due; returns how many.

    The ORM broker delivers a delayed step's message on time by itself. django-q2's Redis
    broker cannot deliver late, so with it every worker process runs this about once a
    second (``DueStepTimer``) and a retry starts when its delay ends, not at the reaper's
    next run.
    """
    now = timezone.now()
    return wake_pending(due(now), now, limit, "the due-step timer")


class DueStepTimer:
    """A daemon thread that calls ``wake_due`` every ``interval`` seconds in this process.

    Started in each django-q2 worker process when the broker cannot deliver late (see
    ``start_due_step_timer``); it dies with its process, and the next worker process starts
    its own. Its database connection is its own (Django's are per thread).
    """

    started: DueStepTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-due-step-timer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                wake_due()
            except Exception as exc:  # a database or Redis hiccup: try again next time
                logger.warning("due-step timer failed, will retry: %s", exc)
                reconnect()


def start_due_step_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver (a worker process started): start this process's
    DueStepTimer, unless the broker delivers delayed messages itself (the ORM broker) or jobs
    run inline (sync mode)."""
    if Conf.ORM or Conf.SYNC or DueStepTimer.started is not None:
        return
    DueStepTimer.started = DueStepTimer(settings.FLOW_DUE_STEP_CHECK_SECONDS)
