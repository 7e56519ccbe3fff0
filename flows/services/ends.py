"""What follows an execution's end, done once from the outbox (``models.ExecutionEnd``).

The engine writes an ``ExecutionEnd`` row in the transaction that ends a top-level execution
(``engine.transitions.end_row``). ``handle_ends`` takes the rows, oldest first, in chunks: one
transaction takes a chunk's rows, runs every registered handler on each and deletes them:
what the handlers write (a triggered execution, a notification to send) commits with the
deletion or not at all. So a worker killed at any moment neither loses an end nor handles
it twice, and two workers never take the same row (``skip_locked`` on PostgreSQL; SQLite
has one writer). Nor do they pass each other: a worker that finds the oldest due row taken
stops there, so ends are handled in the order they were written (a channel's messages go
out in the order of the failures that raised them, however many worker processes handle
ends).

Handlers only write rows: anything slow or fallible outside the database (sending a mail,
calling a webhook) belongs to an outbox of its own, sent later with retries, so that a
channel that is down never holds up what follows other ends. A handler that raises rolls
its chunk's work back; its row is tried again with backoff (``attempts``, ``last_error``),
the others at once.

Handlers register with ``@on_end("name")``; they run in registration order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from datetime import timedelta
from itertools import takewhile
from typing import TypeVar

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from flows.models import Execution, ExecutionEnd

logger = logging.getLogger("flows.services")

Handler = Callable[[ExecutionEnd, Execution], None]
_handlers: dict[str, Handler] = {}
T = TypeVar("T")
# The look-ups of the chunk being handled in this thread (None: no chunk).
_chunk_memo: ContextVar[dict[Hashable, object] | None] = ContextVar("ends_memo", default=None)

# Rows one pass handles at most (a pass runs every FLOW_ENDS_EVERY_SECONDS in each worker
# process): far above any end rate the engine reaches, so ends never fall behind; bounded so
# that a pass ends and its connection is checked.
PASS_LIMIT = 10_000
# Rows handled in one transaction at most, and for how long at most: past it the chunk
# commits what it has handled (on SQLite its transaction holds the one write lock, which every
# step's record waits for: handlers that start flows must not hold it for a hundred of them).
CHUNK = 100
CHUNK_SECONDS = 0.05
# A handler that keeps failing is retried after 2, 4, 8, ... seconds, at most this apart.
MAX_BACKOFF_SECONDS = 300


def on_end(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler(end, execution)`` to run once for each top-level execution's end,
    inside the transaction that deletes the outbox row."""

    def register(handler: Handler) -> Handler:
        _handlers[name] = handler
        return handler

    return register


def chunk_memo(key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, once per ``key`` in a chunk of ends: for the handlers' look-ups of what a
    chunk's handling does not change (a flow's alert rules, its triggers), one query a flow
    and chunk instead of one an end. Outside a chunk, computed each time."""
    memo = _chunk_memo.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]  # type: ignore[return-value]


def handle_ends(*, limit: int = PASS_LIMIT) -> int:
    """Handle up to ``limit`` due outbox rows, oldest first; how many were handled (0 when
    none waits: one indexed query).

    The rows go in chunks (``CHUNK`` rows, ``CHUNK_SECONDS`` of handling at most), each in
    ONE transaction that takes its rows, runs every handler on each in order and deletes
    them: the handlers' cost, not a transaction per end, bounds how fast ends are handled (a
    worker must keep up with as many ends a second as the engine makes). A handler that
    raises rolls its chunk back; its row is tried again later (backoff) and the chunk's
    earlier rows are handled again at once, so each row's work still commits with its
    deletion or not at all.
    """
    handled = 0
    while handled < limit:
        now = timezone.now()
        due = ExecutionEnd.objects.filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        ids = list(due.order_by("id").values_list("id", flat=True)[: min(CHUNK, limit - handled)])
        if not ids:
            break
        done, failure, blocked = _handle_chunk(ids)
        handled += done
        if failure is not None:
            end_id, exc = failure
            logger.error(
                "execution end %s: a handler failed; it is tried again: %s",
                end_id,
                exc,
                exc_info=exc,
            )
            _later(end_id, exc)
        elif blocked:
            # Another worker has the next row (or its execution was deleted): skipping to
            # the rows after it would handle a later end before this one. That worker goes
            # on in order; this one looks again at its next pass.
            break
    return handled


def _handle_chunk(ids: list[int]) -> tuple[int, tuple[int, Exception] | None, bool]:
    """Handle the rows ``ids`` (oldest first) in one transaction, up to the first that another
    worker holds and for ``CHUNK_SECONDS`` at most: (how many were handled, None, whether it
    stopped at a row another worker holds) or, a handler having raised, (0, (its row, the
    exception), False) with nothing of the chunk kept."""
    memo = _chunk_memo.set({})
    try:
        with transaction.atomic():
            taken = {
                end.pk: end
                for end in ExecutionEnd.objects.select_for_update(skip_locked=True)
                .select_related("execution")
                .filter(pk__in=ids)
            }
            ours = [taken[end_id] for end_id in takewhile(taken.__contains__, ids)]
            until = time.monotonic() + CHUNK_SECONDS
            done: list[ExecutionEnd] = []
            for end in ours:
                try:
                    for handler in _handlers.values():
                        handler(end, end.execution)
                except Exception as exc:
                    transaction.set_rollback(True)  # nothing of the chunk is kept
                    return 0, (end.pk, exc), False
                done.append(end)
                if time.monotonic() >= until:
                    break  # the rest go in the next chunk
            ExecutionEnd.objects.filter(pk__in=[end.pk for end in done]).delete()
    finally:
        _chunk_memo.reset(memo)
    return len(done), None, len(done) == len(ours) < len(ids)


def _later(end_id: int, exc: Exception) -> None:
    attempts = (
        ExecutionEnd.objects.filter(pk=end_id).values_list("attempts", flat=True).first() or 0
    )
    delay = min(2 ** (attempts + 1), MAX_BACKOFF_SECONDS)
    ExecutionEnd.objects.filter(pk=end_id).update(
        attempts=F("attempts") + 1,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        not_before=timezone.now() + timedelta(seconds=delay),
    )
