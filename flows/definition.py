"""Parse and validate a flow document into plain typed objects, and route between its tasks.

No ORM and no Django here: the same rules serve the API, the operator pages, ``runflow`` and
the engine. ``parse_flow`` reports every problem at once, each with the path of its field.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import jsonschema

from flows.expressions import (
    Expression,
    ExpressionError,
    Reference,
    ResolveError,
    compile_expression,
    has_reference,
    references_in,
)

END = "end"
OUTCOMES = ("success", "failure")
FLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
MAX_NAME = 100
MAX_TASKS = 500
MAX_STEPS_LIMIT = 100_000
# Deeper documents are refused up front, so no later walk over them can hit Python's
# recursion limit.
MAX_DEPTH = 64

MAX_ATTEMPTS = 100
MAX_RETRY_DELAY = 86_400.0

# Kinds the engine itself runs (no plugin): each starts child executions and waits for them.
PARALLEL, MAP, SUBFLOW = "parallel", "map", "subflow"
CONTROL_TYPES = (PARALLEL, MAP, SUBFLOW)
MAX_BRANCHES = 50
# Parallel, map and sub-flow tasks nest; deeper than this is refused.
MAX_NESTING = 5
MAX_MAP_CONCURRENCY = 10_000
BRANCH_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")

_FLOW_KEYS = {
    "id",
    "name",
    "description",
    "start_task",
    "tasks",
    "conditions",
    "max_steps",
    "timeout_seconds",
}
_TASK_KEYS = {"name", "task_type", "description", "parameters", "timeout_seconds", "retry"}
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
_BODY_KEYS = {"description", "start_task", "tasks", "conditions"}
_SUBFLOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["flow_id"],
    "properties": {
        "flow_id": {"type": "string", "pattern": FLOW_ID_RE.pattern},
        "version": {"type": "integer", "minimum": 1},
        "input": {"type": "object"},
    },
    "additionalProperties": False,
}
_RETRY_KEYS = {"max_attempts", "delay_seconds", "backoff", "max_delay_seconds"}
_CONDITION_KEYS = {
    "name",
    "description",
    "source_task",
    "outcome",
    "target_task_success",
    "target_task_failure",
    "expression",
}


class Lookup(Protocol):
    def get(self, task_type: str) -> Any: ...

    def problem(self, task_type: str) -> str | None: ...


class Registry(Protocol):
    def snapshot(self) -> Lookup: ...


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class FlowValidationError(Exception):
    """The document is not a valid flow; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
        )

    def as_list(self) -> list[dict[str, str]]:
        return [e.as_dict() for e in self.errors]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed task is tried again, and how long each retry waits."""

    max_attempts: int = 1
    delay_seconds: float = 0.0
    backoff: str = "fixed"  # or "exponential": delay doubles with each attempt
    max_delay_seconds: float = 3600.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (2 for the first retry)."""
        delay = self.delay_seconds
        if self.backoff == "exponential":
            delay = self.delay_seconds * (2 ** max(0, attempt - 2))
        return min(delay, self.max_delay_seconds)


NO_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Tolerance:
    """How many failed map items a map task tolerates: a count, or a percentage of items."""

    count: int | None = None
    percent: float | None = None

    def allows(self, failed: int, total: int) -> bool:
        if self.percent is not None:
            return failed * 100 <= self.percent * total
        return failed <= (self.count or 0)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    task_type: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    timeout_seconds: float | None = None
    retry: RetryPolicy = NO_RETRY
    # parallel: (branch name, its tasks and conditions) in document order.
    branches: tuple[tuple[str, FlowDefinition], ...] = ()
    fail_fast: bool = True
    # map: the list to run `iterator` over (a ${...} reference or a literal list).
    items: Any = None
    iterator: FlowDefinition | None = None
    max_concurrency: int | None = None
    tolerated_failures: Tolerance = field(default_factory=Tolerance)

    @property
    def is_control(self) -> bool:
        return self.task_type in CONTROL_TYPES

    def body(self, key: str) -> FlowDefinition:
        """The tasks a child execution of this task runs: a branch by name, or the map's
        iterator (key ``""``)."""
        if self.task_type == MAP and self.iterator is not None and not key:
            return self.iterator
        for name, body in self.branches:
            if name == key:
                return body
        raise KeyError(f"task '{self.name}' has no branch '{key}'")


@dataclass(frozen=True)
class ConditionSpec:
    source_task: str
    outcome: str
    target_task_success: str
    target_task_failure: str
    name: str = ""
    description: str = ""
    expression: Expression | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FlowDefinition:
    id: str
    name: str
    start_task: str
    tasks: tuple[TaskSpec, ...]
    conditions: tuple[ConditionSpec, ...] = ()
    description: str = ""
    max_steps: int = 1000
    timeout_seconds: float | None = None
    warnings: tuple[FieldError, ...] = ()

    # The engine looks tasks and conditions up once per step: index them once per definition.
    @cached_property
    def _tasks_by_name(self) -> dict[str, tuple[int, TaskSpec]]:
        return {spec.name: (i, spec) for i, spec in enumerate(self.tasks)}

    @cached_property
    def _conditions_by_source(self) -> dict[str, ConditionSpec]:
        return {cond.source_task: cond for cond in self.conditions}

    def task(self, name: str) -> TaskSpec:
        return self._tasks_by_name[name][1]

    def scope(self, path: list[str] | tuple[str, ...]) -> FlowDefinition:
        """The definition a child execution runs: ``path`` alternates a control task's name
        and its branch (``""`` for a map's iterator), from this definition down."""
        current = self
        for i in range(0, len(path) - 1, 2):
            current = current.task(path[i]).body(path[i + 1])
        return current

    def condition_for(self, task_name: str) -> ConditionSpec | None:
        return self._conditions_by_source.get(task_name)

    def route(
        self,
        task_name: str,
        status: str,
        *,
        result: Any = None,
        results: Mapping[str, Any] | None = None,
        input: Any = None,
    ) -> tuple[str | None, str]:
        """Where to go after ``task_name`` ended with ``status`` ('success' or 'failure').

        Returns ``(next task name or None to end, a sentence saying why)``. A condition with
        an ``expression`` is evaluated over the task's result, all results and the input when
        the task succeeded (true: success target, false: failure target); a failed task
        takes the failure target. Raises ExpressionError when the expression fails.
        """
        cond = self.condition_for(task_name)
        if cond is not None:
            label = f"condition '{cond.name}'" if cond.name else "its condition"
            if cond.expression is not None:
                if status == "success":
                    matched = cond.expression.evaluate(
                        result=result, results=results or {}, input=input
                    )
                    why = f"{task_name} succeeded; {label} `{cond.expression.source}` is {matched}"
                else:
                    matched = False
                    why = f"{task_name} ended {status}; {label} takes its failure target"
            else:
                matched = status == cond.outcome
                verdict = "matched" if matched else "did not match"
                why = f"{task_name} ended {status}; {label} expects {cond.outcome}: {verdict}"
            target = cond.target_task_success if matched else cond.target_task_failure
            return (None if target == END else target), why
        if status != "success":
            return None, f"{task_name} ended {status} and has no condition: the flow ends"
        index = self._tasks_by_name[task_name][0]
        if index + 1 < len(self.tasks):
            nxt = self.tasks[index + 1].name
            return nxt, f"{task_name} succeeded; no condition, next task in order"
        return None, f"{task_name} succeeded and is the last task: the flow ends"

    def bodies(self, prefix: str = "") -> Iterator[tuple[str, FlowDefinition]]:
        """This definition and every branch and map iterator in it, nested ones too, each
        with the path prefix of its fields (``tasks[2].branches.left.``)."""
        yield prefix, self
        for i, spec in enumerate(self.tasks):
            for branch, body in spec.branches:
                yield from body.bodies(f"{prefix}tasks[{i}].branches.{branch}.")
            if spec.iterator is not None:
                yield from spec.iterator.bodies(f"{prefix}tasks[{i}].iterator.")

    def reachable(self) -> set[str]:
        seen: set[str] = set()
        todo = [self.start_task]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            cond = self.condition_for(name)
            if cond is not None:
                targets = {cond.target_task_success, cond.target_task_failure} - {END}
            else:
                targets = {self.route(name, "success")[0]} - {None}
            todo.extend(t for t in targets if t not in seen)
        return seen


def subflow_calls(definition: FlowDefinition) -> list[tuple[str, str, Any]]:
    """Every sub-flow task, nested ones included: (its path, flow id, version or None)."""
    return [
        (f"{prefix}tasks[{i}]", spec.parameters["flow_id"], spec.parameters.get("version"))
        for prefix, body in definition.bodies()
        for i, spec in enumerate(body.tasks)
        if spec.task_type == SUBFLOW and isinstance(spec.parameters.get("flow_id"), str)
    ]


def check_subflows(
    definition: FlowDefinition, load: Any, *, limit: int = MAX_NESTING
) -> list[FieldError]:
    """Errors for sub-flow calls that name no stored flow, or that come back to this flow.

    ``load(flow_id, version)`` returns that flow's definition (the current version when
    ``version`` is None), or a string saying why there is none. The walk follows every
    call of every flow reached, so A -> B -> C -> A is found from A.
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
    flow_id: str, version: Any, chain: list[str], root: str, load: Any, limit: int
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


def unwrap(document: Any) -> Any:
    """Accept ``{"flow": {...}}`` as well as the bare document."""
    if isinstance(document, Mapping) and set(document) == {"flow"}:
        return document["flow"]
    return document


def parse_flow(
    document: Any, registry: Registry, *, default_max_steps: int = 1000
) -> FlowDefinition:
    """Validate ``document`` and return its definition, or raise FlowValidationError."""
    doc = unwrap(document)
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    if not isinstance(doc, Mapping):
        raise FlowValidationError(
            [FieldError("", f"a flow document must be a JSON object, not {_kind(doc)}")]
        )
    if _deeper_than(doc, MAX_DEPTH):
        raise FlowValidationError(
            [FieldError("", f"the document is nested too deeply (more than {MAX_DEPTH} levels)")]
        )
    for key in sorted(set(doc) - _FLOW_KEYS, key=str):
        err(str(key), f"unknown field; allowed: {', '.join(sorted(_FLOW_KEYS))}")

    flow_id = doc.get("id")
    if not isinstance(flow_id, str) or not FLOW_ID_RE.match(flow_id):
        err(
            "id",
            "required: 1-100 characters, letters, digits, '-' and '_', starting with a "
            "letter or digit",
        )
        flow_id = ""
    for path in _nul_paths(doc, ""):
        err(path, "contains a NUL character (\\u0000), which cannot be stored; remove it")
    name = _optional_text(doc, "name", "name", err, 200, single_line=True) or flow_id
    description = _optional_text(doc, "description", "description", err, 5000)

    max_steps = doc.get("max_steps", default_max_steps)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        err("max_steps", f"must be a whole number, not {_kind(max_steps)}")
        max_steps = default_max_steps
    elif not 1 <= max_steps <= MAX_STEPS_LIMIT:
        err("max_steps", f"must be between 1 and {MAX_STEPS_LIMIT}")

    flow_timeout = doc.get("timeout_seconds")
    if flow_timeout is not None and (
        isinstance(flow_timeout, bool)
        or not isinstance(flow_timeout, int | float)
        or flow_timeout <= 0
    ):
        err("timeout_seconds", "must be a positive number of seconds")
        flow_timeout = None

    body = _parse_body(
        doc, "", registry.snapshot(), err, flow_id=flow_id, max_steps=max_steps, depth=0
    )

    if errors:
        raise FlowValidationError(errors)

    definition = dataclasses.replace(
        body,
        name=name,
        description=description,
        timeout_seconds=float(flow_timeout) if flow_timeout is not None else None,
    )
    return dataclasses.replace(definition, warnings=tuple(_unreachable(definition)))


def _unreachable(definition: FlowDefinition) -> list[FieldError]:
    """Warnings for tasks no path reaches, in this definition and every branch/iterator."""
    out = []
    for prefix, body in definition.bodies():
        reachable = body.reachable()
        out += [
            FieldError(f"{prefix}tasks[{i}]", f"task '{t.name}' can never run: no path reaches it")
            for i, t in enumerate(body.tasks)
            if t.name not in reachable
        ]
    return out


def _parse_body(
    doc: Mapping,
    prefix: str,
    registry: Lookup,
    err: Any,
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
    _check_references(doc.get("tasks"), known, err, prefix=prefix, in_map=in_map)

    start = doc.get("start_task")
    if start is None:
        start = names[0] if names else ""
    elif not isinstance(start, str):
        err(f"{prefix}start_task", f"must be a task name, not {_kind(start)}")
        start = ""
    elif names and start not in known:
        err(f"{prefix}start_task", f"'{start}' is not one of the tasks ({_listing(names)})")

    conditions = _parse_conditions(doc.get("conditions", []), known, names, err, prefix=prefix)
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
    err: Any,
    *,
    prefix: str = "",
    flow_id: str = "",
    max_steps: int = 1000,
    depth: int = 0,
    in_map: bool = False,
) -> list[TaskSpec]:
    where = f"{prefix}tasks"
    if raw is None:
        err(where, "required: a list with at least one task")
        return []
    if not isinstance(raw, list):
        err(where, f"must be a list of tasks, not {_kind(raw)}")
        return []
    if not raw:
        err(where, "a flow needs at least one task" if not prefix else "needs at least one task")
        return []
    if len(raw) > MAX_TASKS:
        err(where, f"at most {MAX_TASKS} tasks per flow")
        return []
    specs: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"{prefix}tasks[{i}]"
        if not isinstance(item, Mapping):
            err(path, f"must be an object, not {_kind(item)}")
            continue
        control = item.get("task_type") if item.get("task_type") in CONTROL_TYPES else None
        allowed = _CONTROL_KEYS[control] if control else _TASK_KEYS
        for key in sorted(set(item) - allowed, key=str):
            if control and key in _TASK_KEYS:
                err(f"{path}.{key}", f"not taken by a {control} task (set it on its tasks)")
            else:
                err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        if control:
            spec = _parse_control(
                item,
                control,
                path,
                registry,
                err,
                flow_id=flow_id,
                max_steps=max_steps,
                depth=depth,
                in_map=in_map,
            )
            name = item.get("name")
            if not _is_name(name):
                err(f"{path}.name", f"required: a non-empty name of at most {MAX_NAME} characters")
            elif name in seen:
                err(f"{path}.name", f"duplicate task name '{name}' (also tasks[{seen[name]}])")
            else:
                seen[name] = i
                specs.append(spec or TaskSpec(name=name, task_type=control))
            continue
        ok = True
        name = item.get("name")
        if not _is_name(name):
            err(f"{path}.name", f"required: a non-empty name of at most {MAX_NAME} characters")
            ok = False
        elif name in seen:
            err(f"{path}.name", f"duplicate task name '{name}' (also tasks[{seen[name]}])")
            ok = False
        else:
            seen[name] = i
        task_type = item.get("task_type")
        type_info = None
        if not isinstance(task_type, str) or not task_type:
            err(f"{path}.task_type", "required: the name of a registered task type")
            ok = False
        else:
            problem = registry.problem(task_type)
            if problem:
                err(f"{path}.task_type", problem)
                ok = False
            else:
                type_info = registry.get(task_type)
        params = item.get("parameters", {})
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            err(f"{path}.parameters", f"must be an object, not {_kind(params)}")
            ok = False
        elif type_info is not None:
            ok = (
                _check_schema(type_info.parameters_schema, params, f"{path}.parameters", err) and ok
            )
        timeout = item.get("timeout_seconds")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            err(f"{path}.timeout_seconds", "must be a positive number of seconds")
            ok = False
        description = _optional_text(item, "description", f"{path}.description", err, 5000)
        retry = _parse_retry(
            item.get("retry", getattr(type_info, "default_retry", None)), f"{path}.retry", err
        )
        if retry is None:
            ok = False
        if ok:
            specs.append(
                TaskSpec(
                    name=name,
                    task_type=task_type,
                    parameters=dict(params),
                    description=description,
                    timeout_seconds=float(timeout) if timeout is not None else None,
                    retry=retry or NO_RETRY,
                )
            )
        elif _is_name(name):
            # Keep the name known so conditions pointing at it are not reported twice.
            specs.append(TaskSpec(name=name, task_type=str(task_type)))
    return specs


def _parse_control(
    item: Mapping,
    kind: str,
    path: str,
    registry: Lookup,
    err: Any,
    *,
    flow_id: str,
    max_steps: int,
    depth: int,
    in_map: bool,
) -> TaskSpec | None:
    """A parallel, map or sub-flow task; None (with errors reported) when it is invalid."""
    name = item.get("name")
    name = name if _is_name(name) else ""
    if depth >= MAX_NESTING:
        err(path, f"parallel, map and sub-flow tasks nest at most {MAX_NESTING} deep")
        return None
    description = _optional_text(item, "description", f"{path}.description", err, 5000)
    params = item.get("parameters", {})
    if params is None:
        params = {}
    ok = True
    if not isinstance(params, Mapping):
        err(f"{path}.parameters", f"must be an object, not {_kind(params)}")
        ok = False
        params = {}
    elif kind == SUBFLOW:
        ok = _check_schema(_SUBFLOW_SCHEMA, params, f"{path}.parameters", err) and ok
    nested = {"flow_id": flow_id, "max_steps": max_steps, "depth": depth + 1}
    spec = TaskSpec(name=name, task_type=kind, parameters=dict(params), description=description)

    if kind == PARALLEL:
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
        branches = []
        for branch, body in raw.items():
            where = f"{path}.branches.{branch}"
            if not isinstance(branch, str) or not BRANCH_NAME_RE.match(branch):
                err(where, "a branch name is 1-50 letters, digits, '-' and '_'")
                ok = False
                continue
            parsed = _parse_nested_body(body, f"{where}.", registry, err, in_map, nested)
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

    if kind == MAP:
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
            err(f"{path}.items", f"must be a ${{...}} reference or a list, not {_kind(items)}")
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
        tolerance = _parse_tolerance(item.get("tolerated_failures"), f"{path}", err)
        if tolerance is None:
            ok = False
        iterator = _parse_nested_body(
            item.get("iterator"), f"{path}.iterator.", registry, err, True, nested
        )
        if iterator is None or not ok:
            return None
        return dataclasses.replace(
            spec,
            items=items,
            iterator=iterator,
            max_concurrency=concurrency,
            tolerated_failures=tolerance,
        )

    return spec if ok else None


def _parse_nested_body(
    raw: Any, prefix: str, registry: Lookup, err: Any, in_map: bool, nested: dict[str, Any]
) -> FlowDefinition | None:
    where = prefix.rstrip(".")
    if not isinstance(raw, Mapping):
        err(where, f"must be an object {{'tasks': [...], 'conditions': [...]}}, not {_kind(raw)}")
        return None
    for key in sorted(set(raw) - _BODY_KEYS, key=str):
        err(f"{prefix}{key}", f"unknown field; allowed: {', '.join(sorted(_BODY_KEYS))}")
    return _parse_body(raw, prefix, registry, err, in_map=in_map, **nested)


def _parse_tolerance(raw: Any, path: str, err: Any) -> Tolerance | None:
    where = f"{path}.tolerated_failures"
    if raw is None:
        return Tolerance()
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return Tolerance(count=raw)
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", raw)
        if match and float(match.group(1)) <= 100:
            return Tolerance(percent=float(match.group(1)))
    err(where, "must be a number of items (0 or more) or a percentage such as '10%'")
    return None


def _check_schema(schema: Mapping[str, Any], value: Mapping, path: str, err: Any) -> bool:
    ok = True
    validator = jsonschema.Draft202012Validator(schema)
    for e in sorted(validator.iter_errors(dict(value)), key=lambda e: list(e.path)):
        if has_reference(e.instance):
            continue  # checked at run time, once resolved
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        err(f"{path}{sub}", e.message)
        ok = False
    return ok


def _parse_retry(raw: Any, path: str, err: Any) -> RetryPolicy | None:
    """The task's retry policy; None (with errors reported) when it is invalid."""
    if raw is None:
        return NO_RETRY
    if not isinstance(raw, Mapping):
        err(
            path,
            f"must be an object like {{'max_attempts': 3, 'delay_seconds': 2}}, not {_kind(raw)}",
        )
        return None
    ok = True
    for key in sorted(set(raw) - _RETRY_KEYS, key=str):
        err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(_RETRY_KEYS))}")
        ok = False
    attempts = raw.get("max_attempts", 1)
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 1 <= attempts <= MAX_ATTEMPTS
    ):
        err(f"{path}.max_attempts", f"must be a whole number from 1 to {MAX_ATTEMPTS}")
        ok = False
    numbers = {}
    for key, default in (("delay_seconds", 0.0), ("max_delay_seconds", 3600.0)):
        value = raw.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_RETRY_DELAY
        ):
            err(f"{path}.{key}", f"must be a number of seconds from 0 to {MAX_RETRY_DELAY:g}")
            ok = False
        numbers[key] = float(value) if isinstance(value, int | float) else default
    backoff = raw.get("backoff", "fixed")
    if backoff not in ("fixed", "exponential"):
        err(f"{path}.backoff", "must be 'fixed' or 'exponential'")
        ok = False
    if not ok:
        return None
    return RetryPolicy(
        max_attempts=attempts,
        delay_seconds=numbers["delay_seconds"],
        backoff=backoff,
        max_delay_seconds=numbers["max_delay_seconds"],
    )


def _check_references(
    raw_tasks: Any, known: set[str], err: Any, *, prefix: str = "", in_map: bool = False
) -> None:
    """Parameters may only refer to tasks of this flow (or branch), in the ${...} syntax;
    ``${item}`` only inside a map's iterator."""
    if not isinstance(raw_tasks, list):
        return
    for i, item in enumerate(raw_tasks):
        if not isinstance(item, Mapping):
            continue
        fields = [("parameters", item.get("parameters"))]
        if item.get("task_type") == MAP:
            fields.append(("items", item.get("items")))
        for key, value in fields:
            for sub, ref in references_in(value) if value is not None else ():
                _check_reference(f"{prefix}tasks[{i}].{key}{sub}", ref, known, err, in_map)


def _check_reference(
    where: str, ref: Reference | ResolveError, known: set[str], err: Any, in_map: bool
) -> None:
    if isinstance(ref, ResolveError):
        err(where, str(ref))
    elif ref.root == "item" and not in_map:
        err(where, f"'${{{ref.text}}}': ${{item}} is only known inside a map's iterator")
    elif ref.task is not None and (len(ref.path) < 2 or ref.path[1] not in ("data", "status")):
        err(
            where,
            f"'${{{ref.text}}}': write ${{results.{ref.task}.data...}} for what the task "
            f"returned, or ${{results.{ref.task}.status}}",
        )
    elif ref.task is not None and ref.task not in known:
        err(where, f"'${{{ref.text}}}' refers to task '{ref.task}', which is not in this flow")


def _parse_conditions(
    raw: Any, known: set[str], names: list[str], err: Any, *, prefix: str = ""
) -> list[ConditionSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        err(f"{prefix}conditions", f"must be a list of conditions, not {_kind(raw)}")
        return []
    out: list[ConditionSpec] = []
    sources: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"{prefix}conditions[{i}]"
        if not isinstance(item, Mapping):
            err(path, f"must be an object, not {_kind(item)}")
            continue
        for key in sorted(set(item) - _CONDITION_KEYS, key=str):
            err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(_CONDITION_KEYS))}")
        ok = True
        source = item.get("source_task")
        if not isinstance(source, str) or not source:
            err(f"{path}.source_task", "required: the name of the task this condition follows")
            ok = False
        elif source not in known:
            err(f"{path}.source_task", f"'{source}' is not one of the tasks ({_listing(names)})")
            ok = False
        elif source in sources:
            err(
                f"{path}.source_task",
                f"task '{source}' already has a condition (conditions[{sources[source]}]); "
                "at most one condition per task",
            )
            ok = False
        else:
            sources[source] = i
        expression: Expression | None = None
        source_text = item.get("expression")
        if source_text is not None:
            if (
                not isinstance(source_text, str)
                or not source_text.strip()
                or len(source_text) > 2000
            ):
                err(f"{path}.expression", "must be a CEL expression of at most 2000 characters")
                ok = False
            else:
                try:
                    expression = compile_expression(source_text)
                except ExpressionError as exc:
                    err(f"{path}.expression", str(exc))
                    ok = False
        # With an expression the outcome is implied (the task must succeed first).
        outcome = item.get("outcome", "success" if source_text is not None else None)
        if outcome not in OUTCOMES:
            err(f"{path}.outcome", "must be 'success' or 'failure'")
            ok = False
        elif source_text is not None and outcome != "success":
            err(f"{path}.outcome", "with an expression, leave outcome out (or 'success')")
            ok = False
        targets = {}
        for key in ("target_task_success", "target_task_failure"):
            target = item.get(key)
            if not isinstance(target, str) or not target:
                err(f"{path}.{key}", "required: a task name or 'end'")
                ok = False
            elif target != END and target not in known:
                err(f"{path}.{key}", f"'{target}' is not one of the tasks or 'end'")
                ok = False
            targets[key] = target
        cname = _optional_text(item, "name", f"{path}.name", err, 200, single_line=True)
        description = _optional_text(item, "description", f"{path}.description", err, 5000)
        if ok:
            out.append(
                ConditionSpec(
                    source_task=source,
                    outcome=outcome,
                    target_task_success=targets["target_task_success"],
                    target_task_failure=targets["target_task_failure"],
                    name=cname,
                    description=description,
                    expression=expression,
                )
            )
    return out


def _optional_text(
    doc: Mapping, key: str, path: str, err: Any, limit: int, *, single_line: bool = False
) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        err(path, f"must be text, not {_kind(value)}")
        return ""
    if len(value) > limit:
        err(path, f"at most {limit} characters")
        return ""
    allowed = "\x00" if single_line else "\x00\n\r\t"  # NUL has its own error
    if any(_is_control(ch) and ch not in allowed for ch in value):
        what = "a single line of printable text" if single_line else "printable text"
        err(path, f"must be {what} (no control characters)")
        return ""
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _nul_paths(value: Any, path: str) -> list[str]:
    """Paths of every string (or key) holding a NUL character, which databases refuse."""
    if isinstance(value, str):
        return [path or "(document)"] if "\x00" in value else []
    if isinstance(value, Mapping):
        out: list[str] = []
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                out.append(sub)
            out += _nul_paths(item, sub)
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_paths(item, f"{path}[{i}]")]
    return []


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


def _is_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME
        and value.strip() == value
        and not any(_is_control(ch) for ch in value)
    )


def _listing(names: list[str]) -> str:
    return ", ".join(names[:20]) + (" …" if len(names) > 20 else "") if names else "none"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
