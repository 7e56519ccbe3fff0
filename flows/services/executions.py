"""Executions: create, start (the hot path), submit (idempotent), rerun, delete."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from flows import engine, selectors
from flows.definition import (
    FlowDefinition,
    FlowValidationError,
    check_input,
    unstorable_problem,
    unwrap,
)
from flows.expressions import ExpressionError
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
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
    *,
    flow_version: FlowVersion,
    user: Any = None,
    input: dict[str, Any] | None = None,
    trigger: str = ExecutionTrigger.MANUAL,
    **recorded: Any,
) -> Execution:
    """A new execution of ``flow_version`` in CREATED state (started by execution_start).
    ``recorded``: what ``execution_submit`` records with it (its idempotency key, what
    triggered it, its schedule slot), written with the row, not by a second statement."""
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
        trigger=trigger,
        **recorded,
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
    created: Execution | None = None,
) -> Execution:
    """CREATED -> QUEUED: write the first step and wake a worker, in one transaction.

    ``created``: the execution's row as the caller's transaction just inserted it
    (``execution_submit``), so it is not read again; its start still moves it only if it is
    CREATED (the conditional UPDATE below).

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
    if created is not None and str(created.pk) == str(execution_id):
        execution = created
    else:
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
    triggered_by: Execution | None = None,
    scheduled_for: Any = None,
    slot_attempt: int = 0,
    backfill: Any = None,
    start: bool = True,
) -> tuple[Execution, bool]:
    """Create and start an execution in one go. Returns (execution, created).

    ``triggered_by`` (a flow trigger's upstream execution), ``scheduled_for`` (a cron slot,
    with ``slot_attempt``: which run of it) and ``backfill`` are recorded with it; the unique
    constraints on them (models.Execution) raise IntegrityError for a second run of one slot
    or one trigger. ``start=False`` leaves it CREATED (a backfill's run waiting for its turn;
    its input is checked already).

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
            execution = execution_create(
                flow_version=flow_version,
                user=user,
                input=input,
                trigger=trigger,
                idempotency_key=key,
                idempotency_fingerprint=request_fingerprint if key else "",
                rerun_of=rerun_of,
                triggered_by=triggered_by,
                scheduled_for=scheduled_for,
                slot_attempt=slot_attempt,
                backfill=backfill,
            )
            if start:
                execution = execution_start(execution_id=execution.id, created=execution)
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


@dataclass(frozen=True)
class BulkItem:
    """One execution a bulk start asks for: its input (None: ``{}``) and idempotency key, as
    the request gave them (checked by ``executions_start``), and ``where`` it is in the
    request (``items[3]``), which every error about it names."""

    where: str
    input: Any = None
    idempotency_key: Any = ""
    input_at: str = ""  # where the input is inside the item: ".input" in {"items": [...]}


# Errors listed in one refusal at most: a batch of 1,000 bad items is one line per item.
BULK_MAX_ERRORS = 100


def executions_start(
    *,
    flow_version: FlowVersion,
    items: Sequence[BulkItem],
    user: Any = None,
    body_extra: Mapping[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> list[tuple[Execution, bool]]:
    """Start up to ``FLOW_BULK_MAX`` executions of ``flow_version`` at once: every item checked
    before any row is written, all of them written in one transaction with their first
    steps and one queue message per worker process. Returns (execution, created) per item,
    in order.

    Each item is checked as ``execution_submit`` checks one start (the input an object of
    storable text that meets the flow's ``input_schema``, defaults filled in; a key of at
    most 200 printable characters). One bad item refuses the whole batch (InvalidInput, 400,
    every error at ``items[3].input/customer``-style paths), and nothing is stored. An item
    whose idempotency key this user already used for this flow answers the execution it
    started (created=False) when its body is the same: the body is the single start's
    (``{"input": ...}`` and ``body_extra``, the request's ``version``), so a bulk item and a
    single start with the same key and body answer the same execution. Another body under a
    used key is IdempotencyConflict (422) for the batch. Two items of one batch with the same
    key are a 400.
    """
    if not items:
        raise ServiceError(
            "send at least one item", errors=[{"field": "items", "message": "is empty"}]
        )
    if len(items) > settings.FLOW_BULK_MAX:
        raise ServiceError(
            f"at most {settings.FLOW_BULK_MAX} executions in one bulk start (FLOW_BULK_MAX); "
            f"this one has {len(items)}: split it",
            errors=[{"field": "items", "message": f"at most {settings.FLOW_BULK_MAX} items"}],
        )
    try:
        # An unsaved row only to look the version's parsed flow up, as a worker would.
        definition = engine.flow_definition(
            Execution(flow_version=flow_version), registry or default_registry()
        )
    except FlowValidationError as exc:
        raise Conflict(
            f"flow '{flow_version.flow_id}' version {flow_version.version} cannot start: "
            f"it is no longer valid: {exc}",
            errors=exc.as_list(),
        ) from None
    inputs, keys, fingerprints = _checked_items(items, definition, body_extra or {})
    owner = recorded_user(user)
    for attempt in (1, 2):
        try:
            return _start_batch(flow_version, definition, items, inputs, keys, fingerprints, owner)
        except IntegrityError:
            # A concurrent start took one of the keys between our look-up and our insert:
            # nothing of this batch was stored; look again and answer with its execution.
            if attempt == 2 or not any(keys):
                raise
    raise AssertionError("not reached")


def _checked_items(
    items: Sequence[BulkItem], definition: FlowDefinition, body_extra: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Every item's input (schema defaults filled in), key and body fingerprint, or
    InvalidInput listing the errors of all of them."""
    errors: list[dict[str, str]] = []
    inputs: list[dict[str, Any]] = []
    keys: list[str] = []
    fingerprints: list[str] = []
    first_with: dict[str, str] = {}
    for item in items:
        where_input = f"{item.where}{item.input_at}"
        value = {} if item.input is None else item.input
        filled: dict[str, Any] = {}
        storable = False
        if not isinstance(value, dict):
            errors.append({"field": where_input, "message": "must be a JSON object"})
        elif problem := unstorable_problem(value, where_input):
            errors.append({"field": where_input, "message": problem})
        else:
            storable = True
            filled, found = check_input(definition.input_schema, value)
            errors += [{"field": f"{where_input}{e.field}", "message": e.message} for e in found]
        key = _item_key(item, errors, first_with)
        inputs.append(filled)
        keys.append(key)
        # The body a single start of this item would send: what its key is bound to (a
        # fingerprint encodes the input as UTF-8, so only once it is known to be storable).
        body = {**({"input": item.input} if item.input is not None else {}), **body_extra}
        fingerprints.append(body_fingerprint(body) if key and storable else "")
        if len(errors) >= BULK_MAX_ERRORS:
            break
    if errors:
        shown = errors[:BULK_MAX_ERRORS]
        listed = "; ".join(f"{e['field']}: {e['message']}" for e in shown[:5])
        more = f" (and {len(shown) - 5} more listed)" if len(shown) > 5 else ""
        raise InvalidInput(
            f"nothing was started: {listed}{more}. Fix these items and send the batch again",
            errors=shown,
        )
    return inputs, keys, fingerprints


def _item_key(item: BulkItem, errors: list[dict[str, str]], first_with: dict[str, str]) -> str:
    """The item's idempotency key (stripped; "" for none), its problems added to ``errors``."""
    field = f"{item.where}.idempotency_key"
    key = item.idempotency_key
    if key is None:
        return ""
    if not isinstance(key, str):
        errors.append({"field": field, "message": "must be text"})
        return ""
    key = key.strip()
    if len(key) > 200:
        errors.append({"field": field, "message": "at most 200 characters"})
    elif not key.isprintable():
        errors.append({"field": field, "message": "must be printable text"})
    elif key in first_with:
        errors.append({"field": field, "message": f"the same key as {first_with[key]}"})
    elif key:
        first_with[key] = item.where
    return key


@transaction.atomic
def _start_batch(
    flow_version: FlowVersion,
    definition: FlowDefinition,
    items: Sequence[BulkItem],
    inputs: list[dict[str, Any]],
    keys: list[str],
    fingerprints: list[str],
    owner: Any,
) -> list[tuple[Execution, bool]]:
    """The checked batch written: the executions whose keys are used answered, the others
    inserted QUEUED with their first steps (``transitions.start_batch``)."""
    used = [key for key in keys if key]
    existing: dict[str, Execution] = {}
    if used:
        mine = Execution.objects.filter(flow_id=flow_version.flow_id, created_by=owner)
        existing = {row.idempotency_key: row for row in mine.filter(idempotency_key__in=used)}
    conflicts = [
        {"field": f"{item.where}.idempotency_key", "message": "already used with another body"}
        for item, key, fingerprint in zip(items, keys, fingerprints, strict=True)
        if key in existing
        and existing[key].idempotency_fingerprint
        and existing[key].idempotency_fingerprint != fingerprint
    ]
    if conflicts:
        raise IdempotencyConflict(
            f"{len(conflicts)} idempotency keys were already used with a different body "
            f"({conflicts[0]['field']} the first); nothing was started: send new keys for new "
            "requests, or repeat the first bodies exactly to get the executions they started",
            errors=conflicts[:BULK_MAX_ERRORS],
        )
    now = timezone.now()
    fresh = [n for n, key in enumerate(keys) if key not in existing]
    rows = engine.transitions.started_rows(
        now,
        [
            {
                "input": inputs[n],
                "idempotency_key": keys[n],
                "idempotency_fingerprint": fingerprints[n],
            }
            for n in fresh
        ],
        flow_id=flow_version.flow_id,
        flow_version=flow_version,
        current_task=definition.start_task,
        deadline_at=flow_deadline(definition, now),
        created_by=owner,
    )
    engine.transitions.start_batch(rows, definition.task(definition.start_task), now)
    made = dict(zip(fresh, rows, strict=True))
    answers = [
        (made[n], True) if n in made else (existing[key], False) for n, key in enumerate(keys)
    ]
    logger.info(
        "%d executions of flow=%s v%s queued in bulk (%d already started under their keys)",
        len(rows),
        flow_version.flow_id,
        flow_version.version,
        len(keys) - len(rows),
    )
    return answers


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
    if locked.backfill_id is not None and locked.status != ExecutionStatus.CREATED:
        # A deleted run writes no end: make room for the backfill's next one here. (Imported
        # here: backfills builds on this module.)
        from flows.services.backfills import backfill_top_up

        backfill_top_up(backfill_id=locked.backfill_id)


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
