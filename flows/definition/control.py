"""The tasks the engine runs itself: parallel (named branches), map (an iterator over a
list of items) and sub-flow (another stored flow). Each runs child executions."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flows.definition.errors import Report
from flows.definition.fields import check_schema, is_name, kind_of, optional_text
from flows.definition.limits import (
    BRANCH_NAME_RE,
    FLOW_ID_RE,
    MAX_BRANCHES,
    MAX_MAP_CONCURRENCY,
    MAX_MAP_ITEMS,
    MAX_NESTING,
)
from flows.definition.specs import MAP, PARALLEL, SUBFLOW, TaskSpec, Tolerance
from flows.definition.tasks import TASK_KEYS
from flows.expressions import has_reference

if TYPE_CHECKING:
    from flows.definition.flow import FlowDefinition

# Parses the tasks and conditions of a branch or an iterator: (raw body, its path prefix,
# whether it runs inside a map's iterator). Bodies hold tasks, which hold control tasks, so
# the body parser passes itself in rather than this module importing it.
BodyParser = Callable[[Any, str, bool], "FlowDefinition | None"]

# Control tasks take their own fields and no retry or timeout of their own (their children
# retry and time out step by step).
_CONTROL_KEYS = {
    PARALLEL: {"name", "task_type", "description", "parameters", "branches", "fail_fast"},
    MAP: {
        "name",
        "task_type",
        "description",
        "parameters",
        "items",
        "iterator",
        "max_concurrency",
        "tolerated_failures",
    },
    SUBFLOW: {"name", "task_type", "description", "parameters"},
}
_SUBFLOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["flow_id"],
    "properties": {
        "flow_id": {"type": "string", "pattern": FLOW_ID_RE.pattern},
        # A version is a 32-bit column: a larger one is no version (and overflows a lookup).
        "version": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "input": {"type": "object"},
    },
    "additionalProperties": False,
}


def parse_control(
    item: Mapping,
    kind: str,
    path: str,
    err: Report,
    *,
    depth: int,
    in_map: bool,
    parse_body: BodyParser,
) -> TaskSpec | None:
    """A parallel, map or sub-flow task; None (with errors reported) when it is invalid.

    Its name is left to the caller, which checks it after these fields."""
    allowed = _CONTROL_KEYS[kind]
    for key in sorted(set(item) - allowed, key=str):
        if key in TASK_KEYS:
            err(f"{path}.{key}", f"not taken by a {kind} task (set it on its tasks)")
        else:
            err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
    name = item.get("name")
    name = name if is_name(name) else ""
    if depth >= MAX_NESTING:
        err(path, f"parallel, map and sub-flow tasks nest at most {MAX_NESTING} deep")
        return None
    description = optional_text(item, "description", f"{path}.description", err, 5000)
    params = item.get("parameters", {})
    if params is None:
        params = {}
    ok = True
    if not isinstance(params, Mapping):
        err(f"{path}.parameters", f"must be an object, not {kind_of(params)}")
        ok = False
        params = {}
    elif kind == SUBFLOW:
        ok = check_schema(_SUBFLOW_SCHEMA, params, f"{path}.parameters", err)
    spec = TaskSpec(name=name, task_type=kind, parameters=dict(params), description=description)
    parsed: TaskSpec | None = spec
    if kind == PARALLEL:
        parsed = _with_branches(spec, item, path, err, in_map, parse_body)
    elif kind == MAP:
        parsed = _with_iterator(spec, item, path, err, parse_body)
    return parsed if ok else None


def _with_branches(
    spec: TaskSpec, item: Mapping, path: str, err: Report, in_map: bool, parse_body: BodyParser
) -> TaskSpec | None:
    raw = item.get("branches")
    if not isinstance(raw, Mapping) or not raw:
        err(
            f"{path}.branches",
            "required: an object of named branches, each {'tasks': [...], 'conditions': [...]}",
        )
        return None
    if len(raw) > MAX_BRANCHES:
        err(f"{path}.branches", f"at most {MAX_BRANCHES} branches")
        return None
    ok = True
    branches = []
    for branch, body in raw.items():
        where = f"{path}.branches.{branch}"
        if not isinstance(branch, str) or not BRANCH_NAME_RE.match(branch):
            err(where, "a branch name is 1-50 letters, digits, '-' and '_'")
            ok = False
            continue
        parsed = parse_body(body, f"{where}.", in_map)
        if parsed is None:
            ok = False
        else:
            branches.append((branch, parsed))
    fail_fast = item.get("fail_fast", True)
    if not isinstance(fail_fast, bool):
        err(f"{path}.fail_fast", "must be true or false")
        ok = False
    if not ok:
        return None
    return dataclasses.replace(spec, branches=tuple(branches), fail_fast=fail_fast)


def _with_iterator(
    spec: TaskSpec, item: Mapping, path: str, err: Report, parse_body: BodyParser
) -> TaskSpec | None:
    ok = True
    items = item.get("items")
    if items is None:
        err(
            f"{path}.items",
            "required: the list to map over, as a reference such as '${input.orders}' "
            "or '${results.fetch.data.records}', or a literal list",
        )
        ok = False
    elif isinstance(items, str):
        whole = items.strip()
        if not (whole.startswith("${") and whole.endswith("}") and has_reference(whole)):
            err(f"{path}.items", "must be one ${...} reference to a list, or a list")
            ok = False
    elif not isinstance(items, list):
        err(f"{path}.items", f"must be a ${{...}} reference or a list, not {kind_of(items)}")
        ok = False
    concurrency = item.get("max_concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_MAP_CONCURRENCY
    ):
        err(
            f"{path}.max_concurrency",
            f"must be a whole number from 1 to {MAX_MAP_CONCURRENCY} (items run at once)",
        )
        ok = False
    tolerance = _parse_tolerance(item.get("tolerated_failures"), path, err)
    iterator = parse_body(item.get("iterator"), f"{path}.iterator.", True)
    if iterator is None or tolerance is None or not ok:
        return None
    return dataclasses.replace(
        spec,
        items=items,
        iterator=iterator,
        max_concurrency=concurrency,
        tolerated_failures=tolerance,
    )


def _parse_tolerance(raw: Any, path: str, err: Report) -> Tolerance | None:
    where = f"{path}.tolerated_failures"
    if raw is None:
        return Tolerance()
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MAX_MAP_ITEMS:
        return Tolerance(count=raw)
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", raw)
        if match and float(match.group(1)) <= 100:
            return Tolerance(percent=float(match.group(1)))
    err(
        where,
        f"must be a number of items from 0 to {MAX_MAP_ITEMS:,} or a percentage such as '10%'",
    )
    return None
