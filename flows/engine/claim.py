"""Claiming ready steps, and keeping them: the one claim UPDATE, lease renewal and the
cancel check.

A step is claimed with a conditional UPDATE (PENDING -> RUNNING, with this worker's name
and a lease); a step whose UPDATE changed no row is another worker's. While its task runs,
the claim is kept by renewing the lease; a step whose lease expired is the reaper's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from flows.engine import limits, transitions
from flows.engine.inputs import results_so_far
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import reads


@dataclass
class Claimed:
    """Steps claimed together, with what running them needs."""

    steps: list[TaskRun]  # now RUNNING under this worker's lease
    executions: dict[uuid.UUID, Execution]  # with their flow_version; a deleted one is absent
    results: dict[uuid.UUID, dict[str, Any]]  # results so far, by execution
    now: datetime


def ready(
    now: datetime, *, exclude: Iterable[uuid.UUID] = (), only: uuid.UUID | None = None
) -> QuerySet[TaskRun]:
    """PENDING steps that may run now: their execution active and not pausing, their delay
    (a retry's) over. ``only``: of that one execution and its children."""
    steps = TaskRun.objects.filter(
        status=TaskRunStatus.PENDING,
        execution__status__in=ACTIVE_STATUSES,
        execution__pause_requested=False,
    ).filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    if only is not None:
        # An execution and its children (parallel branches, map items, sub-flows).
        steps = steps.filter(Q(execution_id=only) | Q(execution__root_id=only))
    exclude = list(exclude)
    return steps.exclude(execution_id__in=exclude) if exclude else steps


def claim_steps(
    me: str,
    lease: timedelta,
    room: int,
    *,
    exclude: Iterable[uuid.UUID] = (),
    only: uuid.UUID | None = None,
    probe: bool = True,
) -> Claimed | None:
    """Claim up to ``room`` ready steps, oldest wake-up first, for worker ``me``.

    None when nothing is ready: most looks find nothing, so that is asked first outside a
    transaction, which on SQLite would take the database's one write lock and on PostgreSQL
    costs two more round trips. Not with ``probe`` False: a job's first look, made for an
    execution its message says is ready, mostly finds it, and the probe would be one more
    query before its first step. Otherwise one transaction, a few statements however many it
    takes:

    1. Lock the ready steps (``SKIP LOCKED`` on PostgreSQL, so workers claiming at once take
       different rows; SQLite's IMMEDIATE transaction serialises them).
    2. Steps that take named limits take their slots (``limits.admit``); those refused wait
       PENDING in the database. No statement for steps without limits.
    3. Claim them: PENDING -> RUNNING with this worker's lease, only where still PENDING.
    4. Read those executions, their flow versions and results so far, in the same
       transaction: if this fails, the claim rolls back with it.
    5. Mark their executions RUNNING (resume and redrive queue one again: the first start
       time stays).
    """
    now = timezone.now()
    exclude = list(exclude)
    if probe and not reads.ready_exists(now, exclude, only):  # ``ready``'s question, quicker
        return None
    expires = now + lease
    with transaction.atomic():
        # ``ready(...)``, oldest wake-up first, locked: its SQL built once.
        steps = reads.ready_steps(now, exclude, only, room)
        if not steps:
            return Claimed([], {}, {}, now)
        if any(step.limits for step in steps):
            # Slots of named limits, taken here or waited for in the database; a step without
            # limits never comes here.
            steps, now = _admit(ready(now, exclude=exclude, only=only), steps, room)
            expires = now + lease
            if not steps:
                return Claimed([], {}, {}, now)
        # A step that waited (its children, a sleep, a signal) is claimed again to go on: it
        # keeps the start of its first run, when it began waiting.
        claimed = transitions.claim_locked(steps, me, now, expires)
        if claimed != len(steps):  # cannot happen under the row locks; kept honest anyway
            ours = set(
                TaskRun.objects.filter(
                    pk__in=[step.pk for step in steps],
                    status=TaskRunStatus.RUNNING,
                    worker=me,
                    lease_expires_at=expires,
                ).values_list("pk", flat=True)
            )
            steps = [step for step in steps if step.pk in ours]
        loaded = load(steps, now)
        transitions.executions_started(loaded.executions.values(), now)
    transitions.claimed(steps, me, now, expires)
    return loaded


# How many more looks a claim takes when limits refused some of the steps it found: each
# refused step joins its limit's queue (so a later key's step is among the waiters a freed
# slot chooses from), and the claim fills its room with the steps that may run.
ADMIT_ROUNDS = 10


def _admit(
    candidates: QuerySet[TaskRun], steps: list[TaskRun], room: int
) -> tuple[list[TaskRun], datetime]:
    """``limits.admit`` the steps found, and while it refused some, the next ones (up to
    ADMIT_ROUNDS looks): the admitted steps, and the one time they are claimed at (the first
    look's, taken after its limits' locks, which the later looks hold still)."""
    admitted, now = limits.admit(steps)
    seen = [step.pk for step in steps]
    for _ in range(ADMIT_ROUNDS):
        if len(admitted) >= room or len(admitted) == len(seen):
            break
        more = list(
            candidates.exclude(pk__in=seen)
            .order_by("woken_at")
            .select_for_update(skip_locked=True, of=("self",))[: room - len(admitted)]
        )
        if not more:
            break
        seen += [step.pk for step in more]
        taken, _ = limits.admit(more, now=now)
        admitted += taken
    return admitted, now


def load(steps: list[TaskRun], now: datetime) -> Claimed:
    """What running claimed ``steps`` needs: their executions with their flow versions and
    the results so far (none to read when every step is its execution's first: only an
    earlier step has a result). A map's items started by the dispatcher that runs them need
    none of it (``fanin.Adopt``)."""
    ids = [step.execution_id for step in steps]
    # ``in_bulk`` of each, their SQL built once (``flows.sql.reads``).
    executions = reads.by_keys(Execution, ids)
    versions = reads.by_keys(FlowVersion, {e.flow_version_id for e in executions.values()})
    first = all(step.seq == 1 for step in steps)
    results = {} if first else results_so_far(ids)
    for execution in executions.values():
        execution.flow_version = versions[execution.flow_version_id]
    return Claimed(steps, executions, results, now)


def renew_leases(step_ids: list[int], me: str, lease: timedelta) -> set[int] | None:
    """Extend the leases of these running steps of worker ``me``: the ids still ours (None:
    all of them, the usual answer, in one UPDATE)."""
    if not step_ids:
        return None
    held = TaskRun.objects.filter(pk__in=step_ids, status=TaskRunStatus.RUNNING, worker=me)
    if held.update(lease_expires_at=timezone.now() + lease) == len(step_ids):
        return None
    return set(held.values_list("pk", flat=True))


def cancel_requests(execution_ids: list[uuid.UUID]) -> dict[uuid.UUID, bool]:
    """Whether each execution was asked to cancel; a deleted one is absent."""
    return dict(
        Execution.objects.filter(pk__in=execution_ids).values_list("pk", "cancel_requested")
    )
