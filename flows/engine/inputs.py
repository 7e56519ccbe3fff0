"""What a step is given: its flow (parsed once per process), the results of earlier steps,
and its parameters with ``${...}`` references filled in."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema
from django.conf import settings

from flows import vault
from flows.definition import FlowDefinition, parse_flow
from flows.expressions import SECRETS, needs_resolving, resolve, secret_names
from flows.masking import Masker
from flows.models import Execution, TaskRun, TaskRunStatus
from flows.registry import TaskRegistry, TaskType


def results_scope(results: dict[str, Any]) -> dict[str, Any]:
    """Earlier results as references and expressions see them: results.<task>.data."""
    return {name: {"data": value, "status": "SUCCESS"} for name, value in results.items()}


def reference_scope(execution: Execution, results: dict[str, Any]) -> dict[str, Any]:
    """What ``${...}`` references see: results so far, the input and, in a map's iterator,
    the item."""
    scope = {"results": results_scope(results), "input": execution.input or {}}
    if execution.parent_step_id is not None:
        scope["item"] = execution.item
    return scope


@dataclass(frozen=True)
class Parameters:
    """A step's parameters, resolved: what the task gets, and what is stored and shown.

    They differ only when the parameters use secrets: ``shown`` keeps each
    ``${secrets.NAME}`` as written, and ``masker`` hides the values the task got in whatever
    the step writes.
    """

    given: dict[str, Any]
    shown: dict[str, Any]
    masker: Masker | None = None


def resolve_parameters(
    raw: dict[str, Any], task_type: TaskType, execution: Execution, results: dict[str, Any]
) -> Parameters:
    """The step's parameters with ${...} references filled in, checked against the schema.

    Raises ValueError (the step fails) for a reference that does not resolve, a secret that
    is not set, or parameters the task type's schema refuses.
    """
    if not needs_resolving(raw):
        given = copy.deepcopy(raw)
        return Parameters(given, given)
    scope = reference_scope(execution, results)
    names = secret_names(raw)
    masker = None
    if names:
        values = _secret_values(names)
        masker = Masker(values.values())
        # Resolved twice rather than masked afterwards: a secret's value may also occur in
        # the input or an earlier result, where it is not ours to hide, and a reference
        # keeps saying which secret was used.
        shown = resolve(raw, {**scope, SECRETS: {n: f"${{{SECRETS}.{n}}}" for n in names}})
        given = copy.deepcopy(resolve(raw, {**scope, SECRETS: values}))
    else:
        given = copy.deepcopy(resolve(raw, scope))
        shown = given
    errors = list(jsonschema.Draft202012Validator(task_type.parameters_schema).iter_errors(given))
    if errors:
        first = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.path)
        message = masker.text(first.message) if masker else first.message
        raise ValueError(f"parameters{where} after resolving references: {message}")
    return Parameters(given, shown, masker)


def _secret_values(names: set[str]) -> dict[str, str]:
    try:
        values, missing = vault.values_for(names)
    except vault.UnreadableSecret as exc:
        raise ValueError(str(exc)) from None
    if missing:
        listed = ", ".join(f"'{n}'" for n in missing)
        raise ValueError(
            f"{'secrets' if len(missing) > 1 else 'secret'} {listed} "
            f"{'are' if len(missing) > 1 else 'is'} not set: add it on the Secrets page or through "
            f"/api/secrets/, or set FLOW_SECRET_{missing[0]} in the workers' environment"
        )
    return values


_definitions: dict[tuple[str, int, Any], FlowDefinition] = {}


def flow_definition(
    execution: Execution, registry: TaskRegistry, *, refresh: bool = True
) -> FlowDefinition:
    """The execution's parsed flow, parsed once per process per document and plugin set.

    Keyed by the document's text rather than the version's id, which a database reset (or a
    test's rollback) can hand out again for another document. ``refresh=False`` when the
    caller has just rescanned the plugin folder.
    """
    definition = parsed(execution.flow_version.definition, registry, refresh=refresh)
    # A parallel branch or a map item runs the tasks at its scope in the document.
    return definition.scope(execution.scope) if execution.scope else definition


def parsed(document: Any, registry: TaskRegistry, *, refresh: bool = True) -> FlowDefinition:
    """A stored flow document, parsed once per process per document and plugin set: the one
    parser of stored flows for the engine (an execution's flow, a sub-flow's, a child's
    body)."""
    if refresh:
        registry.refresh()
    # As stored, key order included: a parallel task's branches are numbered in that order.
    key = (json.dumps(document), id(registry), registry.fingerprint)
    definition = _definitions.get(key)
    if definition is None:
        definition = parse_flow(
            document, registry, default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS
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
