"""A flow's ``input_schema``: checking the schema itself, filling its defaults into an input and
validating the input against it, and the references to inputs it does not declare.

No ORM: every way an execution starts (the services, the engine's sub-flow calls, the
pages) asks the same two functions, ``schema_errors`` when the flow is stored and
``check_input`` before an execution is.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema import Draft202012Validator

from flows.definition.errors import FieldError
from flows.definition.flow import FlowDefinition
from flows.definition.specs import PARALLEL
from flows.expressions import ResolveError, references_in

SCHEMA_FIELD = "input_schema"
# An input breaking a schema on every field of a big list would answer with one error per
# item; the first ones say what is wrong.
MAX_ERRORS = 50
MAX_MESSAGE = 300

_META = Draft202012Validator(Draft202012Validator.META_SCHEMA)


def _date_time(value: object) -> bool:
    """RFC 3339 date-time (jsonschema checks it only with an extra package installed): a
    date, a time and an offset (``Z`` or ``+02:00``)."""
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value):
        return False
    try:
        return dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00")) is not None
    except ValueError:
        return False


def _uri(value: object) -> bool:
    """An absolute URI: a scheme, then something (rfc3987 is not a dependency here)."""
    if not isinstance(value, str):
        return True
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+", value) is not None


# The formats jsonschema checks without extra packages (email, date, ipv4, uuid, ...), and
# date-time and uri checked here. Any other format (password, hostname) is a hint only.
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time")(_date_time)
FORMATS.checks("uri")(_uri)


def schema_errors(schema: Any, path: str = SCHEMA_FIELD) -> list[FieldError]:
    """Why ``schema`` cannot be a flow's input schema ([] when it can): it must be a JSON
    Schema (draft 2020-12) of an object, with local ``$ref``s only, each error at its path
    (``input_schema.properties.count.type``)."""
    if not isinstance(schema, Mapping):
        return [FieldError(path, 'must be a JSON Schema object, e.g. {"type": "object"}')]
    errors = [
        FieldError(_dotted(path, e.absolute_path), _short(e.message))
        for e in sorted(_META.iter_errors(schema), key=lambda e: [str(p) for p in e.path])
    ]
    if errors:
        return errors
    kind = schema.get("type")
    if kind != "object" and not (kind is None and "properties" in schema):
        return [
            FieldError(
                f"{path}.type" if "type" in schema else path,
                'an input is a JSON object: write "type": "object" (with its "properties")',
            )
        ]
    return [
        FieldError(where, 'only references inside the schema ("#/$defs/...") are allowed')
        for where, ref in _refs(schema, path)
        if not ref.startswith("#")
    ]


def check_input(
    schema: Mapping[str, Any] | None, value: Any
) -> tuple[dict[str, Any], list[FieldError]]:
    """``value`` with the schema's defaults filled in, and every way it breaks the schema.

    Returns ``(input, errors)``: ``errors`` are FieldErrors whose field is a JSON Pointer
    into the input (``/customer/id``; ``""`` for the input itself). The caller's value is
    not changed. Without a schema any JSON object passes, as before schemas existed.
    """
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        return {}, [FieldError("", "the input must be a JSON object")]
    if schema is None:
        return dict(value), []
    filled = fill_defaults(schema, value)
    validator = Draft202012Validator(schema, format_checker=FORMATS)
    errors: list[FieldError] = []
    try:
        for e in sorted(validator.iter_errors(filled), key=lambda e: _pointer(e.absolute_path)):
            errors += _explained(e)
            if len(errors) >= MAX_ERRORS:
                break
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError) as exc:
        # A schema stored before its check existed, or one this check let through.
        errors.append(FieldError("", f"the flow's input_schema cannot be used: {exc}"))
    return filled, errors[:MAX_ERRORS]


def fill_defaults(schema: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``value`` with each ``default`` of the schema's properties filled in where the
    property is missing, in nested objects too (an object the input gives, or one that a
    default filled). jsonschema validates but never fills."""
    filled = copy.deepcopy(dict(value))
    _fill(schema, filled)
    return filled


def _fill(schema: Any, value: dict[str, Any]) -> None:
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return
    for name, sub in properties.items():
        if not isinstance(sub, Mapping):
            continue
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
        if isinstance(value.get(name), dict):
            _fill(sub, value[name])


def undeclared_input_references(definition: FlowDefinition) -> list[FieldError]:
    """Warnings for ``${input.x}`` references whose ``x`` the schema does not declare, when
    its ``additionalProperties: false`` means no input can carry it.

    Only where ``${input}`` is the flow's input: the flow's own tasks, and the branches of a
    parallel task without parameters (a branch gets its parent's input). A map's iterator
    and a branch of a parallel task with parameters get those parameters as their input."""
    schema = definition.input_schema
    if not schema or schema.get("additionalProperties") is not False:
        return []
    declared = schema.get("properties") or {}
    warnings = []
    for prefix, spec_index, spec in _input_scopes(definition, ""):
        where = f"{prefix}tasks[{spec_index}]"
        values = [(".parameters", spec.parameters)]
        if isinstance(spec.items, str):
            values.append((".items", spec.items))
        for field, value in values:
            for path, ref in references_in(value):
                if isinstance(ref, ResolveError) or ref.root != "input" or not ref.path:
                    continue
                name = ref.path[0]
                if isinstance(name, str) and name not in declared:
                    warnings.append(
                        FieldError(
                            f"{where}{field}{path}",
                            f"${{{ref.text}}}: the input_schema declares no '{name}' and "
                            "allows no other fields (additionalProperties: false), so it "
                            "never resolves",
                        )
                    )
    return warnings


def _input_scopes(body: FlowDefinition, prefix: str) -> Iterator[tuple[str, int, Any]]:
    for i, spec in enumerate(body.tasks):
        yield prefix, i, spec
        if spec.task_type == PARALLEL and not spec.parameters:
            for branch, sub in spec.branches:
                yield from _input_scopes(sub, f"{prefix}tasks[{i}].branches.{branch}.")


def _explained(e: jsonschema.ValidationError) -> list[FieldError]:
    """One error as the user reads it: at the field it is about. A missing required property
    and an undeclared one are named by their own pointer (``/customer/id``), not their
    object's, so that a form shows them next to their field."""
    at = list(e.absolute_path)
    instance = e.instance
    if e.validator == "required" and isinstance(instance, Mapping):
        missing = [p for p in e.validator_value if p not in instance]
        name = next((p for p in missing if e.message.startswith(repr(p))), None)
        if name is not None:
            return [FieldError(_pointer([*at, name]), "required")]
    if (
        e.validator == "additionalProperties"
        and e.validator_value is False
        and isinstance(instance, Mapping)
    ):
        props = e.schema.get("properties") or {}
        patterns = e.schema.get("patternProperties") or {}
        extras = [
            k for k in instance if k not in props and not any(re.search(p, k) for p in patterns)
        ]
        if extras:
            return [
                FieldError(_pointer([*at, k]), "not declared by the input_schema; remove it")
                for k in extras
            ]
    if _is_secret(e.schema):
        # jsonschema's messages quote the value: never a password.
        return [FieldError(_pointer(at), f"does not satisfy '{e.validator}' of the input_schema")]
    message = e.message
    if isinstance(instance, Mapping | list):
        # jsonschema quotes the whole object (or list), which may hold a password and may be
        # long: the pointer already says which one.
        what = "the list" if isinstance(instance, list) else "the object"
        message = message.replace(repr(instance), what)
    return [FieldError(_pointer(at), _short(message))]


def _is_secret(schema: Any) -> bool:
    return isinstance(schema, Mapping) and (
        schema.get("format") == "password" or schema.get("writeOnly") is True
    )


def _pointer(parts: Any) -> str:
    """RFC 6901 JSON Pointer: ``~`` and ``/`` in a key escaped as ``~0`` and ``~1``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _dotted(path: str, parts: Any) -> str:
    return path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _refs(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, reference) of every ``$ref`` and ``$dynamicRef`` in a schema."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("$ref", "$dynamicRef") and isinstance(item, str):
                yield f"{path}.{key}", item
            else:
                yield from _refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _refs(item, f"{path}[{i}]")
