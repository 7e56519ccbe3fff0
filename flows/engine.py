"""The engine: claim a step, run it, record it with the routing decision, go on.

The database is the truth and the queue only wakes workers (see DESIGN.md):

1. A job carries only an execution id. It *claims* the execution's PENDING step with a
   conditional UPDATE (PENDING -> RUNNING, with a lease); no row changed means another worker
   has it, and the job returns.
2. The task's coroutine runs on a private event loop thread under its timeout while this
   thread watches the database once a second: it renews the lease and stops the task when
   the execution is cancelled or deleted.
3. The step's result and the routing decision (the next step, or the execution's end) commit
   in one transaction. The next step is created already claimed by this worker, so it runs
   here without a queue round trip, until the job's step budget is spent; then it is left
   PENDING and a new job is enqueued in the same transaction.
4. ``reap`` (a django-q2 schedule) re-runs steps whose lease expired (their worker died) and
   wakes PENDING steps whose queue message was lost. Every job is idempotent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import json
import logging
import os
import socket
import threading
import time
import traceback as tb
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jsonschema
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.tasks import async_task

from flows.definition import FlowDefinition, FlowValidationError, parse_flow
from flows.expressions import ExpressionError, needs_resolving, resolve
from flows.models import (
    ACTIVE_STATUSES,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    FlowVersion,
    TaskRun,
    TaskRunStatus,
)
from flows.registry import TaskRegistry, TaskType, default_registry
from flows.sql import writes as fastsql
from tasks.base_task import PermanentTaskError, Results, TaskContext, TaskLogger

logger = logging.getLogger("flows.engine")

JOB_FUNC = "flows.jobs.run_execution"
# How long past its own timeout a task may keep its thread before it is abandoned: a task
# that blocks the event loop (time.sleep, CPU loop) cannot be cancelled, only left behind.
ABANDON_GRACE_SECONDS = 2.0
WATCH_INTERVAL_SECONDS = 1.0
# How often a dispatcher with room looks for newly ready executions besides its job's own: one
# indexed query, then a claim of the whole batch. Looks that find nothing back off, doubling
# up to the slower pace, so a worker whose room stays empty does not poll the database 20
# times a second; one that finds work looks again at the fast pace.
FILL_INTERVAL_SECONDS = 0.05
FILL_INTERVAL_MAX_SECONDS = 1.0
# At most this many finished steps are written in one transaction (SQLite holds its one write
# lock that long).
RECORD_BATCH = 50


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------------------------------
# Waking workers
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _broker(pid: int) -> Any:
    # One broker per process: a fresh Redis broker per enqueue costs ~8x more (DJANGO-Q2.md).
    return get_broker()


class _DelayedOrmBroker(ORM):
    """The ORM broker, enqueueing a message that stays invisible until ``due``.

    The ORM broker hands out rows whose ``lock`` is in the past (its visibility timeout), so
    a row written with ``lock = due`` is delivered at ``due``: a retry waits in the database,
    not in a worker.
    """

    def __init__(self, due: datetime) -> None:
        super().__init__(list_key=Conf.CLUSTER_NAME)
        self.due = due

    def enqueue(self, task: str) -> int:
        return self.get_connection().create(key=self.list_key, payload=task, lock=self.due).pk


def wake(execution_id: uuid.UUID | str, *, at: datetime | None = None) -> None:
    """Ask a worker to run the execution's PENDING step (at ``at``, if given).

    Call inside the transaction that made the step PENDING. With the ORM broker the queue row
    is written in that same transaction, so it commits (or rolls back) with the state. With
    Redis, or in sync mode where the job would run inline, it is sent after the commit; a
    delayed step is then woken once due by a worker process's DueStepTimer (or the reaper).
    """
    delayed = at is not None and at > timezone.now()
    if delayed and not Conf.ORM:
        # Redis has no delayed delivery in django-q2: a message now would find nothing due.
        # Each worker process's DueStepTimer wakes the step once it is due (wake_due).
        return

    def push() -> None:
        broker = _DelayedOrmBroker(at) if delayed and Conf.ORM else _broker(os.getpid())
        async_task(JOB_FUNC, str(execution_id), task_name=f"flow-{execution_id}", broker=broker)

    if Conf.SYNC or not Conf.ORM:
        fastsql.on_commit(push)
    else:
        push()


# ---------------------------------------------------------------------------------------------
# Running task coroutines
# ---------------------------------------------------------------------------------------------
class TaskLoop:
    """An event loop on a daemon thread: task code runs there, the database calls stay here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="flow-task-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=1.0)
        if not self.thread.is_alive():
            self.loop.close()


class StepTimeout(Exception):
    """The task outlived its timeout (as opposed to raising a TimeoutError of its own)."""


async def _run_task(task: Any, timeout: float, finished: threading.Event) -> Any:
    """The task's coroutine under its timeout; ``finished`` is set once it has fully unwound
    (a cancelled future reports "cancelled" before the coroutine's own clean-up has run)."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await task.run()
    except TimeoutError:
        if scope.expired():
            raise StepTimeout from None
        raise
    except (SystemExit, KeyboardInterrupt) as exc:
        # A plugin must not take the worker down with it.
        raise RuntimeError(f"task tried to stop the process ({type(exc).__name__})") from None
    finally:
        finished.set()


@dataclass
class StepOutcome:
    status: str  # a TaskRunStatus value
    result: dict[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    duration: float = 0.0
    log_lines: list[tuple[str, str]] = field(default_factory=list)
    stop: bool = False  # the execution vanished or the step was taken away: record nothing
    permanent: bool = False  # no retry will fix it (PermanentTaskError, a bad reference, ...)
    flow_timed_out: bool = False  # the flow's own timeout_seconds ran out
    parameters: dict[str, Any] | None = None  # as resolved for this run


def _failure(
    message: str,
    *,
    trace: str = "",
    duration: float = 0.0,
    lines: Any = (),
    permanent: bool = False,
) -> StepOutcome:
    return StepOutcome(
        TaskRunStatus.FAILURE,
        permanent=permanent,
        error=message,
        traceback=trace,
        duration=duration,
        log_lines=list(lines),
    )


@dataclass
class Flight:
    """A step whose coroutine is running on the task loop."""

    step: TaskRun
    future: concurrent.futures.Future[Any]
    finished: threading.Event
    started: float  # time.perf_counter()
    timeout: float
    source: str  # where the timeout came from, for the message
    hard_deadline: float  # past this, the task is blocking its loop
    log: TaskLogger
    parameters: dict[str, Any] | None  # resolved parameters, when they differ from the step's


def _earlier_results(value: Any) -> Any:
    """JSON for what plain JSON cannot hold: a task may return (part of) its context's
    read-only ``results`` mapping."""
    if isinstance(value, Results):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _check_result(value: Any) -> tuple[dict[str, Any] | None, str]:
    """A step's return value as stored JSON, or why it cannot be stored."""
    if not isinstance(value, dict):
        return None, f"task returned {type(value).__name__}, expected a dict"
    try:
        text = json.dumps(value, allow_nan=False, default=_earlier_results)
    except (TypeError, ValueError) as exc:
        return None, f"task returned a dict that is not JSON-serialisable: {exc}"
    if "\\u0000" in text:
        return None, "task result contains a NUL character (\\u0000), which cannot be stored"
    if len(text) > settings.FLOW_MAX_RESULT_BYTES:
        return None, (
            f"task result is {len(text)} bytes, over the limit of "
            f"{settings.FLOW_MAX_RESULT_BYTES} (FLOW_MAX_RESULT_BYTES)"
        )
    return (value if not value else json.loads(text)), ""


def _timeout_for(own: float | None, type_default: float | None) -> tuple[float, str]:
    """A step's timeout and where it came from, for the error message."""
    if own:
        value, source = own, "the task's timeout_seconds"
    elif type_default:
        value, source = type_default, "the task type's default timeout"
    else:
        value, source = settings.FLOW_DEFAULT_TASK_TIMEOUT, "FLOW_DEFAULT_TASK_TIMEOUT"
    if value > settings.FLOW_MAX_TASK_TIMEOUT:
        value, source = settings.FLOW_MAX_TASK_TIMEOUT, "FLOW_MAX_TASK_TIMEOUT"
    return value, source


FLOW_TIMEOUT_SOURCE = "the flow's timeout_seconds"


def _remaining(execution: Execution) -> float | None:
    """Seconds left before the flow's timeout, or None when it has none."""
    if execution.deadline_at is None:
        return None
    return (execution.deadline_at - timezone.now()).total_seconds()


def _flow_timeout(definition: FlowDefinition | None) -> StepOutcome:
    limit = (
        f" of {definition.timeout_seconds:g}s" if definition and definition.timeout_seconds else ""
    )
    outcome = _failure(f"the flow's timeout{limit} (timeout_seconds) ran out", permanent=True)
    outcome.flow_timed_out = True
    return outcome


def results_scope(results: dict[str, Any]) -> dict[str, Any]:
    """Earlier results as references and expressions see them: results.<task>.data."""
    return {name: {"data": value, "status": "SUCCESS"} for name, value in results.items()}


def _resolve_parameters(
    raw: dict[str, Any], task_type: TaskType, results: dict[str, Any], input: Any
) -> dict[str, Any]:
    """The step's parameters with ${...} references filled in, checked against the schema."""
    if not needs_resolving(raw):
        return copy.deepcopy(raw)
    scope = {"results": results_scope(results), "input": input or {}}
    resolved = copy.deepcopy(resolve(raw, scope))
    errors = list(
        jsonschema.Draft202012Validator(task_type.parameters_schema).iter_errors(resolved)
    )
    if errors:
        first = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.path)
        raise ValueError(f"parameters{where} after resolving references: {first.message}")
    return resolved


_definitions: dict[tuple[str, int, Any], FlowDefinition] = {}


def flow_definition(
    execution: Execution, registry: TaskRegistry, *, refresh: bool = True
) -> FlowDefinition:
    """The execution's parsed flow, parsed once per process per document and plugin set.

    Keyed by the document's text rather than the version's id, which a database reset (or a
    test's rollback) can hand out again for another document. ``refresh=False`` when the
    caller has just rescanned the plugin folder.
    """
    if refresh:
        registry.refresh()
    document = json.dumps(execution.flow_version.definition, sort_keys=True)
    key = (document, id(registry), registry.fingerprint)
    definition = _definitions.get(key)
    if definition is None:
        definition = parse_flow(
            execution.flow_version.definition,
            registry,
            default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS,
        )
        if len(_definitions) >= 256:
            _definitions.clear()
        _definitions[key] = definition
    return definition


def results_so_far(execution_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Successful results by execution, then by task name, most recent last.

    A task that ran again moves to the end, so "the latest result" means the latest in run
    order. One query for any number of executions.
    """
    by_execution: dict[uuid.UUID, dict[str, Any]] = {}
    for execution_id, name, result in (
        TaskRun.objects.filter(execution_id__in=execution_ids, status=TaskRunStatus.SUCCESS)
        .order_by("seq")
        .values_list("execution_id", "task_name", "result")
    ):
        results = by_execution.setdefault(execution_id, {})
        results.pop(name, None)
        results[name] = result
    return by_execution


class _TakenOver(Exception):
    """The step being recorded is no longer this worker's: its transaction must roll back."""


@dataclass
class _Plan:
    """The routing decision for a finished step, before the database has its say."""

    target: str | None = None  # the next task, when the flow goes on
    final: str = ""  # the execution's end status, when it ends
    error: str = ""
    why: str = ""
    attempt: int = 1  # of the next step
    delay: float = 0.0  # seconds the next step waits (a retry's delay)
    noteworthy: bool = False  # worth a line in the execution's log


@dataclass
class _Inserts:
    """Rows a transaction's writes add, inserted together just before it commits."""

    steps: list[TaskRun] = field(default_factory=list)
    events: list[ExecutionEvent] = field(default_factory=list)

    def save(self) -> None:
        # Nothing reads their keys before the commit: on PostgreSQL they go out with it.
        fastsql.insert_rows(TaskRun, self.steps, after_commit=True)
        fastsql.insert_rows(ExecutionEvent, self.events, after_commit=True)


@dataclass
class _Finished:
    """A finished step with its routing decided, ready to be written."""

    execution: Execution
    definition: FlowDefinition | None
    step: TaskRun
    outcome: StepOutcome
    plan: _Plan
    events: list[tuple[str, str]]


# ---------------------------------------------------------------------------------------------
# One execution, in one job
# ---------------------------------------------------------------------------------------------
class Runner:
    """Runs one execution's steps back to back in this worker, within a budget."""

    def __init__(self, execution_id: uuid.UUID, registry: TaskRegistry | None = None) -> None:
        self.execution_id = execution_id
        self.registry = registry or default_registry()
        self.me = worker_id()
        self.lease = timedelta(seconds=settings.FLOW_LEASE_SECONDS)
        self._loop: TaskLoop | None = None
        self._types: dict[str, TaskType | None] = {}

    def _task_type(self, name: str) -> TaskType | None:
        # One registry look-up (and plugin-folder scan) per type per job, not per step.
        if name not in self._types:
            self._types[name] = self.registry.get(name)
        return self._types[name]

    # 1. Claim ------------------------------------------------------------------------------
    def claim(self) -> TaskRun | None:
        now = timezone.now()
        with transaction.atomic():
            step = (
                TaskRun.objects.filter(
                    execution_id=self.execution_id,
                    status=TaskRunStatus.PENDING,
                    execution__status__in=ACTIVE_STATUSES,
                    execution__pause_requested=False,
                )
                .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
                .first()
            )
            if step is None:
                return None
            taken = TaskRun.objects.filter(pk=step.pk, status=TaskRunStatus.PENDING).update(
                status=TaskRunStatus.RUNNING,
                worker=self.me,
                started_at=now,
                lease_expires_at=now + self.lease,
            )
            if taken != 1:
                return None
            Execution.objects.filter(pk=self.execution_id, status=ExecutionStatus.QUEUED).update(
                # Resume and redrive queue it again: the first start time stays.
                status=ExecutionStatus.RUNNING,
                started_at=Coalesce(F("started_at"), Value(now)),
            )
        step.status, step.worker, step.started_at = TaskRunStatus.RUNNING, self.me, now
        return step

    def load(self, step: TaskRun) -> tuple[Execution, FlowDefinition, dict[str, Any]] | None:
        """What running the claimed ``step`` needs: the execution, its flow and the results so
        far. None when the flow no longer validates (the step and execution are then failed).
        """
        execution = Execution.objects.select_related("flow_version").get(pk=self.execution_id)
        definition = self.definition(execution, step)
        if definition is None:
            return None
        return execution, definition, results_so_far([self.execution_id]).get(execution.id, {})

    def definition(self, execution: Execution, step: TaskRun) -> FlowDefinition | None:
        """The execution's parsed flow; None (step and execution failed) when it is invalid."""
        try:
            return flow_definition(execution, self.registry)
        except FlowValidationError as exc:
            self.invalid(execution, step, exc)
            return None

    def invalid(self, execution: Execution, step: TaskRun, exc: FlowValidationError) -> None:
        """Fail the claimed step, and so the execution: its flow no longer validates."""
        self._record(
            execution,
            None,
            step,
            _failure(f"the flow's definition is no longer valid: {exc}", permanent=True),
            {},
            continue_here=False,
        )

    def run(self) -> int:
        """Run until the execution ends, waits, or the budget is spent. Returns steps run."""
        step = self.claim()
        if step is None:
            return 0
        loaded = self.load(step)
        if loaded is None:
            return 1
        execution, definition, results = loaded
        budget_end = time.monotonic() + settings.FLOW_STEP_BUDGET_SECONDS
        done = 0
        try:
            while step is not None:
                if execution.cancel_requested:
                    outcome = StepOutcome(
                        TaskRunStatus.CANCELLED, error="cancelled before it started"
                    )
                else:
                    outcome = self.run_step(execution, definition, step, results)
                if outcome.stop:
                    break
                done += 1
                keep_going = (
                    done < settings.FLOW_STEP_BUDGET_STEPS and time.monotonic() < budget_end
                )
                step = self._record(
                    execution, definition, step, outcome, results, continue_here=keep_going
                )
        finally:
            if self._loop is not None:
                self._loop.close()
        return done

    # 2. Run --------------------------------------------------------------------------------
    def run_step(
        self,
        execution: Execution,
        definition: FlowDefinition,
        step: TaskRun,
        results: dict[str, Any],
    ) -> StepOutcome:
        """Run one step to its outcome, in this thread (one execution at a time)."""
        flight = self._start(execution, definition, step, results)
        if isinstance(flight, StepOutcome):
            return flight
        next_watch = flight.started + WATCH_INTERVAL_SECONDS
        lease_renew_every = settings.FLOW_LEASE_SECONDS / 3
        next_renew = flight.started + lease_renew_every
        # Wait on the future, waking once a second to renew the lease and look for a cancel.
        # (concurrent.futures.wait, not result(timeout=...): a task's own TimeoutError must
        # not be mistaken for "still running".)
        while not flight.future.done():
            now = time.perf_counter()
            concurrent.futures.wait(
                [flight.future], timeout=max(0.0, min(next_watch, flight.hard_deadline) - now)
            )
            if flight.future.done():
                break
            now = time.perf_counter()
            if now >= flight.hard_deadline:
                # The loop is stuck in blocking code: leave it behind (its thread ends once the
                # blocking call returns) and start a fresh one for the next step.
                self._abandon_loop()
                return self._blocked(flight)
            if now < next_watch:
                continue
            next_watch = now + WATCH_INTERVAL_SECONDS
            renew = now >= next_renew
            if renew:
                next_renew = now + lease_renew_every
            verdict = self._watch(step, renew_lease=renew)
            if verdict is not None:
                return self._stop(flight, verdict)
        return self._finish(flight, definition)

    def _start(
        self,
        execution: Execution,
        definition: FlowDefinition,
        step: TaskRun,
        results: dict[str, Any],
    ) -> StepOutcome | Flight:
        """Prepare the step and hand its coroutine to the task loop.

        Returns the running Flight, or the step's outcome when it could not start (unknown
        type, unresolvable parameters, flow timeout, a task that cannot be built).
        """
        log = TaskLogger(str(execution.id), step.task_name)
        logger.info(
            "execution=%s step=%s task=%s type=%s attempt=%s started",
            execution.id,
            step.seq,
            step.task_name,
            step.task_type,
            step.attempt,
        )
        task_type = self._task_type(step.task_type)
        if task_type is None:
            return _failure(
                self.registry.problem(step.task_type) or "unknown task type", permanent=True
            )
        try:
            spec = definition.task(step.task_name)
        except KeyError:
            return _failure(
                f"task '{step.task_name}' is not in the flow's definition", permanent=True
            )
        remaining = _remaining(execution)
        if remaining is not None and remaining <= 0:
            return _flow_timeout(definition)
        timeout, source = _timeout_for(spec.timeout_seconds, task_type.default_timeout)
        if remaining is not None and remaining < timeout:
            timeout, source = remaining, FLOW_TIMEOUT_SOURCE
        try:
            parameters = _resolve_parameters(step.parameters, task_type, results, execution.input)
        except ValueError as exc:
            return _failure(str(exc), permanent=True)
        resolved = parameters if parameters != step.parameters else None
        try:
            task = task_type.cls(name=step.task_name, parameters=parameters)
            task.context = TaskContext(
                execution_id=str(execution.id),
                results=Results(results),
                input=copy.deepcopy(execution.input),
                attempt=step.attempt,
                logger=log,
            )
        except Exception as exc:
            outcome = _failure(
                f"could not create task: {type(exc).__name__}: {exc}", trace=tb.format_exc()
            )
            outcome.parameters = resolved
            return outcome
        if self._loop is None:
            self._loop = TaskLoop()
        finished = threading.Event()
        started = time.perf_counter()
        return Flight(
            step=step,
            future=self._loop.submit(_run_task(task, timeout, finished)),
            finished=finished,
            started=started,
            timeout=timeout,
            source=source,
            hard_deadline=started + timeout + ABANDON_GRACE_SECONDS,
            log=log,
            parameters=resolved,
        )

    def _finish(self, flight: Flight, definition: FlowDefinition) -> StepOutcome:
        """The outcome of a flight whose future is done."""
        outcome = self._outcome_of(flight, definition)
        outcome.parameters = flight.parameters  # what this run really got, whatever its outcome
        return outcome

    def _outcome_of(self, flight: Flight, definition: FlowDefinition) -> StepOutcome:
        duration = time.perf_counter() - flight.started
        lines = flight.log.lines
        try:
            value = flight.future.result()
        except StepTimeout:
            if flight.source == FLOW_TIMEOUT_SOURCE:
                outcome = _flow_timeout(definition)
                outcome.duration, outcome.log_lines = duration, lines
                return outcome
            return _failure(
                f"task timed out after {flight.timeout:g}s ({flight.source})",
                duration=duration,
                lines=lines,
            )
        except concurrent.futures.CancelledError:
            return _failure("task was cancelled", duration=duration, lines=lines)
        except Exception as exc:
            return _failure(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                trace=tb.format_exc(),
                duration=duration,
                lines=lines,
                permanent=isinstance(exc, PermanentTaskError),
            )
        result, problem = _check_result(value)
        if problem:
            return _failure(problem, duration=duration, lines=lines)
        return StepOutcome(TaskRunStatus.SUCCESS, result=result, duration=duration, log_lines=lines)

    def _stop(self, flight: Flight, verdict: str) -> StepOutcome:
        """Cancel a running task because its execution was cancelled, deleted or taken away."""
        flight.future.cancel()
        # Give the coroutine a moment to run its own clean-up before the step is recorded.
        flight.finished.wait(ABANDON_GRACE_SECONDS)
        step = flight.step
        if verdict == "cancel":
            logger.info("execution=%s step=%s cancelled while running", step.execution_id, step.seq)
            return StepOutcome(
                TaskRunStatus.CANCELLED,
                error="cancelled while running",
                duration=time.perf_counter() - flight.started,
                log_lines=flight.log.lines,
            )
        logger.info("execution=%s step=%s stopped: %s", step.execution_id, step.seq, verdict)
        return StepOutcome(TaskRunStatus.CANCELLED, stop=True)

    def _blocked(
        self,
        flight: Flight,
        why: str = "blocked its event loop (blocking code in an async task?)",
    ) -> StepOutcome:
        flight.future.cancel()
        outcome = _failure(
            f"task did not finish within its timeout of {flight.timeout:g}s and {why}",
            duration=time.perf_counter() - flight.started,
            lines=flight.log.lines,
        )
        outcome.parameters = flight.parameters
        return outcome

    def _abandon_loop(self) -> None:
        if self._loop is not None:
            self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
            self._loop = None

    def _watch(self, step: TaskRun, *, renew_lease: bool) -> str | None:
        """Once a second while a task runs: 'cancel', 'deleted', 'lost' or None to go on."""
        row = (
            Execution.objects.filter(pk=self.execution_id)
            .values_list("cancel_requested", flat=True)
            .first()
        )
        if row is None:
            return "deleted"
        if row:
            return "cancel"
        if renew_lease:
            kept = TaskRun.objects.filter(
                pk=step.pk, status=TaskRunStatus.RUNNING, worker=self.me
            ).update(lease_expires_at=timezone.now() + self.lease)
            if kept != 1:
                return "lost"
        return None

    # 3. Record and route -------------------------------------------------------------------
    def _record(
        self,
        execution: Execution,
        definition: FlowDefinition | None,
        step: TaskRun,
        outcome: StepOutcome,
        results: dict[str, Any],
        *,
        continue_here: bool,
    ) -> TaskRun | None:
        """Store the step's outcome and the routing decision in one transaction.

        Returns the next step when it is claimed by this worker, else None.
        """
        finished = self._decide(execution, definition, step, outcome, results)
        return _write_alone(finished, self.me, self.lease, continue_here=continue_here)

    def _decide(
        self,
        execution: Execution,
        definition: FlowDefinition | None,
        step: TaskRun,
        outcome: StepOutcome,
        results: dict[str, Any],
    ) -> _Finished:
        """The routing decision and log lines for a finished step, before any write; run once
        per step, so writing it again (a batch rolled back, a reconnect) decides nothing twice.
        """
        events: list[tuple[str, str]] = list(outcome.log_lines)
        plan = self._plan(execution, definition, step, outcome, results)
        if outcome.error:
            events.append(("ERROR", f"{step.task_name} failed: {outcome.error}"))
        logger.log(
            logging.INFO if outcome.status == TaskRunStatus.SUCCESS else logging.WARNING,
            "execution=%s step=%s task=%s attempt=%s ended %s in %.3fs%s",
            execution.id, step.seq, step.task_name, step.attempt, outcome.status,
            outcome.duration, f": {outcome.error}" if outcome.error else "",
        )  # fmt: skip
        return _Finished(execution, definition, step, outcome, plan, events)

    def _plan(
        self,
        execution: Execution,
        definition: FlowDefinition | None,
        step: TaskRun,
        outcome: StepOutcome,
        results: dict[str, Any],
    ) -> _Plan:
        """What follows this step, decided from the definition and the outcome alone.

        Updates ``results`` and, when a condition's expression fails, ``outcome`` (the step
        then fails with that error).
        """
        if outcome.status == TaskRunStatus.CANCELLED:
            return _Plan(
                final=ExecutionStatus.CANCELLED, error="cancelled by request", why="cancelled"
            )
        if definition is None or outcome.flow_timed_out:
            return _Plan(final=ExecutionStatus.FAILED, error=outcome.error, why=outcome.error)
        succeeded = outcome.status == TaskRunStatus.SUCCESS
        spec = definition.task(step.task_name)
        if succeeded:
            results.pop(step.task_name, None)
            results[step.task_name] = outcome.result
        elif not outcome.permanent and step.attempt < spec.retry.max_attempts:
            delay = spec.retry.delay_before(step.attempt + 1)
            why = (
                f"{step.task_name} failed (attempt {step.attempt} of {spec.retry.max_attempts}); "
                f"retry in {delay:g}s"
            )
            return _Plan(
                target=step.task_name,
                why=why,
                attempt=step.attempt + 1,
                delay=delay,
                noteworthy=True,
            )
        status = "success" if succeeded else "failure"
        condition = definition.condition_for(step.task_name)
        # Expressions see results in the same shape as ${results.<task>.data} references.
        scope = results_scope(results) if condition and condition.expression else {}
        try:
            target, why = definition.route(
                step.task_name,
                status,
                result=outcome.result,
                results=scope,
                input=execution.input,
            )
        except ExpressionError as exc:
            # A condition that cannot be evaluated fails its step, and routes as a failure.
            outcome.status, outcome.error, outcome.permanent = TaskRunStatus.FAILURE, str(exc), True
            results.pop(step.task_name, None)
            target, why = definition.route(step.task_name, "failure")
            status = "failure"
        noteworthy = condition is not None
        if target is None:
            if status == "success":
                return _Plan(final=ExecutionStatus.COMPLETED, why=why)
            error = f"task '{step.task_name}' failed: {outcome.error}"
            return _Plan(final=ExecutionStatus.FAILED, error=error, why=why)
        return _Plan(target=target, why=why, noteworthy=noteworthy)

    @staticmethod
    def _end(eid: uuid.UUID, status: str, error: str, steps_taken: int, now: datetime) -> None:
        fastsql.update_rows(Execution, {eid: _ending(status, error, steps_taken, now)})


def _ending(status: str, error: str, steps_taken: int, now: datetime) -> dict[str, Any]:
    """An execution's row as it ends."""
    return {
        "status": status,
        "error": error,
        "ended_at": now,
        "current_task": "",
        "steps_taken": steps_taken,
    }


def _write(
    batch: list[_Finished], me: str, lease: timedelta, *, continue_here: bool
) -> list[TaskRun | None]:
    """Write decided steps inside the caller's transaction, whatever their number, in the
    same few statements: for each, the next step when this worker claimed it, else None.

    Raises _TakenOver when a step is no longer this worker's: the caller must let the
    transaction roll back (and write the others again without it).

    1. Count the steps on their executions: cancel, pause and delete lock the execution row
       too, so none of them can slip between closing a step and opening the next.
    2. Decide: the next task, or how the execution ends (a cancel, the flow's timeout or its
       step limit overrule the plan).
    3. Close the steps with their decisions, if this worker still holds every one.
    4. End executions; open next steps (claimed here when they can run now, else PENDING for
       a later job: a retry's delay, a pause, the budget); add the log lines.
    """
    now = timezone.now()
    states = {
        row[0]: row[1:]
        for row in fastsql.update_rows(
            Execution,
            {f.execution.id: {"current_task": f.plan.target or ""} for f in batch},
            increment=["steps_taken"],
            returning=["cancel_requested", "pause_requested", "steps_taken"],
        )
    }
    inserts = _Inserts()
    closes: dict[int, dict[str, Any]] = {}
    ends: dict[uuid.UUID, dict[str, Any]] = {}
    paused: list[uuid.UUID] = []
    routes: list[tuple[uuid.UUID, str]] = []
    next_steps: list[TaskRun | None] = []
    for finished in batch:
        execution, definition, step = finished.execution, finished.definition, finished.step
        outcome, plan, eid = finished.outcome, finished.plan, finished.execution.id
        next_steps.append(None)
        if eid not in states:
            logger.info("execution=%s was deleted while step %s ran", eid, step.seq)
            continue
        cancel_requested, pause_requested, steps_taken = states[eid]
        final, error, why = plan.final, plan.error, plan.why
        remaining = _remaining(execution)
        if outcome.status == TaskRunStatus.CANCELLED or cancel_requested:
            final, error, why = ExecutionStatus.CANCELLED, "cancelled by request", "cancelled"
        elif not final and remaining is not None and remaining <= plan.delay:
            # A retry that would be due too late.
            timeout = _flow_timeout(definition)
            final, error, why = ExecutionStatus.FAILED, timeout.error, timeout.error
        elif not final and definition is not None and steps_taken >= definition.max_steps:
            final = ExecutionStatus.FAILED
            error = why = (
                f"step limit of {definition.max_steps} steps (max_steps) reached before "
                f"task '{plan.target}' could run"
            )
        route = f"{why} -> {f'execution {final}' if final else plan.target}"
        routes.append((eid, route))
        closes[step.pk] = {
            "status": outcome.status,
            "result": outcome.result,
            "error": outcome.error,
            "traceback": outcome.traceback,
            "ended_at": now,
            "duration": outcome.duration,
            "lease_expires_at": None,
            "route": route[:300],
        }
        if outcome.parameters is not None:
            closes[step.pk]["parameters"] = outcome.parameters
        # Every decision is on its step; the log keeps those worth reading in sequence:
        # conditions, retries, pauses, failures and the end.
        events = list(finished.events)
        if final:
            ends[eid] = _ending(final, error, int(steps_taken), now)
            level = {ExecutionStatus.COMPLETED: "INFO", ExecutionStatus.CANCELLED: "WARNING"}
            events.append((level.get(final, "ERROR"), route))
        else:
            if plan.noteworthy:
                succeeded = outcome.status == TaskRunStatus.SUCCESS
                events.append(("INFO" if succeeded else "WARNING", route))
            spec = definition.task(plan.target)  # type: ignore[union-attr]
            due = now + timedelta(seconds=plan.delay) if plan.delay > 0 else None
            claim_here = continue_here and due is None and not pause_requested
            next_step = TaskRun(
                execution_id=eid,
                seq=step.seq + 1,
                task_name=spec.name,
                task_type=spec.task_type,
                parameters=spec.parameters,
                attempt=plan.attempt,
                status=TaskRunStatus.RUNNING if claim_here else TaskRunStatus.PENDING,
                worker=me if claim_here else "",
                created_at=now,
                started_at=now if claim_here else None,
                lease_expires_at=now + lease if claim_here else None,
                woken_at=None if claim_here else (due or now),
                not_before=due,
            )
            inserts.steps.append(next_step)
            if pause_requested:
                paused.append(eid)
                events.append(("WARNING", f"paused before {spec.name}"))
                logger.info("execution=%s paused before %s", eid, spec.name)
            elif not claim_here:
                wake(eid, at=due)
            else:
                next_steps[-1] = next_step
        inserts.events.extend(
            ExecutionEvent(
                execution_id=eid, task_run_id=step.pk, created_at=now, level=lvl, message=msg
            )
            for lvl, msg in events
        )
    closed = fastsql.update_rows(TaskRun, closes, status=TaskRunStatus.RUNNING, worker=me)
    if closed != len(closes):
        if len(batch) == 1:
            logger.warning(
                "execution=%s step=%s was taken over by another worker; result dropped",
                batch[0].execution.id, batch[0].step.seq,
            )  # fmt: skip
        raise _TakenOver
    fastsql.update_rows(Execution, ends)
    if paused:
        Execution.objects.filter(pk__in=paused).update(status=ExecutionStatus.PAUSED)
    inserts.save()
    for eid, route in routes:
        logger.info("execution=%s route: %s", eid, route)
    return next_steps


def _write_alone(
    finished: _Finished, me: str, lease: timedelta, *, continue_here: bool
) -> TaskRun | None:
    """Write one decided step in a transaction of its own: the next step when this worker
    claimed it, else None (also when the step was taken over: nothing is written then)."""
    try:
        with fastsql.atomic():
            return _write([finished], me, lease, continue_here=continue_here)[0]
    except _TakenOver:
        return None


# ---------------------------------------------------------------------------------------------
# Many executions in one worker
# ---------------------------------------------------------------------------------------------
def _reconnect() -> None:
    """After a database error: drop the connection so the next query opens a fresh one.

    Never inside a transaction (an outer atomic block, as in tests), which closing would
    break; there the next statement shows whether the connection still works.
    """
    if not connection.in_atomic_block:
        connection.close()


@dataclass(eq=False)
class _Slot:
    """One execution the dispatcher is running: its runner, state and step in flight."""

    runner: Runner
    execution: Execution
    definition: FlowDefinition
    results: dict[str, Any]
    step: TaskRun
    flight: Flight | None = None


class Dispatcher:
    """Runs up to FLOW_WORKER_CONCURRENCY executions at once in one worker process.

    Tasks are coroutines, so a step that waits on I/O need not hold a process: every task of
    every execution here runs on one event loop thread, while this thread does the database
    work (claims, results, routing) in batches.

    1. Ready steps are claimed in batches, oldest wake-up first, up to the concurrency: the
       job's own execution and others beside it (their queue messages later find nothing to
       do). While there is room it looks again every FILL_INTERVAL_SECONDS, less often
       while it finds nothing.
    2. Steps that finished are recorded together, their results and routing in one
       transaction (``_write``); the next step of each execution starts at once, on the
       same loop.
    3. Once a second: one query looks for cancelled or deleted executions among those in
       flight, and one UPDATE renews the leases of every running step.
    4. A task that blocks the loop past its timeout is failed; the loop is replaced, and the
       other steps it held are recorded LOST and queued again (their tasks never finished).
    5. After the step budget no new executions are taken and finishing steps hand their
       successors back to the queue; the job returns when nothing is in flight.
    """

    def __init__(self, registry: TaskRegistry | None = None, concurrency: int | None = None):
        self.registry = registry or default_registry()
        self.concurrency = concurrency or settings.FLOW_WORKER_CONCURRENCY
        self.me = worker_id()
        self.lease = timedelta(seconds=settings.FLOW_LEASE_SECONDS)
        self.loop: TaskLoop | None = None
        self.slots: dict[uuid.UUID, _Slot] = {}
        self.steps = 0
        self.budget_end = time.monotonic() + settings.FLOW_STEP_BUDGET_SECONDS
        self.renew_every = settings.FLOW_LEASE_SECONDS / 3
        self.next_renew = time.perf_counter() + self.renew_every
        self.next_fill = 0.0
        self.fill_every = FILL_INTERVAL_SECONDS
        self.finished: list[tuple[_Slot, _Finished]] = []  # to record at the next _flush
        self.types: dict[str, TaskType | None] = {}  # task types as of the last plugin scan

    def run(self, execution_id: uuid.UUID | None = None) -> int:
        """Run ready executions (the job's own, ``execution_id``, among them) until none is in
        flight and none is ready, or the budget is spent; returns the steps recorded."""
        try:
            next_watch = time.perf_counter() + WATCH_INTERVAL_SECONDS
            while True:
                if self._has_room() and time.perf_counter() >= self.next_fill:
                    self._guarded(self._fill, "looking for ready executions")
                self._flush()
                if not self.slots:
                    # Whatever became ready since the last look has a queue message of its own.
                    break
                flights = {slot.flight.future: slot for slot in self.slots.values() if slot.flight}
                wake_at = min(next_watch, self.next_fill) if self._has_room() else next_watch
                done, _ = concurrent.futures.wait(
                    flights,
                    timeout=max(0.0, wake_at - time.perf_counter()),
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                for future in done:
                    slot = flights[future]
                    assert slot.flight is not None
                    self._advance(slot, slot.runner._finish(slot.flight, slot.definition))
                if time.perf_counter() >= next_watch:
                    self._guarded(self._watch, "watch")
                    next_watch = time.perf_counter() + WATCH_INTERVAL_SECONDS
                self._flush()
        finally:
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
            _reconnect()

    # -- taking work ----------------------------------------------------------------------
    def _has_budget(self) -> bool:
        return self.steps < settings.FLOW_STEP_BUDGET_STEPS and time.monotonic() < self.budget_end

    def _has_room(self) -> bool:
        return len(self.slots) < self.concurrency and self._has_budget()

    def _fill(self) -> None:
        """Claim ready steps of other executions while there is room and budget.

        One batch, a few statements however many it takes: lock and claim the ready steps
        (``SKIP LOCKED`` on PostgreSQL, so workers filling at once take different rows; SQLite's
        IMMEDIATE transaction serialises them), mark their executions RUNNING, then read those
        executions and their results so far.
        """
        self.next_fill = time.perf_counter() + self.fill_every
        room = self.concurrency - len(self.slots)
        if room <= 0 or not self._has_budget():
            return
        now = timezone.now()
        ready = (
            TaskRun.objects.filter(
                status=TaskRunStatus.PENDING,
                execution__status__in=ACTIVE_STATUSES,
                execution__pause_requested=False,
            )
            .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
            .exclude(execution_id__in=list(self.slots))
        )
        # Most looks find nothing: ask first outside a transaction, which on SQLite would take
        # the database's one write lock and on PostgreSQL costs two more round trips.
        if not ready.exists():
            self.fill_every = min(self.fill_every * 2, FILL_INTERVAL_MAX_SECONDS)
            return
        self.fill_every = FILL_INTERVAL_SECONDS
        with transaction.atomic():
            steps = list(
                ready.order_by("woken_at").select_for_update(skip_locked=True, of=("self",))[:room]
            )
            if not steps:
                return
            claimed = TaskRun.objects.filter(
                pk__in=[step.pk for step in steps], status=TaskRunStatus.PENDING
            ).update(
                status=TaskRunStatus.RUNNING,
                worker=self.me,
                started_at=now,
                lease_expires_at=now + self.lease,
            )
            if claimed != len(steps):  # cannot happen under the row locks; kept honest anyway
                ours = set(
                    TaskRun.objects.filter(
                        pk__in=[step.pk for step in steps],
                        status=TaskRunStatus.RUNNING,
                        worker=self.me,
                        started_at=now,
                    ).values_list("pk", flat=True)
                )
                steps = [step for step in steps if step.pk in ours]
            ids = [step.execution_id for step in steps]
            Execution.objects.filter(pk__in=ids, status=ExecutionStatus.QUEUED).update(
                # Resume and redrive queue it again: the first start time stays.
                status=ExecutionStatus.RUNNING,
                started_at=Coalesce(F("started_at"), Value(now)),
            )
            # Read in the same transaction: if this fails, the claim rolls back with it.
            executions = Execution.objects.in_bulk(ids)
            versions = FlowVersion.objects.in_bulk(
                {execution.flow_version_id for execution in executions.values()}
            )
            results = results_so_far(ids)
        # One plugin-folder scan and one parse look-up per flow version for the whole batch:
        # the runners look task types up in this scan's result, not in a scan of their own.
        self.types.clear()
        self.types.update(self.registry.snapshot().types)
        parsed: dict[int, FlowDefinition | FlowValidationError] = {}
        for step in steps:
            step.status, step.worker, step.started_at = TaskRunStatus.RUNNING, self.me, now
            step.lease_expires_at = now + self.lease
            execution = executions.get(step.execution_id)
            if execution is None:  # deleted since: its steps went with it
                continue
            execution.flow_version = versions[execution.flow_version_id]
            runner = self._runner(execution.id)
            version_id = execution.flow_version_id
            if version_id not in parsed:
                try:
                    parsed[version_id] = flow_definition(execution, self.registry, refresh=False)
                except FlowValidationError as exc:
                    parsed[version_id] = exc
            definition = parsed[version_id]
            if isinstance(definition, FlowValidationError):
                runner.invalid(execution, step, definition)
                self.steps += 1
                continue
            self._take(runner, execution, definition, results.get(execution.id, {}), step)
            if time.perf_counter() >= self.next_renew:
                # Starting many can take a while: keep the steps already running ours.
                self._renew_leases()

    def _runner(self, execution_id: uuid.UUID) -> Runner:
        runner = Runner(execution_id, self.registry)
        runner._loop = self._task_loop()
        runner._types = self.types  # task types as of this batch's scan
        return runner

    def _take(
        self,
        runner: Runner,
        execution: Execution,
        definition: FlowDefinition,
        results: dict[str, Any],
        step: TaskRun,
    ) -> None:
        slot = _Slot(runner, execution, definition, results, step)
        self.slots[execution.id] = slot
        if execution.cancel_requested:
            outcome = StepOutcome(TaskRunStatus.CANCELLED, error="cancelled before it started")
            self._advance(slot, outcome)
        else:
            self._launch(slot)

    def _task_loop(self) -> TaskLoop:
        if self.loop is None:
            self.loop = TaskLoop()
        return self.loop

    # -- moving executions on -------------------------------------------------------------
    def _launch(self, slot: _Slot) -> None:
        """Start the slot's current step (its first, just claimed)."""
        started = self._start(slot)
        if isinstance(started, StepOutcome):
            self._advance(slot, started)
        else:
            slot.flight = started

    def _start(self, slot: _Slot) -> StepOutcome | Flight:
        slot.runner._loop = self._task_loop()
        return slot.runner._start(slot.execution, slot.definition, slot.step, slot.results)

    def _advance(self, slot: _Slot, outcome: StepOutcome) -> None:
        """A step of ``slot`` finished: queue it for the next ``_flush``."""
        slot.flight = None
        if outcome.stop:  # the execution vanished or the step was taken away
            self.slots.pop(slot.execution.id, None)
            return
        finished = slot.runner._decide(
            slot.execution, slot.definition, slot.step, outcome, slot.results
        )
        self.finished.append((slot, finished))

    def _flush(self) -> None:
        """Record the finished steps and start their successors.

        Steps that finished together are written in one transaction (up to RECORD_BATCH), so
        a busy worker pays for one commit, not one per step. A loop: a successor that ends
        before it starts (a vanished task type, an unresolvable reference) joins the next
        batch.
        """
        while self.finished:
            batch = self.finished[:RECORD_BATCH]
            del self.finished[:RECORD_BATCH]
            self.steps += len(batch)
            for slot, next_step in self._write_batch(batch, continue_here=self._has_budget()):
                if next_step is None:
                    self.slots.pop(slot.execution.id, None)
                    continue
                slot.step = next_step
                started = self._start(slot)
                if isinstance(started, StepOutcome):
                    self._advance(slot, started)
                else:
                    slot.flight = started

    def _write_batch(
        self, batch: list[tuple[_Slot, _Finished]], *, continue_here: bool
    ) -> list[tuple[_Slot, TaskRun | None]]:
        try:
            with fastsql.atomic():
                written = _write(
                    [finished for _, finished in batch], self.me, self.lease,
                    continue_here=continue_here,
                )  # fmt: skip
                return list(zip([slot for slot, _ in batch], written, strict=True))
        except _TakenOver:
            pass  # one step was taken over: the others are written one by one below
        except DatabaseError as exc:
            # Reconnect and write them one by one (the database restarted, say). Had the batch
            # committed, its steps are no longer "ours but open", and nothing is written twice.
            logger.warning("worker %s: recording %d steps failed, retrying: %s",
                           self.me, len(batch), exc)  # fmt: skip
            _reconnect()
        return [
            (slot, self._write_one(slot, finished, continue_here=continue_here))
            for slot, finished in batch
        ]

    def _write_one(
        self, slot: _Slot, finished: _Finished, *, continue_here: bool
    ) -> TaskRun | None:
        for attempt in (1, 2):
            try:
                return _write_alone(finished, self.me, self.lease, continue_here=continue_here)
            except DatabaseError as exc:
                if attempt == 2:
                    raise
                logger.warning("execution=%s record failed, retrying: %s",
                               slot.execution.id, exc)  # fmt: skip
                _reconnect()
        return None  # not reached

    # -- once a second --------------------------------------------------------------------
    def _renew_leases(self) -> set[int] | None:
        """Extend the leases of every running step; the ids still ours (None: all are)."""
        self.next_renew = time.perf_counter() + self.renew_every
        ids = [slot.step.pk for slot in self.slots.values() if slot.flight is not None]
        if not ids:
            return None
        renewed = TaskRun.objects.filter(
            pk__in=ids, status=TaskRunStatus.RUNNING, worker=self.me
        ).update(lease_expires_at=timezone.now() + self.lease)
        if renewed == len(ids):
            return None
        return set(
            TaskRun.objects.filter(
                pk__in=ids, status=TaskRunStatus.RUNNING, worker=self.me
            ).values_list("pk", flat=True)
        )

    def _watch(self) -> None:
        """Stop what was cancelled, deleted or taken away; renew leases when due; handle a
        blocked loop."""
        flying = {eid: slot for eid, slot in self.slots.items() if slot.flight is not None}
        if not flying:
            return
        cancel = dict(
            Execution.objects.filter(pk__in=list(flying)).values_list("pk", "cancel_requested")
        )
        kept = self._renew_leases() if time.perf_counter() >= self.next_renew else None
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
                self._advance(slot, slot.runner._stop(flight, verdict))
        overdue = [
            slot
            for slot in self.slots.values()
            if slot.flight is not None
            and not slot.flight.future.done()
            and time.perf_counter() >= slot.flight.hard_deadline
        ]
        if overdue:
            self._overdue(overdue)

    def _overdue(self, overdue: list[_Slot]) -> None:
        """Steps past their timeout and grace that did not stop: is the loop blocked?"""
        loop = self._task_loop()
        probe = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop.loop)
        try:
            probe.result(timeout=0.5)
            blocked = False
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            blocked = True
        if not blocked:
            # The loop runs, so these tasks swallowed their cancellation: fail them and leave
            # their coroutines behind.
            for slot in overdue:
                assert slot.flight is not None
                why = "did not stop when its timeout cancelled it (it swallowed the cancel)"
                self._advance(slot, slot.runner._blocked(slot.flight, why))
            return
        # The loop is stuck in some task's blocking code. Leave it behind (its thread ends when
        # that code returns); the overdue steps fail, the others are run again elsewhere.
        loop.loop.call_soon_threadsafe(loop.loop.stop)
        self.loop = None
        now = timezone.now()
        for slot in list(self.slots.values()):
            if slot.flight is None or slot.flight.future.done():
                continue
            slot.flight.future.cancel()
            if any(slot is late for late in overdue):
                self._advance(slot, slot.runner._blocked(slot.flight))
            else:
                _run_again(
                    slot.step,
                    why="another task blocked this worker's event loop; step runs again",
                    event=f"{slot.step.task_name}: interrupted by a blocked event loop; "
                    "running it again",
                    now=now,
                    worker=self.me,
                )
                slot.flight = None
                self.slots.pop(slot.execution.id, None)


def dispatch(execution_id: uuid.UUID | str, registry: TaskRegistry | None = None) -> int:
    """What a worker's job does: run this execution and, beside it, other ready ones."""
    return Dispatcher(registry).run(uuid.UUID(str(execution_id)))


def run_execution(execution_id: uuid.UUID | str, registry: TaskRegistry | None = None) -> int:
    """Run the execution's next steps in this process; returns how many ran."""
    return Runner(uuid.UUID(str(execution_id)), registry).run()


def run_inline(
    execution_id: uuid.UUID | str,
    registry: TaskRegistry | None = None,
    *,
    sleep: Any = time.sleep,
) -> Execution:
    """Run an execution to its end in this process, waiting out retry delays here.

    What ``manage.py runflow`` and the tests use: the worker's engine, with no queue. It
    returns when the execution ends, pauses, or has nothing left this process can run.
    """
    while True:
        ran = run_execution(execution_id, registry)
        execution = Execution.objects.get(pk=execution_id)
        if execution.status not in ACTIVE_STATUSES:
            return execution
        pending = TaskRun.objects.filter(
            execution_id=execution.id, status=TaskRunStatus.PENDING
        ).first()
        if pending is None:
            return execution
        wait = (pending.not_before - timezone.now()).total_seconds() if pending.not_before else 0.0
        if wait > 0:
            sleep(wait)
        elif not ran:
            return execution


# ---------------------------------------------------------------------------------------------
# The reaper
# ---------------------------------------------------------------------------------------------
def _run_again(step: TaskRun, *, why: str, event: str, now: datetime, **held: Any) -> bool:
    """Mark a RUNNING step LOST and queue a new attempt of the same task.

    ``held`` narrows the RUNNING row that may be taken (an expired lease, or this worker's
    own claim). False when the step was not in that state any more. A cancel or pause asked
    for meanwhile is honoured instead of queueing.
    """
    with transaction.atomic():
        execution = Execution.objects.select_for_update().filter(pk=step.execution_id).first()
        if execution is None:
            return False
        taken = TaskRun.objects.filter(pk=step.pk, status=TaskRunStatus.RUNNING, **held).update(
            status=TaskRunStatus.LOST, ended_at=now, lease_expires_at=None, error=why
        )
        if taken != 1:
            return False
        if execution.cancel_requested:
            Runner._end(
                execution.id, ExecutionStatus.CANCELLED, "cancelled by request",
                execution.steps_taken, now,
            )  # fmt: skip
            return True
        TaskRun.objects.create(
            execution_id=step.execution_id,
            seq=step.seq + 1,
            task_name=step.task_name,
            task_type=step.task_type,
            parameters=step.parameters,
            attempt=step.attempt + 1,
            woken_at=now,
        )
        ExecutionEvent.objects.create(
            execution_id=step.execution_id,
            task_run_id=step.pk,
            created_at=now,
            level="WARNING",
            message=event,
        )
        if execution.pause_requested:
            Execution.objects.filter(pk=execution.id).update(status=ExecutionStatus.PAUSED)
        else:
            wake(step.execution_id)
    return True


def reap(limit: int = 500) -> dict[str, int]:
    """Re-run steps whose worker died and wake steps nobody picked up.

    1. A RUNNING step whose lease expired is marked LOST and a new attempt of the same task
       is queued, so a killed worker costs one re-run of the step it held.
    2. An execution past its flow timeout with no step running ends FAILED (a running step
       times itself out).
    3. A PENDING step whose wake-up is older than FLOW_WAKE_AFTER_SECONDS is woken again (its
       queue message was lost), and so is a delayed step that is due but not yet woken (with
       Redis, the worker processes' DueStepTimer normally wakes it within a second).
    """
    now = timezone.now()
    counts = {"lost": 0, "timed_out": 0, "woken": 0}
    expired = list(
        TaskRun.objects.filter(status=TaskRunStatus.RUNNING, lease_expires_at__lt=now).order_by(
            "lease_expires_at"
        )[:limit]
    )
    for step in expired:
        worker = step.worker or "?"
        if _run_again(
            step,
            why=f"worker {worker} stopped renewing its lease; step runs again",
            event=f"{step.task_name}: worker {worker} was lost; running it again",
            now=now,
            lease_expires_at__lt=now,
        ):
            counts["lost"] += 1
            logger.warning(
                "execution=%s step=%s task=%s lost with worker %s",
                step.execution_id,
                step.seq,
                step.task_name,
                worker,
            )

    overdue = list(
        Execution.objects.filter(status__in=ACTIVE_STATUSES, deadline_at__lt=now)
        .exclude(steps__status=TaskRunStatus.RUNNING)
        .values_list("pk", flat=True)[:limit]
    )
    for eid in overdue:
        with transaction.atomic():
            execution = Execution.objects.select_for_update().filter(pk=eid).first()
            if execution is None or execution.status not in ACTIVE_STATUSES:
                continue
            if TaskRun.objects.filter(execution_id=eid, status=TaskRunStatus.RUNNING).exists():
                continue
            error = (
                f"the flow's timeout (timeout_seconds) ran out at "
                f"{execution.deadline_at:%Y-%m-%d %H:%M:%S}"
            )
            TaskRun.objects.filter(execution_id=eid, status=TaskRunStatus.PENDING).update(
                status=TaskRunStatus.CANCELLED, ended_at=now, error=f"{error} before it ran"
            )
            Runner._end(eid, ExecutionStatus.FAILED, error, execution.steps_taken, now)
            ExecutionEvent.objects.create(
                execution_id=eid, created_at=now, level="ERROR", message=error
            )
            counts["timed_out"] += 1
            logger.warning("execution=%s %s", eid, error)

    stale = now - timedelta(seconds=settings.FLOW_WAKE_AFTER_SECONDS)
    counts["woken"] = _wake_pending(Q(woken_at__lt=stale) | _due(now), now, limit, "the reaper")
    return counts


def _due(now: datetime) -> Q:
    """PENDING steps whose delay (a retry's) has ended but that were not woken since."""
    return Q(not_before__lte=now, woken_at__lte=F("not_before"))


def _wake_pending(which: Q, now: datetime, limit: int, by: str) -> int:
    """Wake the PENDING steps of active executions that ``which`` selects, each once: the
    conditional UPDATE lets only one of several wakers (reapers, timers) through."""
    sleepy = list(
        TaskRun.objects.filter(
            which, status=TaskRunStatus.PENDING, execution__status__in=ACTIVE_STATUSES
        ).values_list("pk", "execution_id")[:limit]
    )
    woken = 0
    for pk, eid in sleepy:
        with transaction.atomic():
            if (
                TaskRun.objects.filter(which, pk=pk, status=TaskRunStatus.PENDING)
                .update(woken_at=now)
            ):  # fmt: skip
                woken += 1
                logger.info("execution=%s pending step woken by %s", eid, by)
                wake(eid)
    return woken


def wake_due(limit: int = 500) -> int:
    """Wake the delayed steps that are due; returns how many.

    The ORM broker delivers a delayed step's message on time by itself. django-q2's Redis
    broker cannot deliver late, so with it every worker process runs this about once a
    second (``DueStepTimer``) and a retry starts when its delay ends, not at the reaper's
    next run.
    """
    now = timezone.now()
    return _wake_pending(_due(now), now, limit, "the due-step timer")


class DueStepTimer:
    """A daemon thread that calls ``wake_due`` every ``interval`` seconds in this process.

    Started in each django-q2 worker process when the broker cannot deliver late (see
    ``start_due_step_timer``); it dies with its process, and the next worker process starts
    its own. Its database connection is its own (Django's are per thread).
    """

    started: DueStepTimer | None = None  # the one of this process

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="flow-due-step-timer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                wake_due()
            except Exception as exc:  # a database or Redis hiccup: try again next time
                logger.warning("due-step timer failed, will retry: %s", exc)
                _reconnect()


def start_due_step_timer(**_: Any) -> None:
    """django-q2's ``post_spawn`` receiver (a worker process started): start this process's
    DueStepTimer, unless the broker delivers delayed messages itself (the ORM broker) or jobs
    run inline (sync mode)."""
    if Conf.ORM or Conf.SYNC or DueStepTimer.started is not None:
        return
    DueStepTimer.started = DueStepTimer(settings.FLOW_DUE_STEP_CHECK_SECONDS)


__all__ = [
    "DueStepTimer",
    "Runner",
    "StepOutcome",
    "TaskLoop",
    "reap",
    "run_execution",
    "start_due_step_timer",
    "wake",
    "wake_due",
    "worker_id",
]
