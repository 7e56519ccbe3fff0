"""A flow's cron schedule, kept in step with the django-q2 Schedule that fires it."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from croniter import croniter
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule

from flows import selectors
from flows.definition import unstorable_problem
from flows.models import Execution, ExecutionTrigger, FlowSchedule, FlowVersion
from flows.services.errors import ServiceError
from flows.services.executions import execution_submit, flow_input_check

logger = logging.getLogger("flows.services")

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
    flow = selectors.flow_get(flow_id)
    errors = []
    cron_problem = cron_error(cron)
    if cron_problem:
        errors.append({"field": "cron", "message": cron_problem})
    if input is not None and not isinstance(input, dict):
        errors.append({"field": "input", "message": "must be an object"})
    elif problem := unstorable_problem(input, "input"):
        errors.append({"field": "input", "message": problem})
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
    # Refused now rather than at 3 a.m.: each run is checked again (execution_start), as the
    # flow may have a new version by then.
    current = FlowVersion.objects.get(flow_id=flow.id, version=flow.version)
    flow_input_check(flow_version=current, input=schedule.input if input is None else input)
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
    flow = selectors.flow_get(flow_id)
    schedule = selectors.flow_schedule_get(flow=flow)
    if schedule.q_schedule is not None:
        schedule.q_schedule.delete()
    schedule.delete()
    logger.info("flow=%s schedule deleted", flow.id)


def flow_run_scheduled(*, flow_id: str) -> Execution | None:
    """What the schedule's job does: start the flow's latest version, marked as scheduled.

    An input the version's ``input_schema`` refuses raises InvalidInput (execution_start) and
    starts nothing; the job (flows/jobs.py) logs it with its errors."""
    schedule = FlowSchedule.objects.filter(flow_id=flow_id).select_related("flow").first()
    if schedule is None or not schedule.enabled:
        logger.warning("flow=%s scheduled run skipped: no enabled schedule", flow_id)
        return None
    version = FlowVersion.objects.get(flow_id=flow_id, version=schedule.flow.version)
    execution, _ = execution_submit(
        flow_version=version, input=schedule.input, trigger=ExecutionTrigger.SCHEDULE
    )
    return execution
