"""Backfills: run a flow's cron slots between two times, a few at once.

A backfill looks at each slot of the flow's schedule's cron in [start, end] and decides, by
the slot's latest run (``Execution.scheduled_for``) and ``reprocess``:

- never ran: ``run``;
- a run still going: ``skip``;
- COMPLETED: ``skip``, or ``rerun`` with ``reprocess: all``;
- FAILED or CANCELLED: ``skip``, or ``rerun`` with ``reprocess: failed`` or ``all``.

A dry run answers that list. A real one makes every run at once, with the flow's CURRENT
version and the input given (else the schedule's current input): a backfill never replays
the parameters a slot first ran with (airflow#59043). The first ``max_active`` start; the
rest wait CREATED and an ``@on_end`` handler starts the next as each ends, in the outbox
transaction of that end (so a worker killed then neither loses nor doubles a start). A rerun
points at the run it repeats (``rerun_of``); the unique indexes on slots make a slot that
another run took meanwhile (a scheduler, a second backfill) a ``skip``, never a second run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction

from flows import selectors
from flows.models import (
    TERMINAL_STATUSES,
    Backfill,
    Execution,
    ExecutionEnd,
    ExecutionStatus,
    ExecutionTrigger,
    FlowSchedule,
    FlowVersion,
)
from flows.services.ends import on_end
from flows.services.errors import ServiceError
from flows.services.executions import execution_start, execution_submit, flow_input_check
from flows.services.flows import recorded_user
from flows.services.schedules import cron_slots

logger = logging.getLogger("flows.services")

MAX_SLOTS = 1000
MAX_ACTIVE = 100
REPROCESS = ("none", "failed", "all")
RUN, RERUN, SKIP = "run", "rerun", "skip"
# Started and not ended: what counts against max_active.
_GOING = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED)


@dataclass
class SlotPlan:
    """What a backfill does with one slot, and the run it concerns: the slot's latest run
    (a skip, a rerun's original) or, after a real run, the one it made."""

    slot: datetime
    action: str
    reason: str
    execution: Any = None
    # A rerun: which run of the slot it is (the latest run's slot_attempt + 1).
    slot_attempt: int = 0


def _refuse(field: str, message: str) -> ServiceError:
    return ServiceError(f"{field}: {message}", errors=[{"field": field, "message": message}])


def _checked(
    start: Any, end: Any, max_active: Any, reprocess: Any, input: Any
) -> list[dict[str, str]]:
    errors = []
    for field, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            errors.append({"field": field, "message": "must be a date and time with a zone"})
    if not errors and start > end:
        errors.append({"field": "end", "message": "must not be before start"})
    if isinstance(max_active, bool) or not isinstance(max_active, int):
        errors.append({"field": "max_active", "message": "must be a whole number"})
    elif not 1 <= max_active <= MAX_ACTIVE:
        errors.append({"field": "max_active", "message": f"must be 1 to {MAX_ACTIVE}"})
    if reprocess not in REPROCESS:
        errors.append({"field": "reprocess", "message": f"must be one of {', '.join(REPROCESS)}"})
    if input is not None and not isinstance(input, dict):
        errors.append({"field": "input", "message": "must be an object"})
    return errors


def backfill_plan(*, flow_id: Any, start: Any, end: Any, reprocess: str) -> list[SlotPlan]:
    """What a backfill of [start, end] would do with each slot (writes nothing)."""
    flow = selectors.flow_get(flow_id)
    errors = _checked(start, end, 1, reprocess, None)
    if errors:
        raise ServiceError(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )
    schedule = FlowSchedule.objects.filter(flow=flow).first()
    if schedule is None:
        raise _refuse("flow", f"flow '{flow.id}' has no schedule: a backfill runs its cron's slots")
    # ``after`` is exclusive: a microsecond before start makes start itself a slot.
    slots = cron_slots(schedule.cron, start - timedelta(microseconds=1), end, limit=MAX_SLOTS + 1)
    if len(slots) > MAX_SLOTS:
        raise _refuse(
            "end",
            f"the range holds more than {MAX_SLOTS} slots of '{schedule.cron}'; "
            "backfill it in parts",
        )
    latest: dict[datetime, tuple[Any, str, int]] = {}
    runs = (
        Execution.objects.filter(flow=flow, scheduled_for__in=slots)
        .order_by("scheduled_for", "slot_attempt")
        .values_list("scheduled_for", "id", "status", "slot_attempt")
    )
    for slot, execution_id, status, attempt in runs:
        latest[slot] = (execution_id, status, attempt)  # the last one of a slot wins
    return [_decide(slot, latest.get(slot), reprocess) for slot in slots]


def _decide(slot: datetime, latest: tuple[Any, str, int] | None, reprocess: str) -> SlotPlan:
    if latest is None:
        return SlotPlan(slot, RUN, "never ran")
    execution_id, status, attempt = latest
    if status not in TERMINAL_STATUSES:
        return SlotPlan(slot, SKIP, f"a run is {status}", execution_id)
    if status == ExecutionStatus.COMPLETED:
        if reprocess == "all":
            return SlotPlan(slot, RERUN, "COMPLETED; reprocess all", execution_id, attempt + 1)
        return SlotPlan(slot, SKIP, "already COMPLETED", execution_id)
    if reprocess in ("failed", "all"):
        why = f"{status}; reprocess {reprocess}"
        return SlotPlan(slot, RERUN, why, execution_id, attempt + 1)
    return SlotPlan(slot, SKIP, f"already ran: {status}", execution_id)


@transaction.atomic
def backfill_create(
    *,
    flow_id: Any,
    start: Any,
    end: Any,
    max_active: Any = 1,
    reprocess: Any = "none",
    input: Any = None,
    dry_run: bool = False,
    user: Any = None,
) -> tuple[Backfill | None, list[SlotPlan]]:
    """Plan (``dry_run``) or run a backfill of the flow's slots in [start, end].

    Returns (the Backfill or None for a dry run, each slot's plan; for a real run each
    ``run``/``rerun`` carries the execution made). Refused with a 400 and the field: a bad
    range, more than MAX_SLOTS slots, no schedule, an input the flow's input_schema refuses.
    """
    flow = selectors.flow_get(flow_id)
    errors = _checked(start, end, max_active, reprocess, input)
    if errors:
        raise ServiceError(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )
    plans = backfill_plan(flow_id=flow.id, start=start, end=end, reprocess=reprocess)
    schedule = FlowSchedule.objects.get(flow=flow)
    version = FlowVersion.objects.get(flow=flow, version=flow.version)
    run_input = flow_input_check(
        flow_version=version, input=schedule.input if input is None else input
    )
    if dry_run:
        return None, plans
    backfill = Backfill.objects.create(
        flow=flow,
        start=start,
        end=end,
        max_active=max_active,
        reprocess=reprocess,
        created_by=recorded_user(user),
    )
    started = 0
    for plan in plans:
        if plan.action == SKIP:
            continue
        try:
            with transaction.atomic():
                execution, _ = execution_submit(
                    flow_version=version,
                    user=user,
                    input=run_input,
                    trigger=ExecutionTrigger.BACKFILL,
                    rerun_of=(Execution(pk=plan.execution) if plan.action == RERUN else None),
                    scheduled_for=plan.slot,
                    slot_attempt=plan.slot_attempt,
                    backfill=backfill,
                    start=started < max_active,
                )
        except IntegrityError:
            plan.action, plan.reason = SKIP, "another run took the slot meanwhile"
            continue
        started += started < max_active
        plan.execution = execution.id
    logger.info(
        "flow=%s backfill %s: %d slot(s), %d run(s), %d started",
        flow.id,
        backfill.id,
        len(plans),
        sum(plan.action != SKIP for plan in plans),
        started,
    )
    return backfill, plans


@on_end("backfill")
def start_next_backfill_runs(end: ExecutionEnd, execution: Execution) -> None:
    """A backfill's run ended: start its waiting runs (``backfill_top_up``)."""
    if execution.backfill_id is not None:
        backfill_top_up(backfill_id=execution.backfill_id)


def backfill_top_up(*, backfill_id: int) -> int:
    """Start the backfill's waiting runs, in slot order, up to ``max_active`` going; how many
    started. Called in the transaction that ended one of its runs (the handler above) or
    deleted one (``execution_delete``: a deleted run writes no end).

    A run that can no longer start (its pinned version no longer validates: a task type
    removed since) is deleted and counted on the
    backfill (``refused``, ``last_error``) rather than retried: it would be refused again,
    and the runs after it must not wait on it.
    """
    backfill = Backfill.objects.select_for_update().filter(pk=backfill_id).first()
    if backfill is None:
        return 0
    going = Execution.objects.filter(backfill=backfill, status__in=_GOING).count()
    room = backfill.max_active - going
    started = 0
    waiting = Execution.objects.filter(backfill=backfill, status=ExecutionStatus.CREATED)
    for execution_id in waiting.order_by("scheduled_for").values_list("id", flat=True):
        if started >= room:
            break
        try:
            with transaction.atomic():
                execution_start(execution_id=execution_id)
        except ServiceError as exc:
            Execution.objects.filter(pk=execution_id).delete()
            backfill.refused += 1
            backfill.last_error = exc.message[:2000]
            backfill.save(update_fields=["refused", "last_error"])
            logger.warning("backfill %s: run %s refused: %s", backfill.id, execution_id, exc)
            continue
        started += 1
    return started
