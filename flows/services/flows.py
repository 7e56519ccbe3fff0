"""Flows: check a document, store it as a new version, update, delete."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django_q.models import Schedule

from flows import selectors, vault
from flows.definition import (
    FieldError,
    FlowDefinition,
    FlowValidationError,
    check_subflows,
    parse_flow,
    trigger_cycles,
    unstorable_paths,
    unwrap,
)
from flows.expressions import SECRETS, Reference, references_in
from flows.models import ACTIVE_STATUSES, ConcurrencyLimit, Flow, FlowTrigger, FlowVersion
from flows.registry import TaskRegistry, default_registry
from flows.services.errors import Conflict, InvalidFlow

logger = logging.getLogger("flows.services")

# pg_advisory_xact_lock key of the flow-trigger graph (any constant; "trig" in ASCII).
TRIGGER_GRAPH_LOCK = 0x74726967


def canonical_json(value: Any) -> str:
    """``value`` as JSON text that is equal for equal documents: keys sorted, no spaces.

    Values keep their JSON type: ``true`` and ``1``, ``1`` and ``1.0`` stay different.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def given_flow_id(document: Any) -> str | None:
    """The ``id`` a (maybe invalid) flow document gives, when it gives one as text."""
    doc = unwrap(document)
    flow_id = doc.get("id") if isinstance(doc, Mapping) else None
    return flow_id if isinstance(flow_id, str) else None


def validate_flow(
    document: Any, *, registry: TaskRegistry | None = None, check_limits: bool = True
) -> FlowDefinition:
    """Parse and validate a flow document; raise InvalidFlow listing every error (with
    ``check_limits``, a task's ``limits`` naming no stored ConcurrencyLimit is one: a stored
    version read back is not checked again, its limits may have been deleted since)."""
    try:
        size = len(json.dumps(document, allow_nan=False))
    except (TypeError, ValueError) as exc:
        # 1e400 parses to infinity: name where, as parse_flow names a bad string.
        errors = [
            {"field": path, "message": f"contains {what}; write a number JSON can hold"}
            for path, what in unstorable_paths(unwrap(document), "")
        ] or [{"field": "", "message": "not plain JSON (NaN or Infinity?)"}]
        raise InvalidFlow(f"the document is not plain JSON: {exc}", errors=errors) from None
    if size > settings.FLOW_MAX_DOCUMENT_BYTES:
        message = f"the document is {size} bytes; the limit is {settings.FLOW_MAX_DOCUMENT_BYTES}"
        raise InvalidFlow(message, errors=[{"field": "", "message": message}])
    registry = registry or default_registry()
    try:
        definition = parse_flow(
            document, registry, default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS
        )
    except FlowValidationError as exc:
        raise InvalidFlow(str(exc), errors=exc.as_list()) from None
    problems = check_subflows(definition, functools.partial(_stored_definition, registry))
    problems += trigger_cycles(definition.id, definition.on_flow_end, _downstreams)
    if problems:
        error = FlowValidationError(problems)
        raise InvalidFlow(str(error), errors=error.as_list())
    unknown = _unknown_limits(definition) if check_limits else []
    if unknown:
        error = FlowValidationError(unknown)
        raise InvalidFlow(str(error), errors=error.as_list())
    unset = [*_unset_secrets(definition), *_unknown_upstreams(definition)]
    if unset:
        definition = dataclasses.replace(definition, warnings=(*definition.warnings, *unset))
    if definition.on_failure and not Flow.objects.filter(pk=definition.on_failure).exists():
        # A warning, not an error: the error handler may be stored after the flow naming it.
        missing = FieldError(
            "on_failure.flow_id",
            f"no flow {definition.on_failure!r} (yet): a failed execution starts nothing "
            "until it is stored",
        )
        definition = dataclasses.replace(definition, warnings=(*definition.warnings, missing))
    return definition


def _downstreams(flow_id: str) -> list[str]:
    """The flows an end of ``flow_id`` starts, as stored now (one indexed query)."""
    return list(
        FlowTrigger.objects.filter(upstream_flow_id=flow_id)
        .order_by("downstream_id")
        .values_list("downstream_id", flat=True)
    )


def _unknown_upstreams(definition: FlowDefinition) -> list[FieldError]:
    """A warning for each flow trigger on a flow not stored (yet): allowed, so that flows can
    be stored in any order, but a typo should not pass in silence."""
    named = {spec.flow_id for spec in definition.on_flow_end}
    if not named:
        return []
    known = set(Flow.objects.filter(pk__in=named).values_list("pk", flat=True))
    return [
        FieldError(
            f"on_flow_end[{i}].flow_id",
            f"no flow '{spec.flow_id}' is stored yet: this trigger fires once it is",
        )
        for i, spec in enumerate(definition.on_flow_end)
        if spec.flow_id not in known
    ]


def _replace_triggers(flow: Flow, definition: FlowDefinition) -> None:
    """Keep ``FlowTrigger`` in step with the flow's current version, refusing a trigger that
    closes a chain.

    Checked again here, under a lock every store with triggers takes (PostgreSQL; SQLite
    writes one at a time anyway): two stores that each close half of a cycle (A on B, B on
    A, at once) would each pass ``validate_flow`` against the other's old state; the lock
    makes the second one see the first's rows and be refused.
    """
    if definition.on_flow_end:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TRIGGER_GRAPH_LOCK])
        problems = trigger_cycles(flow.id, definition.on_flow_end, _downstreams)
        if problems:
            error = FlowValidationError(problems)
            raise InvalidFlow(str(error), errors=error.as_list())
    FlowTrigger.objects.filter(downstream=flow).delete()
    FlowTrigger.objects.bulk_create(
        FlowTrigger(
            downstream=flow,
            position=i,
            upstream_flow_id=spec.flow_id,
            states=list(spec.states),
            condition=spec.condition_source,
        )
        for i, spec in enumerate(definition.on_flow_end)
    )


def _unknown_limits(definition: FlowDefinition) -> list[FieldError]:
    """An error for each limit a task takes that is not defined (/api/limits/): its steps
    would run unlimited, which is not what the flow asks for. No query for a flow that
    takes none."""
    used = [
        (f"{prefix}tasks[{i}].limits[{j}]", name)
        for prefix, body in definition.bodies()
        for i, spec in enumerate(body.tasks)
        for j, name in enumerate(spec.limits)
    ]
    if not used:
        return []
    known = set(
        ConcurrencyLimit.objects.filter(name__in={n for _, n in used}).values_list(
            "name", flat=True
        )
    )
    return [
        FieldError(path, f"unknown limit '{name}'; define it first (POST /api/limits/)")
        for path, name in used
        if name not in known
    ]


def _unset_secrets(definition: FlowDefinition) -> list[FieldError]:
    """A warning for each ``${secrets.NAME}`` that names no secret (yet): the flow may be
    stored before its secrets, but should say that its steps will fail until then."""
    used = [
        (f"{prefix}tasks[{i}].parameters{path}", ref.path[0])
        for prefix, body in definition.bodies()
        for i, spec in enumerate(body.tasks)
        for path, ref in references_in(spec.parameters)
        if isinstance(ref, Reference) and ref.root == SECRETS
    ]
    if not used:
        return []
    known = vault.known_names()
    return [
        FieldError(
            where,
            f"secret '{name}' is not set yet: the step will fail until it is (Secrets page, "
            f"/api/secrets/, or FLOW_SECRET_{name})",
        )
        for where, name in used
        if name not in known
    ]


def _stored_definition(registry: TaskRegistry, flow_id: str, version: int | None) -> Any:
    """A stored flow's definition for a sub-flow call (its current version unless pinned),
    or why there is none."""
    versions = FlowVersion.objects.filter(flow_id=flow_id)
    found = versions.filter(version=version) if version else versions.order_by("-version")
    row = found.values_list("definition", flat=True).first()
    if row is None:
        which = f" version {version}" if version else ""
        return f"no flow '{flow_id}'{which} is stored; store it before flows that call it"
    try:
        return parse_flow(row, registry, default_max_steps=settings.FLOW_DEFAULT_MAX_STEPS)
    except FlowValidationError:
        return f"flow '{flow_id}' no longer validates; fix it first"


def _normalized(document: Any) -> dict[str, Any]:
    doc = dict(unwrap(document))
    return doc


@transaction.atomic
def flow_store(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> tuple[FlowVersion, bool]:
    """Store a flow document: a new flow, or a new version of the flow with the same id.

    Returns (version, stored). A document equal to the flow's current one (as parsed JSON,
    key order ignored) stores nothing: the current version comes back with stored=False, so
    a client that re-posts what it has does not grow the version history.
    """
    definition = validate_flow(document, registry=registry)
    doc = _normalized(document)
    flow = Flow.objects.select_for_update().filter(pk=definition.id).first()
    new_flow = False
    if flow is None:
        try:
            with transaction.atomic():
                flow = Flow.objects.create(
                    id=definition.id, name=definition.name, version=1, definition=doc
                )
                new_flow = True
        except IntegrityError:
            # Created by a concurrent request a moment ago: compare with it, as with any other.
            flow = Flow.objects.select_for_update().get(pk=definition.id)
    if not new_flow:
        if canonical_json(flow.definition) == canonical_json(doc):
            current = FlowVersion.objects.select_related("flow").get(
                flow=flow, version=flow.version
            )
            logger.info("flow=%s unchanged: version %s is this document", flow.id, flow.version)
            return current, False
        flow.version += 1
    flow.name, flow.definition = definition.name, doc
    flow.save()
    _replace_triggers(flow, definition)
    version = FlowVersion.objects.create(
        flow=flow, version=flow.version, definition=doc, created_by=recorded_user(user)
    )
    logger.info(
        "flow=%s version=%s stored (%d tasks)", flow.id, flow.version, len(definition.tasks)
    )
    for warning in definition.warnings:
        logger.warning("flow=%s %s: %s", flow.id, warning.field, warning.message)
    return version, True


def flow_create(
    *, document: Any, user: Any = None, registry: TaskRegistry | None = None
) -> FlowVersion:
    """``flow_store`` for callers that only need the version (new, or the current one)."""
    version, _ = flow_store(document=document, user=user, registry=registry)
    return version


@transaction.atomic
def flow_update(*, flow_id: Any, document: Any, user: Any = None) -> tuple[FlowVersion, bool]:
    """Store ``document`` as the next version of an existing flow: (version, stored) as
    ``flow_store`` returns them (the current document again stores nothing).

    The document may leave out ``id``; one that names another flow is refused, so that an
    update never writes to a flow other than the one addressed.
    """
    flow = selectors.flow_get(flow_id)
    doc = unwrap(document)
    if isinstance(doc, dict):
        if "id" in doc and doc["id"] != flow.id:
            raise InvalidFlow(
                f"the document's id {doc['id']!r} is not the id of the flow it updates, "
                f"'{flow.id}'",
                errors=[{"field": "id", "message": f"must be '{flow.id}' (or left out)"}],
            )
        doc = {**doc, "id": flow.id}
    return flow_store(document=doc, user=user)


@transaction.atomic
def flow_delete(*, flow_id: Any) -> None:
    """Delete a flow with its versions and finished executions; refused while one runs."""
    flow = selectors.flow_get(flow_id)
    running = flow.executions.filter(status__in=ACTIVE_STATUSES).count()
    if running:
        raise Conflict(
            f"flow '{flow.id}' has {running} execution(s) queued or running; cancel them first"
        )
    Schedule.objects.filter(name=f"flow:{flow.id}").delete()
    flow.delete()
    logger.info("flow=%s deleted", flow.id)


def recorded_user(user: Any) -> Any:
    """The user to record as a version's or an execution's author: None for an anonymous one."""
    return user if user is not None and getattr(user, "is_authenticated", False) else None
