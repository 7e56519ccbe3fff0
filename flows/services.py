"""Every write the API, the operator pages, the admin and the commands make goes through here."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.models import Schedule

from flows import engine
from flows.definition import (
    FieldError,
    FlowDefinition,
    FlowValidationError,
    check_subflows,
    parse_flow,
    unwrap,
)
from flows.expressions import ExpressionError
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionTrigger,
    Flow,
    FlowSchedule,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.registry import TaskRegistry, default_registry
from flows.sql import writes

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


class IdempotencyConflict(ServiceError):
    """An Idempotency-Key used again with another request body (Stripe answers the same)."""

    status = 422
    code = "idempotency_conflict"


def canonical_json(value: Any) -> str:
    """``value`` as JSON text that is equal for equal documents: keys sorted, no spaces.

    Values keep their JSON type: ``true`` and ``1``, ``1`` and ``1.0`` stay different.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def body_fingerprint(body: Any) -> str:
    """SHA-256 of a parsed request body's canonical JSON: what an Idempotency-Key is bound to."""
    if isinstance(body, Mapping) and not isinstance(body, dict):
        body = {key: body[key] for key in body}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def given_flow_id(document: Any) -> str | None:
    """The ``id`` a (maybe invalid) flow document gives, when it gives one as text."""
    doc = unwrap(document)
    flow_id = doc.get("id") if isinstance(doc, Mapping) else None
    return flow_id if isinstance(flow_id, str) else None


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
    registry = registry or default_registry()
    try:
        definition = parse_flow(
            document, registry, default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS
        )
    except FlowValidationError as exc:
        raise InvalidFlow(str(exc), errors=exc.as_list()) from None
    problems = check_subflows(definition, functools.partial(_stored_definition, registry))
    if problems:
        error = FlowValidationError(problems)
        raise InvalidFlow(str(error), errors=error.as_list())
    return definition


def _stored_definition(registry: TaskRegistry, flow_id: str, version: int | None) -> Any:
    """A stored flow's definition for a sub-flow call (its current version unless pinned),
    or why there is none."""
    versions = FlowVersion.objects.filter(flow_id=flow_id)
    found = versions.filter(version=version) if version else versions.order_by("-version")
    row = found.values_list("definition", flat=True).first()
    if row is None:
        which = f" version {version}" if version else ""
        return f"no flow '{flow_id}'{which} is stored; store it before flows that call it"
    try:
        return parse_flow(row, registry, default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS)
    except FlowValidationError:
        return f"flow '{flow_id}' no longer validates; fix it first"


def _normalized(document: Any) -> dict[str, Any]:
    doc = dict(unwrap(document))
    return doc


@transaction.atomic
def flow_store(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> tuple[FlowVersion, bool]:
    """Store a flow document: a new flow, or a new version of the flow with the same id.

    Returns (version, stored). A document equal to the flow's current one (as parsed JSON,
    key order ignored) stores nothing: the current version comes back with stored=False, so
    a client that re-posts what it has does not grow the version history.
    """
    definition = validate_flow(document, registry=registry)
    doc = _normalized(document)
    flow = Flow.objects.select_for_update().filter(pk=definition.id).first()
    new_flow = False
    if flow is None:
        try:
            with transaction.atomic():
                flow = Flow.objects.create(
                    id=definition.id, name=definition.name, version=1, definition=doc
                )
                new_flow = True
        except IntegrityError:
            # Created by a concurrent request a moment ago: compare with it, as with any other.
            flow = Flow.objects.select_for_update().get(pk=definition.id)
    if not new_flow:
        if canonical_json(flow.definition) == canonical_json(doc):
            current = FlowVersion.objects.select_related("flow").get(
                flow=flow, version=flow.version
            )
            logger.info("flow=%s unchanged: version %s is this document", flow.id, flow.version)
            return current, False
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
    return version, True


def flow_create(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> FlowVersion:
    """``flow_store`` for callers that only need the version (new, or the current one)."""
    version, _ = flow_store(document=document, user=user, registry=registry)
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
) -> tuple[FlowVersion, bool, Execution, FlowDefinition]:
    """The seed's ``POST /flow/create``: store the flow (``flow_store``: an identical document
    reuses the current version) and prepare one execution of it.

    Returns (version, stored, execution, definition).
    """
    version, stored = flow_store(document=document, user=user, registry=registry)
    execution = execution_create(flow_version=version, user=user)
    definition = validate_flow(version.definition, registry=registry)
    return version, stored, execution, definition


def get_execution(execution_id: Any, *, with_flow: bool = True) -> Execution:
    """The execution with this id, or NotFound (also for ids that are not UUIDs).

    Its pinned version comes with it, and its flow too unless ``with_flow=False`` (then it is
    read if and when it is used: a join fewer for a caller on a hot path).
    """
    try:
        key = uuid.UUID(str(execution_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no execution with id '{execution_id}' (ids are UUIDs)") from None
    executions = Execution.objects.with_flow() if with_flow else Execution.objects.all()
    execution = executions.select_related("flow_version").filter(pk=key).first()
    if execution is None:
        raise NotFound(f"no execution with id '{key}'")
    return execution


@transaction.atomic
def execution_start(
    *,
    execution_id: Any,
    input: dict[str, Any] | None = None,
    registry: TaskRegistry | None = None,
) -> Execution:
    """CREATED -> QUEUED: write the first step and wake a worker, in one transaction.

    ``input``, when given, replaces the execution's input object.
    """
    if input is not None and not isinstance(input, dict):
        raise ServiceError(
            "input must be a JSON object",
            errors=[{"field": "input", "message": "must be an object"}],
        )
    execution = get_execution(execution_id, with_flow=False)
    definition = _runnable_definition(execution, registry, "start")
    now = timezone.now()
    changes: dict[str, Any] = {
        "status": ExecutionStatus.QUEUED,
        "queued_at": now,
        "current_task": definition.start_task,
        "deadline_at": _deadline(definition, now),
    }
    if input is not None:
        changes["input"] = input
    # Starting is every client's hot path: two hand-written statements (flows/sql/writes.py).
    moved = writes.update_rows(Execution, {execution.id: changes}, status=ExecutionStatus.CREATED)
    if moved != 1:
        current = Execution.objects.filter(pk=execution.id).values_list("status", flat=True).first()
        raise Conflict(
            f"execution {execution.id} is {current}; only a CREATED execution can be executed"
        )
    start = definition.task(definition.start_task)
    writes.insert_rows(
        TaskRun,
        [
            TaskRun(
                execution_id=execution.id,
                seq=1,
                task_name=start.name,
                task_type=start.task_type,
                parameters=start.parameters,
                woken_at=now,
            )
        ],
    )
    engine.wake(execution.id)
    logger.info("execution=%s queued, first task %s", execution.id, start.name)
    # The row is what the UPDATE above wrote (a CREATED execution has nothing else in flight),
    # so no second read: starting is on the hot path of every client.
    for name, value in changes.items():
        setattr(execution, name, value)
    return execution


@transaction.atomic
def execution_cancel(*, execution_id: Any) -> Execution:
    """Stop an execution. A step that is running is cancelled by its worker within a second."""
    locked = _locked(execution_id)
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
    # Its children (parallel branches, map items, a sub-flow) and theirs stop with it.
    waiting = list(
        TaskRun.objects.filter(execution_id=locked.id, waiting__isnull=False).values_list(
            "pk", flat=True
        )
    )
    children = engine.cancel_children(waiting, why=f"parent execution {locked.id} cancelled")
    if not running and locked.parent_step_id is not None:
        # A child that ended here is counted on its parent step, as if its worker ended it.
        engine.child_ended(locked, ExecutionStatus.CANCELLED, None, now)
    _event(locked.id, "WARNING", "cancel requested")
    logger.info(
        "execution=%s cancel requested (step running: %s, children asked: %d)",
        locked.id, running, children,
    )  # fmt: skip
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_pause(*, execution_id: Any) -> Execution:
    """Pause: the step in flight finishes, then the execution waits as PAUSED until resumed."""
    locked = _locked(execution_id)
    if locked.status not in ACTIVE_STATUSES or locked.pause_requested:
        raise Conflict(
            f"execution {locked.id} is {locked.status}"
            f"{' and already pausing' if locked.pause_requested else ''}; "
            "only a QUEUED or RUNNING execution can be paused"
        )
    running = TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.RUNNING).exists()
    changes: dict[str, Any] = {"pause_requested": True}
    if not running:
        changes["status"] = ExecutionStatus.PAUSED  # nothing in flight: paused right away
    Execution.objects.filter(pk=locked.id).update(**changes)
    _event(locked.id, "WARNING", "pause requested")
    logger.info("execution=%s pause requested (step running: %s)", locked.id, running)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_resume(*, execution_id: Any) -> Execution:
    """Resume a paused execution where it stopped (or withdraw a pause not yet reached)."""
    locked = _locked(execution_id)
    if locked.status == ExecutionStatus.PAUSED:
        now = timezone.now()
        Execution.objects.filter(pk=locked.id).update(
            pause_requested=False, status=ExecutionStatus.QUEUED
        )
        step = TaskRun.objects.filter(execution_id=locked.id, status=TaskRunStatus.PENDING).first()
        if step is not None:
            due = step.not_before if step.not_before and step.not_before > now else None
            TaskRun.objects.filter(pk=step.pk).update(woken_at=due or now)
            engine.wake(locked.id, at=due)
    elif locked.pause_requested and locked.status in ACTIVE_STATUSES:
        Execution.objects.filter(pk=locked.id).update(pause_requested=False)
    else:
        raise Conflict(f"execution {locked.id} is {locked.status}; only a PAUSED one can resume")
    _event(locked.id, "INFO", "resumed")
    logger.info("execution=%s resumed", locked.id)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def execution_redrive(*, execution_id: Any, registry: TaskRegistry | None = None) -> Execution:
    """Resume a FAILED or CANCELLED execution from the step that stopped it.

    Same execution id; every step run so far stays in its history and finished steps are not
    run again. The step limit and the flow's timeout start afresh.
    """
    locked = _locked(execution_id)
    _not_a_child(locked, "redrive")
    if locked.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise Conflict(
            f"execution {locked.id} is {locked.status}; only a FAILED or CANCELLED execution "
            "can be redriven"
        )
    definition = _runnable_definition(locked, registry, "be redriven")
    last = TaskRun.objects.filter(execution_id=locked.id).order_by("-seq").first()
    if last is None:
        task_name, attempt, seq = definition.start_task, 1, 1
    elif last.status == TaskRunStatus.SUCCESS:
        # It ended after a success (the step limit or the flow's timeout): go where it would
        # have gone next, deciding the condition as the engine would have.
        try:
            task_name, _ = definition.route(
                last.task_name,
                "success",
                result=last.result,
                results=_results_of(locked),
                input=locked.input,
            )
        except ExpressionError as exc:
            raise Conflict(f"execution {locked.id} cannot be redriven: {exc}") from None
        if task_name is None:
            raise Conflict(f"execution {locked.id} has no step left to run")
        attempt, seq = 1, last.seq + 1
    elif last.status == TaskRunStatus.CANCELLED and last.started_at is None:
        # Cancelled before it ever ran: that was no attempt.
        task_name, attempt, seq = last.task_name, last.attempt, last.seq + 1
    else:
        task_name, attempt, seq = last.task_name, last.attempt + 1, last.seq + 1
    spec = definition.task(task_name)
    now = timezone.now()
    TaskRun.objects.create(
        execution_id=locked.id,
        seq=seq,
        task_name=spec.name,
        task_type=spec.task_type,
        parameters=spec.parameters,
        attempt=attempt,
        woken_at=now,
    )
    Execution.objects.filter(pk=locked.id).update(
        status=ExecutionStatus.QUEUED,
        error="",
        ended_at=None,
        cancel_requested=False,
        pause_requested=False,
        steps_taken=0,
        current_task=spec.name,
        deadline_at=_deadline(definition, now),
        redrive_count=locked.redrive_count + 1,
    )
    engine.wake(locked.id)
    _event(locked.id, "INFO", f"redriven from {spec.name} (attempt {attempt})")
    logger.info("execution=%s redriven from %s", locked.id, spec.name)
    locked.refresh_from_db()
    return locked


# --- signals ---------------------------------------------------------------------------------
SIGNAL_DECISIONS = ("approve", "reject")


@transaction.atomic
def execution_signal(
    *,
    execution_id: Any,
    name: str,
    decision: str = "approve",
    payload: Any = None,
    comment: str = "",
    user: Any = None,
) -> TaskRun:
    """Deliver signal ``name`` to the step waiting for it (a ``wait_for_signal`` task): the
    step becomes due at once and a worker runs it on. Approve: the payload is its result;
    reject: it fails, and its failure route applies. Returns the step."""
    if decision not in SIGNAL_DECISIONS:
        raise ServiceError(
            "decision must be 'approve' or 'reject'",
            errors=[{"field": "decision", "message": "must be 'approve' or 'reject'"}],
        )
    locked = _locked(execution_id)
    step = (
        TaskRun.objects.select_for_update()
        .filter(execution_id=locked.id, status=TaskRunStatus.PENDING, waiting__kind="signal")
        .first()
    )
    if locked.is_terminal or step is None:
        raise Conflict(f"execution {locked.id} is {locked.status} and waits for no signal")
    waiting = dict(step.waiting or {})
    if waiting.get("name") != name:
        raise Conflict(
            f"execution {locked.id} waits for signal '{waiting.get('name')}', not '{name}'"
        )
    if waiting.get("signal"):
        raise Conflict(f"signal '{name}' already came for execution {locked.id}")
    now = timezone.now()
    who = getattr(_user(user), "username", "") or ""
    waiting["signal"] = {
        "decision": decision,
        "payload": payload,
        "comment": comment,
        "by": who,
        "at": now.isoformat(),
    }
    TaskRun.objects.filter(pk=step.pk).update(waiting=waiting, not_before=None, woken_at=now)
    engine.wake(locked.id)
    _event(locked.id, "INFO", f"signal '{name}' ({decision}) from {who or 'someone'}")
    logger.info("execution=%s signal %s %s by %s", locked.id, name, decision, who)
    step.waiting, step.not_before, step.woken_at = waiting, None, now
    return step


# --- schedules ---------------------------------------------------------------------------------
SCHEDULE_FUNC = "flows.jobs.run_scheduled"


def _cron_next(cron: str) -> Any:
    return croniter(cron, timezone.localtime()).get_next(datetime)


def cron_error(cron: Any) -> str:
    """Why ``cron`` is not a usable cron expression, or "" when it is."""
    if not isinstance(cron, str) or not croniter.is_valid(cron.strip()):
        return "must be a cron expression like '*/15 * * * *' (minute hour day month weekday)"
    return ""


@transaction.atomic
def flow_schedule_set(
    *,
    flow_id: Any,
    cron: Any,
    enabled: bool = True,
    input: dict[str, Any] | None = None,
) -> FlowSchedule:
    """Create or change the flow's cron schedule; each run is an ordinary execution.

    The django-q2 Schedule that fires it is kept in step: paused means it never fires
    (``repeats=0``), enabled means it fires at every cron time from now on.
    """
    flow = get_flow(flow_id)
    errors = []
    cron_problem = cron_error(cron)
    if cron_problem:
        errors.append({"field": "cron", "message": cron_problem})
    if input is not None and not isinstance(input, dict):
        errors.append({"field": "input", "message": "must be an object"})
    if not isinstance(enabled, bool):
        errors.append({"field": "enabled", "message": "must be true or false"})
    if errors:
        raise ServiceError(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )
    cron = cron.strip()
    schedule = FlowSchedule.objects.select_for_update().filter(flow=flow).first()
    if schedule is None:
        schedule = FlowSchedule(flow=flow)
    schedule.cron, schedule.enabled = cron, enabled
    if input is not None:
        schedule.input = input
    q = schedule.q_schedule or Schedule(name=f"flow:{flow.id}")
    q.func, q.args = SCHEDULE_FUNC, repr(flow.id)
    q.schedule_type, q.cron = Schedule.CRON, cron
    q.repeats = -1 if enabled else 0
    q.next_run = _cron_next(cron)
    q.save()
    schedule.q_schedule = q
    schedule.save()
    logger.info("flow=%s schedule %s%s", flow.id, cron, "" if enabled else " (paused)")
    return schedule


@transaction.atomic
def flow_schedule_delete(*, flow_id: Any) -> None:
    flow = get_flow(flow_id)
    schedule = FlowSchedule.objects.filter(flow=flow).select_related("q_schedule").first()
    if schedule is None:
        raise NotFound(f"flow '{flow.id}' has no schedule")
    if schedule.q_schedule is not None:
        schedule.q_schedule.delete()
    schedule.delete()
    logger.info("flow=%s schedule deleted", flow.id)


def flow_run_scheduled(*, flow_id: str) -> Execution | None:
    """What the schedule's job does: start the flow's latest version, marked as scheduled."""
    schedule = FlowSchedule.objects.filter(flow_id=flow_id).select_related("flow").first()
    if schedule is None or not schedule.enabled:
        logger.warning("flow=%s scheduled run skipped: no enabled schedule", flow_id)
        return None
    version = FlowVersion.objects.get(flow_id=flow_id, version=schedule.flow.version)
    execution, _ = execution_submit(
        flow_version=version, input=schedule.input, trigger=ExecutionTrigger.SCHEDULE
    )
    return execution


def _runnable_definition(
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


def _results_of(execution: Execution) -> dict[str, Any]:
    """Successful results by task name, latest last, as expressions see them."""
    return engine.results_scope(engine.results_so_far([execution.id]).get(execution.id, {}))


def _locked(execution_id: Any) -> Execution:
    """The execution, row-locked for a state change (PostgreSQL; SQLite locks the database)."""
    execution = get_execution(execution_id)
    return Execution.objects.select_for_update().select_related("flow_version").get(pk=execution.id)


def _not_a_child(execution: Execution, action: str) -> None:
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


def _deadline(definition: FlowDefinition, now: Any) -> Any:
    if definition.timeout_seconds is None:
        return None
    return now + timedelta(seconds=definition.timeout_seconds)


def _event(execution_id: Any, level: str, message: str) -> None:
    ExecutionEvent.objects.create(
        execution_id=execution_id, created_at=timezone.now(), level=level, message=message
    )


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
    _not_a_child(locked, "delete")
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
    Schedule.objects.filter(name=f"flow:{flow.id}").delete()
    flow.delete()
    logger.info("flow=%s deleted", flow.id)


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
    owner = _user(user)
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
    original = get_execution(execution_id)
    execution, _ = execution_submit(
        flow_version=original.flow_version,
        user=user,
        input=original.input,
        trigger=ExecutionTrigger.RERUN,
        rerun_of=original,
    )
    return execution


# --- resource API ---
def get_flow_version(*, flow_id: Any, version: int | None = None) -> FlowVersion:
    """Version ``version`` of a flow (its latest when None), or NotFound."""
    flow = get_flow(flow_id)
    number = flow.version if version is None else version
    found = FlowVersion.objects.select_related("flow").filter(flow=flow, version=number).first()
    if found is None:
        raise NotFound(
            f"flow '{flow.id}' has no version {number} (latest is {flow.version})",
            errors=[{"field": "version", "message": f"no such version; latest is {flow.version}"}],
        )
    return found


@transaction.atomic
def flow_update(*, flow_id: Any, document: Any, user: Any = None) -> tuple[FlowVersion, bool]:
    """Store ``document`` as the next version of an existing flow: (version, stored) as
    ``flow_store`` returns them (the current document again stores nothing).

    The document may leave out ``id``; one that names another flow is refused, so that an
    update never writes to a flow other than the one addressed.
    """
    flow = get_flow(flow_id)
    doc = unwrap(document)
    if isinstance(doc, dict):
        if "id" in doc and doc["id"] != flow.id:
            raise InvalidFlow(
                f"the document's id {doc['id']!r} is not the id of the flow it updates, "
                f"'{flow.id}'",
                errors=[{"field": "id", "message": f"must be '{flow.id}' (or left out)"}],
            )
        doc = {**doc, "id": flow.id}
    return flow_store(document=doc, user=user)


def _user(user: Any) -> Any:
    return user if user is not None and getattr(user, "is_authenticated", False) else None


__all__ = [
    "Conflict",
    "FieldError",
    "IdempotencyConflict",
    "InvalidFlow",
    "NotFound",
    "ServiceError",
    "execution_cancel",
    "execution_create",
    "execution_delete",
    "execution_pause",
    "execution_redrive",
    "execution_rerun",
    "execution_resume",
    "execution_start",
    "execution_submit",
    "flow_create",
    "flow_create_with_execution",
    "flow_delete",
    "flow_run_scheduled",
    "flow_schedule_delete",
    "flow_schedule_set",
    "flow_store",
    "flow_update",
    "get_execution",
    "get_flow",
    "get_flow_version",
    "given_flow_id",
    "validate_flow",
]


# --- retention ---
# Statuses retention may delete. Never QUEUED, RUNNING or PAUSED: those executions are in
# flight. CREATED (made by /flow/create, never started) only when asked for by name.
PURGEABLE_STATUSES: tuple[str, ...] = (
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.CREATED,
)
DEFAULT_PURGE_STATUSES: tuple[str, ...] = (
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
)


def _purge_statuses(statuses: list[str] | None) -> list[str]:
    chosen = list(statuses) if statuses else list(DEFAULT_PURGE_STATUSES)
    refused = sorted({s for s in chosen if s not in PURGEABLE_STATUSES})
    if refused:
        raise ServiceError(
            f"cannot purge executions in status {', '.join(refused)}: only "
            f"{', '.join(PURGEABLE_STATUSES)} executions may be purged",
            errors=[{"field": "statuses", "message": f"not purgeable: {', '.join(refused)}"}],
        )
    return chosen


def executions_purgeable(
    *, older_than: timedelta, statuses: list[str] | None = None, now: datetime | None = None
) -> Any:
    """Executions retention would delete: in ``statuses`` (default COMPLETED, FAILED,
    CANCELLED) that ended before ``now - older_than`` or, never having ended, were created
    before it. A QuerySet of Execution; reads only."""
    cutoff = (now or timezone.now()) - older_than
    base = Execution.objects.filter(status__in=_purge_statuses(statuses)).order_by()
    return base.filter(ended_at__lt=cutoff) | base.filter(
        ended_at__isnull=True, created_at__lt=cutoff
    )


def executions_purge(
    *,
    older_than: timedelta,
    statuses: list[str] | None,
    batch_size: int,
    on_batch: Any = None,
) -> int:
    """Delete the executions ``executions_purgeable`` selects, with their steps and log lines;
    return how many executions were deleted.

    Not one transaction: each batch is its own short one, so no lock is held for long and
    an interrupted purge keeps what it did (run it again to go on). Per batch:
    1. lock up to ``batch_size`` matching executions, skipping rows another transaction
       holds (a redrive or a delete in progress); status and age are checked again under
       the lock, so an execution redriven a moment ago is left alone;
    2. delete their log lines, then their steps, then the executions, each a plain DELETE
       on a list of ids, so no statement cascades over more than the batch.
    ``on_batch(executions, steps, events)`` is called after each batch is committed.
    """
    if batch_size < 1:
        raise ServiceError("batch_size must be at least 1")
    # One cutoff for the whole run: a long purge does not chase a moving boundary.
    candidates = executions_purgeable(older_than=older_than, statuses=statuses, now=timezone.now())
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)[
                    :batch_size
                ]
            )
            if not ids:
                break
            events, _ = ExecutionEvent.objects.filter(execution_id__in=ids).delete()
            # only("pk"): the cascade check loads ids, not results and tracebacks.
            _, step_rows = TaskRun.objects.filter(execution_id__in=ids).only("pk").delete()
            _, execution_rows = Execution.objects.filter(pk__in=ids).only("pk").delete()
        steps = step_rows.get(TaskRun._meta.label, 0)
        deleted = execution_rows.get(Execution._meta.label, 0)
        total += deleted
        logger.info(
            "retention: deleted %d executions, %d steps, %d log lines", deleted, steps, events
        )
        if on_batch is not None:
            on_batch(deleted, steps, events)
        if deleted == 0:  # nothing could be deleted (never expected): do not spin
            break
    return total
