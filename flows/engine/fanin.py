"""Fan in and join: a control step's children counted as they end, and the step ended from
them (see ``fanout`` for the whole picture, and docs/architecture.md)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F

from flows.definition import MAP, PARALLEL, SUBFLOW, FlowDefinition
from flows.engine import transitions
from flows.engine.fanout import registry, waiting_outcome
from flows.engine.inputs import parsed
from flows.engine.outcome import StepOutcome, failure
from flows.engine.wakeup import wake
from flows.models import (
    Execution,
    ExecutionStatus,
    FanOut,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import reads, writes
from flows.waiting import CHILDREN, Waiting


# -- 2. Fan in ----------------------------------------------------------------------------------
def decided_by(fan: FanOut | tuple[Any, ...]) -> tuple[bool, bool]:
    """(whether the step can end now, whether it fails) from a FanOut's counts."""
    total, done, failed, kind = fan.total, fan.done, fan.failed, fan.kind  # type: ignore[union-attr]
    if kind == MAP:
        if fan.tolerated_percent is not None:  # type: ignore[union-attr]
            over = failed * 100 > fan.tolerated_percent * total  # type: ignore[union-attr]
        else:
            over = failed > fan.tolerated  # type: ignore[union-attr]
        return done >= total or over, over
    fails = failed > 0
    return done >= total or (fails and fan.fail_fast), fails  # type: ignore[union-attr]


@dataclass
class Adopt:
    """Map items a dispatcher starts and claims for itself as they are started (the slots
    their predecessors freed there), instead of leaving them for a claim and a queue hop."""

    me: str
    lease: timedelta
    steps: list[TaskRun] = field(default_factory=list)
    # Their executions as the statement that started them left them, with their flow
    # version: the dispatcher launches the steps without reading them again.
    executions: dict[uuid.UUID, Execution] = field(default_factory=dict)
    # Steps handed a slot of a named limit that this dispatcher freed, claimed for it in the
    # same transaction (limits.grant): not fresh, their results so far are read to start them.
    resumed: list[TaskRun] = field(default_factory=list)

    def take(self, steps: list[TaskRun], items: list[Execution], version: FlowVersion) -> None:
        """Map items started and claimed here: their first steps, and their executions as the
        statement that started them left them, each given the flow version it shares with
        its map (read once) so that the dispatcher reads neither again."""
        self.steps += steps
        for item in items:
            if item.flow_version_id == version.pk:
                item.flow_version = version
            self.executions[item.id] = item


def children_ended(
    ended: list[tuple[Execution, str, FlowDefinition | None]],
    now: datetime,
    adopt: Adopt | None = None,
) -> None:
    """Count children that just ended on their parent steps, inside the transaction that
    ended them (several at once when a worker records a batch): start a map's next items,
    or make a parent step due when this decides it.

    A few statements per parent step, however many of its children ended together; one
    queue message for all the items started here (a dispatcher claims every ready step it
    has room for, so one message is enough to start them).
    """
    by_step: dict[int, list[tuple[Execution, str, FlowDefinition | None]]] = {}
    for child, status, definition in ended:
        by_step.setdefault(child.parent_step_id, []).append((child, status, definition))  # type: ignore[arg-type]
    started: list[uuid.UUID] = []
    for step_id, group in by_step.items():
        failed = sum(status != ExecutionStatus.COMPLETED for _, status, _ in group)
        # Concurrent endings queue on the FanOut's row lock, so none is lost. The counts as
        # they are now come back with the UPDATE.
        counted = writes.update_matching(
            FanOut, {}, add={"done": len(group), "failed": failed}, where={"step": step_id}
        )
        if not counted:  # the parent went away
            continue
        (fan,) = reads.instances(FanOut, counted)
        decided, _ = decided_by(fan)
        if decided:
            transitions.make_due(step_id, now)
        elif fan.kind == MAP and fan.started < fan.total:
            child, _, definition = group[0]
            started += _start_next(fan, len(group), child, definition, now, adopt)
    if started:
        wake(started[0])


def child_ended(
    child: Execution, status: str, definition: FlowDefinition | None, now: datetime
) -> None:
    """One child ended outside the step path (a cancel, the reaper): ``children_ended``."""
    children_ended([(child, status, definition)], now)


def _start_next(
    fan: FanOut,
    count: int,
    child: Execution,
    definition: FlowDefinition | None,
    now: datetime,
    adopt: Adopt | None,
) -> list[uuid.UUID]:
    """Start up to ``count`` more items of a map (as many as ended): the next CREATED ones in
    item order, claimed for ``adopt``'s dispatcher when given. Returns the ids of those left
    for any worker to claim (to wake)."""
    if fan.next_item is not None:
        return _start_again(fan, count, now)
    first = fan.started
    last = min(fan.total, first + count)
    moved = writes.update_matching(
        FanOut, {"started": last}, where={"step": fan.pk, "started": first}
    )
    if not moved:  # another transaction moved it first (it holds the row lock): it starts them
        return []
    body = definition if definition is not None else _body_of(child)
    start = body.task(body.start_task)
    if start.limits:  # a step that takes limits is claimed by a claim, which takes its slots
        adopt = None
    # Only those still CREATED start: a cancel may have ended some meanwhile.
    items = transitions.start_items(fan.pk, first, last, now, claimed=adopt is not None)
    if not items:  # cancelled before they could start
        return []
    if adopt is None:
        steps = [transitions.new_step(item.id, start, now) for item in items]
        writes.insert_rows(TaskRun, steps, after_commit=True)
        return [item.id for item in items]
    steps = [
        transitions.new_step(item.id, start, now, claimed_by=adopt.me, lease=adopt.lease)
        for item in items
    ]
    # The dispatcher launches them once this commits; their keys come back with the COMMIT.
    writes.insert_rows(TaskRun, steps, after_commit=True)
    adopt.take(steps, items, child.flow_version)
    return []


def _start_again(fan: FanOut, count: int, now: datetime) -> list[uuid.UUID]:
    """A redriven map's next ``count`` items to run again: those still CREATED from
    ``next_item`` on, in item order (the ones kept from the earlier attempt lie between).
    Each has its step written already (``redrive.take_over``), not due: made due here.
    Returns their ids, to wake."""
    rows = list(
        Execution.objects.filter(
            parent_step_id=fan.pk,
            item_index__gte=fan.next_item,
            status=ExecutionStatus.CREATED,
        )
        .order_by("item_index")
        .values_list("id", "item_index")[:count]
    )
    if not rows:
        return []
    moved = FanOut.objects.filter(pk=fan.pk, started=fan.started, next_item=fan.next_item).update(
        started=F("started") + len(rows), next_item=rows[-1][1] + 1
    )
    if not moved:  # another transaction moved it first (it holds the row lock): it starts them
        return []
    ids = [eid for eid, _ in rows]
    transitions.children_due(ids, now)
    return ids


def _body_of(child: Execution) -> FlowDefinition:
    version = FlowVersion.objects.get(pk=child.flow_version_id)
    return parsed(version.definition, registry(), refresh=False).scope(child.scope)


# -- 3. Join ------------------------------------------------------------------------------------
MAX_ERRORS_SHOWN = 20


def join(execution: Execution, step: TaskRun) -> StepOutcome:
    """The control step runs again: end it from its children, or wait on (woken early)."""
    fan = FanOut.objects.filter(pk=step.pk).first()
    if fan is None:
        return failure("its children are gone (the FanOut row is missing)", permanent=True)
    decided, fails = decided_by(fan)
    if not decided:
        state = Waiting.from_json(step.waiting) or Waiting(kind=CHILDREN)
        return waiting_outcome(None, state.to_json())
    if fan.done < fan.total:
        with transaction.atomic():
            cancel_children([step.pk], why=f"{step.task_name} failed: fail fast")
    rows = (
        Execution.objects.filter(parent_step_id=step.pk)
        .order_by("item_index")
        .values_list("id", "branch", "status", "result", "error")
        .iterator(chunk_size=2000)
    )
    errors: list[str] = []
    if fan.kind == PARALLEL:
        result: dict[str, Any] = {}
        for _, branch, status, value, error in rows:
            result[branch] = value
            if status != ExecutionStatus.COMPLETED and len(errors) < MAX_ERRORS_SHOWN:
                errors.append(f"branch {branch} {status.lower()}: {error}")
    elif fan.kind == MAP:
        values: list[Any] = []
        for index, (_, _, status, value, error) in enumerate(rows):
            values.append(value if status == ExecutionStatus.COMPLETED else None)
            if status != ExecutionStatus.COMPLETED and len(errors) < MAX_ERRORS_SHOWN:
                errors.append(f"item {index} {status.lower()}: {error}")
        result = {"results": values, "count": fan.total, "failed": fan.failed}
    else:
        child_id, _, status, value, error = next(iter(rows))
        result = {"execution_id": str(child_id), "status": status, "result": value}
        if status != ExecutionStatus.COMPLETED:
            errors.append(f"sub-flow execution {child_id} {status.lower()}: {error}")
    if fails:
        what = {PARALLEL: "branches", MAP: "items", SUBFLOW: "sub-flows"}[fan.kind]
        more = "" if fan.failed <= len(errors) else f"; {fan.failed - len(errors)} more"
        return failure(
            f"{fan.failed} of {fan.total} {what} failed: {'; '.join(errors)}{more}",
            permanent=True,
        )
    result.setdefault("message", f"{fan.total} {fan.kind} children completed")
    return StepOutcome(TaskRunStatus.SUCCESS, result=result)


# -- Cancelling a tree --------------------------------------------------------------------------
CANCELLABLE = transitions.CANCELLABLE


def lock_fanouts(step_ids: Any) -> None:
    """Lock the FanOut rows of these control steps, in key order, until the transaction
    ends: what ends, starts or cancels children takes these first (PostgreSQL; SQLite has
    one writer at a time anyway). Outside a transaction it locks nothing."""
    keys = sorted(set(step_ids))
    if keys:
        writes.lock_rows(FanOut, keys)


def cancel_children(step_ids: list[int], *, why: str) -> int:
    """Cancel every child (and their children) of these steps that has not ended: CREATED
    ones and those whose step waits end at once; a running step is stopped by its worker
    within a second (``cancel_requested``). Returns how many were asked."""
    now = datetime.now(UTC)
    asked = 0
    # Lock order, the same as a worker's (record.write): the FanOut rows first, then the
    # children. Taking children first could deadlock with a worker ending one item and
    # starting the next.
    lock_fanouts(step_ids)
    while step_ids:
        children = Execution.objects.filter(parent_step_id__in=step_ids, status__in=CANCELLABLE)
        ids = list(children.values_list("id", flat=True))
        if not ids:
            break
        asked += len(ids)
        running = set(
            TaskRun.objects.filter(execution_id__in=ids, status=TaskRunStatus.RUNNING).values_list(
                "execution_id", flat=True
            )
        )
        idle = [eid for eid in ids if eid not in running]
        # The children's own waiting steps, whose children are cancelled next round.
        step_ids = list(
            TaskRun.objects.filter(
                execution_id__in=ids, status=TaskRunStatus.PENDING, waiting__isnull=False
            ).values_list("pk", flat=True)
        )
        transitions.cancel_now(idle, now, error=why)
        transitions.ask_to_cancel(running)
    return asked
