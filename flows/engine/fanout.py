"""Parallel branches, map items and sub-flows: child executions of one waiting step.

A control step (``parallel``, ``map``, ``subflow``) runs no task code. Its children are
ordinary executions, so each keeps every guarantee a flow has (one open step, claim, lease,
reaper, cancel, pause, retries); the parent step only counts them:

1. Fan out (``begin``, then ``create`` in the transaction that records the step): when the
   step first runs it resolves its input (a map: its items), and creates a ``FanOut`` row and
   its children (every branch; every map item, those past ``max_concurrency`` left CREATED;
   or the one sub-flow), each with ``parent_step`` set. The parent step stays open (PENDING)
   until ``FOREVER``: it holds no worker, and no reaper or timer wakes it.
2. Fan in (``fanin.children_ended``, in the transaction that ends a child): one UPDATE
   adds the child to its FanOut's counts; a map starts its next item there. When the last
   child has ended, or a failure decides the step (fail fast, more failures than
   tolerated), the parent step is made due and its execution woken.
3. Join (``fanin.join``, when the parent step runs again): it reads its children's results in
   item order (streamed, never all rows at once), cancels those still running when it ended
   early, and ends like any task: success with the results, or failure.

A redriven control step does not fan out: it takes over its earlier attempt's children and
runs again only those that did not complete (``redrive``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flows.definition import (
    MAP,
    MAX_MAP_ITEMS,
    PARALLEL,
    SUBFLOW,
    FlowDefinition,
    TaskSpec,
    check_input,
)
from flows.engine import transitions
from flows.engine.inputs import parsed, reference_scope
from flows.engine.outcome import StepOutcome, failure, waiting
from flows.engine.wakeup import wake_ready
from flows.expressions import ResolveError, needs_resolving, refers_to_item, resolve
from flows.models import (
    Execution,
    ExecutionStatus,
    ExecutionTrigger,
    FanOut,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import writes
from flows.waiting import CHILDREN, Waiting

# "Until its children are done": a time no clock reaches, so nothing wakes the step early.
FOREVER = transitions.FOREVER

logger = logging.getLogger("flows.engine")

# Executions nest (a sub-flow's map's branch ...) at most this deep at run time, whatever the
# stored flows became since they were validated.
MAX_DEPTH = 10
CREATE_CHUNK = 1000


@dataclass
class ChildrenPlan:
    """The children a control step is about to start, decided before any write."""

    kind: str
    version: FlowVersion  # the version the children run (the parent's, or a sub-flow's)
    spec: TaskSpec  # the control task: its branches or iterator are what children run
    scope: list[str]  # the control task's place in ``version``'s document
    input: dict[str, Any]
    items: list[Any] = field(default_factory=list)  # map: one child per item
    # map whose parameters use ${item}/${item_index}: each item's own input, in item order
    # (else every child gets ``input``)
    inputs: list[dict[str, Any]] | None = None
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


def waiting_outcome(plan: ChildrenPlan | None, state: dict[str, Any]) -> StepOutcome:
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
    # A map's parameters that use its item are resolved per item, below (ItemSelector).
    per_item = spec.task_type == MAP and refers_to_item(spec.parameters)
    try:
        params = (
            resolve(spec.parameters, scope)
            if needs_resolving(spec.parameters) and not per_item
            else dict(spec.parameters)
        )
    except ResolveError as exc:
        return failure(f"parameters: {exc}", permanent=True)
    if len(_ancestry(execution)) >= MAX_DEPTH:
        return failure(f"child executions nest at most {MAX_DEPTH} deep", permanent=True)
    # A child's ${input}: a sub-flow's `input`; else the control task's parameters, when it
    # has any (a map's resolved for each item when they use ${item} or ${item_index}).
    # Without, a branch gets the parent's input, and a map item none (each item would
    # otherwise carry a copy of an input that often holds all the items).
    if spec.task_type == SUBFLOW:
        child_input = params.get("input") or {}
    elif params:
        child_input = params
    else:
        child_input = execution.input or {} if spec.task_type == PARALLEL else {}
    base = [*execution.scope, spec.name]
    if spec.task_type == PARALLEL:
        plan = ChildrenPlan(
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
        inputs = None
        if per_item:
            inputs = []
            for index, value in enumerate(items):
                try:
                    inputs.append(
                        resolve(spec.parameters, {**scope, "item": value, "item_index": index})
                    )
                except ResolveError as exc:
                    return failure(f"parameters of item {index}: {exc}", permanent=True)
        tolerance = spec.tolerated_failures
        plan = ChildrenPlan(
            MAP,
            execution.flow_version,
            spec,
            base,
            child_input,
            items=items,
            inputs=inputs,
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
        # The called flow's input_schema, checked as every start path checks it
        # (services.execution_start): a bad input fails this step, no child is made.
        called = parsed(found.definition, registry(), refresh=False)
        child_input, problems = check_input(called.input_schema, child_input)
        if problems:
            listed = "; ".join(f"{e.field or '(input)'}: {e.message}" for e in problems)
            return failure(
                f"sub-flow {found.flow_id} v{found.version}: the input does not match its "
                f"input_schema: {listed}",
                permanent=True,
            )
        plan = ChildrenPlan(SUBFLOW, found, spec, [], child_input)
    return waiting_outcome(plan, Waiting(kind=CHILDREN, children_for=plan.kind).to_json())


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


def create(plan: ChildrenPlan, parent: Execution, step: TaskRun, now: datetime) -> None:
    """Write the FanOut and the children of ``plan``, inside the transaction that records
    ``step`` as waiting; wake the ones that start now."""
    if plan.kind == SUBFLOW:
        bodies = [([], parsed(plan.version.definition, registry(), refresh=False))]
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

    def child(index: int, started: bool | None = None) -> Execution:
        which = index if plan.kind == PARALLEL else 0
        return transitions.child_row(
            started=index < first if started is None else started,
            now=now,
            id=uuid.uuid4(),
            flow_id=plan.version.flow_id,
            flow_version_id=plan.version.pk,
            current_task=starts[which].name,
            input=plan.inputs[index] if plan.inputs is not None else plan.input,
            deadline_at=parent.deadline_at,
            trigger=ExecutionTrigger.PARENT,
            created_by_id=parent.created_by_id,
            created_at=now,
            parent_step_id=step.pk,
            root_id=root,
            scope=bodies[which][0],
            branch=plan.branches[index] if plan.kind == PARALLEL else "",
            item_index=index,
            # A branch inside a map item sees that item as ${item} too.
            item=plan.items[index]
            if plan.kind == MAP
            else (parent.item if plan.kind == PARALLEL else None),
        )

    # In chunks, so a map of many items never holds all its children's rows at once.
    woken = 0
    for offset in range(0, plan.total, CREATE_CHUNK):
        end = min(plan.total, offset + CREATE_CHUNK)
        if plan.kind == MAP and plan.inputs is None:
            # Copies of one template row, one per item (made by the server on PostgreSQL).
            template = child(0, started=False)  # as an item not started yet
            starting = writes.insert_copies(
                Execution,
                template,
                plan.items[offset:end],
                vary="item",
                index="item_index",
                base=offset,
                started=transitions.child_started(now),
                bound=first,
            )
        else:  # rows of their own: branches, and map items each with its own input
            chunk = [child(i) for i in range(offset, end)]
            writes.insert_rows(Execution, chunk)
            starting = [c.id for c in chunk if c.status == ExecutionStatus.QUEUED]
        steps = [
            transitions.new_step(eid, starts[n + offset if plan.kind == PARALLEL else 0], now)
            for n, eid in enumerate(starting)
        ]
        writes.insert_rows(TaskRun, steps, after_commit=True)
        woken += wake_ready(starting, sent=woken)
    logger.info(
        "execution=%s step=%s %s: %d children, %d started",
        parent.id, step.seq, plan.kind, plan.total, first,
    )  # fmt: skip


def registry() -> Any:
    """The task registry of this process (imported late: the registry scans plugins)."""
    from flows.registry import default_registry

    return default_registry()
