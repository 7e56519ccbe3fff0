"""A body: the tasks, conditions and start task of a flow, or of a parallel branch or a map
iterator inside one. Bodies nest through their control tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.definition.conditions import check_references, parse_conditions
from flows.definition.control import parse_control
from flows.definition.errors import Report
from flows.definition.fields import kind_of, listing
from flows.definition.flow import FlowDefinition
from flows.definition.limits import MAX_TASKS
from flows.definition.specs import CONTROL_TYPES, TaskSpec
from flows.definition.tasks import Lookup, claim_name, parse_task

_BODY_KEYS = {"description", "start_task", "tasks", "conditions"}


def parse_body(
    doc: Mapping,
    prefix: str,
    registry: Lookup,
    err: Report,
    *,
    flow_id: str,
    max_steps: int,
    depth: int,
    in_map: bool = False,
) -> FlowDefinition:
    """The tasks, conditions and start task of a flow, or of a branch/iterator inside one
    (``prefix`` is that body's path, such as ``tasks[2].branches.left.``)."""
    tasks = _parse_tasks(
        doc.get("tasks"),
        registry,
        err,
        prefix=prefix,
        flow_id=flow_id,
        max_steps=max_steps,
        depth=depth,
        in_map=in_map,
    )
    names = [t.name for t in tasks]
    known = set(names)
    check_references(doc.get("tasks"), known, err, prefix=prefix, in_map=in_map)

    start = doc.get("start_task")
    if start is None:
        start = names[0] if names else ""
    elif not isinstance(start, str):
        err(f"{prefix}start_task", f"must be a task name, not {kind_of(start)}")
        start = ""
    elif names and start not in known:
        err(f"{prefix}start_task", f"'{start}' is not one of the tasks ({listing(names)})")

    conditions = parse_conditions(doc.get("conditions", []), known, names, err, prefix=prefix)
    return FlowDefinition(
        id=flow_id,
        name=prefix.rstrip(".") or flow_id,
        start_task=start,
        tasks=tuple(tasks),
        conditions=tuple(conditions),
        max_steps=max_steps,
    )


def _parse_tasks(
    raw: Any,
    registry: Lookup,
    err: Report,
    *,
    prefix: str,
    flow_id: str,
    max_steps: int,
    depth: int,
    in_map: bool,
) -> list[TaskSpec]:
    where = f"{prefix}tasks"
    if raw is None:
        err(where, "required: a list with at least one task")
        return []
    if not isinstance(raw, list):
        err(where, f"must be a list of tasks, not {kind_of(raw)}")
        return []
    if not raw:
        err(where, "a flow needs at least one task" if not prefix else "needs at least one task")
        return []
    if len(raw) > MAX_TASKS:
        err(where, f"at most {MAX_TASKS} tasks per flow")
        return []

    def nested_body(body: Any, body_prefix: str, body_in_map: bool) -> FlowDefinition | None:
        """A branch or iterator of a control task here, one level deeper."""
        if not isinstance(body, Mapping):
            err(
                body_prefix.rstrip("."),
                f"must be an object {{'tasks': [...], 'conditions': [...]}}, not {kind_of(body)}",
            )
            return None
        for key in sorted(set(body) - _BODY_KEYS, key=str):
            err(f"{body_prefix}{key}", f"unknown field; allowed: {', '.join(sorted(_BODY_KEYS))}")
        return parse_body(
            body,
            body_prefix,
            registry,
            err,
            flow_id=flow_id,
            max_steps=max_steps,
            depth=depth + 1,
            in_map=body_in_map,
        )

    specs: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"{prefix}tasks[{i}]"
        if not isinstance(item, Mapping):
            err(path, f"must be an object, not {kind_of(item)}")
            continue
        kind = item.get("task_type")
        if kind in CONTROL_TYPES:
            spec = parse_control(
                item, kind, path, err, depth=depth, in_map=in_map, parse_body=nested_body
            )
            # A control task's name is checked after its fields (their errors come first);
            # an invalid one keeps its name known, as a plain task does.
            name = item.get("name")
            if claim_name(name, path, seen, i, err):
                specs.append(spec or TaskSpec(name=name, task_type=kind))
        else:
            spec = parse_task(item, path, registry, err, seen=seen, index=i)
            if spec is not None:
                specs.append(spec)
    return specs
