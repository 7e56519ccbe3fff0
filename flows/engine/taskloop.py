"""The task loop: the event loop every task's coroutine runs on, run by the dispatcher's own
thread while it waits for tasks to finish.

No thread hop: a task that does not wait on anything (most built-in ones) runs and ends in
the dispatcher's next wait, without a hand-off to another thread and back (about 0.12 ms a
step here). The price is that a task blocking the loop (blocking code in ``async def run``)
holds up the dispatcher's thread too: ``watchdog.Watchdog`` guards it from a thread of its
own, and the dispatcher sees afterwards how long a run was held up (``held_up``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

from flows.engine import timing


class Retired(Exception):
    """The watchdog took this dispatcher's steps over while a task blocked its loop: the
    dispatcher must stop at once, writing nothing more."""


class Handle:
    """A task running on a ``TaskLoop``: what ``concurrent.futures.Future`` offered the
    dispatcher when tasks ran on a thread of their own."""

    __slots__ = ("ended", "owner", "task")

    def __init__(self, task: asyncio.Task[Any], owner: TaskLoop) -> None:
        self.task = task
        self.owner = owner
        self.ended: float | None = None  # perf_counter() when it finished

    def _done(self, _task: asyncio.Task[Any]) -> None:
        self.ended = time.perf_counter()
        self.owner.done.append(self)
        self.owner.loop.stop()  # hand the dispatcher its result now

    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> None:
        self.task.cancel()

    def wait(self, timeout: float) -> bool:
        """Run the loop until this task is done or ``timeout`` seconds have passed; whether
        it is done."""
        until = time.perf_counter() + timeout
        while not self.task.done() and time.perf_counter() < until:
            self.owner.run(until)
        return self.task.done()

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value (or its exception, raised), running the loop for up to
        ``timeout`` seconds if it has not finished yet."""
        if not self.wait(timeout if timeout is not None else float("inf")):
            raise TimeoutError("the task did not finish in time")
        return self.task.result()


class TaskLoop:
    """An event loop for tasks, run in slices by the thread that owns it (``run``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.done: list[Handle] = []  # finished since the owner last took them
        # While the owner runs the loop: when it meant to stop (perf_counter). The watchdog
        # reads it: a run that is long past it is stuck in some task's code.
        self.wake_at: float | None = None
        # The watchdog holds it while it acts for a stuck run (renews leases, takes the
        # steps over); the owner passes it on its way out of every run.
        self.guard = threading.Lock()
        self.retired = False  # set by the watchdog under ``guard``: see ``Retired``
        # A run ended more than LOOP_HELD_UP_SECONDS after it should have: some task held
        # the loop (blocking code) that long. Sticky until the owner takes it.
        self.held_up = False

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Handle:
        """Schedule ``coro``: it starts at the owner's next ``run``."""
        task = self.loop.create_task(coro)
        handle = Handle(task, self)
        task.add_done_callback(handle._done)
        return handle

    def take_done(self) -> list[Handle]:
        done, self.done = self.done, []
        return done

    def take_held_up(self) -> bool:
        held, self.held_up = self.held_up, False
        return held

    def run(self, until: float) -> None:
        """Run the tasks until one finishes or ``perf_counter()`` reaches ``until``."""
        started = time.perf_counter()
        timer = self.loop.call_later(max(0.0, until - started), self.loop.stop)
        self.wake_at = until
        try:
            self.loop.run_forever()
        finally:
            self.wake_at = None
            timer.cancel()
            # It was to stop by ``until``, or as soon as a task finished: a later end means
            # one callback (a task's step) kept the loop that long.
            ends = [h.ended for h in self.done if h.ended is not None and h.ended >= started]
            stop_by = min([until, *ends])
            if time.perf_counter() - max(stop_by, started) > timing.LOOP_HELD_UP_SECONDS:
                self.held_up = True
            with self.guard:  # wait out a watchdog acting for this run
                if self.retired:
                    raise Retired

    def close(self) -> None:
        """Close the loop; tasks still on it (one that swallowed its cancel) are dropped."""
        self.loop.close()


class StepTimeout(Exception):
    """The task outlived its timeout (as opposed to raising a TimeoutError of its own)."""


async def run_task(task: Any, timeout: float) -> Any:
    """The task's coroutine under its timeout."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await task.run()
    except TimeoutError:
        if scope.expired():
            raise StepTimeout from None
        raise
    except (SystemExit, KeyboardInterrupt) as exc:
        # A plugin must not take the worker down with it.
        raise RuntimeError(f"task tried to stop the process ({type(exc).__name__})") from None
