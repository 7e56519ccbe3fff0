"""Flow triggers: an execution's end starts the flows whose ``on_flow_end`` names its flow.

The rows are ``FlowTrigger`` (one per entry of each flow's current version, kept by
``flow_store``); the firing is an ``@on_end`` handler, so it runs once per ended top-level
execution, in the outbox transaction (``services.ends``): a worker killed at that moment
neither loses nor doubles a start, and the unique (triggered_by, flow) index holds it too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from flows.expressions import Expression, ExpressionError, compile_expression
from flows.models import (
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    ExecutionTrigger,
    FlowTrigger,
    FlowVersion,
    TaskRun,
)
from flows.services.ends import chunk_memo, on_end
from flows.services.errors import ServiceError
from flows.services.executions import execution_submit

logger = logging.getLogger("flows.services")


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Expression:
    return compile_expression(source)


def execution_result(execution: Execution) -> Any:
    """What a top-level execution gives: its last step's result (None when it returned
    nothing, or has no step). A child keeps its own in ``Execution.result``."""
    if execution.parent_step_id is not None:
        return execution.result
    return (
        TaskRun.objects.filter(execution_id=execution.id)
        .order_by("-seq")
        .values_list("result", flat=True)
        .first()
    )


@on_end("flow_triggers")
def start_triggered_flows(end: ExecutionEnd, execution: Execution) -> None:
    """Start each flow that triggers on this end: its states include the end's status and
    its condition (if any) is true over ``result`` and ``input``.

    What a downstream flow refuses (its input_schema, a flow no longer valid) or a condition
    that fails is not retried: the same end would be refused again, and holding the outbox
    row would hold every trigger of this end. It is written to the upstream execution's log
    as a WARNING (and the service log) and the others go on.
    """
    triggers = [
        t
        for t in chunk_memo(
            ("flow_triggers", end.flow_id),
            lambda: list(
                FlowTrigger.objects.filter(upstream_flow_id=end.flow_id).select_related(
                    "downstream"
                )
            ),
        )
        if end.status in t.states
    ]
    if not triggers:
        return
    result = execution_result(execution)
    payload = {
        "flow_id": end.flow_id,
        "execution_id": str(execution.id),
        "status": end.status,
        "result": result,
    }
    lines: list[tuple[str, str]] = []
    for trigger in triggers:
        target = trigger.downstream_id
        if trigger.condition:
            try:
                matched = _compiled(trigger.condition).evaluate(
                    result=result,
                    results={},
                    input=execution.input,
                    budget_seconds=settings.FLOW_EXPRESSION_BUDGET_SECONDS,
                )
            except ExpressionError as exc:
                lines.append(("WARNING", f"flow trigger of '{target}': {exc}; not started"))
                continue
            if not matched:
                continue
        version = FlowVersion.objects.get(flow_id=target, version=trigger.downstream.version)
        try:
            with transaction.atomic():
                started, _ = execution_submit(
                    flow_version=version,
                    input=dict(payload),
                    trigger=ExecutionTrigger.FLOW,
                    triggered_by=execution,
                )
        except ServiceError as exc:
            lines.append(("WARNING", f"flow trigger of '{target}' refused: {exc.message}"))
            continue
        except IntegrityError:
            # Started by this end already (execution_one_per_trigger): nothing to do.
            continue
        lines.append(("INFO", f"flow trigger: started '{target}' (execution {started.id})"))
    now = timezone.now()
    for level, message in lines:
        log = logger.warning if level == "WARNING" else logger.info
        log("execution=%s %s", execution.id, message)
    ExecutionEvent.objects.bulk_create(
        ExecutionEvent(execution=execution, created_at=now, level=level, message=message[:5000])
        for level, message in lines
    )
