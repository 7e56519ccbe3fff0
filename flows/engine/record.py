"""Recording finished steps: each one's result and routing decision in one transaction.

``write`` writes any number of decided steps (``routing.Finished``) in the same few
statements inside the caller's transaction; ``write_alone`` writes one in a transaction of
its own. The next step is opened in the same transaction: claimed here when it can run now,
else left PENDING and woken (``wakeup.wake``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from flows.engine import admission, fanin, fanout, limits, redrive, transitions
from flows.engine.outcome import flow_timeout, remaining
from flows.engine.routing import Finished, took
from flows.engine.transitions import ending
from flows.engine.wakeup import wake
from flows.models import (
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    ExecutionStatus,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import writes

logger = logging.getLogger("flows.engine")


class TakenOver(Exception):
    """The step being recorded is no longer this worker's: its transaction must roll back."""


@dataclass
class _Inserts:
    """Rows a transaction's writes add, inserted together just before it commits."""

    steps: list[TaskRun] = field(default_factory=list)
    events: list[ExecutionEvent] = field(default_factory=list)
    ends: list[ExecutionEnd] = field(default_factory=list)  # the outbox (transitions.end_row)

    def save(self) -> None:
        # Nothing reads their keys before the commit: on PostgreSQL they go out with it.
        writes.insert_rows(TaskRun, self.steps, after_commit=True)
        writes.insert_rows(ExecutionEvent, self.events, after_commit=True)
        writes.insert_rows(ExecutionEnd, self.ends, after_commit=True)


@dataclass
class _Decided:
    """What a batch's transaction writes, decided from its steps and their executions' rows
    (``_decide``), before any of it is written."""

    inserts: _Inserts = field(default_factory=_Inserts)
    closes: dict[int, dict[str, Any]] = field(default_factory=dict)
    ends: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    routes: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)  # those going on
    paused: list[uuid.UUID] = field(default_factory=list)
    waits: list[uuid.UUID] = field(default_factory=list)
    wakes: list[tuple[uuid.UUID, datetime | None]] = field(default_factory=list)
    children_ended: list[tuple[Execution, str, Any]] = field(default_factory=list)
    logged: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    admits: set[tuple[str, str]] = field(default_factory=set)  # (flow, key) places freed
    next_steps: list[TaskRun | None] = field(default_factory=list)


# An execution's row as ``write`` reads it back: (cancel_requested, pause_requested,
# steps_taken), or None for steps_taken where nobody read it (``write_in_one`` counts it in
# its statement).
_State = tuple[bool, bool, int | None]


def write(
    batch: list[Finished],
    me: str,
    lease: timedelta,
    *,
    continue_here: bool,
    adopt: fanin.Adopt | None = None,
) -> list[TaskRun | None]:
    """Write decided steps inside the caller's transaction, whatever their number, in the
    same few statements: for each, the next step when this worker claimed it, else None.

    Raises TakenOver when a step is no longer this worker's: the caller must let the
    transaction roll back (and write the others again without it).

    1. Count the steps on their executions: cancel, pause and delete lock the execution row
       too, so none of them can slip between closing a step and opening the next.
    2. Decide: the next task, or how the execution ends (a cancel, the flow's timeout or its
       step limit overrule the plan).
    3. Close the steps with their decisions, if this worker still holds every one.
    4. End executions; open next steps (claimed here when they can run now, else PENDING for
       a later job: a retry's delay, a pause, the budget); add the log lines.
    """
    now = timezone.now()
    # Children of a map or parallel step: their FanOut rows first (fanin.lock_fanouts).
    fanin.lock_fanouts(f.execution.parent_step_id for f in batch if f.execution.parent_step_id)
    states: dict[uuid.UUID, _State] = {
        row[0]: row[1:]
        for row in writes.update_rows(
            Execution,
            {f.execution.id: {"current_task": f.plan.target or ""} for f in batch},
            increment=["steps_taken"],
            returning=["cancel_requested", "pause_requested", "steps_taken"],
        )
    }
    decided = _decide(batch, states, me, lease, now, continue_here=continue_here)
    for eid, at in decided.wakes:
        wake(eid, at=at)
    if transitions.close_steps(decided.closes, me) != len(decided.closes):
        if len(batch) == 1:
            logger.warning(
                "execution=%s step=%s was taken over by another worker; result dropped",
                batch[0].execution.id, batch[0].step.seq,
            )  # fmt: skip
        raise TakenOver
    transitions.end_executions(decided.ends)
    for flow_id, key in sorted(decided.admits):
        admission.ended(flow_id, key, now)  # the next queued execution starts
    if decided.paused:
        transitions.pause(decided.paused)
    waits = decided.waits
    if waits:
        # A step that waits runs again later: it counts once against max_steps, not per run.
        Execution.objects.filter(pk__in=waits).update(steps_taken=F("steps_taken") - 1)
        for finished in batch:
            plan = finished.outcome.fanout
            if plan is None or finished.execution.id not in waits:
                continue
            if isinstance(plan, redrive.TakeOver):
                redrive.take_over(plan, finished.execution, finished.step, now)
            else:
                fanout.create(plan, finished.execution, finished.step, now)
    if decided.children_ended:
        fanin.children_ended(decided.children_ended, now, adopt if continue_here else None)
    # Slots of named limits held by the steps written, handed to the next waiters: claimed
    # here for as many as the steps written free of this dispatcher's room (less the map
    # items it took above), else woken for any worker.
    freed = [f.step.pk for f in batch if f.step.limits and f.execution.id in states]
    if freed:
        next_steps = decided.next_steps
        room = sum(1 for nxt in next_steps if nxt is None) - (len(adopt.steps) if adopt else 0)
        limits.release(freed, now, adopt if continue_here and room > 0 else None, room)
    decided.inserts.save()
    _log(decided)
    return decided.next_steps


def _log(decided: _Decided) -> None:
    for eid, route in decided.logged:
        logger.info("execution=%s route: %s", eid, route)


def _decide(
    batch: list[Finished],
    states: dict[uuid.UUID, _State],
    me: str,
    lease: timedelta,
    now: datetime,
    *,
    continue_here: bool,
) -> _Decided:
    """Step 2 of ``write``: what the batch writes, given its executions' rows (``states``; an
    execution absent from them was deleted). Writes nothing; the workers to wake are listed,
    not woken."""
    decided = _Decided()
    inserts, closes, ends = decided.inserts, decided.closes, decided.ends
    for finished in batch:
        execution, definition, step = finished.execution, finished.definition, finished.step
        outcome, plan, eid = finished.outcome, finished.plan, finished.execution.id
        decided.next_steps.append(None)
        if eid not in states:
            logger.info("execution=%s was deleted while step %s ran", eid, step.seq)
            continue
        cancel_requested, pause_requested, steps_taken = states[eid]
        final, error, why = plan.final, plan.error, plan.why
        left = remaining(execution)
        if outcome.status == TaskRunStatus.CANCELLED or cancel_requested:
            final, error, why = ExecutionStatus.CANCELLED, "cancelled by request", "cancelled"
        elif plan.wait:
            decided.waits.append(eid)
            _wait(finished, now, decided, pause_requested)
            decided.logged.append((eid, plan.why))
            inserts.events.extend(_events(eid, step, now, finished.events))
            continue
        elif not final and left is not None and left <= plan.delay:
            # A retry that would be due too late.
            timeout = flow_timeout(definition)
            final, error, why = ExecutionStatus.FAILED, timeout.error, timeout.error
        elif (
            not final
            and definition is not None
            and steps_taken is not None
            and steps_taken >= definition.max_steps
        ):
            final = ExecutionStatus.FAILED
            error = why = (
                f"step limit of {definition.max_steps} steps (max_steps) reached before "
                f"task '{plan.target}' could run"
            )
        route = f"{why} -> {f'execution {final}' if final else plan.target}"
        decided.logged.append((eid, route))
        closes[step.pk] = transitions.closed(
            outcome.status,
            now,
            result=outcome.result,
            error=outcome.error,
            traceback=outcome.traceback,
            duration=took(step, outcome, now),
            route=route[:300],
        )
        if outcome.parameters is not None:
            closes[step.pk]["parameters"] = outcome.parameters
        # Every decision is on its step; the log keeps those worth reading in sequence:
        # conditions, retries, pauses, failures and the end.
        events = list(finished.events)
        if final:
            ends[eid] = ending(final, error, steps_taken, now)
            if execution.concurrency_key is not None:
                decided.admits.add((execution.flow_id, execution.concurrency_key))
            end = transitions.end_row(execution, final, now)
            if end is not None:
                inserts.ends.append(end)
            if execution.parent_step_id is not None:
                # A child's output is what its parent step gathers (fanin.join).
                ends[eid]["result"] = outcome.result if final == ExecutionStatus.COMPLETED else None
                decided.children_ended.append((execution, final, definition))
            level = {ExecutionStatus.COMPLETED: "INFO", ExecutionStatus.CANCELLED: "WARNING"}
            events.append((level.get(final, "ERROR"), route))
        else:
            decided.routes[eid] = {"current_task": plan.target}
            if plan.noteworthy:
                succeeded = outcome.status == TaskRunStatus.SUCCESS
                events.append(("INFO" if succeeded else "WARNING", route))
            spec = definition.task(plan.target)  # type: ignore[union-attr]
            due = now + timedelta(seconds=plan.delay) if plan.delay > 0 else None
            # A step that takes limits is claimed by a claim, which takes its slots.
            claim_here = continue_here and due is None and not pause_requested and not spec.limits
            next_step = transitions.new_step(
                eid,
                spec,
                now,
                seq=step.seq + 1,
                attempt=plan.attempt,
                claimed_by=me if claim_here else "",
                lease=lease,
                due=due,
            )
            inserts.steps.append(next_step)
            if pause_requested:
                decided.paused.append(eid)
                events.append(("WARNING", f"paused before {spec.name}"))
                logger.info("execution=%s paused before %s", eid, spec.name)
            elif not claim_here:
                decided.wakes.append((eid, due))
            else:
                decided.next_steps[-1] = next_step
        inserts.events.extend(_events(eid, step, now, events))
    return decided


def write_in_one(
    batch: list[Finished],
    me: str,
    lease: timedelta,
    *,
    continue_here: bool,
    adopt: fanin.Adopt | None = None,
) -> list[TaskRun | None] | None:
    """PostgreSQL: write decided steps in ONE statement, committed on its own
    (``flows.sql.onetrip``), when each of them goes on here or ends as planned: for each, the
    next step (claimed by this worker), else None. None when it wrote nothing: a step of the
    batch needs what only ``write`` does (a wait, a retry's delay, limits, an admission place,
    a successor not run here, a child but of one map whose items it can start here), or its
    execution was not as assumed (a cancel or a pause asked for, the step limit reached,
    deleted), or a step was taken over, or the map is done or failing; the caller then
    writes the batch with ``write``, which decides those. Items of a map that end start as
    many of its next ones, claimed for ``adopt``'s dispatcher (``fanin._start_next``)."""
    if not transitions.in_one_available() or not all(
        _in_one(finished, continue_here) for finished in batch
    ):
        return None
    now = timezone.now()
    items = _map_items(batch, me, lease, now, adopt if continue_here else None)
    if items is False:
        return None
    # What ``write`` would decide were every execution as the statement checks it is.
    states: dict[uuid.UUID, _State] = {f.execution.id: (False, False, None) for f in batch}
    decided = _decide(batch, states, me, lease, now, continue_here=continue_here)
    routes = {**decided.routes, **decided.ends}
    # Each step's limit, checked by the statement (None: the execution ends with this step).
    checks = [
        (f.execution.id, f.step.pk, None if f.plan.final else f.definition.max_steps)  # type: ignore[union-attr]
        for f in batch
    ]
    if not transitions.record_in_one(
        checks, decided.closes, routes, decided.inserts.steps, decided.inserts.events,
        decided.inserts.ends, me=me, items=items,
    ):  # fmt: skip
        return None
    if items is not None and adopt is not None:
        _adopted(items, batch, adopt)
    _log(decided)
    return decided.next_steps


def _map_items(
    batch: list[Finished],
    me: str,
    lease: timedelta,
    now: datetime,
    adopt: fanin.Adopt | None,
) -> transitions.MapItems | bool | None:
    """The batch's items of a map for ``write_in_one`` (``onetrip.MapItems``): None when it
    holds no child; False when it cannot write them (a branch or a sub-flow, items of
    several maps, an item that fails, no dispatcher to run the next items, their first task
    takes limits)."""
    children = [f for f in batch if f.execution.parent_step_id is not None]
    if not children:
        return None
    parents = {f.execution.parent_step_id for f in children}
    ended = [f for f in children if f.plan.final]
    if (
        len(parents) > 1
        # A map's items run its iterator, whose scope ends with "" (models.Execution.scope):
        # a branch's ends with its name, a sub-flow's is its whole flow.
        or any(not f.execution.scope or f.execution.scope[-1] != "" for f in children)
        or adopt is None
        or any(f.plan.final != ExecutionStatus.COMPLETED for f in ended)
        or any(f.definition is None for f in children)
    ):
        return False
    body = children[0].definition
    assert body is not None
    first = body.task(body.start_task)
    if first.limits:  # a step that takes limits is claimed by a claim, which takes its slots
        return False
    (parent,) = parents
    # Each item's execution is set when the statement inserts its step.
    step = transitions.new_step(children[0].execution.id, first, now, claimed_by=me, lease=lease)
    return transitions.MapItems(parent, len(ended), step, now)  # type: ignore[arg-type]


def _adopted(items: transitions.MapItems, batch: list[Finished], adopt: fanin.Adopt) -> None:
    """The items the statement started, handed to the dispatcher as ``fanin`` hands them."""
    child = next(f.execution for f in batch if f.execution.parent_step_id)
    adopt.take(
        [step for _, step in items.started],
        [execution for execution, _ in items.started],
        child.flow_version,
    )


def _in_one(finished: Finished, continue_here: bool) -> bool:
    """Whether ``write_in_one`` can write this step: it goes on in this worker to a task
    without limits, or its execution ends as planned, with nothing but rows to write (a map's
    item: see ``_map_items``)."""
    execution, step, outcome, plan = (
        finished.execution, finished.step, finished.outcome, finished.plan,
    )  # fmt: skip
    if (
        step.limits  # slots to free
        or plan.wait
        or outcome.fanout is not None
        or outcome.status == TaskRunStatus.CANCELLED
    ):
        return False
    if plan.final:
        # An ended execution's place goes to the next queued one (admission).
        return execution.concurrency_key is None
    left, definition = remaining(execution), finished.definition
    return (
        continue_here
        and definition is not None
        and plan.delay <= 0
        and (left is None or left > 0)
        and not definition.task(plan.target).limits  # type: ignore[arg-type]
    )


def _events(
    eid: uuid.UUID, step: TaskRun, now: datetime, events: list[tuple[str, str]]
) -> list[ExecutionEvent]:
    return [
        ExecutionEvent(
            execution_id=eid, task_run_id=step.pk, created_at=now, level=lvl, message=msg
        )
        for lvl, msg in events
    ]


def _wait(finished: Finished, now: datetime, decided: _Decided, pause_requested: bool) -> None:
    """The step goes back to PENDING to wait in the database, its worker let go: until its
    time (a sleep, a signal's timeout), or until something makes it due (FOREVER: a signal,
    its children). The reaper and the due-step timer leave it alone until then."""
    outcome, step, eid = finished.outcome, finished.step, finished.execution.id
    until = outcome.wait_until
    # Open until the wait ends: its duration is then the whole wait (routing.took).
    closes = decided.closes
    closes[step.pk] = transitions.waits(until, outcome.waiting, route=finished.plan.why[:300])
    if outcome.parameters is not None:
        closes[step.pk]["parameters"] = outcome.parameters
    if pause_requested:
        decided.paused.append(eid)
    elif until is not None:
        decided.wakes.append((eid, until))
    logger.info("execution=%s step=%s %s", eid, step.seq, finished.plan.why)


def write_alone(
    finished: Finished, me: str, lease: timedelta, *, continue_here: bool
) -> TaskRun | None:
    """Write one decided step in a transaction of its own: the next step when this worker
    claimed it, else None (also when the step was taken over: nothing is written then)."""
    try:
        with writes.atomic():
            return write([finished], me, lease, continue_here=continue_here)[0]
    except TakenOver:
        return None
