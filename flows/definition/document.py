"""A whole flow document: its own fields around the top body, and the warnings about it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from flows.definition.body import parse_body
from flows.definition.errors import FieldError, FlowValidationError
from flows.definition.fields import (
    deeper_than,
    kind_of,
    optional_seconds,
    optional_text,
    unstorable_paths,
)
from flows.definition.flow import FlowDefinition
from flows.definition.inputschema import schema_errors, undeclared_input_references
from flows.definition.limits import FLOW_ID_RE, MAX_DEPTH, MAX_STEPS_LIMIT
from flows.definition.tasks import Lookup
from flows.definition.triggers import parse_triggers
from flows.expressions import ExpressionError, compile_expression

_FLOW_KEYS = {
    "id",
    "name",
    "description",
    "start_task",
    "tasks",
    "conditions",
    "max_steps",
    "timeout_seconds",
    "input_schema",
    "on_flow_end",
    "on_failure",
    "max_concurrent_executions",
    "concurrency_policy",
    "concurrency_key",
}
POLICIES = ("queue", "skip", "cancel_oldest")
MAX_CONCURRENT_EXECUTIONS = 100_000


class Registry(Protocol):
    def snapshot(self) -> Lookup: ...


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
            [FieldError("", f"a flow document must be a JSON object, not {kind_of(doc)}")]
        )
    if deeper_than(doc, MAX_DEPTH):
        raise FlowValidationError(
            [FieldError("", f"the document is nested too deeply (more than {MAX_DEPTH} levels)")]
        )
    unstorable = unstorable_paths(doc, "")
    if unstorable:
        # Alone: the other checks' messages would quote the text, which no page can show.
        raise FlowValidationError(
            [
                FieldError(path, f"contains {what}, which cannot be stored; remove it")
                for path, what in unstorable
            ]
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
    name = optional_text(doc, "name", "name", err, 200, single_line=True) or flow_id
    description = optional_text(doc, "description", "description", err, 5000)

    max_steps = doc.get("max_steps", default_max_steps)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        err("max_steps", f"must be a whole number, not {kind_of(max_steps)}")
        max_steps = default_max_steps
    elif not 1 <= max_steps <= MAX_STEPS_LIMIT:
        err("max_steps", f"must be between 1 and {MAX_STEPS_LIMIT}")

    flow_timeout, _ = optional_seconds(doc, "timeout_seconds", "timeout_seconds", err)

    input_schema = doc.get("input_schema")
    if input_schema is not None:
        schema_problems = schema_errors(input_schema)
        errors.extend(schema_problems)
        input_schema = None if schema_problems else dict(input_schema)

    triggers = parse_triggers(doc.get("on_flow_end"), err)
    on_failure = _on_failure(doc.get("on_failure"), flow_id, err)
    concurrency = _concurrency(doc, err)

    body = parse_body(
        doc, "", registry.snapshot(), err, flow_id=flow_id, max_steps=max_steps, depth=0
    )

    if errors:
        raise FlowValidationError(errors)

    definition = dataclasses.replace(
        body,
        name=name,
        description=description,
        timeout_seconds=flow_timeout,
        input_schema=input_schema,
        on_flow_end=triggers,
        on_failure=on_failure,
        **concurrency,
    )
    warnings = [*_unreachable(definition), *undeclared_input_references(definition)]
    return dataclasses.replace(definition, warnings=tuple(warnings))


def _on_failure(value: Any, flow_id: str, err: Any) -> str | None:
    """``on_failure: {"flow_id": "..."}``: the flow to start when an execution fails for good
    (flows/services/alerts.py). Whether that flow exists is the services' warning: a flow may
    be stored before its error handler."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        err(
            "on_failure",
            f'must be an object like {{"flow_id": "notify-ops"}}, not {kind_of(value)}',
        )
        return None
    for key in sorted(set(value) - {"flow_id"}, key=str):
        err(f"on_failure.{key}", "unknown field; allowed: flow_id")
    target = value.get("flow_id")
    if not isinstance(target, str) or not FLOW_ID_RE.match(target):
        err("on_failure.flow_id", "required: the id of the flow to start when an execution fails")
        return None
    if target == flow_id:
        err(
            "on_failure.flow_id",
            "a flow cannot be its own error handler (its failure would start itself again)",
        )
        return None
    return target


def _concurrency(doc: Mapping, err: Any) -> dict[str, Any]:
    """The flow's own limit on its running executions: ``max_concurrent_executions``, the
    ``concurrency_policy`` for one over it, and the ``concurrency_key`` (CEL over the input)
    that gives each key its own count."""
    limit = doc.get("max_concurrent_executions")
    policy = doc.get("concurrency_policy", "queue")
    source = doc.get("concurrency_key")
    out: dict[str, Any] = {}
    if limit is None:
        for key in ("concurrency_policy", "concurrency_key"):
            if key in doc:
                err(key, "needs max_concurrent_executions")
        return out
    if isinstance(limit, bool) or not isinstance(limit, int):
        err("max_concurrent_executions", f"must be a whole number, not {kind_of(limit)}")
    elif not 1 <= limit <= MAX_CONCURRENT_EXECUTIONS:
        err("max_concurrent_executions", f"must be between 1 and {MAX_CONCURRENT_EXECUTIONS:,}")
    else:
        out["max_concurrent_executions"] = limit
    if policy not in POLICIES:
        err("concurrency_policy", f"must be one of: {', '.join(POLICIES)}")
    else:
        out["concurrency_policy"] = policy
    if source is not None:
        if not isinstance(source, str) or not source.strip() or len(source) > 2000:
            err(
                "concurrency_key",
                "must be a CEL expression over `input` (2000 characters at most)",
            )
        else:
            try:
                out["concurrency_key"] = compile_expression(source)
            except ExpressionError as exc:
                err("concurrency_key", str(exc))
    return out


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
