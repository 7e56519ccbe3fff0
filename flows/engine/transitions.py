"""Every status change of an execution or a step, in one place (issue 19).

The services, the claim, ``record``, ``reaper``, ``fanout``, ``fanin`` and ``redrive`` decide
*when* a state changes; this module is *how*: the rows written, and the worker woken. No
other module writes a status (``tests/test_transitions_only.py`` reads the source to hold
that), so a rule that belongs to a state change (a secret resolved, an outbox row, a limit
slot) is added here once.

Each function writes inside the caller's transaction and takes no lock of its own beyond the
rows its UPDATE touches; its docstring says which locks the caller must hold first. The lock
order, the same everywhere (so two transactions never wait on each other in a circle):

1. the FanOut rows of the control steps whose children are touched, in key order
   (``fanin.lock_fanouts``): the parent's for a child execution, a waiting step's own;
2. the execution row (``select_for_update``, or ``record.write``'s counting UPDATE);
3. the step rows (a conditional UPDATE, or ``select_for_update``).

Statements are those each caller wrote before: moving a write here changes no statement
count (``tests/test_sql_writes.py`` and the ``django_assert_num_queries`` tests hold that).
"""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import F, Field, QuerySet, Value
from django.db.models.functions import Coalesce

from flows.definition import TaskSpec
from flows.engine import admission
from flows.engine.wakeup import wake, wake_ready
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import onetrip, reads, writes
from flows.sql.onetrip import MapItems

# A wait no clock ends (a signal, children): not_before/woken_at so far ahead that the due-step
# timer, the reaper and the claim leave the step alone until something makes it due.
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)

# Executions a cancel can still end.
CANCELLABLE = (*ACTIVE_STATUSES, ExecutionStatus.CREATED, ExecutionStatus.PAUSED)


# -- Executions ---------------------------------------------------------------------------------
def start(execution_id: uuid.UUID, changes: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """CREATED -> QUEUED with ``changes`` (its first task, deadline, input): how many rows
    moved (0: it was not CREATED), and the changes written. One hand-written UPDATE (the
    start is every client's hot path); the caller writes the first step (``new_step``).
    Locks: none before; the conditional UPDATE takes the row."""
    changes = {"status": ExecutionStatus.QUEUED, **changes}
    moved = writes.update_rows(Execution, {execution_id: changes}, status=ExecutionStatus.CREATED)
    return moved, changes


def started_rows(now: datetime, varying: list[dict[str, Any]], **fields: Any) -> list[Execution]:
    """Top-level executions' rows, unsaved, QUEUED from their creation at ``now`` (a bulk
    start: ``start_batch`` inserts them with their first steps): ``fields`` common to all
    (flow, version, first task, deadline, owner), ``varying`` each one's own (input, key).

    Each row is the first one's values with its own key and ``varying`` put in, given to the
    model positionally: a keyword constructor, which looks every default up again, costs
    three times more, 1,000 times a call."""
    first = Execution(status=ExecutionStatus.QUEUED, queued_at=now, **fields)
    return _alike(Execution, first, [{"id": uuid.uuid4(), **own} for own in varying])


def _alike(model: type[Any], first: Any, varying: list[dict[str, Any]]) -> list[Any]:
    """Instances of ``model`` with ``first``'s field values but for ``varying``'s, each (by
    field name or attname), built positionally (as Django's ``from_db`` does). A list or
    dict value is copied for each (shallow), so no two rows share one to change."""
    attnames = [f.attname for f in model._meta.concrete_fields]
    position = {name: i for i, name in enumerate(attnames)}
    position.update({f.name: i for i, f in enumerate(model._meta.concrete_fields)})
    values = [getattr(first, name) for name in attnames]
    mutable = [i for i, value in enumerate(values) if isinstance(value, list | dict)]
    rows = []
    for own in varying:
        row = values.copy()
        for i in mutable:
            row[i] = copy.copy(row[i])
        for name, value in own.items():
            row[position[name]] = value
        rows.append(model(*row))
    return rows


def start_batch(rows: list[Execution], spec: TaskSpec, now: datetime) -> None:
    """Insert executions made QUEUED by ``started_rows`` and their first steps, of the task
    ``spec`` (each as ``new_step`` writes it), and wake workers for them together: one queue
    message per worker process, not one per execution (``wake_ready``). Two statements
    however many rows (``flows.sql``: COPY or a JSON document on PostgreSQL). Locks: none;
    the rows are new."""
    if not rows:
        return
    first = new_step(rows[0].id, spec, now)
    steps = _alike(TaskRun, first, [{"execution_id": row.id} for row in rows])
    writes.insert_rows(Execution, rows)
    writes.insert_rows(TaskRun, steps)
    wake_ready([row.id for row in rows])


def ending(status: str, error: str, steps_taken: int | None, now: datetime) -> dict[str, Any]:
    """An execution's row as it ends (written by ``record.write`` in its batch UPDATE, or by
    ``end_execution``); ``steps_taken`` None: counted by the statement (``record_in_one``)."""
    row: dict[str, Any] = {"status": status, "error": error, "ended_at": now, "current_task": ""}
    if steps_taken is not None:
        row["steps_taken"] = steps_taken
    return row


def end_row(execution: Execution, status: str, now: datetime) -> ExecutionEnd | None:
    """The outbox row an ending writes with it, for a top-level execution (``services.ends``
    does what follows an end from it); None for a child. Inserted by the caller, in the
    transaction that ends the execution."""
    if execution.parent_step_id is not None:
        return None
    return ExecutionEnd(
        execution_id=execution.id, flow_id=execution.flow_id, status=status, ended_at=now
    )


def end_execution(execution: Execution, status: str, error: str, now: datetime) -> None:
    """End one execution outside the step path (the reaper's). The caller counts a child on
    its parent step (``fanin.child_ended``). Locks: the execution row, held by the caller."""
    writes.update_rows(Execution, {execution.id: ending(status, error, execution.steps_taken, now)})
    row = end_row(execution, status, now)
    if row is not None:
        writes.insert_rows(ExecutionEnd, [row], after_commit=True)
    if execution.concurrency_key is not None:
        admission.ended(execution.flow_id, execution.concurrency_key, now)


def in_one_available() -> bool:
    """Whether ``record_in_one`` can be used here (PostgreSQL)."""
    return onetrip.available()


def record_in_one(
    checks: list[tuple[uuid.UUID, int, int | None]],
    closes: dict[int, dict[str, Any]],
    routes: dict[uuid.UUID, dict[str, Any]],
    steps: list[TaskRun],
    events: list[ExecutionEvent],
    ends: list[ExecutionEnd],
    *,
    me: str,
    items: MapItems | None = None,
) -> bool:
    """PostgreSQL: a batch's steps closed (``closed`` rows), their executions counted and
    routed or ended (``ending`` rows; ``routes``), their next steps (``new_step``, claimed by
    ``me``), log lines and outbox rows inserted, in ONE statement committed on its own
    (``flows.sql.onetrip``), all of it only if every execution was asked neither to cancel
    nor to pause, is within its step limit (``checks``: execution, step, limit or None) and
    every step is still ``me``'s: whether it wrote. ``items``: the batch holds items of a
    map, counted on it, and as many of its next items are started (``onetrip.MapItems``)
    while it is neither done nor failing. Locks: none held before (outside any transaction
    of the engine); the statement takes the FanOut row (``items``), the executions' rows,
    then the steps', then the started items'."""
    return onetrip.record(
        checks, closes, routes, steps, events, ends, running=TaskRunStatus.RUNNING, me=me,
        items=items,
    )  # fmt: skip


def end_executions(ends: dict[uuid.UUID, dict[str, Any]]) -> None:
    """End a batch's executions, each with its ``ending`` row (``record.write``): one UPDATE.
    Locks: their rows, taken by ``record.write``'s counting UPDATE."""
    writes.update_rows(Execution, ends)


def complete(execution_id: uuid.UUID, result: Any, now: datetime) -> None:
    """A child redriven with its parent that has nothing left to run: COMPLETED with the
    result of its last task, which had succeeded (``redrive.take_over``). Locks: the parent
    step's FanOut row (the record transaction's); nobody else touches an ended child."""
    Execution.objects.filter(pk=execution_id).update(
        status=ExecutionStatus.COMPLETED,
        result=result,
        error="",
        ended_at=now,
        redrive_count=F("redrive_count") + 1,
    )


def cancel_now(ids: list[uuid.UUID], now: datetime, *, error: str) -> None:
    """End these executions CANCELLED now, none of whose steps runs: their PENDING steps end
    with them (``close_pending``). A cancel of one (``services.execution_cancel``) or of a
    tree (``fanin.cancel_children``). Locks: the FanOut rows of their parents first, then
    (for one) its row, as ``execution_cancel`` does."""
    close_pending(
        TaskRun.objects.filter(execution_id__in=ids, status=TaskRunStatus.PENDING),
        now,
        error="cancelled before it started",
    )
    ending = Execution.objects.filter(pk__in=ids, status__in=CANCELLABLE)
    # Before the update, which takes them out of CANCELLABLE: the top-level ones among them.
    top = list(
        ending.filter(parent_step__isnull=True).values_list("id", "flow_id", "concurrency_key")
    )
    ending.update(
        status=ExecutionStatus.CANCELLED,
        cancel_requested=True,
        error=error,
        ended_at=now,
        current_task="",
    )
    rows = [
        ExecutionEnd(
            execution_id=eid, flow_id=flow_id, status=ExecutionStatus.CANCELLED, ended_at=now
        )
        for eid, flow_id, _ in top
    ]
    writes.insert_rows(ExecutionEnd, rows, after_commit=True)
    # Places of their flows' keys (max_concurrent_executions) go to the next queued.
    for flow_id, key in sorted({(f, k) for _, f, k in top if k is not None}):
        admission.ended(flow_id, key, now)


def ask_to_cancel(ids: Iterable[uuid.UUID]) -> None:
    """Ask the workers running these executions' steps to cancel them (within a second);
    each worker ends its step and its execution in ``record.write``. Locks: as
    ``cancel_now``."""
    Execution.objects.filter(pk__in=list(ids)).update(cancel_requested=True)


def pause(ids: list[uuid.UUID]) -> None:
    """These executions wait PAUSED (a pause asked for was reached: by ``record.write``, the
    reaper). Locks: their rows, held by the caller."""
    Execution.objects.filter(pk__in=ids).update(status=ExecutionStatus.PAUSED)


def ask_to_pause(execution_id: uuid.UUID, *, at_once: bool) -> None:
    """A pause asked for: PAUSED ``at_once`` when no step is in flight, else the worker
    pauses it when its step ends. Locks: the execution row, held by the caller."""
    changes: dict[str, Any] = {"pause_requested": True}
    if at_once:
        changes["status"] = ExecutionStatus.PAUSED
    Execution.objects.filter(pk=execution_id).update(**changes)


def resume(execution_id: uuid.UUID, now: datetime) -> None:
    """PAUSED -> QUEUED, and its open step woken (when its delay is over, else at its time).
    A step waiting for a signal or its children is woken by them, not here. Locks: the
    execution row, held by the caller."""
    Execution.objects.filter(pk=execution_id).update(
        pause_requested=False, status=ExecutionStatus.QUEUED
    )
    step = TaskRun.objects.filter(execution_id=execution_id, status=TaskRunStatus.PENDING).first()
    if step is not None and (step.not_before is None or step.not_before < FOREVER):
        due = step.not_before if step.not_before and step.not_before > now else None
        TaskRun.objects.filter(pk=step.pk).update(woken_at=due or now)
        wake(execution_id, at=due)


def redrive_reset(
    ids: list[uuid.UUID],
    *,
    task_name: str,
    deadline_at: datetime | None,
    now: datetime,
    due: bool = True,
    child: bool = False,
) -> None:
    """A FAILED or CANCELLED execution (or, ``child``, each child redriven with its parent)
    runs again from ``task_name``: QUEUED (``due``) or CREATED until a slot frees
    (``fanin``), its error, end and flags cleared, the step limit and the flow's timeout
    afresh. Its step is written by the caller (``new_step`` via ``redrive.Redrive.step``).
    Locks: the execution row (``execution_redrive``); children: every execution of the tree
    has ended, and the record transaction holds their parent's FanOut row."""
    changes: dict[str, Any] = {
        "status": ExecutionStatus.QUEUED if due else ExecutionStatus.CREATED,
        "current_task": task_name,
        "error": "",
        "ended_at": None,
        "cancel_requested": False,
        "pause_requested": False,
        "steps_taken": 0,
        "deadline_at": deadline_at,
        "redrive_count": F("redrive_count") + 1,
    }
    if child:
        changes["result"] = None
        changes["queued_at"] = now if due else None
    Execution.objects.filter(pk__in=ids).update(**changes)


def child_row(*, started: bool, now: datetime, **fields: Any) -> Execution:
    """A child execution's row, unsaved (``fanout.create`` inserts it in its chunk, under the
    record transaction's locks): QUEUED when it starts now, else CREATED until a slot frees
    (``fanin``)."""
    return Execution(
        status=ExecutionStatus.QUEUED if started else ExecutionStatus.CREATED,
        queued_at=now if started else None,
        **fields,
    )


def child_started(now: datetime) -> dict[str, Any]:
    """The columns of a child that starts now (``writes.insert_copies``'s ``started``)."""
    return {"status": ExecutionStatus.QUEUED, "queued_at": now}


def start_items(
    step_id: int, first: int, last: int, now: datetime, *, claimed: bool
) -> list[Execution]:
    """A map's items ``first`` to ``last - 1`` CREATED -> QUEUED (or RUNNING, ``claimed`` by
    the dispatcher that starts them): those still CREATED (a cancel may have ended some), as
    they are now, in item order; the caller writes their first steps. One statement: the
    same rows are not looked up first, nor read again to run them. Locks: the map step's
    FanOut row (``fanin``)."""
    status = ExecutionStatus.RUNNING if claimed else ExecutionStatus.QUEUED
    rows = writes.update_matching(
        Execution,
        {"status": status, "queued_at": now, "started_at": now if claimed else None},
        where={"parent_step": step_id, "status": ExecutionStatus.CREATED},
        ranges={"item_index": (first, last)},
    )
    items = reads.instances(Execution, rows)
    return sorted(items, key=lambda item: item.item_index)


def children_due(ids: list[uuid.UUID], now: datetime) -> None:
    """A redriven map's next items CREATED -> QUEUED, their written steps made due (the
    caller wakes them). Locks: the map step's FanOut row (``fanin``)."""
    Execution.objects.filter(pk__in=ids, status=ExecutionStatus.CREATED).update(
        status=ExecutionStatus.QUEUED, queued_at=now
    )
    TaskRun.objects.filter(execution_id__in=ids, status=TaskRunStatus.PENDING).update(
        not_before=None, woken_at=now
    )


# -- Steps ----------------------------------------------------------------------------------------
def new_step(
    execution_id: uuid.UUID,
    spec: TaskSpec | TaskRun,
    now: datetime,
    *,
    seq: int = 1,
    attempt: int = 1,
    claimed_by: str = "",
    lease: timedelta | None = None,
    due: datetime | None = None,
    waiting: dict[str, Any] | None = None,
    **fields: Any,
) -> TaskRun:
    """A new step's row, unsaved (the caller inserts it with its batch): PENDING and woken
    ``now`` (``due``: not before then), or RUNNING when ``claimed_by`` a dispatcher that runs
    it at once (its ``lease``). ``spec``: the task, or an earlier step of it (a re-run).
    ``fields`` overrides (``woken_at``/``not_before`` of a step not due until a slot frees).
    No write: the caller inserts it under its execution's lock (``record.write``, a
    service's ``_locked``, ``run_again``) or the FanOut row of a child's parent (``fanin``,
    ``fanout``, ``redrive.take_over``)."""
    name = spec.task_name if isinstance(spec, TaskRun) else spec.name
    limits = spec.limits if isinstance(spec, TaskRun) else ",".join(spec.limits)
    row: dict[str, Any] = {
        "execution_id": execution_id,
        "seq": seq,
        "task_name": name,
        "task_type": spec.task_type,
        "parameters": spec.parameters,
        "attempt": attempt,
        "created_at": now,
        "woken_at": None if claimed_by else (due or now),
        "not_before": due,
        "waiting": waiting,
        "limits": limits,
    }
    if claimed_by:
        row.update(
            status=TaskRunStatus.RUNNING,
            worker=claimed_by,
            started_at=now,
            lease_expires_at=now + lease if lease is not None else None,
        )
    if fields:
        if fields.keys() - _names():
            raise TypeError(f"new_step: not TaskRun fields: {sorted(fields)}")
        row.update(fields)
    # Positional, in field order: Model.__init__'s quick path (the one from_db takes), a third
    # of what keyword arguments cost; a step opens one a step.
    return TaskRun(
        *[row[name] if name in row else field.get_default() for name, field in _fields()]
    )


@functools.cache
def _fields() -> tuple[tuple[str, Field], ...]:
    """TaskRun's concrete fields in order, by attribute name (``new_step``)."""
    return tuple((field.attname, field) for field in TaskRun._meta.concrete_fields)


@functools.cache
def _names() -> frozenset[str]:
    return frozenset(name for name, _ in _fields())


def claim_locked(steps: list[TaskRun], me: str, now: datetime, expires: datetime) -> int:
    """PENDING -> RUNNING for this worker with a lease: how many were claimed. For steps the
    caller's transaction read and holds locked (``reads.ready_steps`` and the limits' look:
    ``FOR UPDATE``; a slot's grant, ``limits``: its UPDATE; SQLite's write lock), so each
    one's start is known: a step that waited (its children, a sleep, a signal) keeps the
    start of its first run. One hand-written UPDATE; no execution row is locked (the claim
    never waits on a record transaction)."""
    return writes.update_rows(  # type: ignore[return-value]
        TaskRun,
        {
            step.pk: {
                "status": TaskRunStatus.RUNNING,
                "worker": me,
                "started_at": step.started_at or now,
                "lease_expires_at": expires,
            }
            for step in steps
        },
        status=TaskRunStatus.PENDING,
    )


def executions_started(executions: Iterable[Execution], now: datetime) -> None:
    """``executions_running`` for executions read in the claim's transaction, and set so in
    memory: QUEUED -> RUNNING, kept at their first start. Only a claim starts a QUEUED
    execution, and its step's lock keeps other claims out, so the start read is the one to
    keep; a change of status since (a cancel) leaves the row and the instance as they are."""
    queued = {
        execution.pk: (
            execution,
            {"status": ExecutionStatus.RUNNING, "started_at": execution.started_at or now},
        )
        for execution in executions
        if execution.status == ExecutionStatus.QUEUED
    }
    if not queued:
        return
    started = writes.update_rows(
        Execution,
        {key: values for key, (_, values) in queued.items()},
        returning=["status"],
        status=ExecutionStatus.QUEUED,
    )
    for key, _ in started:  # type: ignore[union-attr]
        execution, values = queued[key]
        execution.status, execution.started_at = values["status"], values["started_at"]


def executions_running(ids: list[uuid.UUID], now: datetime) -> None:
    """QUEUED -> RUNNING for the executions whose steps were just claimed (kept at their
    first start)."""
    Execution.objects.filter(pk__in=ids, status=ExecutionStatus.QUEUED).update(
        status=ExecutionStatus.RUNNING,
        started_at=Coalesce(F("started_at"), Value(now)),
    )


def claimed(steps: list[TaskRun], me: str, now: datetime, expires: datetime) -> None:
    """The claimed steps in memory as ``claim`` wrote them (no read back; no write)."""
    for step in steps:
        step.status, step.worker, step.started_at = (
            TaskRunStatus.RUNNING,
            me,
            step.started_at or now,
        )
        step.lease_expires_at = expires


def closed(status: str, now: datetime, **fields: Any) -> dict[str, Any]:
    """A finished step's row changes (``record.write`` writes a batch of them in one UPDATE,
    on the condition that this worker still holds each: ``status=RUNNING, worker=me``). A
    step that was about to wait, cancelled meanwhile, ends CANCELLED."""
    if status == TaskRunStatus.PENDING:
        status = TaskRunStatus.CANCELLED
    return {"status": status, "ended_at": now, "lease_expires_at": None, **fields}


def close_steps(closes: dict[int, dict[str, Any]], me: str) -> int:
    """Write a batch's steps (``closed`` and ``waits`` rows) in one UPDATE, each only while
    this worker still holds it (RUNNING, ``worker=me``): how many it still held (fewer: one
    was taken over, and the caller rolls the transaction back). Locks: the executions' rows
    first (``record.write``'s counting UPDATE, after their parents' FanOut rows)."""
    return writes.update_rows(TaskRun, closes, status=TaskRunStatus.RUNNING, worker=me)


def waits(until: datetime | None, waiting: Any, **fields: Any) -> dict[str, Any]:
    """A step that goes back to PENDING to wait in the database, its worker let go, until
    ``until`` or FOREVER (something makes it due: ``make_due``). Written with ``closed``'s
    rows by ``record.write``. Open until the wait ends: its duration is then the whole wait."""
    return {
        "status": TaskRunStatus.PENDING,
        "worker": "",
        "lease_expires_at": None,
        "duration": None,
        "waiting": waiting,
        "not_before": until or FOREVER,
        "woken_at": until or FOREVER,
        **fields,
    }


def close_pending(steps: QuerySet[TaskRun], now: datetime, *, error: str) -> None:
    """End these PENDING steps CANCELLED at ``now`` with ``error``. Those whose wait had
    begun (a sleep, a signal, their children) lasted until now: their duration says so.
    Locks: their executions' rows (or the FanOut rows above them), held by the caller."""
    waited = steps.filter(started_at__isnull=False).values_list("pk", "started_at")
    writes.update_rows(
        TaskRun, {pk: {"duration": max((now - at).total_seconds(), 0.0)} for pk, at in waited}
    )
    steps.update(status=TaskRunStatus.CANCELLED, ended_at=now, error=error)


def make_due(step_id: int, now: datetime, execution_id: uuid.UUID | None = None) -> None:
    """A waiting step is due now (its children decided it, or a redrive kept every child):
    not a delayed one for the due-step timer; its execution is woken. Without
    ``execution_id`` it is read first, and nothing happens when the step is not PENDING any
    more. Locks: the step's FanOut row, held by the caller (``fanin.lock_fanouts``)."""
    pending = TaskRun.objects.filter(pk=step_id, status=TaskRunStatus.PENDING)
    if execution_id is None:
        execution_id = pending.values_list("execution_id", flat=True).first()
        if execution_id is None:
            return
    pending.update(not_before=None, woken_at=now)
    wake(execution_id)


def signalled(step: TaskRun, waiting: dict[str, Any], now: datetime, *, wake_now: bool) -> None:
    """A signal came for a waiting step: kept on it, and the step due now (not a delayed one
    for the due-step timer); its execution woken unless paused (resuming wakes it). Locks:
    the execution row, then the step's (``execution_signal``)."""
    TaskRun.objects.filter(pk=step.pk).update(waiting=waiting, not_before=None, woken_at=now)
    if wake_now:
        wake(step.execution_id)
    step.waiting, step.not_before, step.woken_at = waiting, None, now


def lose(running: QuerySet[TaskRun], now: datetime, *, why: str) -> int:
    """A RUNNING step (as ``running`` selects it) is LOST: its worker died or was stopped.
    1 when it was still so. Locks: the execution row, held by the caller (``run_again``)."""
    return running.update(status=TaskRunStatus.LOST, ended_at=now, lease_expires_at=None, error=why)


def rejoin(running: QuerySet[TaskRun], now: datetime, waiting: dict[str, Any]) -> int:
    """A control step lost while it joined its children goes back to PENDING, due now, to
    join them again (its children are still its own). 1 when it was still RUNNING. Locks:
    the execution row, held by the caller."""
    return running.update(
        status=TaskRunStatus.PENDING,
        worker="",
        lease_expires_at=None,
        woken_at=now,
        not_before=None,
        waiting=waiting,
    )


# -- Limits -----------------------------------------------------------------------------------
def park(parks: dict[int, dict[str, Any]], restored: dict[int, dict[str, Any]]) -> None:
    """Claimable steps a limit refused wait PENDING in the database (``limits.park_state``:
    for a freed slot, or the rate's window), and those it admitted get back what they waited
    for before; one UPDATE for both. Locks: the steps' rows, held by the claim."""
    writes.update_rows(TaskRun, {**parks, **restored})


def limit_granted(step_ids: list[int], now: datetime) -> list[tuple[int, uuid.UUID, str]]:
    """Steps handed a limit's slot are due now, those still PENDING: (step, execution, its
    limits) of each (the caller claims or wakes them). Locks: the limit's row, held by the
    caller (``limits.grant``); the steps' rows are nobody's (they were waiting, not due)."""
    due = TaskRun.objects.filter(pk__in=step_ids, status=TaskRunStatus.PENDING)
    found = list(due.values_list("pk", "execution_id", "limits"))
    if found:
        TaskRun.objects.filter(pk__in=[pk for pk, _, _ in found]).update(
            not_before=None, woken_at=now
        )
    return found
