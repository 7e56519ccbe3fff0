"""The one step loop: what a worker's job, ``manage.py runflow`` and the tests all run.

``dispatch`` is the worker's entry (called by the django-q2 job ``flows.jobs.run_execution``);
``inline.run_inline`` runs the same ``Dispatcher`` for one execution at concurrency 1.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from flows.definition import FlowDefinition, FlowValidationError
from flows.engine import claim, fanin, record, timing
from flows.engine.inputs import flow_definition
from flows.engine.lost import interrupted
from flows.engine.outcome import StepOutcome, blocked, failure, finish, stopped
from flows.engine.routing import Finished, decide
from flows.engine.step import Flight, start
from flows.engine.taskloop import Handle, Retired, TaskLoop
from flows.engine.watchdog import Watchdog
from flows.engine.worker import reconnect, worker_id
from flows.models import Execution, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry, TaskType, default_registry
from flows.sql import writes

logger = logging.getLogger("flows.engine")


@dataclass(eq=False)
class Slot:
    """One execution the dispatcher is running: its state and the step in flight."""

    execution: Execution
    definition: FlowDefinition
    results: dict[str, Any]
    step: TaskRun
    flight: Flight | None = None


class Dispatcher:
    """Runs up to ``concurrency`` executions at once in one worker process.

    Tasks are coroutines, so a step that waits on I/O need not hold a process: every task of
    every execution here runs on one event loop (``TaskLoop``), which this thread runs while
    it waits for tasks to finish, between its database work (claims, results, routing) in
    batches. A watchdog thread guards it against tasks that block the loop (``watchdog``).

    1. Ready steps are claimed in batches, oldest wake-up first, up to the concurrency
       (``fill``): the job's own execution and others beside it (their queue messages later
       find nothing to do). While there is room it looks again every
       FILL_INTERVAL_SECONDS, less often while it finds nothing. ``only`` limits it to one
       execution (``run_inline``).
    2. Steps that finished are recorded together, their results and routing in one
       transaction (``flush``); the next step of each execution starts at once, on the
       same loop.
    3. Once a second (``watch``): one query looks for cancelled or deleted executions among
       those in flight, and one UPDATE renews the leases of every running step (while a task
       blocks the loop, and so this thread, the watchdog renews them: README "Faults and
       recovery").
    4. A task that blocks the loop past its timeout is failed; the loop is replaced, and the
       other steps it held are recorded LOST and queued again (their tasks never finished).
       One that blocks it for good is given up by the watchdog (``watchdog``).
    5. After the step budget no new executions are taken and finishing steps hand their
       successors back to the queue; ``run`` returns when nothing is in flight.
    """

    def __init__(
        self,
        registry: TaskRegistry | None = None,
        concurrency: int | None = None,
        *,
        only: uuid.UUID | None = None,
        exit_when_stuck: bool = False,
    ) -> None:
        self.exit_when_stuck = exit_when_stuck
        self.registry = registry or default_registry()
        self.concurrency = concurrency or settings.FLOW_WORKER_CONCURRENCY
        self.only = only
        self.me = worker_id()
        self.lease = timedelta(seconds=settings.FLOW_LEASE_SECONDS)
        self.loop: TaskLoop | None = None
        self.slots: dict[uuid.UUID, Slot] = {}
        self.steps = 0
        self.budget_end = time.monotonic() + settings.FLOW_STEP_BUDGET_SECONDS
        # Renewed from this thread between runs of the task loop, and by the watchdog while a
        # task blocks the loop (blocking code in ``async def run``): such a task holds up the
        # other tasks, not the leases, so the reaper never mistakes a stalled worker for a
        # dead one. Only a worker whose process stops (died, or hangs as a whole) loses them.
        self.renew_every = min(timing.RENEW_INTERVAL_SECONDS, settings.FLOW_LEASE_SECONDS / 3)
        self.next_renew = time.perf_counter() + self.renew_every
        self.flying: dict[Handle, Slot] = {}  # the slot of each task on the loop
        self.next_fill = 0.0
        self.looked = False  # the job's first look claims without probing first
        # The earliest hard deadline (timeout + grace) among the tasks in flight: the loop
        # wakes then to see whether one is blocking the task loop.
        self.next_deadline = math.inf
        self.fill_every = timing.FILL_INTERVAL_SECONDS
        self.finished: list[tuple[Slot, Finished]] = []  # to record at the next flush
        self.types: dict[str, TaskType | None] = {}  # task types as of the last plugin scan
        self.adopted: list[TaskRun] = []  # map items started and claimed here, to launch
        self.adopted_executions: dict[uuid.UUID, Execution] = {}  # theirs, read as started
        self.resumed: list[TaskRun] = []  # steps handed a limit's slot freed here, to launch
        # Steps of named limits were recorded: the slots they freed went to waiting steps,
        # due now, which the next fill takes at once rather than at its interval.
        self.refill = False

    def run(self) -> int:
        """Run ready executions until none is in flight and none is ready, or the budget is
        spent; returns the steps recorded."""
        watchdog = Watchdog(self, exit_when_stuck=self.exit_when_stuck)
        watchdog.start()
        try:
            next_watch = time.perf_counter() + timing.WATCH_INTERVAL_SECONDS
            while True:
                if self._has_room() and (self.refill or time.perf_counter() >= self.next_fill):
                    self._guarded(self.fill, "looking for ready executions")
                self.flush()
                if not self.slots:
                    if self.refill and self._has_room():
                        continue  # slots it freed went to waiting steps, due now: take them
                    # Whatever became ready since the last look has a queue message of its own.
                    break
                wake_at = min(next_watch, self.next_deadline)
                if self._has_room():
                    wake_at = min(wake_at, self.next_fill)
                loop = self._task_loop()
                if not loop.done:
                    loop.run(wake_at)  # the tasks run here, until one finishes or wake_at
                done = loop.take_done()
                if loop.held_up or time.perf_counter() >= self.next_deadline:
                    # First: a task that finished only past its deadline blocked the loop.
                    self._guarded(self._check_deadlines, "checking for a blocked task loop")
                for handle in done:
                    slot = self.flying.pop(handle, None)
                    if slot is not None and slot.flight is not None:
                        self.advance(slot, finish(slot.flight, slot.definition))
                if time.perf_counter() >= next_watch:
                    self._guarded(self.watch, "watch")
                    next_watch = time.perf_counter() + timing.WATCH_INTERVAL_SECONDS
                self.flush()
        except Retired:
            # The watchdog wrote what became of this worker's steps while a task blocked it.
            logger.warning("worker %s: stopped, its steps taken over by its watchdog", self.me)
        finally:
            watchdog.stop()
            if self.loop is not None:
                self.loop.close()
        return self.steps

    def _guarded(self, work: Any, what: str) -> None:
        try:
            work()
        except DatabaseError as exc:
            # A database hiccup (a restart, a failover): try again at the next tick. Leases
            # last FLOW_LEASE_SECONDS, so a short outage costs no step.
            logger.warning("worker %s: %s failed, will retry: %s", self.me, what, exc)
            reconnect()

    # -- taking work ----------------------------------------------------------------------
    def _has_budget(self) -> bool:
        return self.steps < settings.FLOW_STEP_BUDGET_STEPS and time.monotonic() < self.budget_end

    def _has_room(self) -> bool:
        return len(self.slots) < self.concurrency and self._has_budget()

    def fill(self) -> None:
        """Claim ready steps of other executions while there is room and budget, and start
        them (``claim.claim_steps``: one batch, a few statements however many it takes)."""
        self.next_fill = time.perf_counter() + self.fill_every
        self.refill = False
        room = self.concurrency - len(self.slots)
        if room <= 0 or not self._has_budget():
            return
        claimed = claim.claim_steps(
            self.me, self.lease, room, exclude=self.slots, only=self.only, probe=self.looked
        )
        self.looked = True
        if claimed is None:
            self.fill_every = min(self.fill_every * 2, timing.FILL_INTERVAL_MAX_SECONDS)
            return
        self.fill_every = timing.FILL_INTERVAL_SECONDS
        self._start_claimed(claimed)

    def _start_claimed(self, claimed: claim.Claimed) -> None:
        """Start steps claimed for this worker: by ``fill``, or as map items it started."""
        if not claimed.steps:
            return
        # One plugin-folder scan and one parse look-up per flow version for the whole batch:
        # steps look task types up in this scan's result, not in a scan of their own.
        self.types.clear()
        self.types.update(self.registry.snapshot().types)
        # Keyed by version and scope: a parallel branch or map item runs part of its version.
        parsed: dict[tuple[int, tuple[str, ...]], FlowDefinition | FlowValidationError] = {}
        for step in claimed.steps:
            execution = claimed.executions.get(step.execution_id)
            if execution is None:  # deleted since: its steps went with it
                continue
            version_id = (execution.flow_version_id, tuple(execution.scope))
            if version_id not in parsed:
                try:
                    parsed[version_id] = flow_definition(execution, self.registry, refresh=False)
                except FlowValidationError as exc:
                    parsed[version_id] = exc
            definition = parsed[version_id]
            if isinstance(definition, FlowValidationError):
                self._invalid(execution, step, definition)
                self.steps += 1
                continue
            self._take(execution, definition, claimed.results.get(execution.id, {}), step)
            if time.perf_counter() >= self.next_renew:
                # Starting many can take a while: keep the steps already running ours.
                self.renew_leases()

    def _invalid(self, execution: Execution, step: TaskRun, exc: FlowValidationError) -> None:
        """Fail the claimed step, and so the execution: its flow no longer validates."""
        outcome = failure(f"the flow's definition is no longer valid: {exc}", permanent=True)
        finished = decide(execution, None, step, outcome, {})
        record.write_alone(finished, self.me, self.lease, continue_here=False)

    def _take(
        self,
        execution: Execution,
        definition: FlowDefinition,
        results: dict[str, Any],
        step: TaskRun,
    ) -> None:
        slot = Slot(execution, definition, results, step)
        self.slots[execution.id] = slot
        if execution.cancel_requested:
            outcome = StepOutcome(TaskRunStatus.CANCELLED, error="cancelled before it started")
            self.advance(slot, outcome)
        else:
            self._launch(slot)

    def _task_loop(self) -> TaskLoop:
        if self.loop is None:
            self.loop = TaskLoop()
        return self.loop

    def _task_type(self, name: str) -> TaskType | str:
        """The type of that name, or why there is none. One registry look-up (and plugin
        folder scan) per type missing from the batch's scan, not one per step."""
        if name not in self.types:
            self.types[name] = self.registry.get(name)
        found = self.types[name]
        return found if found is not None else (self.registry.problem(name) or "")

    # -- moving executions on -------------------------------------------------------------
    def _launch(self, slot: Slot) -> None:
        """Start the slot's current step; one that cannot start is finished at once."""
        started = start(
            slot.execution,
            slot.definition,
            slot.step,
            slot.results,
            self._task_type(slot.step.task_type),
            self._task_loop(),
        )
        if isinstance(started, StepOutcome):
            self.advance(slot, started)
        else:
            slot.flight = started
            self.flying[started.future] = slot
            if started.hard_deadline < self.next_deadline:
                self.next_deadline = started.hard_deadline

    def advance(self, slot: Slot, outcome: StepOutcome) -> None:
        """A step of ``slot`` ended with ``outcome``: decide what follows, and queue it for
        the next ``flush``."""
        if slot.flight is not None:
            self.flying.pop(slot.flight.future, None)
        slot.flight = None
        if outcome.stop:  # the execution vanished or the step was taken away
            self.slots.pop(slot.execution.id, None)
            return
        finished = decide(slot.execution, slot.definition, slot.step, outcome, slot.results)
        self.finished.append((slot, finished))

    def flush(self) -> None:
        """Record the finished steps and start their successors.

        Steps that finished together are written in one transaction (up to RECORD_BATCH), so
        a busy worker pays for one commit, not one per step. A loop: a successor that ends
        before it starts (a vanished task type, an unresolvable reference) joins the next
        batch.
        """
        while self.finished:
            batch = self.finished[: timing.RECORD_BATCH]
            del self.finished[: timing.RECORD_BATCH]
            if any(finished.step.limits for _, finished in batch):
                self.refill = True
            self.steps += len(batch)
            for slot, next_step in self._write_batch(batch, continue_here=self._has_budget()):
                if next_step is None:
                    self.slots.pop(slot.execution.id, None)
                    continue
                slot.step = next_step
                self._launch(slot)
            if self.resumed:  # steps handed a slot this dispatcher freed, claimed for it
                steps, self.resumed = self.resumed, []
                self._guarded(
                    lambda steps=steps: self._start_claimed(claim.load(steps, timezone.now())),
                    "starting steps handed a slot",
                )
            if self.adopted:
                steps, self.adopted = self.adopted, []
                executions, self.adopted_executions = self.adopted_executions, {}
                # Fresh items: no results so far to read, their rows came with their start.
                claimed = claim.Claimed(steps, executions, {}, timezone.now())
                self._guarded(
                    lambda claimed=claimed: self._start_claimed(claimed), "starting map items"
                )

    def _write_batch(
        self, batch: list[tuple[Slot, Finished]], *, continue_here: bool
    ) -> list[tuple[Slot, TaskRun | None]]:
        # Map items started by this batch take the slots their predecessors free here.
        adopt = fanin.Adopt(self.me, self.lease) if self.only is None else None
        try:
            # PostgreSQL: a batch that goes on here (or ends) as planned in one round trip.
            written = record.write_in_one(
                [finished for _, finished in batch], self.me, self.lease,
                continue_here=continue_here, adopt=adopt,
            )  # fmt: skip
            if written is None:
                with writes.atomic():
                    written = record.write(
                        [finished for _, finished in batch], self.me, self.lease,
                        continue_here=continue_here, adopt=adopt,
                    )  # fmt: skip
            if adopt is not None and adopt.steps:
                self.adopted += adopt.steps
                self.adopted_executions.update(adopt.executions)
            if adopt is not None and adopt.resumed:
                self.resumed += adopt.resumed
            return list(zip([slot for slot, _ in batch], written, strict=True))
        except record.TakenOver:
            pass  # one step was taken over: the others are written one by one below
        except DatabaseError as exc:
            # Reconnect and write them one by one (the database restarted, say). Had the batch
            # committed, its steps are no longer "ours but open", and nothing is written twice.
            logger.warning("worker %s: recording %d steps failed, retrying: %s",
                           self.me, len(batch), exc)  # fmt: skip
            reconnect()
        return [
            (slot, self._write_one(slot, finished, continue_here=continue_here))
            for slot, finished in batch
        ]

    def _write_one(self, slot: Slot, finished: Finished, *, continue_here: bool) -> TaskRun | None:
        for attempt in (1, 2):
            try:
                return record.write_alone(
                    finished, self.me, self.lease, continue_here=continue_here
                )
            except DatabaseError as exc:
                if attempt == 2:
                    raise
                logger.warning("execution=%s record failed, retrying: %s",
                               slot.execution.id, exc)  # fmt: skip
                reconnect()
        return None  # not reached

    # -- once a second --------------------------------------------------------------------
    @property
    def renewed_at(self) -> float:
        """When the leases were last renewed (perf_counter)."""
        return self.next_renew - self.renew_every

    def renew_leases(self) -> set[int] | None:
        """Extend the leases of every running step; the ids still ours (None: all are). The
        watchdog calls it too, while a task blocks this thread."""
        self.next_renew = time.perf_counter() + self.renew_every
        ids = [slot.step.pk for slot in self.slots.values() if slot.flight is not None]
        return claim.renew_leases(ids, self.me, self.lease)

    def watch(self) -> None:
        """Stop what was cancelled, deleted or taken away; renew leases when due; handle a
        blocked loop."""
        flying = {eid: slot for eid, slot in self.slots.items() if slot.flight is not None}
        if not flying:
            return
        cancel = claim.cancel_requests(list(flying))
        kept = self.renew_leases() if time.perf_counter() >= self.next_renew else None
        for eid, slot in flying.items():
            flight = slot.flight
            assert flight is not None
            if flight.future.done():
                continue  # finished meanwhile: the main loop records it
            verdict = None
            if eid not in cancel:
                verdict = "deleted"
            elif cancel[eid]:
                verdict = "cancel"
            elif kept is not None and slot.step.pk not in kept:
                verdict = "lost"
            if verdict is not None:
                self.advance(slot, stopped(flight, verdict))
        self._check_deadlines()

    def _check_deadlines(self) -> None:
        """Handle the tasks past their hard deadline (finished or not: one that finished
        only past it blocked the loop); note the next one due."""
        now, overdue, self.next_deadline = time.perf_counter(), [], math.inf
        for slot in self.slots.values():
            flight = slot.flight
            if flight is None:
                continue
            if (flight.future.ended or now) >= flight.hard_deadline:
                overdue.append(slot)
            elif not flight.future.done() and flight.hard_deadline < self.next_deadline:
                self.next_deadline = flight.hard_deadline
        held_up = self.loop is not None and self.loop.take_held_up()
        if overdue:
            self._overdue(overdue, held_up=held_up)

    def _overdue(self, overdue: list[Slot], *, held_up: bool) -> None:
        """Steps past their timeout and grace that did not stop: did they block the loop?"""
        if not held_up:
            # The loop ran freely: a task that ended meanwhile held it for a while all the
            # same; one still running swallowed its cancellation. Both fail, their coroutines
            # left behind.
            for slot in overdue:
                assert slot.flight is not None
                if slot.flight.future.done():
                    self.advance(slot, blocked(slot.flight))
                else:
                    why = "did not stop when its timeout cancelled it (it swallowed the cancel)"
                    self.advance(slot, blocked(slot.flight, why))
            return
        # Some task's blocking code held the loop. The overdue steps fail; the others it held
        # up are run again elsewhere, and a fresh loop takes this worker's next tasks (on the
        # old one, what they had begun may be in any state).
        assert self.loop is not None
        self.loop.close()
        self.loop = None
        now = timezone.now()
        for slot in list(self.slots.values()):
            if slot.flight is None:
                continue
            # (Nothing is cancelled: the closed loop would be asked to run the cancellation.)
            if any(slot is late for late in overdue):
                self.advance(slot, blocked(slot.flight, cancel=False))
            elif slot.flight.future.done():  # it finished in time, held up or not
                self.advance(slot, finish(slot.flight, slot.definition))
            else:
                interrupted(slot.step, now=now, worker=self.me)
                self.flying.pop(slot.flight.future, None)
                slot.flight = None
                self.slots.pop(slot.execution.id, None)


def dispatch(execution_id: uuid.UUID | str, registry: TaskRegistry | None = None) -> int:
    """What a worker's job does: run this execution and, beside it, other ready ones; returns
    the steps recorded. (``execution_id`` names the job's own; the dispatcher claims ready
    steps oldest wake-up first, so it is among them when ready.)"""
    uuid.UUID(str(execution_id))  # a malformed id is the job's error, as before
    # In a worker process of the cluster, a task that blocks its loop for good ends the
    # process (the cluster starts another); not where the job runs in the caller (Q_SYNC).
    in_worker = multiprocessing.parent_process() is not None and not settings.Q_CLUSTER.get("sync")
    return Dispatcher(registry, exit_when_stuck=in_worker).run()
