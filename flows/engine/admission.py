"""A flow's own limit on its running executions (``max_concurrent_executions``, per value of
its ``concurrency_key``): admitted where an execution starts, the next queued one admitted in
the transaction that ends one.

Each (flow, key) has a ``FlowSlot`` row that every admission locks, so starts at once are
counted one after another: never one too many. What is counted is the executions themselves
(``concurrency_held`` and not ended), not a counter kept beside them, so no end can leak a
place: an execution deleted or ended by any path stops counting at once. Only executions of
flows with the limit carry a ``concurrency_key``; every other start and end costs nothing here.

The next queued execution is admitted in the ending transaction itself (``ended``: called by
``record.write``, the reaper's ``end_execution`` and ``transitions.cancel_now``), not from the
ends outbox a second later: the queue moves as fast as executions end, and in the order they
were queued.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from flows.definition import FlowDefinition
from flows.engine.wakeup import wake
from flows.models import Execution, ExecutionStatus, FlowSlot, TaskRun, TaskRunStatus
from flows.sql import writes

# Executions that hold their place: started and not ended (a paused one keeps its place).
HOLDING = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)
FLOW = "flow"  # the ``limit`` of a step waiting for its flow's turn (Waiting)


@dataclass(frozen=True)
class Admission:
    """What becomes of an execution that starts: ``start`` now, ``queue`` (at ``place``), or
    ``skip`` (ends CANCELLED with ``why``)."""

    key: str
    verdict: str
    place: int = 0
    why: str = ""


def key_of(definition: FlowDefinition, input: Any) -> str:
    """The execution's key: its flow's ``concurrency_key`` over ``input`` ("" without one).
    Raises ExpressionError when the expression fails on this input."""
    if definition.concurrency_key is None:
        return ""
    return definition.concurrency_key.key(
        {"input": input or {}}, budget_seconds=settings.FLOW_EXPRESSION_BUDGET_SECONDS
    )


def holding(flow_id: str, key: str) -> QuerySet[Execution]:
    """The executions of the flow's key that hold a place (read on ``exec_concurrency_idx``)."""
    return Execution.objects.filter(
        flow_id=flow_id, concurrency_key=key, concurrency_held=True, status__in=HOLDING
    )


def queued(flow_id: str, key: str) -> QuerySet[Execution]:
    """The executions of the flow's key queued for a place, first come first."""
    return Execution.objects.filter(
        flow_id=flow_id,
        concurrency_key=key,
        concurrency_held=False,
        status=ExecutionStatus.QUEUED,
    ).order_by("queued_at", "created_at")


def lock(flow_id: str, key: str, limit: int | None = None) -> FlowSlot | None:
    """The (flow, key)'s row, locked (``writes.lock_rows``: also inside the engine's own
    transaction); made first when ``limit`` is given (an insert that ignores a row made
    meanwhile: two first starts at once lock the same row)."""
    if limit is not None:
        FlowSlot.objects.bulk_create(
            [FlowSlot(flow_id=flow_id, key=key, max_in_flight=limit)], ignore_conflicts=True
        )
    pk = FlowSlot.objects.filter(flow_id=flow_id, key=key).values_list("pk", flat=True).first()
    if pk is None:
        return None
    writes.lock_rows(FlowSlot, [pk])
    slot = FlowSlot.objects.get(pk=pk)
    if limit is not None and slot.max_in_flight != limit:
        # The latest started version's limit is the one ends admit by.
        FlowSlot.objects.filter(pk=pk).update(max_in_flight=limit)
        slot.max_in_flight = limit
    return slot


def admit(flow_id: str, definition: FlowDefinition, key: str) -> Admission:
    """Decide for an execution about to start (the caller writes it): under the (flow, key)'s
    lock, it starts when fewer than ``max_concurrent_executions`` hold a place and none is
    queued ahead of it; else its flow's policy (``cancel_oldest`` has asked the oldest to stop
    already, ``services.execution_start``: it queues at the front until that one ends)."""
    limit = definition.max_concurrent_executions
    assert limit is not None
    lock(flow_id, key, limit)
    in_use = holding(flow_id, key).count()
    waiting = queued(flow_id, key).count()
    if in_use < limit and waiting == 0:
        return Admission(key, "start")
    if definition.concurrency_policy == "skip":
        of = f" with key '{key}'" if definition.concurrency_key is not None else ""
        why = (
            f"skipped: {in_use} executions of flow '{flow_id}'{of} were running "
            f"(max_concurrent_executions {limit}, concurrency_policy skip)"
        )
        return Admission(key, "skip", why=why)
    return Admission(key, "queue", place=waiting + 1)


def oldest(flow_id: str, key: str, limit: int) -> uuid.UUID | None:
    """For ``cancel_oldest``: the execution holding a place the longest, when the key's places
    are all taken (read without the lock: the cancel takes its own)."""
    ids = list(
        holding(flow_id, key)
        .order_by("queued_at", "created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return ids[0] if len(ids) >= limit else None


def ended(flow_id: str, key: str, now: datetime) -> list[uuid.UUID]:
    """An execution of the (flow, key) ended (in the caller's transaction, after its ending
    UPDATE): admit the queued ones the freed places allow, oldest first, and wake them.
    Returns their ids. Locks: the (flow, key)'s row, after the ended execution's."""
    slot = lock(flow_id, key)
    if slot is None:
        return []
    room = slot.max_in_flight - holding(flow_id, key).count()
    if room <= 0:
        return []
    ids = list(queued(flow_id, key).values_list("pk", flat=True)[:room])
    if not ids:
        return []
    Execution.objects.filter(pk__in=ids).update(concurrency_held=True)
    # Their first steps were written waiting (FOREVER): due now.
    TaskRun.objects.filter(execution_id__in=ids, status=TaskRunStatus.PENDING).update(
        not_before=None, woken_at=now, waiting=None
    )
    for execution_id in ids:
        wake(execution_id)
    return ids
