"""Sub-flow calls between stored flows: each must name a stored flow and never come back
to the flow it started from. Checked over the stored flows, so after parsing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.definition.errors import FieldError
from flows.definition.flow import FlowDefinition
from flows.definition.limits import MAX_NESTING
from flows.definition.specs import SUBFLOW

# ``load(flow_id, version)``: that stored flow's definition (its current version when
# ``version`` is None), or a sentence saying why there is none.
Loader = Callable[[str, Any], FlowDefinition | str]


def subflow_calls(definition: FlowDefinition) -> list[tuple[str, str, Any]]:
    """Every sub-flow task, nested ones included: (its path, flow id, version or None)."""
    return [
        (f"{prefix}tasks[{i}]", spec.parameters["flow_id"], spec.parameters.get("version"))
        for prefix, body in definition.bodies()
        for i, spec in enumerate(body.tasks)
        if spec.task_type == SUBFLOW and isinstance(spec.parameters.get("flow_id"), str)
    ]


def check_subflows(
    definition: FlowDefinition, load: Loader, *, limit: int = MAX_NESTING
) -> list[FieldError]:
    """Errors for sub-flow calls that name no stored flow, or that come back to this flow.

    The walk follows every call of every flow reached (through ``load``), so
    A -> B -> C -> A is found from A.
    """
    errors: list[FieldError] = []
    for path, flow_id, version in subflow_calls(definition):
        where = f"{path}.parameters.flow_id"
        chain = [definition.id, flow_id]
        problem = _walk_subflows(flow_id, version, chain, definition.id, load, limit)
        if problem:
            errors.append(FieldError(where, problem))
    return errors


def _walk_subflows(
    flow_id: str, version: Any, chain: list[str], root: str, load: Loader, limit: int
) -> str:
    if flow_id == root:
        return "sub-flow cycle: " + " -> ".join(chain)
    if len(chain) > limit + 1:
        return f"sub-flows nest more than {limit} deep: " + " -> ".join(chain)
    found = load(flow_id, version)
    if isinstance(found, str):
        return found
    for _, child, child_version in subflow_calls(found):
        problem = _walk_subflows(child, child_version, [*chain, child], root, load, limit)
        if problem:
            return problem
    return ""
