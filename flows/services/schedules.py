"""A flow's cron schedule, kept in step with the django-q2 Schedule that fires it; what a fire
does with the slots that are due (overlap, catch-up); and a slot buffered by ``buffer_one``,
started when the run before it ends.

Slots. Each cron time is a slot; a run records it (``Execution.scheduled_for``) and a slot's
first run is unique per flow, so a redelivered job or two schedulers never run one twice.
``FlowSchedule.last_slot_at`` is the latest slot dealt with; a fire looks at the slots after
it up to now. The latest of them, if at most ``LATE_AFTER_SECONDS`` (5 minutes) old, is on
time; older ones were missed (no worker ran the scheduler then: django-q2 fires a late
schedule once and moves on, ``catch_up`` off) and ``catchup`` decides which of them run:

- ``none``: none (each is counted as skipped);
- ``last``: the latest within ``catchup_window_seconds``;
- ``all``: every one within the window, oldest first.

Every slot that runs, on time or caught up, obeys ``overlap`` against the schedule's runs
still going (not those of backfills or other triggers): ``skip`` counts it as skipped,
``buffer_one`` keeps it (at most one; a second is skipped) and starts it when the running one
ends, ``allow`` starts it anyway. So ``catchup: all`` with ``overlap: skip`` runs only the
first missed slot; use ``allow`` to run them all at once, or a backfill to pace them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.models import Schedule

from flows import selectors
from flows.definition import unstorable_problem
from flows.models import (
    TERMINAL_STATUSES,
    Execution,
    ExecutionEnd,
    ExecutionTrigger,
    FlowSchedule,
    FlowVersion,
    ScheduleCatchup,
    ScheduleOverlap,
)
from flows.services.ends import on_end
from flows.services.errors import ServiceError
from flows.services.executions import execution_submit, flow_input_check

logger = logging.getLogger("flows.services")

SCHEDULE_FUNC = "flows.jobs.run_scheduled"
# A slot older than this when its fire comes was missed: django-q2's scheduler looks about
# every 30 s, so an on-time fire is at most that late (plus a busy queue); five minutes is a
# cluster that was stopped.
LATE_AFTER_SECONDS = 300
# How many due slots one fire looks at (a minutely cron after a month down is 43,200 of
# them: the older ones are counted as skipped, never started).
MAX_DUE_SLOTS = 1000
MAX_CATCHUP_WINDOW = 366 * 86_400


def _cron_next(cron: str) -> Any:
    return croniter(cron, timezone.localtime()).get_next(datetime)


def cron_error(cron: Any) -> str:
    """Why ``cron`` is not a usable cron expression, or "" when it is."""
    if not isinstance(cron, str) or not croniter.is_valid(cron.strip()):
        return "must be a cron expression like '*/15 * * * *' (minute hour day month weekday)"
    return ""


def cron_slots(cron: str, after: datetime | None, until: datetime, *, limit: int) -> list[datetime]:
    """The cron's times in (``after``, ``until``], oldest first; the latest ``limit`` of them
    when there are more (``after`` None: no lower bound). In the server's time zone, as
    django-q2 fires them."""
    it = croniter(cron, timezone.localtime(until))
    slots: list[datetime] = []
    # get_prev from ``until`` skips ``until`` itself when it is a slot: start a second later.
    it.set_current(timezone.localtime(until) + timedelta(seconds=1))
    while len(slots) < limit:
        slot = it.get_prev(datetime)
        if after is not None and slot <= after:
            break
        slots.append(slot)
    return slots[::-1]


def _choice(value: Any, choices: Any, field: str, errors: list[dict[str, str]]) -> None:
    if value is not None and value not in choices.values:
        allowed = ", ".join(choices.values)
        errors.append({"field": field, "message": f"must be one of {allowed}"})


@transaction.atomic
def flow_schedule_set(
    *,
    flow_id: Any,
    cron: Any,
    enabled: bool = True,
    input: dict[str, Any] | None = None,
    overlap: str | None = None,
    catchup: str | None = None,
    catchup_window_seconds: int | None = None,
) -> FlowSchedule:
    """Create or change the flow's cron schedule; each run is an ordinary execution.

    The django-q2 Schedule that fires it is kept in step: paused means it never fires
    (``repeats=0``), enabled means it fires at every cron time from now on. ``overlap``,
    ``catchup`` and ``catchup_window_seconds`` left out (None) keep what the schedule has
    (the defaults for a new one: skip, none, a day). A new schedule, one enabled again and a
    new cron count slots from now: what was paused or had another cron is never caught up.
    """
    flow = selectors.flow_get(flow_id)
    errors: list[dict[str, str]] = []
    cron_problem = cron_error(cron)
    if cron_problem:
        errors.append({"field": "cron", "message": cron_problem})
    if input is not None and not isinstance(input, dict):
        errors.append({"field": "input", "message": "must be an object"})
    elif problem := unstorable_problem(input, "input"):
        errors.append({"field": "input", "message": problem})
    if not isinstance(enabled, bool):
        errors.append({"field": "enabled", "message": "must be true or false"})
    _choice(overlap, ScheduleOverlap, "overlap", errors)
    _choice(catchup, ScheduleCatchup, "catchup", errors)
    window = catchup_window_seconds
    if window is not None and (
        isinstance(window, bool)
        or not isinstance(window, int)
        or not 0 < window <= MAX_CATCHUP_WINDOW
    ):
        errors.append(
            {
                "field": "catchup_window_seconds",
                "message": f"must be a whole number of seconds, 1 to {MAX_CATCHUP_WINDOW}",
            }
        )
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
    restarted = schedule.pk is None or cron != schedule.cron or (enabled and not schedule.enabled)
    if restarted:
        schedule.last_slot_at = timezone.now()
    schedule.cron, schedule.enabled = cron, enabled
    if input is not None:
        schedule.input = input
    if overlap is not None:
        schedule.overlap = overlap
    if catchup is not None:
        schedule.catchup = catchup
    if window is not None:
        schedule.catchup_window_seconds = window
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


def flow_run_scheduled(*, flow_id: str, now: datetime | None = None) -> list[Execution]:
    """What the schedule's job does: deal with every slot due since ``last_slot_at`` (the
    module's docstring: on time, missed and caught up, overlap), each run of the flow's
    latest version marked as scheduled with its slot. Returns the executions started.

    A fire with no slot due after ``last_slot_at`` (the job run by hand) runs the latest
    slot as on time, unless it has run already.

    An input the version's ``input_schema`` refuses starts nothing for its slot; what the
    fire decided is kept (the slot counts as dealt with: it would be refused again), then
    the first refusal is raised (InvalidInput) for the job (flows/jobs.py) to log.
    """
    started, refusals = _run_due(flow_id, now or timezone.now())
    if refusals:
        raise refusals[0]
    return started


@transaction.atomic
def _run_due(flow_id: str, now: datetime) -> tuple[list[Execution], list[ServiceError]]:
    schedule = (
        FlowSchedule.objects.select_for_update()
        .filter(flow_id=flow_id)
        .select_related("flow")
        .first()
    )
    if schedule is None or not schedule.enabled:
        logger.warning("flow=%s scheduled run skipped: no enabled schedule", flow_id)
        return [], []
    since = schedule.last_slot_at or schedule.updated_at
    due = cron_slots(schedule.cron, since, now, limit=MAX_DUE_SLOTS)
    if due:
        on_time = [due[-1]] if now - due[-1] <= timedelta(seconds=LATE_AFTER_SECONDS) else []
    else:
        on_time = due = cron_slots(schedule.cron, None, now, limit=1)
    missed = due[: len(due) - len(on_time)]
    window_start = now - timedelta(seconds=schedule.catchup_window_seconds)
    within = [slot for slot in missed if slot >= window_start]
    caught = {
        ScheduleCatchup.NONE: [],
        ScheduleCatchup.LAST: within[-1:],
        ScheduleCatchup.ALL: within,
    }[schedule.catchup]
    schedule.last_slot_at = max(due[-1], schedule.last_slot_at or due[-1])
    skipped = len(missed) - len(caught)
    if skipped:
        schedule.last_skipped_at = missed[-1]
        logger.warning(
            "flow=%s %d missed slot(s) not caught up (catchup %s, window %s s), latest %s",
            flow_id,
            skipped,
            schedule.catchup,
            schedule.catchup_window_seconds,
            missed[-1].isoformat(),
        )
    version = FlowVersion.objects.get(flow_id=flow_id, version=schedule.flow.version)
    started: list[Execution] = []
    refusals: list[ServiceError] = []
    for slot in [*caught, *on_time]:
        if schedule.overlap != ScheduleOverlap.ALLOW and _schedule_running(flow_id):
            if schedule.overlap == ScheduleOverlap.BUFFER_ONE and schedule.buffered_slot is None:
                schedule.buffered_slot = slot
                logger.info("flow=%s slot %s waits for the run going", flow_id, slot.isoformat())
                continue
            skipped += 1
            schedule.last_skipped_at = slot
            logger.warning(
                "flow=%s slot %s skipped: the previous scheduled run still goes (overlap %s)",
                flow_id,
                slot.isoformat(),
                schedule.overlap,
            )
            continue
        try:
            execution = _start_slot(schedule, version, slot)
        except ServiceError as exc:
            logger.warning("flow=%s slot %s refused: %s", flow_id, slot.isoformat(), exc.message)
            refusals.append(exc)
            continue
        if execution is not None:
            started.append(execution)
    schedule.skipped_slots += skipped
    schedule.save(
        update_fields=["last_slot_at", "buffered_slot", "skipped_slots", "last_skipped_at"]
    )
    return started, refusals


def _schedule_running(flow_id: str) -> bool:
    """Whether a scheduled run of the flow has not ended (the execution_one_per_slot index)."""
    return (
        Execution.objects.filter(
            flow_id=flow_id, scheduled_for__isnull=False, trigger=ExecutionTrigger.SCHEDULE
        )
        .exclude(status__in=TERMINAL_STATUSES)
        .exists()
    )


def _start_slot(schedule: FlowSchedule, version: FlowVersion, slot: datetime) -> Execution | None:
    """Start the run of ``slot``; None when the slot has run already (a redelivered job)."""
    try:
        with transaction.atomic():
            execution, _ = execution_submit(
                flow_version=version,
                input=schedule.input,
                trigger=ExecutionTrigger.SCHEDULE,
                scheduled_for=slot,
            )
    except IntegrityError:
        logger.info("flow=%s slot %s has run already", schedule.flow_id, slot.isoformat())
        return None
    return execution


@on_end("buffered_slot")
def start_buffered_slot(end: ExecutionEnd, execution: Execution) -> None:
    """``overlap: buffer_one``: the end of a scheduled run starts the slot that waited for it
    (the flow's current version and the schedule's input, as any scheduled run). An input
    refused now is logged and the slot dropped: it would be refused again."""
    if execution.trigger != ExecutionTrigger.SCHEDULE:
        return
    schedule = (
        FlowSchedule.objects.select_for_update()
        .filter(flow_id=end.flow_id, buffered_slot__isnull=False)
        .select_related("flow")
        .first()
    )
    if schedule is None or _schedule_running(end.flow_id):
        return
    slot = schedule.buffered_slot
    schedule.buffered_slot = None
    schedule.save(update_fields=["buffered_slot"])
    if not schedule.enabled:
        return
    version = FlowVersion.objects.get(flow_id=end.flow_id, version=schedule.flow.version)
    try:
        with transaction.atomic():
            _start_slot(schedule, version, slot)
    except ServiceError as exc:
        logger.warning(
            "flow=%s buffered slot %s refused: %s", end.flow_id, slot.isoformat(), exc.message
        )
