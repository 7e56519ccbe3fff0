"""Named concurrency limits (``ConcurrencyLimit``): a slot taken in the transaction that
claims a step, freed in the one that records it, handed to the next waiter there.

A step lists its limits on its row (``TaskRun.limits``, written with it from the task's
``limits`` or its type's ``default_limits``). A step with none costs nothing here: every
caller tests that column in memory first, and no statement of this module runs for it.

The slots of a limit are its ``LimitHold`` rows: held (the step runs, or was handed the slot
and is about to) or waiting (the step's place in the queue). Every change of them happens
under the limit's row lock (``select_for_update``; SQLite's IMMEDIATE transaction serialises
writers anyway), so two claims at once never both take the last slot. Locks are taken last,
in name order, after the step and execution rows every caller already holds: the same order
everywhere, so no two transactions wait on each other in a circle.

A hold counts only while its step is open (PENDING or RUNNING): a waiting step cancelled
(``transitions.close_pending``) or deleted leaves nothing in use. Such a row is swept by
``sweep``, in the reaper's quick pass, which also hands its slot on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from flows.engine import transitions
from flows.engine.fanin import Adopt
from flows.engine.inputs import reference_scope, results_so_far
from flows.engine.wakeup import wake, wake_ready
from flows.expressions import (
    BUDGET_SETTING,
    DEFAULT_BUDGET_SECONDS,
    SECRETS,
    Expression,
    ExpressionError,
    compile_expression,
    resolve,
    secret_names,
)
from flows.models import (
    ConcurrencyLimit,
    Execution,
    LimitFairness,
    LimitHold,
    TaskRun,
    TaskRunStatus,
)
from flows.sql import writes
from flows.waiting import LIMIT, Waiting

logger = logging.getLogger("flows.engine")

OPEN = (TaskRunStatus.PENDING, TaskRunStatus.RUNNING)


def names(step: TaskRun) -> list[str]:
    """The limits ``step`` takes, in lock order."""
    return sorted(filter(None, step.limits.split(",")))


def holds(name: str | None = None) -> QuerySet[LimitHold]:
    """The holds that count: those of open steps."""
    rows = LimitHold.objects.filter(step__status__in=OPEN)
    return rows.filter(limit_id=name) if name is not None else rows


@dataclass
class _Limit:
    row: ConcurrencyLimit
    in_use: int = 0
    waiting: int = -1  # not counted yet
    starts: list[float] = field(default_factory=list)  # the rate's window, oldest first
    started: bool = False  # a start was added to ``starts``


def admit(steps: list[TaskRun], *, now: datetime | None = None) -> tuple[list[TaskRun], datetime]:
    """Of ``steps`` (locked PENDING rows about to be claimed), those that may run now, and
    the time to claim them at (taken after the limits' locks, so the recorded start times
    of a limit's steps follow the order its window saw them in; ``now``: a later look of the
    same claim, which keeps its first time). Those refused stay PENDING,
    waiting in the database (``park``): for a slot (woken when one frees), or for the rate's
    window (due when it allows).

    1. Lock the limits the steps take, in name order.
    2. Count each limit's slots in use (and, once a step is short of one, its waiters: those
       count as ahead of it); read the steps' own holds (a slot handed to a step when the
       one before it ended).
    3. For each step, oldest wake-up first, each of its limits in order: a slot handed to it,
       else a free one if nobody waits ahead of it, else its place in the queue (it keeps the
       slots of the limits before: every step takes them in the same order, so none waits
       for one that waits for it). Then each rate: fewer than ``rate_count`` starts in the
       last ``rate_per_seconds``, else it waits until the oldest of them leaves the window.
    4. Write the new holds, the windows and the waits; a step that runs takes back what it
       waited for before (a sleep's state) in its ``waiting``.
    """
    wanted = sorted({name for step in steps for name in names(step)})
    writes.lock_rows(ConcurrencyLimit, wanted)
    rows = list(ConcurrencyLimit.objects.filter(name__in=wanted).order_by("name"))
    now = now or timezone.now()
    if not rows:  # every limit the steps name was deleted: they run unlimited
        _restore(steps)
        return steps, now
    limits = {row.name: _Limit(row) for row in rows}
    for name, count in (
        holds()
        .filter(limit_id__in=limits, held=True)
        .values_list("limit_id")
        .annotate(n=Count("id"))
        .order_by()
    ):
        limits[name].in_use = count
    limited = [step for step in steps if step.limits]
    own = {
        (hold.step_id, hold.limit_id): hold
        for hold in LimitHold.objects.filter(step_id__in=[step.pk for step in limited])
    }
    keys = _keys(limited, limits)
    stamp = now.timestamp()
    admitted: list[TaskRun] = []
    new_holds: list[LimitHold] = []
    taken_over: list[int] = []  # own waiting rows that became slots
    parks: dict[int, dict[str, Any]] = {}
    later: list[tuple[TaskRun, datetime]] = []
    for step in steps:
        if not step.limits:
            admitted.append(step)
            continue
        verdict: tuple[str, str, int | None, float | None] | None = None
        for name in names(step):
            limit = limits.get(name)
            if limit is None:
                continue
            key = keys.get((step.pk, name), "")
            hold = own.get((step.pk, name))
            if hold is not None and hold.held:
                continue
            if limit.waiting < 0:  # counted once per claim, when a step is short of a slot
                limit.waiting = LimitHold.objects.filter(limit_id=name, held=False).count()
            ahead = limit.waiting - (1 if hold is not None else 0)
            if limit.in_use < limit.row.max_in_flight and ahead <= 0:
                limit.in_use += 1
                if hold is not None:
                    limit.waiting -= 1
                    taken_over.append(hold.pk)
                else:
                    new_holds.append(
                        LimitHold(
                            limit_id=name, step_id=step.pk, key=key, held=True, created_at=now
                        )
                    )
                continue
            if hold is None:
                limit.waiting += 1
                new_holds.append(
                    LimitHold(limit_id=name, step_id=step.pk, key=key, held=False, created_at=now)
                )
            verdict = (name, key, limit.waiting, None)
            break
        if verdict is None:
            for name in names(step):
                limit = limits.get(name)
                if limit is None or not limit.row.rate_count or not limit.row.rate_per_seconds:
                    continue
                if not limit.started:
                    limit.starts = [float(t) for t in limit.row.recent_starts or []]
                    limit.started = True
                window = limit.row.rate_per_seconds
                limit.starts = [t for t in limit.starts if t > stamp - window]
                if len(limit.starts) >= limit.row.rate_count:
                    until = limit.starts[-limit.row.rate_count] + window
                    verdict = (name, keys.get((step.pk, name), ""), None, until)
                    break
        if verdict is None:
            for name in names(step):
                limit = limits.get(name)
                if limit is not None and limit.started:
                    limit.starts.append(stamp)
            admitted.append(step)
            continue
        name, key, place, until = verdict
        due = datetime.fromtimestamp(until, tz=UTC) if until is not None else None
        parks[step.pk] = park_state(step, name, key, place, due)
        if due is not None:
            later.append((step, due))
    writes.insert_rows(LimitHold, new_holds)
    if taken_over:
        LimitHold.objects.filter(pk__in=taken_over).update(held=True)
    for limit in limits.values():
        if limit.started:
            ConcurrencyLimit.objects.filter(pk=limit.row.pk).update(
                recent_starts=limit.starts[-(limit.row.rate_count or 0) :]
            )
    transitions.park(parks, {})
    for step, due in later:
        wake(step.execution_id, at=due)
    _restore(admitted)
    return admitted, now


def _restore(admitted: list[TaskRun]) -> None:
    """Steps that waited for a limit and run now get back what they waited for before (a
    sleep's state, or nothing), in one UPDATE."""
    restored = {
        step.pk: {"waiting": _before(step)}
        for step in admitted
        if step.limits and _is_limit_wait(step.waiting)
    }
    transitions.park({}, restored)
    for step in admitted:
        if step.pk in restored:
            step.waiting = restored[step.pk]["waiting"]


def park_state(
    step: TaskRun, name: str, key: str, place: int | None, until: datetime | None
) -> dict[str, Any]:
    """The row changes of a step that waits for ``name``: its ``waiting`` (which limit, its
    place, until when for a rate) and its wake-up (FOREVER: a freed slot wakes it)."""
    state = Waiting(
        kind=LIMIT,
        limit=name,
        key=key or None,
        place=place,
        until=until.isoformat() if until is not None else None,
        then=_before(step),
    )
    return {
        "waiting": state.to_json(),
        "not_before": until or transitions.FOREVER,
        "woken_at": until or transitions.FOREVER,
    }


def _is_limit_wait(value: Any) -> bool:
    return isinstance(value, dict) and value.get("kind") == LIMIT


def _before(step: TaskRun) -> Any:
    """What the step waited for before it waited for a limit (None: nothing)."""
    return step.waiting.get("then") if _is_limit_wait(step.waiting) else step.waiting


def _keys(steps: list[TaskRun], limits: dict[str, _Limit]) -> dict[tuple[int, str], str]:
    """Each step's key under each of its limits that has a key expression: the expression
    over the step's parameters, their ``${...}`` references resolved (a secret stays its
    reference). A step whose key cannot be found waits under the key "" (and fails when it
    runs, if its parameters do not resolve)."""
    keyed = [(s, n) for s in steps for n in names(s) if n in limits and limits[n].row.key]
    if not keyed:
        return {}
    ids = list({step.execution_id for step, _ in keyed})
    executions = Execution.objects.in_bulk(ids)
    results = results_so_far(ids)
    budget = getattr(settings, BUDGET_SETTING, DEFAULT_BUDGET_SECONDS)
    out: dict[tuple[int, str], str] = {}
    for step, name in keyed:
        execution = executions.get(step.execution_id)
        if execution is None:
            continue
        try:
            scope = reference_scope(execution, results.get(execution.id, {}))
            scope[SECRETS] = {n: f"${{{SECRETS}.{n}}}" for n in secret_names(step.parameters)}
            parameters = resolve(step.parameters, scope)
            out[(step.pk, name)] = _expression(limits[name].row.key).key(
                {"parameters": parameters}, budget_seconds=budget
            )
        except (ValueError, ExpressionError) as exc:
            logger.warning(
                "execution=%s step=%s: key of limit %s not found (%s); waits under key ''",
                step.execution_id, step.seq, name, exc,
            )  # fmt: skip
    return out


_compiled: dict[str, Expression] = {}


def _expression(source: str) -> Expression:
    found = _compiled.get(source)
    if found is None:
        if len(_compiled) >= 256:
            _compiled.clear()
        found = _compiled[source] = compile_expression(source)
    return found


def release(step_ids: list[int], now: datetime, adopt: Adopt | None = None, room: int = 0) -> None:
    """Free the slots of these steps (recorded, lost or waiting again) and hand each to the
    next waiter, in the caller's transaction (locks: the steps' rows, held by the caller;
    the limits' rows are taken here, in name order). With ``adopt``, up to ``room`` of the
    steps handed a slot are claimed for that dispatcher here (``grant``)."""
    rows = list(
        LimitHold.objects.filter(step_id__in=step_ids).values_list("pk", "limit_id", "held")
    )
    if not rows:
        return
    _delete(LimitHold.objects.filter(pk__in=[pk for pk, _, _ in rows]))
    for name in sorted({name for _, name, held in rows if held}):
        room -= grant(name, now, adopt if room > 0 else None, room)


def grant(name: str, now: datetime, adopt: Adopt | None = None, room_here: int = 0) -> int:
    """Hand the free slots of limit ``name`` to the next waiters, and wake them: oldest first
    (``fifo``), or (``round_robin``) from the key with the fewest steps in flight, its oldest
    first. With ``adopt`` (the dispatcher whose steps freed the slots, in its record
    transaction), up to ``room_here`` of them that take only this limit, which has no rate,
    are claimed for it at once: no claim transaction and no queue hop. Returns how many it
    claimed so. Locks: the limit's row (the waiters' rows are nobody's: they were not due)."""
    row = _locked(name)
    if row is None:
        return 0
    room = row.max_in_flight - holds(name).filter(held=True).count()
    claimed_here = 0
    # The waiters are read without their steps (a join over thousands of them, at every
    # freed slot, is what would cost): a row whose step ended meanwhile (cancelled while it
    # waited) gets nothing from ``limit_granted``, is deleted here, and the next one is read.
    while room > 0:
        waiters = LimitHold.objects.filter(limit_id=name, held=False)
        if row.fairness == LimitFairness.ROUND_ROBIN:
            picked = _round_robin(name, waiters, room)
        else:
            picked = list(waiters.order_by("id").values_list("pk", "step_id")[:room])
        if not picked:
            break
        woken = transitions.limit_granted([step for _, step in picked], now)
        got = {step for step, _, _ in woken}
        LimitHold.objects.filter(pk__in=[pk for pk, step in picked if step in got]).update(
            held=True
        )
        stale = [pk for pk, step in picked if step not in got]
        if stale:
            _delete(LimitHold.objects.filter(pk__in=stale))
        here = []
        if adopt is not None and not row.rate_count:
            here = [s for s, _, taken in woken if taken == name][: room_here - claimed_here]
            if here:
                _claim_here(here, adopt, now)
                claimed_here += len(here)
        # A few queue messages however many: each dispatcher a message wakes claims every
        # due step it has room for (and the one that freed the slots looks again at once).
        wake_ready([execution_id for step, execution_id, _ in woken if step not in here])
        room -= len(got)
    return claimed_here


def _locked(name: str) -> ConcurrencyLimit | None:
    """The limit's row, locked (``writes.lock_rows``: also in the engine's own transaction)."""
    writes.lock_rows(ConcurrencyLimit, [name])
    return ConcurrencyLimit.objects.filter(name=name).first()


def _claim_here(step_ids: list[int], adopt: Adopt, now: datetime) -> None:
    """Claim steps just handed a slot for ``adopt``'s dispatcher, as a claim would (RUNNING
    with its lease, their executions RUNNING, what they waited for before given back)."""
    # Read in this transaction, after the grant's UPDATE locked them (SQLite: its write lock):
    # each one's first start is known, as in a claim's look.
    steps = list(TaskRun.objects.filter(pk__in=step_ids))
    _restore(steps)
    expires = now + adopt.lease
    transitions.claim_locked(steps, adopt.me, now, expires)
    transitions.executions_running([step.execution_id for step in steps], now)
    transitions.claimed(steps, adopt.me, now, expires)
    adopt.resumed += steps


def _round_robin(name: str, waiters: QuerySet[LimitHold], room: int) -> list[tuple[int, int]]:
    """Up to ``room`` waiters, one at a time from the key with the fewest steps in flight
    (ties: the key waiting longest), each key's oldest first."""
    first = dict(waiters.values("key").annotate(first=Min("id")).values_list("key", "first"))
    flying = Counter(
        dict(
            holds(name)
            .filter(held=True)
            .values("key")
            .annotate(n=Count("id"))
            .values_list("key", "n")
        )
    )
    picked: list[tuple[int, int]] = []
    while room > 0 and first:
        key = min(first, key=lambda k: (flying[k], first[k]))
        got = list(
            waiters.filter(key=key, id__gte=first[key])
            .order_by("id")
            .values_list("pk", "step_id")[:2]
        )
        picked.append(got[0])
        flying[key] += 1
        room -= 1
        if len(got) > 1:
            first[key] = got[1][0]
        else:
            del first[key]
    return picked


def _delete(rows: QuerySet[LimitHold]) -> None:
    """One DELETE, with no transaction of Django's around it: inside the engine's own
    (``writes.atomic``) Django would BEGIN a second one. Nothing cascades from a hold."""
    rows._raw_delete(rows.db)  # type: ignore[attr-defined]


def sweep(now: datetime) -> int:
    """The reaper's look (each quick pass): holds of steps that ended without freeing them (a
    waiting step cancelled, a flow's timeout) are deleted, and any limit with a free slot and
    waiters hands it on. One query when no step waits for or holds a slot. Returns the slots
    handed on."""
    if not LimitHold.objects.exists():  # outside a transaction: on SQLite one takes the lock
        return 0
    with transaction.atomic():
        stale = LimitHold.objects.exclude(step__status__in=OPEN)
        swept = set(stale.values_list("limit_id", flat=True).distinct())
        if swept:
            _delete(stale)
        waiting = set(holds().filter(held=False).values_list("limit_id", flat=True).distinct())
        for name in sorted(swept | waiting):
            grant(name, now)
        return len(swept | waiting)


def drop(name: str, now: datetime) -> None:
    """Limit ``name`` is being deleted: the steps waiting for it are due now (claimed, they
    take their other limits, and this one no more). Locks: the limit's row, held by the
    caller."""
    waiting = list(
        LimitHold.objects.filter(limit_id=name, held=False).values_list("step_id", flat=True)
    )
    wake_ready([execution_id for _, execution_id, _ in transitions.limit_granted(waiting, now)])
