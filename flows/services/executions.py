"""Executions: create, start (the hot path), submit (idempotent), rerun, delete."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from flows import engine, selectors
from flows.definition import FlowDefinition, FlowValidationError, check_input, unwrap
from flows.expressions import ExpressionError
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionTrigger,
    FlowVersion,
    TaskRun,
)
from flows.registry import TaskRegistry, default_registry
from flows.services.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    ServiceError,
    check_storable,
)
from flows.services.flows import canonical_json, flow_store, recorded_user, validate_flow
from flows.sql import writes
from flows.waiting import LIMIT, Waiting

logger = logging.getLogger("flows.services")


def body_fingerprint(body: Any) -> str:
    """SHA-256 of a parsed request body's canonical JSON: what an Idempotency-Key is bound to."""
    if isinstance(body, Mapping) and not isinstance(body, dict):
        body = {key: body[key] for key in body}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def execution_create(
    *, flow_version: FlowVersion, user: Any = None, input: dict[str, Any] | None = None
) -> Execution:
    """A new execution of ``flow_version`` in CREATED state (started by execution_start)."""
    if input is not None and not isinstance(input, dict):
        raise ServiceError(
            "input must be a JSON object",
            errors=[{"field": "input", "message": "must be an object"}],
        )
    check_storable(input, "input")
    execution = Execution.objects.create(
        flow_id=flow_version.flow_id,
        flow_version=flow_version,
        input=input or {},
        created_by=recorded_user(user),
    )
    logger.info(
        "execution=%s created for flow=%s v%s",
        execution.id,
        flow_version.flow_id,
        flow_version.version,
    )
    return execution


@transaction.atomic
def flow_create_with_execution(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> tuple[FlowVersion, bool, Execution, FlowDefinition]:
    """The seed's ``POST /flow/create``: store the flow (``flow_store``: an identical document
    reuses the current version) and prepare one execution of it.

    Returns (version, stored, execution, definition).
    """
    version, stored = flow_store(document=document, user=user, registry=registry)
    execution = execution_create(flow_version=version, user=user)
    definition = validate_flow(version.definition, registry=registry)
    return version, stored, execution, definition


def checked_input(schema: Mapping[str, Any] | None, input: Any) -> dict[str, Any]:
    """``input`` checked against a flow's ``input_schema``, with the schema's defaults filled
    in; InvalidInput listing every error at its JSON Pointer. The one check of every start
    path (``execution_start``) and of the dry runs (``flow_input_check``)."""
    filled, errors = check_input(schema, input)
    if errors:
        listed = "; ".join(f"{e.field or '(input)'}: {e.message}" for e in errors)
        raise InvalidInput(
            f"the input does not match the flow's input_schema: {listed}",
            errors=[e.as_dict() for e in errors],
        )
    return filled


def flow_input_check(*, flow_version: FlowVersion, input: Any) -> dict[str, Any]:
    """What an execution of ``flow_version`` would start with for ``input`` (defaults filled),
    or InvalidInput; starts nothing (``POST /api/flows/{id}/validate-input/``, ``runflow``)."""
    check_storable(input, "input")
    document = unwrap(flow_version.definition)
    schema = document.get("input_schema") if isinstance(document, Mapping) else None
    return checked_input(schema, input)


@transaction.atomic
def execution_start(
    *,
    execution_id: Any,
    input: dict[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> Execution:
    """CREATED -> QUEUED: write the first step and wake a worker, in one transaction.

    ``input``, when given, replaces the execution's input object. Every way an execution
    starts comes here (the API, the seed's execute, rerun, schedules, the pages, ``runflow``;
    ``execution_submit`` for most), so this is where the input is checked against the flow's
    ``input_schema`` (``checked_input``), before anything is written: a bad input raises
    InvalidInput and the caller's transaction stores nothing. The schema's defaults are
    filled into the stored input. (Sub-flow children, which the engine starts, are checked
    by the engine against the same function: flows/engine/fanout.py.)
    """
    if input is not None and not isinstance(input, dict):
        raise ServiceError(
            "input must be a JSON object",
            errors=[{"field": "input", "message": "must be an object"}],
        )
    check_storable(input, "input")
    execution = selectors.execution_get(execution_id, with_flow=False)
    definition = runnable_definition(execution, registry, "start")
    if definition.input_schema is not None:
        input = checked_input(definition.input_schema, execution.input if input is None else input)
    now = timezone.now()
    changes: dict[str, Any] = {
        "queued_at": now,
        "current_task": definition.start_task,
        "deadline_at": flow_deadline(definition, now),
    }
    if input is not None:
        changes["input"] = input
    admitted = None
    if definition.max_concurrent_executions is not None and execution.parent_step_id is None:
        admitted = _admit(execution, definition, execution.input if input is None else input)
        changes["concurrency_key"] = admitted.key
        changes["concurrency_held"] = admitted.verdict == "start"
    # Starting is every client's hot path: two hand-written statements (flows/sql/writes.py).
    moved, changes = engine.transitions.start(execution.id, changes)
    if moved != 1:
        current = Execution.objects.filter(pk=execution.id).values_list("status", flat=True).first()
        raise Conflict(
            f"execution {execution.id} is {current}; only a CREATED execution can be executed"
        )
    start = definition.task(definition.start_task)
    if admitted is not None and admitted.verdict == "skip":
        engine.transitions.cancel_now([execution.id], now, error=admitted.why)
        logger.info("execution=%s %s", execution.id, admitted.why)
        execution.refresh_from_db()
        return execution
    if admitted is not None and admitted.verdict == "queue":
        # Its first step waits in the database for the flow's turn (admission.ended).
        waiting = Waiting(
            kind=LIMIT,
            limit=engine.admission.FLOW,
            key=admitted.key or None,
            place=admitted.place,
        )
        first = engine.transitions.new_step(
            execution.id, start, now, due=engine.FOREVER, waiting=waiting.to_json()
        )
        writes.insert_rows(TaskRun, [first])
        logger.info(
            "execution=%s queued for its flow's turn, place %s", execution.id, admitted.place
        )
    else:
        writes.insert_rows(TaskRun, [engine.transitions.new_step(execution.id, start, now)])
        engine.wake(execution.id)
        logger.info("execution=%s queued, first task %s", execution.id, start.name)
    # The row is what the UPDATE above wrote (a CREATED execution has nothing else in flight),
    # so no second read: starting is on the hot path of every client.
    for name, value in changes.items():
        setattr(execution, name, value)
    return execution


def _admit(
    execution: Execution, definition: FlowDefinition, input: Any
) -> engine.admission.Admission:
    """The flow's max_concurrent_executions for this start (``engine.admission``): its key,
    and whether it starts, queues or is skipped. With ``cancel_oldest`` and every place
    taken, the oldest execution of the key is asked to stop first (in its own locks, before
    the key's: an end takes them in that order); this one queues at the front until it ends,
    or starts now when it had no step running."""
    try:
        key = engine.admission.key_of(definition, input)
    except ExpressionError as exc:
        raise InvalidInput(
            f"concurrency_key could not be computed from the input: {exc}",
            errors=[{"field": "concurrency_key", "message": str(exc)}],
        ) from None
    limit = definition.max_concurrent_executions
    if definition.concurrency_policy == "cancel_oldest" and limit is not None:
        oldest = engine.admission.oldest(execution.flow_id, key, limit)
        if oldest is not None:
            # Late: controls imports this module.
            from flows.services.controls import execution_cancel

            with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile: a place is free
                execution_cancel(execution_id=oldest)
            ExecutionEvent.objects.create(
                execution_id=oldest,
                created_at=timezone.now(),
                level="WARNING",
                message=f"cancelled: execution {execution.id} started "
                "(concurrency_policy cancel_oldest)",
            )
    return engine.admission.admit(execution.flow_id, definition, key)


def execution_submit(
    *,
    flow_version: FlowVersion,
    user: Any = None,
    input: dict[str, Any] | None = None,
    idempotency_key: str = "",
    request_fingerprint: str = "",
    trigger: str = ExecutionTrigger.MANUAL,
    rerun_of: Execution | None = None,
) -> tuple[Execution, bool]:
    """Create and start an execution in one go. Returns (execution, created).

    With an ``idempotency_key``, a repeated submit by the same user for the same flow returns
    the execution the first one made (created=False) instead of starting another. The key is
    stored with ``request_fingerprint`` (``body_fingerprint`` of the request); a repeat whose
    fingerprint differs is refused with IdempotencyConflict rather than answered with an
    execution of another request. (Without a fingerprint on either side, from a caller that
    passes none or an execution keyed before fingerprints were kept, any repeat matches.)
    """
    key = (idempotency_key or "").strip()
    if len(key) > 200:
        raise ServiceError(
            "Idempotency-Key is longer than 200 characters",
            errors=[{"field": "Idempotency-Key", "message": "at most 200 characters"}],
        )
    check_storable(key, "Idempotency-Key")
    check_storable(input, "input")
    owner = recorded_user(user)
    if key:
        existing = Execution.objects.filter(
            flow_id=flow_version.flow_id, created_by=owner, idempotency_key=key
        ).first()
        if existing is not None:
            return _repeated(existing, key, request_fingerprint), False
    try:
        with transaction.atomic():
            execution = execution_create(flow_version=flow_version, user=user, input=input)
            Execution.objects.filter(pk=execution.id).update(
                idempotency_key=key,
                idempotency_fingerprint=request_fingerprint if key else "",
                trigger=trigger,
                rerun_of=rerun_of,
            )
            execution = execution_start(execution_id=execution.id)
    except IntegrityError:
        # A concurrent submit with the same key won the race: answer with its execution.
        if not key:
            raise
        existing = Execution.objects.filter(
            flow_id=flow_version.flow_id, created_by=owner, idempotency_key=key
        ).first()
        if existing is None:
            raise
        return _repeated(existing, key, request_fingerprint), False
    return execution, True


def _repeated(existing: Execution, key: str, fingerprint: str) -> Execution:
    """The execution a repeated Idempotency-Key answers with, if the request is the same."""
    known = existing.idempotency_fingerprint
    if known and fingerprint and fingerprint != known:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used with a different request body; "
            "send a new key for a new request (or repeat the first body exactly to get "
            "the execution it started)",
            errors=[{"field": "Idempotency-Key", "message": "already used with another body"}],
        )
    return existing


def execution_rerun(*, execution_id: Any, user: Any = None) -> Execution:
    """Start a new execution of the same flow version with the same input."""
    original = selectors.execution_get(execution_id)
    execution, _ = execution_submit(
        flow_version=original.flow_version,
        user=user,
        input=original.input,
        trigger=ExecutionTrigger.RERUN,
        rerun_of=original,
    )
    return execution


@transaction.atomic
def execution_delete(*, execution_id: Any) -> None:
    """Delete an execution and its history; a running one is cancelled first.

    The worker holding its step notices within a second that the execution is gone and
    stops quietly; it never recreates the rows.
    """
    execution = selectors.execution_get(execution_id)
    locked = Execution.objects.select_for_update().filter(pk=execution.id).first()
    if locked is None:
        raise NotFound(f"no execution with id '{execution.id}'")
    not_a_child(locked, "delete")
    if locked.status in ACTIVE_STATUSES:
        Execution.objects.filter(pk=locked.id).update(cancel_requested=True)
        logger.info("execution=%s cancelled for deletion", locked.id)
    locked.delete()
    logger.info("execution=%s deleted", execution.id)


def not_a_child(execution: Execution, action: str) -> None:
    """A child execution is its parent's: redriven or deleted with it, not alone (its parent
    step counts it once, when it ends)."""
    if execution.parent_step_id is not None:
        parent = (
            TaskRun.objects.filter(pk=execution.parent_step_id)
            .values_list("execution_id", flat=True)
            .first()
        )
        raise Conflict(
            f"execution {execution.id} is a child of execution {parent}; {action} the parent"
        )


def runnable_definition(
    execution: Execution, registry: TaskRegistry | None, doing: str
) -> FlowDefinition:
    """The execution's pinned flow, checked against today's plugins (Conflict if invalid)."""
    try:
        # Parsed once per process per document, as the workers do: starts are hot.
        return engine.flow_definition(execution, registry or default_registry())
    except FlowValidationError as exc:
        raise Conflict(
            f"execution {execution.id} cannot {doing}: its flow is no longer valid: {exc}",
            errors=exc.as_list(),
        ) from None


def flow_deadline(definition: FlowDefinition, now: Any) -> Any:
    """When an execution started at ``now`` times out under the flow's timeout (None: never)."""
    if definition.timeout_seconds is None:
        return None
    return now + timedelta(seconds=definition.timeout_seconds)


def execution_run_inline(*, execution_id: Any, signal_timeouts: bool = True) -> Execution:
    """Run a started execution (and its children) to its end in this process, waiting out
    its delays here: ``manage.py runflow``, through the engine a worker uses.

    ``signal_timeouts=False``: a step waiting for a signal ends the run there (nothing can
    signal this process while it sleeps) instead of being waited out until its timeout.
    """
    return engine.run_inline(execution_id, signal_timeouts=signal_timeouts)


def executions_reap() -> dict[str, int]:
    """One pass of the reaper (``manage.py reap``; a django-q2 schedule runs it every
    minute): lost steps run again, executions past their timeout end, forgotten steps woken.
    Returns how many of each (``lost``, ``timed_out``, ``woken``)."""
    return engine.reap()
