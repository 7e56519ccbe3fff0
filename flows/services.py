"""Every write the API, the operator pages, the admin and the commands make goes through here."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from flows import engine
from flows.definition import FieldError, FlowDefinition, FlowValidationError, parse_flow, unwrap
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionTrigger,
    Flow,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.registry import TaskRegistry, default_registry

logger = logging.getLogger("flows.services")


class ServiceError(Exception):
    """A request the domain refuses; ``status`` is the HTTP status the API answers with."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class InvalidFlow(ServiceError):
    status = 400
    code = "invalid_flow"


def validate_flow(document: Any, *, registry: TaskRegistry | None = None) -> FlowDefinition:
    """Parse and validate a flow document; raise InvalidFlow listing every error."""
    try:
        size = len(json.dumps(document, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidFlow(
            f"the document is not plain JSON: {exc}",
            errors=[{"field": "", "message": "not plain JSON (NaN or Infinity?)"}],
        ) from None
    if size > settings.FLOW_MAX_DOCUMENT_BYTES:
        message = f"the document is {size} bytes; the limit is {settings.FLOW_MAX_DOCUMENT_BYTES}"
        raise InvalidFlow(message, errors=[{"field": "", "message": message}])
    try:
        return parse_flow(
            document,
            registry or default_registry(),
            default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS,
        )
    except FlowValidationError as exc:
        raise InvalidFlow(str(exc), errors=exc.as_list()) from None


def _normalized(document: Any) -> dict[str, Any]:
    doc = dict(unwrap(document))
    return doc


@transaction.atomic
def flow_create(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> FlowVersion:
    """Store a flow document: a new flow, or a new version of the flow with the same id."""
    definition = validate_flow(document, registry=registry)
    doc = _normalized(document)
    flow = Flow.objects.select_for_update().filter(pk=definition.id).first()
    if flow is None:
        try:
            with transaction.atomic():
                flow = Flow.objects.create(
                    id=definition.id, name=definition.name, version=1, definition=doc
                )
        except IntegrityError:
            # Created by a concurrent request a moment ago: become its next version.
            flow = Flow.objects.select_for_update().get(pk=definition.id)
            flow.version += 1
    else:
        flow.version += 1
    flow.name, flow.definition = definition.name, doc
    flow.save()
    version = FlowVersion.objects.create(
        flow=flow, version=flow.version, definition=doc, created_by=_user(user)
    )
    logger.info(
        "flow=%s version=%s stored (%d tasks)", flow.id, flow.version, len(definition.tasks)
    )
    for warning in definition.warnings:
        logger.warning("flow=%s %s: %s", flow.id, warning.field, warning.message)
    return version


def execution_create(
    *, flow_version: FlowVersion, user: Any = None, input: dict[str, Any] | None = None
) -> Execution:
    """A new execution of ``flow_version`` in CREATED state (started by execution_start)."""
    if input is not None and not isinstance(input, dict):
        raise ServiceError(
            "input must be a JSON object",
            errors=[{"field": "input", "message": "must be an object"}],
        )
    execution = Execution.objects.create(
        flow_id=flow_version.flow_id,
        flow_version=flow_version,
        input=input or {},
        created_by=_user(user),
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
) -> tuple[FlowVersion, Execution, FlowDefinition]:
    """The seed's ``POST /flow/create``: store the flow and prepare one execution of it."""
    version = flow_create(document=document, user=user, registry=registry)
    execution = execution_create(flow_version=version, user=user)
    definition = validate_flow(version.definition, registry=registry)
    return version, execution, definition


def get_execution(execution_id: Any) -> Execution:
    """The execution with this id, or NotFound (also for ids that are not UUIDs)."""
    try:
        key = uuid.UUID(str(execution_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no execution with id '{execution_id}' (ids are UUIDs)") from None
    execution = Execution.objects.with_flow().filter(pk=key).first()
    if execution is None:
        raise NotFound(f"no execution with id '{key}'")
    return execution


@transaction.atomic
def execution_start(*, execution_id: Any, registry: TaskRegistry | None = None) -> Execution:
    """CREATED -> QUEUED: write the first step and wake a worker, in one transaction."""
    execution = get_execution(execution_id)
    try:
        definition = parse_flow(
            execution.flow_version.definition,
            registry or default_registry(),
            default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS,
        )
    except FlowValidationError as exc:
        raise Conflict(
            f"execution {execution.id} cannot start: its flow is no longer valid: {exc}",
            errors=exc.as_list(),
        ) from None
    now = timezone.now()
    moved = Execution.objects.filter(pk=execution.id, status=ExecutionStatus.CREATED).update(
        status=ExecutionStatus.QUEUED, queued_at=now, current_task=definition.start_task
    )
    if moved != 1:
        current = Execution.objects.filter(pk=execution.id).values_list("status", flat=True).first()
        raise Conflict(
            f"execution {execution.id} is {current}; only a CREATED execution can be executed"
        )
    start = definition.task(definition.start_task)
    TaskRun.objects.create(
        execution_id=execution.id,
        seq=1,
        task_name=start.name,
        task_type=start.task_type,
        parameters=start.parameters,
        woken_at=now,
    )
    engine.wake(execution.id)
    logger.info("execution=%s queued, first task %s", execution.id, start.name)
    execution.refresh_from_db()
    return execution


@transaction.atomic
def execution_cancel(*, execution_id: Any) -> Execution:
    """Stop an execution. A step that is running is cancelled by its worker within a second."""
    execution = get_execution(execution_id)
    locked = Execution.objects.select_for_update().get(pk=execution.id)
    if locked.is_terminal:
        raise Conflict(f"execution {locked.id} is already {locked.status}")
    now = timezone.now()
    running = TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.RUNNING).exists()
    if running:
        # The worker that holds the step sees the flag, cancels the coroutine and ends it.
        Execution.objects.filter(pk=locked.id).update(cancel_requested=True)
    else:
        TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.PENDING).update(
            status=TaskRunStatus.CANCELLED, ended_at=now, error="cancelled before it started"
        )
        Execution.objects.filter(pk=locked.id).update(
            cancel_requested=True,
            status=ExecutionStatus.CANCELLED,
            error="cancelled by request",
            ended_at=now,
            current_task="",
        )
    ExecutionEvent.objects.create(
        execution_id=locked.id, created_at=now, level="WARNING", message="cancel requested"
    )
    logger.info("execution=%s cancel requested (step running: %s)", locked.id, running)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_delete(*, execution_id: Any) -> None:
    """Delete an execution and its history; a running one is cancelled first.

    The worker holding its step notices within a second that the execution is gone and
    stops quietly; it never recreates the rows.
    """
    execution = get_execution(execution_id)
    locked = Execution.objects.select_for_update().filter(pk=execution.id).first()
    if locked is None:
        raise NotFound(f"no execution with id '{execution.id}'")
    if locked.status in ACTIVE_STATUSES:
        Execution.objects.filter(pk=locked.id).update(cancel_requested=True)
        logger.info("execution=%s cancelled for deletion", locked.id)
    locked.delete()
    logger.info("execution=%s deleted", execution.id)


def get_flow(flow_id: Any) -> Flow:
    flow = Flow.objects.filter(pk=str(flow_id)).first()
    if flow is None:
        raise NotFound(f"no flow with id '{flow_id}'")
    return flow


@transaction.atomic
def flow_delete(*, flow_id: Any) -> None:
    """Delete a flow with its versions and finished executions; refused while one runs."""
    flow = get_flow(flow_id)
    running = flow.executions.filter(status__in=ACTIVE_STATUSES).count()
    if running:
        raise Conflict(
            f"flow '{flow.id}' has {running} execution(s) queued or running; cancel them first"
        )
    flow.delete()
    logger.info("flow=%s deleted", flow.id)


def execution_submit(
    *,
    flow_version: FlowVersion,
    user: Any = None,
    input: dict[str, Any] | None = None,
    idempotency_key: str = "",
    trigger: str = ExecutionTrigger.MANUAL,
    rerun_of: Execution | None = None,
) -> tuple[Execution, bool]:
    """Create and start an execution in one go. Returns (execution, created).

    With an ``idempotency_key``, a repeated submit by the same user for the same flow returns
    the execution the first one made (created=False) instead of starting another.
    """
    key = (idempotency_key or "").strip()
    if len(key) > 200:
        raise ServiceError(
            "Idempotency-Key is longer than 200 characters",
            errors=[{"field": "Idempotency-Key", "message": "at most 200 characters"}],
        )
    owner = _user(user)
    if key:
        existing = Execution.objects.filter(
            flow_id=flow_version.flow_id, created_by=owner, idempotency_key=key
        ).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            execution = execution_create(flow_version=flow_version, user=user, input=input)
            Execution.objects.filter(pk=execution.id).update(
                idempotency_key=key, trigger=trigger, rerun_of=rerun_of
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
        return existing, False
    return execution, True


def execution_rerun(*, execution_id: Any, user: Any = None) -> Execution:
    """Start a new execution of the same flow version with the same input."""
    original = get_execution(execution_id)
    execution, _ = execution_submit(
        flow_version=original.flow_version,
        user=user,
        input=original.input,
        trigger=ExecutionTrigger.RERUN,
        rerun_of=original,
    )
    return execution


def _user(user: Any) -> Any:
    return user if user is not None and getattr(user, "is_authenticated", False) else None


__all__ = [
    "Conflict",
    "FieldError",
    "InvalidFlow",
    "NotFound",
    "ServiceError",
    "execution_cancel",
    "execution_create",
    "execution_delete",
    "execution_rerun",
    "execution_start",
    "execution_submit",
    "flow_create",
    "flow_create_with_execution",
    "flow_delete",
    "get_execution",
    "get_flow",
    "validate_flow",
]
