"""Parallel branches, map items and sub-flows: child executions of one waiting step.

A control step (``parallel``, ``map``, ``subflow``) runs no task code. Its children are
ordinary executions, so each keeps every guarantee a flow has (one open step, claim, lease,
reaper, cancel, pause, retries); the parent step only counts them:

1. Fan out (``begin``, then ``create`` in the transaction that records the step): when the
   step first runs it resolves its input (a map: its items), and creates a ``FanOut`` row and
   its children (every branch; every map item, those past ``max_concurrency`` left CREATED;
   or the one sub-flow), each with ``parent_step`` set. The parent step stays open (PENDING)
   until ``FOREVER``: it holds no worker, and no reaper or timer wakes it.
2. Fan in (``child_ended``, in the transaction that ends a child): one UPDATE adds the child
   to its FanOut's counts; a map starts its next item there. When the last child has ended,
   or a failure decides the step (fail fast, more failures than tolerated), the parent step
   is made due and its execution woken.
3. Join (``join``, when the parent step runs again): it reads its children's results in
   item order (streamed, never all rows at once), cancels those still running when it ended
   early, and ends like any task: success with the results, or failure.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import F
from django_q.conf import Conf

from flows.definition import MAP, PARALLEL, SUBFLOW, FlowDefinition, TaskSpec, parse_flow
from flows.engine.inputs import reference_scope
from flows.engine.outcome import StepOutcome, failure, waiting
from flows.engine.wakeup import wake
from flows.expressions import ResolveError, needs_resolving, resolve
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionStatus,
    ExecutionTrigger,
    FanOut,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import writes

logger = logging.getLogger("flows.engine")

# "Until its children are done": a time no clock reaches, so nothing wakes the step early.
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
MAX_MAP_ITEMS = 100_000
# Executions nest (a sub-flow's map's branch ...) at most this deep at run time, whatever the
# stored flows became since they were validated.
MAX_DEPTH = 10
WAITING_FOR_CHILDREN = "children"


@dataclass
class Plan:
    """The children a control step is about to start, decided before any write."""

    kind: str
    version: FlowVersion  # the version the children run (the parent's, or a sub-flow's)
    spec: TaskSpec  # the control task: its branches or iterator are what children run
    scope: list[str]  # the control task's place in ``version``'s document
    input: dict[str, Any]
    items: list[Any] = field(default_factory=list)  # map: one child per item
    branches: list[str] = field(default_factory=list)  # parallel: one child per branch
    max_concurrency: int | None = None
    fail_fast: bool = True
    tolerated: int = 0
    tolerated_percent: float | None = None

    @property
    def total(self) -> int:
        if self.kind == MAP:
            return len(self.items)
        return len(self.branches) if self.kind == PARALLEL else 1


def waiting_outcome(plan: Plan | None, state: dict[str, Any]) -> StepOutcome:
    """Wait for the children (started with ``plan``, or already)."""
    outcome = waiting(state, None)
    outcome.fanout = plan
    return outcome


# -- 1. Fan out ---------------------------------------------------------------------------------
def begin(
    execution: Execution,
    definition: FlowDefinition,
    step: TaskRun,
    spec: TaskSpec,
    results: dict[str, Any],
) -> StepOutcome:
    """The first run of a control step: its children, planned (created when it is recorded);
    or its outcome at once (a map of no items; an input that does not resolve)."""
    scope = reference_scope(execution, results)
    try:
        params = (
            resolve(spec.parameters, scope)
            if needs_resolving(spec.parameters)
            else dict(spec.parameters)
        )
    except ResolveError as exc:
        return failure(f"parameters: {exc}", permanent=True)
    if len(_ancestry(execution)) >= MAX_DEPTH:
        return failure(f"child executions nest at most {MAX_DEPTH} deep", permanent=True)
    # A child's ${input}: a sub-flow's `input`; else the control task's parameters, when it
    # has any. Without, a branch gets the parent's input, and a map item none (each item
    # would otherwise carry a copy of an input that often holds all the items).
    if spec.task_type == SUBFLOW:
        child_input = params.get("input") or {}
    elif params:
        child_input = params
    else:
        child_input = execution.input or {} if spec.task_type == PARALLEL else {}
    base = [*execution.scope, spec.name]
    if spec.task_type == PARALLEL:
        plan = Plan(
            PARALLEL,
            execution.flow_version,
            spec,
            base,
            child_input,
            branches=[name for name, _ in spec.branches],
            fail_fast=spec.fail_fast,
        )
    elif spec.task_type == MAP:
        try:
            items = resolve(spec.items, scope) if isinstance(spec.items, str) else spec.items
        except ResolveError as exc:
            return failure(f"items: {exc}", permanent=True)
        if not isinstance(items, list):
            return failure(f"items: {spec.items!r} is not a list", permanent=True)
        if len(items) > MAX_MAP_ITEMS:
            return failure(f"items: {len(items)} items, over the limit of {MAX_MAP_ITEMS}")
        if not items:
            empty = {"results": [], "count": 0, "failed": 0, "message": "no items to map"}
            return StepOutcome(TaskRunStatus.SUCCESS, result=empty)
        tolerance = spec.tolerated_failures
        plan = Plan(
            MAP,
            execution.flow_version,
            spec,
            base,
            child_input,
            items=items,
            max_concurrency=spec.max_concurrency,
            tolerated=tolerance.count or 0,
            tolerated_percent=tolerance.percent,
        )
    else:
        found = _subflow_version(params)
        if isinstance(found, str):
            return failure(found, permanent=True)
        if not isinstance(child_input, dict):
            return failure("parameters.input must be an object", permanent=True)
        plan = Plan(SUBFLOW, found, spec, [], child_input)
    return waiting_outcome(plan, {"kind": WAITING_FOR_CHILDREN, "for": plan.kind})


def _subflow_version(params: dict[str, Any]) -> FlowVersion | str:
    flow_id, number = params.get("flow_id"), params.get("version")
    versions = FlowVersion.objects.filter(flow_id=flow_id)
    version = (
        versions.filter(version=number).first() if number else versions.order_by("-version").first()
    )
    if version is None:
        which = f" version {number}" if number else ""
        return f"sub-flow: no flow '{flow_id}'{which} is stored"
    return version


def _ancestry(execution: Execution) -> list[uuid.UUID]:
    chain: list[uuid.UUID] = []
    step_id = execution.parent_step_id
    while step_id is not None and len(chain) < MAX_DEPTH:
        row = (
            TaskRun.objects.filter(pk=step_id)
            .values_list("execution_id", "execution__parent_step_id")
            .first()
        )
        if row is None:
            break
        chain.append(row[0])
        step_id = row[1]
    return chain


def create(plan: Plan, parent: Execution, step: TaskRun, now: datetime) -> None:
    """Write the FanOut and the children of ``plan``, inside the transaction that records
    ``step`` as waiting; wake the ones that start now."""
    if plan.kind == SUBFLOW:
        bodies = [([], parse_flow(plan.version.definition, _registry()))]
    elif plan.kind == PARALLEL:
        bodies = [([*plan.scope, name], body) for name, body in plan.spec.branches]
    else:
        bodies = [([*plan.scope, ""], plan.spec.body(""))]
    starts = [body.task(body.start_task) for _, body in bodies]
    first = min(plan.total, plan.max_concurrency) if plan.max_concurrency else plan.total
    writes.insert_rows(
        FanOut,
        [
            FanOut(
                step_id=step.pk,
                kind=plan.kind,
                total=plan.total,
                started=first,
                max_concurrency=plan.max_concurrency,
                fail_fast=plan.fail_fast,
                tolerated=plan.tolerated,
                tolerated_percent=plan.tolerated_percent,
            )
        ],
    )
    root = parent.root_id or parent.id
    children: list[Execution] = []
    for index in range(plan.total):
        started = index < first
        which = index if plan.kind == PARALLEL else 0
        scope, start = bodies[which][0], starts[which]
        children.append(
            Execution(
                id=uuid.uuid4(),
                flow_id=plan.version.flow_id,
                flow_version_id=plan.version.pk,
                status=ExecutionStatus.QUEUED if started else ExecutionStatus.CREATED,
                current_task=start.name,
                input=plan.input,
                deadline_at=parent.deadline_at,
                trigger=ExecutionTrigger.PARENT,
                created_by_id=parent.created_by_id,
                created_at=now,
                queued_at=now if started else None,
                parent_step_id=step.pk,
                root_id=root,
                scope=scope,
                branch=plan.branches[index] if plan.kind == PARALLEL else "",
                item_index=index,
                # A branch inside a map item sees that item as ${item} too.
                item=plan.items[index]
                if plan.kind == MAP
                else (parent.item if plan.kind == PARALLEL else None),
            )
        )
    writes.insert_rows(Execution, children)
    first_steps = [
        _first_step(child.id, starts[i if plan.kind == PARALLEL else 0], now)
        for i, child in enumerate(children[:first])
    ]
    writes.insert_rows(TaskRun, first_steps, after_commit=True)
    # One message per worker process is enough: each dispatcher that gets one claims every
    # ready step it has room for.
    for child in children[: min(first, max(1, Conf.WORKERS))]:
        wake(child.id)
    logger.info(
        "execution=%s step=%s %s: %d children, %d started",
        parent.id, step.seq, plan.kind, plan.total, first,
    )  # fmt: skip


def _first_step(execution_id: uuid.UUID, start: TaskSpec, now: datetime) -> TaskRun:
    return TaskRun(
        execution_id=execution_id,
        seq=1,
        task_name=start.name,
        task_type=start.task_type,
        parameters=start.parameters,
        created_at=now,
        woken_at=now,
    )


def _registry() -> Any:
    from flows.registry import default_registry

    return default_registry()


# -- 2. Fan in ----------------------------------------------------------------------------------
def _decided(fan: FanOut | tuple[Any, ...]) -> tuple[bool, bool]:
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
        # Concurrent endings queue on the FanOut's row lock, so none is lost.
        FanOut.objects.filter(pk=step_id).update(
            done=F("done") + len(group), failed=F("failed") + failed
        )
        fan = FanOut.objects.filter(pk=step_id).first()
        if fan is None:  # the parent went away
            continue
        decided, _ = _decided(fan)
        if decided:
            parent = (
                TaskRun.objects.filter(pk=step_id, status=TaskRunStatus.PENDING)
                .values_list("execution_id", flat=True)
                .first()
            )
            if parent is not None:
                # Due now, like a step just created: not a delayed one for the due-step timer.
                TaskRun.objects.filter(pk=step_id, status=TaskRunStatus.PENDING).update(
                    not_before=None, woken_at=now
                )
                wake(parent)
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
    first = fan.started
    last = min(fan.total, first + count)
    moved = FanOut.objects.filter(pk=fan.pk, started=first).update(started=last)
    if not moved:  # another transaction moved it first (it holds the row lock): it starts them
        return []
    ids = list(
        Execution.objects.filter(
            parent_step_id=fan.pk,
            item_index__gte=first,
            item_index__lt=last,
            status=ExecutionStatus.CREATED,
        ).values_list("id", flat=True)
    )
    if not ids:  # cancelled before they could start
        return []
    body = definition if definition is not None else _body_of(child)
    start = body.task(body.start_task)
    steps = [_first_step(eid, start, now) for eid in ids]
    if adopt is None:
        Execution.objects.filter(pk__in=ids, status=ExecutionStatus.CREATED).update(
            status=ExecutionStatus.QUEUED, queued_at=now
        )
        writes.insert_rows(TaskRun, steps, after_commit=True)
        return ids
    Execution.objects.filter(pk__in=ids, status=ExecutionStatus.CREATED).update(
        status=ExecutionStatus.RUNNING, queued_at=now, started_at=now
    )
    for step in steps:
        step.status, step.worker, step.started_at = TaskRunStatus.RUNNING, adopt.me, now
        step.lease_expires_at, step.woken_at = now + adopt.lease, None
    # The dispatcher launches them once this commits; their keys come back with the COMMIT.
    writes.insert_rows(TaskRun, steps, after_commit=True)
    adopt.steps += steps
    return []


def _body_of(child: Execution) -> FlowDefinition:
    version = FlowVersion.objects.get(pk=child.flow_version_id)
    return parse_flow(version.definition, _registry()).scope(child.scope)


# -- 3. Join ------------------------------------------------------------------------------------
MAX_ERRORS_SHOWN = 20


def join(execution: Execution, step: TaskRun) -> StepOutcome:
    """The control step runs again: end it from its children, or wait on (woken early)."""
    fan = FanOut.objects.filter(pk=step.pk).first()
    if fan is None:
        return failure("its children are gone (the FanOut row is missing)", permanent=True)
    decided, fails = _decided(fan)
    if not decided:
        return waiting_outcome(None, step.waiting or {"kind": WAITING_FOR_CHILDREN})
    if fan.done < fan.total:
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
def cancel_children(step_ids: list[int], *, why: str) -> int:
    """Cancel every child (and their children) of these steps that has not ended: CREATED
    ones and those whose step waits end at once; a running step is stopped by its worker
    within a second (``cancel_requested``). Returns how many were asked."""
    now = datetime.now(UTC)
    asked = 0
    while step_ids:
        children = Execution.objects.filter(
            parent_step_id__in=step_ids,
            status__in=[*ACTIVE_STATUSES, ExecutionStatus.CREATED, ExecutionStatus.PAUSED],
        )
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
        TaskRun.objects.filter(execution_id__in=idle, status=TaskRunStatus.PENDING).update(
            status=TaskRunStatus.CANCELLED, ended_at=now, error="cancelled before it started"
        )
        Execution.objects.filter(pk__in=idle).update(
            status=ExecutionStatus.CANCELLED,
            cancel_requested=True,
            error=why,
            ended_at=now,
            current_task="",
        )
        Execution.objects.filter(pk__in=list(running)).update(cancel_requested=True)
    return asked
