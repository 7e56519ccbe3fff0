"""Small builders for flow documents and stored flows."""

from __future__ import annotations

import copy
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.utils import timezone

from flows import engine, services
from flows.models import Execution, ExecutionEnd, ExecutionStatus, Flow, FlowVersion

SAMPLE = json.loads(
    (Path(__file__).resolve().parent.parent / "examples" / "sample_flow.json").read_text()
)


def sample_flow() -> dict[str, Any]:
    """The seed's sample document, wrapped as ``{"flow": {...}}``."""
    return copy.deepcopy(SAMPLE)


def task(name: str, task_type: str = "noop", **parameters: Any) -> dict[str, Any]:
    return {"name": name, "task_type": task_type, "parameters": parameters}


def failing(name: str) -> dict[str, Any]:
    """A task that always fails (the seed's failure_rate at 1)."""
    return task(name, "fetch_data", failure_rate=1)


def cond(source: str, outcome: str, success: str, failure: str) -> dict[str, Any]:
    return {
        "source_task": source,
        "outcome": outcome,
        "target_task_success": success,
        "target_task_failure": failure,
    }


def flow_doc(
    tasks: list[dict[str, Any]],
    conditions: list[dict[str, Any]] | None = None,
    *,
    flow_id: str = "test_flow",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": flow_id, "name": flow_id.replace("_", " ").title(), "tasks": tasks}
    if conditions is not None:
        doc["conditions"] = conditions
    doc.update(extra)
    return doc


# --- parallel and map tasks ------------------------------------------------------------------
def approval_flow(
    flow_id: str = "approval",
    *,
    signal: str | None = "deploy",
    prompt: str = "Ship it?",
    ship: str = "shipping ${results.approve.data.version}",
) -> dict[str, Any]:
    """``approve`` waits for ``signal`` (None: the default signal, ``approval``); approved,
    ``ship`` prints ``ship`` (by default the payload's version), rejected, ``rejected`` runs."""
    wait = {"prompt": prompt, **({"signal": signal} if signal else {})}
    return flow_doc(
        [
            task("approve", "wait_for_signal", **wait),
            task("ship", "print", message=ship),
            task("rejected", "print", message="not shipped"),
        ],
        [cond("approve", "success", "ship", "rejected"), cond("ship", "success", "end", "end")],
        flow_id=flow_id,
    )


def parallel(name: str, branches: dict[str, list[dict[str, Any]]], **extra: Any) -> dict:
    return {
        "name": name,
        "task_type": "parallel",
        "branches": {b: {"tasks": tasks} for b, tasks in branches.items()},
        **extra,
    }


def mapped(name: str, items: Any, iterator: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        "name": name,
        "task_type": "map",
        "items": items,
        "iterator": {"tasks": iterator},
        **extra,
    }


def children_of(execution: Execution, task_name: str) -> list[Execution]:
    """The children of the latest step of ``task_name``, in item (branch) order."""
    step = execution.steps.filter(task_name=task_name).order_by("-seq").first()
    return list(Execution.objects.filter(parent_step=step).order_by("item_index"))


def start_execution(document: dict[str, Any], *, input: dict | None = None) -> Execution:
    """Store the flow, create and start an execution (its job is queued, not run)."""
    version = services.flow_create(document=document)
    execution = services.execution_create(flow_version=version, input=input)
    services.execution_start(execution_id=execution.id)
    return execution


def run_to_end(execution_id: Any) -> Execution:
    """Run the execution inline with the worker's engine (retry delays waited out here)."""
    return engine.run_inline(execution_id)


def run_flow(document: dict[str, Any], *, input: dict | None = None) -> Execution:
    return run_to_end(start_execution(document, input=input).id)


def ended(
    count: int, *, flow_id: str = "ended", status: str = ExecutionStatus.COMPLETED
) -> list[int]:
    """``count`` ends-outbox rows of executions of a one-task flow, as the engine writes one
    when an execution ends (the executions themselves stay CREATED); their keys, oldest
    first."""
    version = services.flow_create(document=flow_doc([task("a")], flow_id=flow_id))
    rows = [
        ExecutionEnd(
            execution=services.execution_create(flow_version=version),
            flow_id=flow_id,
            status=status,
            ended_at=timezone.now(),
        )
        for _ in range(count)
    ]
    return [row.pk for row in ExecutionEnd.objects.bulk_create(rows)]


def ran(execution: Execution) -> list[tuple[str, str]]:
    """(task name, status) of every step in order."""
    return list(execution.steps.order_by("seq").values_list("task_name", "status"))


def stored_counts() -> tuple[int, int, int]:
    """How many flows, flow versions and executions are stored."""
    return Flow.objects.count(), FlowVersion.objects.count(), Execution.objects.count()


def error_body(response: Any, status_code: int) -> dict[str, Any]:
    """Assert ``response`` is the API's one error shape with ``status_code``; return its body."""
    assert response.status_code == status_code, response.content[:500]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}, body
    assert body["detail"]
    return body


# Test task types shared by several test modules, as plugin sources (see write_plugins).
HANG_PLUGIN = """
    import asyncio
    from pathlib import Path


    class HangTask(BaseTask):
        async def run(self):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                Path(self.parameters["marker"]).write_text("cancelled")
                raise
            return {}
"""

NEEDS_MARKER_PLUGIN = """
    from pathlib import Path


    class NeedsMarkerTask(BaseTask):
        \"\"\"Fails until the file named by its ``marker`` parameter exists.\"\"\"

        async def run(self):
            if not Path(self.parameters["marker"]).exists():
                raise RuntimeError("marker file missing")
            return {"attempt": self.context.attempt}
"""


def write_plugins(folder: Path, sources: Mapping[str, str]) -> Path:
    """Write each ``task type -> class source`` as ``folder/task_<type>.py``, importing what
    a plugin module needs from ``tasks.base_task``; returns ``folder``."""
    header = "from tasks.base_task import BaseTask, PermanentTaskError\n"
    for task_type, body in sources.items():
        (folder / f"task_{task_type}.py").write_text(header + textwrap.dedent(body))
    return folder
