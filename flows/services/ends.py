"""What follows an execution's end, done once from the outbox (``models.ExecutionEnd``).

The engine writes an ``ExecutionEnd`` row in the transaction that ends a top-level execution
(``engine.transitions.end_row``). ``handle_ends`` takes the rows, oldest first, each in a
transaction of its own that runs every registered handler and deletes the row: what the
handlers write (a triggered execution, a notification to send) commits with the deletion or
not at all. So a worker killed at any moment neither loses an end nor handles it twice, and
two workers never take the same row (``skip_locked`` on PostgreSQL; SQLite has one writer).
Nor do they pass each other: a worker that finds the oldest due row taken stops there, so
ends are handled in the order they were written (a channel's messages go out in the order
of the failures that raised them, however many worker processes handle ends).

Handlers only write rows: anything slow or fallible outside the database (sending a mail,
calling a webhook) belongs to an outbox of its own, sent later with retries, so that a
channel that is down never holds up what follows other ends. A handler that raises rolls
its row's work back; the row is tried again with backoff (``attempts``, ``last_error``).

Handlers register with ``@on_end("name")``; they run in registration order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from flows.models import Execution, ExecutionEnd

logger = logging.getLogger("flows.services")

Handler = Callable[[ExecutionEnd, Execution], None]
_handlers: dict[str, Handler] = {}

BATCH = 100
# A handler that keeps failing is retried after 2, 4, 8, ... seconds, at most this apart.
MAX_BACKOFF_SECONDS = 300


def on_end(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler(end, execution)`` to run once for each top-level execution's end,
    inside the transaction that deletes the outbox row."""

    def register(handler: Handler) -> Handler:
        _handlers[name] = handler
        return handler

    return register


def handle_ends(*, limit: int = BATCH) -> int:
    """Handle up to ``limit`` due outbox rows; how many were handled (0 when none waits: one
    indexed query)."""
    now = timezone.now()
    due = ExecutionEnd.objects.filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    ids = list(due.order_by("id").values_list("id", flat=True)[:limit])
    handled = 0
    for end_id in ids:
        try:
            with transaction.atomic():
                end = (
                    ExecutionEnd.objects.select_for_update(skip_locked=True)
                    .select_related("execution")
                    .filter(pk=end_id)
                    .first()
                )
                if end is None:
                    # Another worker has it (or its execution was deleted): skipping to the
                    # next would handle a later end before this one. That worker goes on in
                    # order; this one looks again at its next pass.
                    break
                for handler in _handlers.values():
                    handler(end, end.execution)
                end.delete()
            handled += 1
        except Exception as exc:
            logger.exception("execution end %s: a handler failed; it is tried again", end_id)
            _later(end_id, exc)
    return handled


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
