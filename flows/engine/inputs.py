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
from flows.expressions import (
    SECRETS,
    Reference,
    needs_resolving,
    references_in,
    resolve,
    secret_names,
)
from flows.masking import Masker, masker_for
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
    names, only_secrets = _references(raw)
    if not names:
        given = copy.deepcopy(resolve(raw, reference_scope(execution, results)))
        _check(given, task_type, None)
        return Parameters(given, given)
    values = _secret_values(names)
    masker = masker_for(frozenset(values.values()))
    schema = task_type.parameters_schema
    key = (id(raw), id(schema), tuple(sorted(values.items())))
    hit = _secret_only.get(key) if only_secrets else None
    if hit is not None and hit[0] is raw and hit[1] is schema:
        # The same parameters with the same values, resolved and checked before.
        return Parameters(copy.deepcopy(hit[2]), hit[3], masker)
    scope = reference_scope(execution, results) if not only_secrets else {}
    # Resolved twice rather than masked afterwards: a secret's value may also occur in the
    # input or an earlier result, where it is not ours to hide, and a reference keeps
    # saying which secret was used.
    shown = resolve(raw, {**scope, SECRETS: {n: f"${{{SECRETS}.{n}}}" for n in names}})
    given = resolve(raw, {**scope, SECRETS: values})
    _check(given, task_type, masker)
    if only_secrets:
        if len(_secret_only) >= 1024:
            _secret_only.clear()
        # The parameters and the schema kept alive with the entry, so their ids stay theirs.
        _secret_only[key] = (raw, schema, copy.deepcopy(given), shown)
    return Parameters(copy.deepcopy(given), shown, masker)


# Parameters whose only references are secrets resolve the same way at every step that uses
# them: (parameters, schema, given, shown) by the ids of the first two and the values.
_secret_only: dict[tuple[int, int, tuple[tuple[str, str], ...]], tuple[Any, Any, Any, Any]] = {}
_scanned: dict[int, tuple[Any, set[str], bool]] = {}


def _references(raw: dict[str, Any]) -> tuple[set[str], bool]:
    """The secrets ``raw`` uses, and whether they are all it refers to; found once per
    parameters object (the flow's parsed definition keeps them for the process)."""
    hit = _scanned.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1], hit[2]
    names = secret_names(raw)
    refs = [ref for _, ref in references_in(raw)]
    only = bool(names) and all(isinstance(r, Reference) and r.root == SECRETS for r in refs)
    if len(_scanned) >= 4096:
        _scanned.clear()
    _scanned[id(raw)] = (raw, names, only)
    return names, only


def _check(given: dict[str, Any], task_type: TaskType, masker: Masker | None) -> None:
    errors = list(_validator(task_type.parameters_schema).iter_errors(given))
    if errors:
        first = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.path)
        message = masker.text(first.message) if masker else first.message
        raise ValueError(f"parameters{where} after resolving references: {message}")


_validators: dict[int, tuple[Any, jsonschema.Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A task type's parameter schema's validator, built once per process per schema object
    (building one costs more than most validations)."""
    hit = _validators.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    if len(_validators) >= 256:
        _validators.clear()
    validator = jsonschema.Draft202012Validator(schema)
    _validators[id(schema)] = (schema, validator)
    return validator


def _secret_values(names: set[str]) -> dict[str, str]:
    try:
        values, missing = vault.cached_values_for(names)
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
