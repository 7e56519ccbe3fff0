"""Redrive: where a FAILED or CANCELLED execution resumes, and a control step's earlier
attempt taken over so that only what did not succeed runs again.

``plan_redrive`` decides the step a redrive opens (the service's, for a top execution, and
``take_over``'s, for each child run again). When that step is a ``parallel``, ``map`` or
``subflow`` step whose earlier attempt started children, the new step carries
``waiting = {"kind": "resume", "children_of": <earlier step>}`` and, when it runs:

1. ``resume`` (no write): its earlier attempt's children must all have ended; the step then
   waits for its children, like a first run (``fanout.begin``) but planning a ``TakeOver``.
2. ``take_over``, in the transaction that records the step as waiting (``record.write``):
   every child of the earlier attempt moves to the new step (``parent_step``), so the new
   step counts, lists and joins them; the COMPLETED ones are kept as they are (counted as
   started and done from the start); each FAILED or CANCELLED one (or one that never
   started) is redriven in place by the same rule, from the step that stopped it: a child
   whose own last step is a control step takes over *its* children when it runs, and so on
   down. As many as ``max_concurrency`` start now; the others wait CREATED with their step
   written but not due, and ``fanin`` makes them due in item order as slots free up
   (``FanOut.next_item``).

Locks: the earlier attempt's children have all ended (``execution_redrive`` refuses while
any execution of the tree is still ending, and ``resume`` checks again), so no worker, cancel
or reaper touches them or the earlier FanOut row meanwhile; the moved children are only
seen under the new step once this commits. The record transaction takes the FanOut rows it
needs first, as for any step (``fanin.lock_fanouts``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import OuterRef, Subquery

from flows.definition import CONTROL_TYPES, MAP, FlowDefinition, TaskSpec
from flows.engine import fanin, fanout, transitions
from flows.engine.inputs import flow_definition, results_scope, results_so_far
from flows.engine.outcome import StepOutcome, failure
from flows.engine.wakeup import wake_ready
from flows.expressions import ExpressionError
from flows.models import (
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    FanOut,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import writes
from flows.waiting import CHILDREN, RESUME, Waiting

logger = logging.getLogger("flows.engine")

CHUNK = fanout.CREATE_CHUNK


class CannotRedrive(Exception):
    """The execution has no step a redrive could run (the message says why)."""


class NothingLeft(CannotRedrive):
    """Its last step succeeded and the flow would have ended there (it was cancelled just as
    that task ended): there is nothing left to run."""

    def __init__(self, last: TaskRun) -> None:
        super().__init__("has no step left to run")
        self.last = last


@dataclass
class Redrive:
    """The step a redrive opens: a task, its attempt and place, and for a control step the
    earlier step whose children it takes over (None: it starts its children afresh)."""

    task_name: str
    attempt: int
    seq: int
    takes_over: int | None = None

    def step(
        self, execution_id: uuid.UUID, spec: TaskSpec, now: datetime, *, due: bool = True
    ) -> TaskRun:
        """The step's row, unsaved: due now, or (``due`` False) not before a slot is freed
        for it (``fanin`` makes it due)."""
        return transitions.new_step(
            execution_id,
            spec,
            now,
            seq=self.seq,
            attempt=self.attempt,
            waiting=Waiting(kind=RESUME, children_of=self.takes_over).to_json()
            if self.takes_over is not None
            else None,
            **({} if due else {"woken_at": transitions.FOREVER, "not_before": transitions.FOREVER}),
        )


def plan_redrive(
    execution: Execution,
    definition: FlowDefinition,
    last: TaskRun | None,
    *,
    results: Callable[[], dict[str, Any]],
    fanned_out: bool | None = None,
) -> Redrive:
    """Where a redrive of ``execution`` (whose latest step is ``last``) resumes.

    ``results``: its successful results so far, asked for only when it ended after a success
    (the step limit): it goes where it would have gone next, deciding the condition as the
    engine would have. ``fanned_out``: whether ``last`` has a FanOut (looked up when None).
    Raises CannotRedrive when there is nothing to run.
    """
    if last is None:
        return Redrive(definition.start_task, 1, 1)
    if last.status == TaskRunStatus.SUCCESS:
        try:
            task_name, _ = definition.route(
                last.task_name,
                "success",
                result=last.result,
                results=results_scope(results()),
                input=execution.input,
                budget_seconds=settings.FLOW_EXPRESSION_BUDGET_SECONDS,
            )
        except ExpressionError as exc:
            raise CannotRedrive(f"cannot be redriven: {exc}") from None
        if task_name is None:
            raise NothingLeft(last)
        return Redrive(task_name, 1, last.seq + 1)
    earlier = _earlier_attempt(last, fanned_out)
    if last.status == TaskRunStatus.CANCELLED and last.started_at is None:
        # Cancelled before it ever ran: that was no attempt.
        return Redrive(last.task_name, last.attempt, last.seq + 1, earlier)
    return Redrive(last.task_name, last.attempt + 1, last.seq + 1, earlier)


def _earlier_attempt(last: TaskRun, fanned_out: bool | None) -> int | None:
    """The control step whose children a redrive of ``last`` takes over: ``last`` when it
    started children; the one ``last`` was to take over when it never got to."""
    if last.task_type not in CONTROL_TYPES:
        return None
    if fanned_out is None:
        fanned_out = FanOut.objects.filter(pk=last.pk).exists()
    if fanned_out:
        return last.pk
    state = Waiting.from_json(last.waiting)
    if state is not None and state.kind == RESUME and isinstance(state.children_of, int):
        return state.children_of
    return None


# -- 1. The redriven control step runs: take over, or start afresh ------------------------------
@dataclass
class TakeOver:
    """The children of ``earlier`` (a FanOut of the same execution), to be taken over."""

    earlier: FanOut


def resume(
    execution: Execution,
    definition: FlowDefinition,
    step: TaskRun,
    spec: TaskSpec,
    results: dict[str, Any],
) -> StepOutcome:
    """A redriven control step's first run: wait for the children it takes over (written
    by ``take_over`` when recorded); start afresh when there is nothing to take over."""
    earlier = (
        FanOut.objects.select_related("step")
        .filter(pk=_children_of(step), step__execution_id=execution.id)
        .first()
    )
    if earlier is None:  # its earlier attempt is gone (cannot happen): as a first run
        return fanout.begin(execution, definition, step, spec, results)
    ending = Execution.objects.filter(
        parent_step_id=earlier.pk, status__in=fanin.CANCELLABLE
    ).count()
    if ending:
        # The redrive refused this; kept honest anyway: a child still running cannot move.
        return failure(
            f"{ending} children of step {earlier.step.seq} have not ended yet; redrive again "
            "once they have",
            permanent=True,
        )
    state = Waiting(kind=CHILDREN, children_for=earlier.kind, took_over=earlier.pk)
    outcome = fanout.waiting_outcome(None, state.to_json())
    outcome.fanout = TakeOver(earlier)
    return outcome


def _children_of(step: TaskRun) -> int | None:
    state = Waiting.from_json(step.waiting)
    return state.children_of if state is not None else None


# -- 2. Take over, in the transaction that records the step as waiting -------------------------
def take_over(plan: TakeOver, parent: Execution, step: TaskRun, now: datetime) -> None:
    """Move the earlier attempt's children to ``step``, keep the COMPLETED ones, redrive the
    others in place (as many as ``max_concurrency`` at once), and write ``step``'s FanOut.

    In chunks, in item order, so a map of many items never holds all its children at once.
    """
    earlier = plan.earlier
    limit = earlier.max_concurrency if earlier.kind == MAP else None
    children = Execution.objects.filter(parent_step_id=earlier.pk)
    kept = children.filter(status=ExecutionStatus.COMPLETED).count()
    # From now on they are this step's: counted, listed and joined under it.
    children.update(parent_step_id=step.pk)
    again = (
        Execution.objects.filter(parent_step_id=step.pk)
        .exclude(status=ExecutionStatus.COMPLETED)
        .order_by("item_index")
        .only("id", "item_index", "scope", "flow_version_id", "input", "item", "status")
    )
    bodies = _Bodies()
    started, stuck, waiting_from, after = 0, 0, None, -1
    done: list[uuid.UUID] = []  # ended just as their last task succeeded: nothing to run
    to_wake: list[uuid.UUID] = []
    while True:
        chunk = list(again.filter(item_index__gt=after)[:CHUNK])
        if not chunk:
            break
        after = chunk[-1].item_index
        lasts = last_steps([c.id for c in chunk])
        fanned = set(
            FanOut.objects.filter(
                pk__in=[s.pk for s in lasts.values() if s.task_type in CONTROL_TYPES]
            ).values_list("pk", flat=True)
        )
        steps: list[TaskRun] = []
        events: list[ExecutionEvent] = []
        groups: dict[tuple[bool, str], list[uuid.UUID]] = {}
        for child in chunk:
            body = bodies.of(child)
            last = lasts.get(child.id)
            try:
                redrive = plan_redrive(
                    child,
                    body,
                    last,
                    results=lambda c=child: results_so_far([c.id]).get(c.id, {}),
                    fanned_out=last is not None and last.pk in fanned,
                )
            except NothingLeft as nothing:
                # Cancelled as its last task succeeded: that task's result is its output.
                transitions.complete(child.id, nothing.last.result, now)
                done.append(child.id)
                events.append(
                    ExecutionEvent(
                        execution_id=child.id,
                        created_at=now,
                        level="INFO",
                        message=f"redriven with its parent: nothing left to run after "
                        f"{nothing.last.task_name}, which had succeeded -> execution COMPLETED",
                    )
                )
                continue
            except CannotRedrive:
                stuck += 1  # it stays as it ended, a failure of this attempt too
                continue
            now_too = limit is None or started < limit
            spec = body.task(redrive.task_name)
            steps.append(redrive.step(child.id, spec, now, due=now_too))
            groups.setdefault((now_too, spec.name), []).append(child.id)
            events.append(
                ExecutionEvent(
                    execution_id=child.id,
                    created_at=now,
                    level="INFO",
                    message=f"redriven with its parent from {spec.name} (attempt "
                    f"{redrive.attempt})",
                )
            )
            if now_too:
                started += 1
                to_wake.append(child.id)
            elif waiting_from is None:
                waiting_from = child.item_index
        for (now_too, task_name), ids in groups.items():
            transitions.redrive_reset(
                ids,
                task_name=task_name,
                deadline_at=parent.deadline_at,
                now=now,
                due=now_too,
                child=True,
            )
        writes.insert_rows(TaskRun, steps, after_commit=True)
        writes.insert_rows(ExecutionEvent, events, after_commit=True)
    fan = FanOut(
        step_id=step.pk,
        kind=earlier.kind,
        total=earlier.total,
        started=kept + len(done) + stuck + started,
        done=kept + len(done) + stuck,
        failed=stuck,
        max_concurrency=earlier.max_concurrency,
        fail_fast=earlier.fail_fast,
        tolerated=earlier.tolerated,
        tolerated_percent=earlier.tolerated_percent,
        next_item=earlier.total if waiting_from is None else waiting_from,
    )
    writes.insert_rows(FanOut, [fan])
    wake_ready(to_wake)
    waiting = fan.total - fan.started
    message = (
        f"{step.task_name}: {kept} of {fan.total} children kept from step {earlier.step.seq}, "
        f"{fan.total - fan.done} run again"
        + (f" ({waiting} waiting for a slot)" if waiting else "")
        + (f"; {len(done)} completed with nothing left to run" if done else "")
        + (f"; {stuck} cannot run again" if stuck else "")
    )
    writes.insert_rows(
        ExecutionEvent,
        [ExecutionEvent(execution_id=parent.id, task_run_id=step.pk, created_at=now,
                        level="INFO", message=message)],
        after_commit=True,
    )  # fmt: skip
    logger.info("execution=%s step=%s %s", parent.id, step.seq, message)
    if fanin.decided_by(fan)[0]:
        # Nothing runs again (every child had completed): the step joins at once.
        transitions.make_due(step.pk, now, parent.id)


def last_steps(execution_ids: list[uuid.UUID]) -> dict[uuid.UUID, TaskRun]:
    """The latest step of each of these executions (none for one that never started)."""
    latest = TaskRun.objects.filter(execution_id=OuterRef("execution_id")).order_by("-seq")
    rows = TaskRun.objects.filter(
        execution_id__in=execution_ids, seq=Subquery(latest.values("seq")[:1])
    ).defer("traceback")
    return {row.execution_id: row for row in rows}


class _Bodies:
    """The parsed flow each child runs (its version at its scope), parsed once per shape."""

    def __init__(self) -> None:
        self.versions: dict[int, FlowVersion] = {}
        self.parsed: dict[tuple[int, tuple[str, ...]], FlowDefinition] = {}

    def of(self, child: Execution) -> FlowDefinition:
        key = (child.flow_version_id, tuple(child.scope or []))
        if key not in self.parsed:
            version = self.versions.get(child.flow_version_id)
            if version is None:
                version = FlowVersion.objects.get(pk=child.flow_version_id)
                self.versions[child.flow_version_id] = version
            child.flow_version = version
            self.parsed[key] = flow_definition(child, fanout.registry(), refresh=False)
        return self.parsed[key]
