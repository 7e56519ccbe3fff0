"""The task loop: an event loop on a daemon thread, where every task's coroutine runs.

The dispatcher's thread keeps the database work; tasks only ever run here, under their
timeout (``run_task``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any


class TaskLoop:
    """An event loop on a daemon thread: task code runs there, the database calls stay here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="flow-task-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def responds(self, within: float) -> bool:
        """Whether the loop runs a no-op within ``within`` seconds (False: a task blocks it)."""
        probe = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop)
        try:
            probe.result(timeout=within)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return False
        return True

    def abandon(self) -> None:
        """Leave a loop stuck in some task's blocking code behind: it stops (and its thread
        ends) once that code returns. Use a new TaskLoop from here on."""
        self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=1.0)
        if not self.thread.is_alive():
            self.loop.close()


class StepTimeout(Exception):
    """The task outlived its timeout (as opposed to raising a TimeoutError of its own)."""


async def run_task(task: Any, timeout: float, finished: threading.Event) -> Any:
    """The task's coroutine under its timeout; ``finished`` is set once it has fully unwound
    (a cancelled future reports "cancelled" before the coroutine's own clean-up has run)."""
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
    finally:
        finished.set()
