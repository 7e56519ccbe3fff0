"""Reads more than one face needs (the API, the operator pages, the admin, the commands),
and the reads the services build on. Named like the services, ``<entity>_<verb>``:
``execution_get``, ``flow_get``, ``flow_version_get``, ``flow_version_list``, ...

Selectors never write. Each returns model instances or a QuerySet, or raises ``NotFound``
(the same error the services raise, so every face answers a missing object the same way).
Reads a single face makes stay beside it (a viewset's ``get_queryset``, a page's query),
and reusable query shapes are QuerySet methods on the models (``Execution.objects.for_list``).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from flows.models import (
    Execution,
    ExecutionStatus,
    Flow,
    FlowSchedule,
    FlowVersion,
    TaskRun,
    Webhook,
    WebhookDelivery,
)
from flows.services.errors import NotFound, ServiceError
from flows.sql import reads


def execution_get(execution_id: Any, *, with_flow: bool = True) -> Execution:
    """The execution with this id, or NotFound (also for ids that are not UUIDs).

    Its pinned version comes with it, and its flow too unless ``with_flow=False`` (then it is
    read if and when it is used: a join fewer for a caller on a hot path).
    """
    try:
        key = uuid.UUID(str(execution_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no execution with id '{execution_id}' (ids are UUIDs)") from None
    executions = Execution.objects.with_flow() if with_flow else Execution.objects.all()
    # No ORDER BY (``first()`` would add the model's): one row by its key, on every start's
    # hot path, where compiling the ordering costs more than the query.
    found = executions.select_related("flow_version").filter(pk=key).order_by()[:1]
    execution = next(iter(found), None)
    if execution is None:
        raise NotFound(f"no execution with id '{key}'")
    return execution


def execution_for_status(execution_id: Any) -> Execution:
    """The execution that ``GET /flow/{id}/status`` shows, with its flow's name and version
    number, or NotFound: one prebuilt query (clients poll it; ``flows.sql.reads``)."""
    try:
        key = uuid.UUID(str(execution_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no execution with id '{execution_id}' (ids are UUIDs)") from None
    execution = reads.execution_for_status(key)
    if execution is None:
        raise NotFound(f"no execution with id '{key}'")
    return execution


def steps_for_status(execution: Execution) -> list[TaskRun]:
    """The execution's steps in run order, with the columns the status document shows."""
    return reads.steps_for_status(execution)


def user_for_token(key: str) -> Any | None:
    """The user whose API token is ``key`` (active or not), or None: one prebuilt query."""
    return reads.user_for_token(key)


def flow_get(flow_id: Any) -> Flow:
    flow = Flow.objects.filter(pk=str(flow_id)).first()
    if flow is None:
        raise NotFound(f"no flow with id '{flow_id}'")
    return flow


def flow_version_get(*, flow_id: Any, version: int | None = None) -> FlowVersion:
    """Version ``version`` of a flow (its latest when None), or NotFound."""
    flow = flow_get(flow_id)
    number = flow.version if version is None else version
    found = FlowVersion.objects.select_related("flow").filter(flow=flow, version=number).first()
    if found is None:
        raise NotFound(
            f"flow '{flow.id}' has no version {number} (latest is {flow.version})",
            errors=[{"field": "version", "message": f"no such version; latest is {flow.version}"}],
        )
    return found


def flow_version_list(*, flow: Flow) -> QuerySet[FlowVersion]:
    """The flow's versions, newest first, with their authors and without their documents."""
    return (
        FlowVersion.objects.filter(flow=flow)
        .defer("definition")
        .select_related("created_by")
        .order_by("-version")
    )


def flow_schedule_get(*, flow: Flow) -> FlowSchedule:
    """The flow's cron schedule with its django-q2 Schedule, or NotFound."""
    schedule = FlowSchedule.objects.filter(flow=flow).select_related("q_schedule").first()
    if schedule is None:
        raise NotFound(f"flow '{flow.id}' has no schedule")
    return schedule


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


def execution_list_purgeable(
    *, older_than: timedelta, statuses: list[str] | None = None, now: datetime | None = None
) -> QuerySet[Execution]:
    """Executions retention would delete: in ``statuses`` (default COMPLETED, FAILED,
    CANCELLED) that ended before ``now - older_than`` or, never having ended, were created
    before it; never a child execution (it is deleted with its tree). A QuerySet of
    Execution; reads only."""
    cutoff = (now or timezone.now()) - older_than
    # Top executions only: children (branches, map items, sub-flows) go with their tree.
    base = Execution.objects.filter(
        status__in=_purge_statuses(statuses), parent_step__isnull=True
    ).order_by()
    return base.filter(ended_at__lt=cutoff) | base.filter(
        ended_at__isnull=True, created_at__lt=cutoff
    )


def webhook_get(*, flow_id: Any, hook_id: Any) -> Webhook:
    """The flow's webhook with this id, or NotFound (also for ids that are not numbers)."""
    found = None
    if str(hook_id).isdigit() and int(hook_id) < 2**63:
        found = Webhook.objects.filter(flow_id=flow_id, pk=int(hook_id)).first()
    if found is None:
        raise NotFound(f"flow {str(flow_id)!r} has no webhook {str(hook_id)!r}")
    return found


def webhook_list(*, flow: Flow) -> QuerySet[Webhook]:
    """The flow's webhooks, oldest first, with their authors."""
    return Webhook.objects.filter(flow=flow).select_related("created_by").order_by("id")


def webhook_delivery_list(*, hook: Webhook) -> QuerySet[WebhookDelivery]:
    """A hook's deliveries, newest first."""
    return WebhookDelivery.objects.filter(hook=hook).order_by("-received_at", "-id")


def webhook_delivery_list_of_flow(*, flow: Flow) -> QuerySet[WebhookDelivery]:
    """The deliveries to any of the flow's webhooks, newest first (without their payloads)."""
    return (
        WebhookDelivery.objects.filter(hook__flow=flow)
        .defer("payload")
        .order_by("-received_at", "-id")
    )
