"""Starting one step: build its task and hand the coroutine to the task loop.

``start`` returns the running ``Flight``, or the step's outcome at once when it cannot start
(unknown type, unresolvable parameters, the flow's timeout spent, a task that cannot be
built).
"""

from __future__ import annotations

import copy
import logging
import time
import traceback as tb
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from flows.definition import FlowDefinition
from flows.engine import fanin, fanout, redrive, timing
from flows.engine.inputs import resolve_parameters
from flows.engine.outcome import (
    FLOW_TIMEOUT_SOURCE,
    StepOutcome,
    failure,
    flow_timeout,
    masked,
    remaining,
)
from flows.engine.taskloop import Handle, TaskLoop, run_task
from flows.masking import Masker, running
from flows.models import Execution, TaskRun
from flows.registry import TaskType
from flows.waiting import CHILDREN, RESUME, Waiting
from tasks.base_task import Results, TaskContext, TaskLogger

logger = logging.getLogger("flows.engine")


@dataclass
class Flight:
    """A step whose coroutine is running on the task loop."""

    step: TaskRun
    future: Handle
    started: float  # time.perf_counter()
    timeout: float
    source: str  # where the timeout came from, for the message
    hard_deadline: float  # past this, the task is blocking its loop
    log: TaskLogger
    parameters: dict[str, Any] | None  # resolved parameters, when they differ from the step's
    # Hides the secrets the task got in what the step writes (None: it uses none), and the
    # token under which this process's logging filter masks them while the task runs.
    masker: Masker | None = None
    masking: int | None = None


def timeout_for(own: float | None, type_default: float | None) -> tuple[float, str]:
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


def start(
    execution: Execution,
    definition: FlowDefinition,
    step: TaskRun,
    results: dict[str, Any],
    task_type: TaskType | str,
    loop: TaskLoop,
) -> StepOutcome | Flight:
    """Prepare the claimed ``step`` and hand its coroutine to ``loop``.

    ``task_type`` is the step's type, or (a string) why there is none.
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
    try:
        spec = definition.task(step.task_name)
    except KeyError:
        return failure(f"task '{step.task_name}' is not in the flow's definition", permanent=True)
    if spec.is_control:
        # Parallel, map, sub-flow: no task code; the step starts children (or, redriven,
        # takes over its earlier attempt's), or ends from them.
        state = Waiting.from_json(step.waiting)
        kind = state.kind if state is not None else None
        if kind == CHILDREN:
            return fanin.join(execution, step)
        if kind == RESUME:
            return redrive.resume(execution, definition, step, spec, results)
        return fanout.begin(execution, definition, step, spec, results)
    if isinstance(task_type, str):
        return failure(task_type or "unknown task type", permanent=True)
    left = remaining(execution)
    if left is not None and left <= 0:
        return flow_timeout(definition)
    timeout, source = timeout_for(spec.timeout_seconds, task_type.default_timeout)
    if left is not None and left < timeout:
        timeout, source = left, FLOW_TIMEOUT_SOURCE
    try:
        # From the document, never from the step's row: a step that waited (a sleep, a
        # signal) holds its parameters as resolved, and resolving those again would read a
        # "${...}" that came in with the input or a result as a reference: a way to make a
        # task send a secret the flow never gave it.
        parameters = resolve_parameters(spec.parameters, task_type, execution, results)
    except ValueError as exc:
        return failure(str(exc), permanent=True)
    resolved = parameters.shown if parameters.shown != step.parameters else None
    masker = parameters.masker
    if masker:
        log.mask = masker.text
    try:
        task = task_type.cls(name=step.task_name, parameters=parameters.given)
        task.context = TaskContext(
            execution_id=str(execution.id),
            results=Results(results),
            input=copy.deepcopy(execution.input),
            attempt=step.attempt,
            logger=log,
            waiting=copy.deepcopy(step.waiting),
        )
    except Exception as exc:
        outcome = failure(
            f"could not create task: {type(exc).__name__}: {exc}", trace=tb.format_exc()
        )
        outcome.parameters = resolved
        return masked(outcome, masker)
    # Before the task is submitted: a line it logs before its values are registered would
    # go out unmasked.
    masking = running(masker) if masker else None
    started = time.perf_counter()
    return Flight(
        step=step,
        future=loop.submit(run_task(task, timeout)),
        started=started,
        timeout=timeout,
        source=source,
        hard_deadline=started + timeout + timing.ABANDON_GRACE_SECONDS,
        log=log,
        parameters=resolved,
        masker=masker,
        masking=masking,
    )
