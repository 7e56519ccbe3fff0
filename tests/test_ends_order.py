"""The outbox of execution ends is handled in the order it was written, across workers.

Two worker processes handle ends at once. One that finds the oldest due end taken by the
other must not jump to the next: it would handle a later end first, and an alert channel's
messages would go out in another order than the failures that raised them."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from flows import services
from flows.models import ExecutionEnd
from tests.factories import ended

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="PostgreSQL only: SQLite has one writer, so no end is ever taken by another",
    ),
]


def test_a_worker_that_finds_the_oldest_end_taken_does_not_pass_it() -> None:
    first, second = ended(2, status="FAILED")
    taken, release = threading.Event(), threading.Event()

    def other_worker() -> None:  # holds the oldest end, as a worker handling it does
        try:
            with transaction.atomic():
                ExecutionEnd.objects.select_for_update().get(pk=first)
                taken.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=other_worker)
    holder.start()
    try:
        assert taken.wait(10)
        assert services.handle_ends() == 0
        assert ExecutionEnd.objects.filter(pk=second).exists()  # not handled before the first
    finally:
        release.set()
        holder.join(10)
    assert services.handle_ends() == 2
    assert not ExecutionEnd.objects.exists()
