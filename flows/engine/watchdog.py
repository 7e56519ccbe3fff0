"""The watchdog: a thread beside the dispatcher's, for when a task blocks the task loop.

Tasks run on the dispatcher's own thread (``taskloop``), so a task whose ``async def run``
calls blocking code (``time.sleep``, a CPU loop, a synchronous client) holds up the
dispatcher with it. Most such stalls end: the dispatcher then sees how long its run was held
up, fails the task that overran its timeout and runs the others again (``Dispatcher._overdue``).
Until then, and for stalls that never end, the watchdog acts from its own thread and its own
database connection:

- it renews the leases of the worker's running steps once half a lease has passed since the
  last renewal, so the reaper never mistakes a stalled worker for a dead one (README "Faults
  and recovery");
- once a task has blocked the loop FLOW_STUCK_LOOP_SECONDS past its timeout and grace, it
  takes the worker's steps over: the blocking one fails, the others go back to the queue as
  a new attempt, and the dispatcher is retired (when the blocking code returns it stops,
  writing nothing). In a worker process the process then exits, and the cluster starts a
  fresh one in its place: the blocking code may never return, and it must not keep a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from flows.engine import record, timing
from flows.engine.lost import interrupted
from flows.engine.outcome import blocked
from flows.engine.routing import decide

if TYPE_CHECKING:
    from flows.engine.dispatcher import Dispatcher, Slot
    from flows.engine.taskloop import TaskLoop

logger = logging.getLogger("flows.engine")


class Watchdog:
    """Guards one ``Dispatcher.run`` from a daemon thread (``start``, then ``stop``)."""

    def __init__(self, dispatcher: Dispatcher, *, exit_when_stuck: bool = False) -> None:
        self.dispatcher = dispatcher
        self.exit_when_stuck = exit_when_stuck
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flow-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        try:
            while not self.stopping.wait(timing.WATCHDOG_INTERVAL_SECONDS):
                try:
                    self.look()
                except DatabaseError as exc:
                    logger.warning("worker %s: watchdog: %s", self.dispatcher.me, exc)
                    connections["default"].close()  # a fresh one at the next look
                except Exception:
                    # Never end the watchdog: the next look may be the one that matters.
                    logger.exception("worker %s: watchdog failed", self.dispatcher.me)
        finally:
            connections.close_all()  # this thread's own

    def look(self) -> None:
        """One look at the dispatcher's thread: act if a task has held its loop too long."""
        loop = self.dispatcher.loop
        if loop is None or not self._stuck(loop):
            return
        with loop.guard:  # the dispatcher's thread cannot go on while we act for it
            if not self._stuck(loop) or loop.retired:
                return
            dispatcher, now = self.dispatcher, time.perf_counter()
            # Under the guard the dispatcher's thread changes none of them.
            flights = {slot: slot.flight for slot in dispatcher.slots.values() if slot.flight}
            # The task whose code holds the loop now: the others only wait behind it, however
            # far past their own deadlines that leaves them.
            culprit = asyncio.current_task(loop.loop)
            suspects = [slot for slot, flight in flights.items() if flight.future.task is culprit]
            late = [
                slot
                for slot in suspects or flights
                if not flights[slot].future.done()
                and now >= flights[slot].hard_deadline + settings.FLOW_STUCK_LOOP_SECONDS
            ]
            if late:
                self._take_over(loop, list(flights), late)
            elif now >= dispatcher.renewed_at + dispatcher.lease.total_seconds() / 2:
                dispatcher.renew_leases()

    @staticmethod
    def _stuck(loop: TaskLoop) -> bool:
        wake_at = loop.wake_at
        return wake_at is not None and time.perf_counter() > wake_at + timing.LOOP_HELD_UP_SECONDS

    def _take_over(self, loop: TaskLoop, flying: list[Slot], late: list[Slot]) -> None:
        dispatcher = self.dispatcher
        loop.retired = True
        logger.error(
            "worker %s: a task has blocked its event loop %.0fs past its timeout; its step "
            "fails, the %d other(s) it held up run again%s",
            dispatcher.me,
            timing.ABANDON_GRACE_SECONDS + settings.FLOW_STUCK_LOOP_SECONDS,
            len(flying) - len(late),
            " and this worker process exits for a fresh one" if self.exit_when_stuck else "",
        )
        try:
            self._write_takeover(flying, late)
        finally:
            if self.exit_when_stuck:
                # Written above (or left to the reaper, should that have failed); nothing of
                # this process is needed any more, and the stuck thread cannot be stopped
                # any other way.
                logging.shutdown()
                os._exit(70)

    def _write_takeover(self, flying: list[Slot], late: list[Slot]) -> None:
        dispatcher, now = self.dispatcher, timezone.now()
        for slot in flying:
            flight = slot.flight
            if slot in late:  # Slot compares by identity
                finished = decide(
                    slot.execution,
                    slot.definition,
                    slot.step,
                    blocked(flight, cancel=False),
                    slot.results,
                )
                record.write_alone(finished, dispatcher.me, dispatcher.lease, continue_here=False)
            else:
                interrupted(slot.step, now=now, worker=dispatcher.me)
