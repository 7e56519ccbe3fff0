"""Named concurrency limits (``ConcurrencyLimit``): define one, change it, delete it, and read
what is in use and waiting under each. The engine takes and frees the slots
(flows/engine/limits.py); a change here hands out the slots it frees, and a delete lets the
steps waiting for it run."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from flows import engine
from flows.definition import unstorable_problem
from flows.definition.tasks import LIMIT_NAME_RE
from flows.expressions import ExpressionError, compile_expression
from flows.models import ConcurrencyLimit, LimitFairness, LimitHold, TaskRunStatus
from flows.services.errors import Conflict, NotFound, ServiceError

logger = logging.getLogger("flows.services")

MAX_IN_FLIGHT = 100_000
MAX_RATE_COUNT = 10_000  # the window keeps this many start times on the limit's row
MAX_RATE_SECONDS = 86_400.0
FIELDS = ("name", "max_in_flight", "rate", "key", "fairness", "description")
NAME_HELP = "1-100 letters, digits, '_', '-' and '.', starting with a letter or digit"


def _whole(value: Any, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _check(data: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """The fields of ``data`` as columns, or ServiceError (400) listing every problem at its
    field (``rate.count``, ``key``...)."""
    errors: list[dict[str, str]] = []

    def err(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    out: dict[str, Any] = {}
    for field in sorted(set(data) - set(FIELDS), key=str):
        err(str(field), f"unknown field; allowed: {', '.join(FIELDS)}")
    if creating or "name" in data:
        name = data.get("name")
        if not isinstance(name, str) or not LIMIT_NAME_RE.match(name):
            err("name", f"required: {NAME_HELP}")
        else:
            out["name"] = name
    if creating or "max_in_flight" in data:
        value = data.get("max_in_flight")
        if not _whole(value, 1, MAX_IN_FLIGHT):
            err("max_in_flight", f"required: a whole number from 1 to {MAX_IN_FLIGHT:,}")
        else:
            out["max_in_flight"] = value
    if "rate" in data:
        rate = data["rate"]
        if rate is None:
            out["rate_count"] = out["rate_per_seconds"] = None
        elif not isinstance(rate, Mapping):
            err("rate", 'must be an object like {"count": 20, "per_seconds": 1}, or null')
        else:
            for field in sorted(set(rate) - {"count", "per_seconds"}, key=str):
                err(f"rate.{field}", "unknown field; allowed: count, per_seconds")
            count, per = rate.get("count"), rate.get("per_seconds")
            if not _whole(count, 1, MAX_RATE_COUNT):
                err("rate.count", f"required: a whole number from 1 to {MAX_RATE_COUNT:,}")
            if (
                isinstance(per, bool)
                or not isinstance(per, int | float)
                or not math.isfinite(per)
                or not 0 < per <= MAX_RATE_SECONDS
            ):
                err(
                    "rate.per_seconds",
                    f"required: seconds, more than 0, at most {MAX_RATE_SECONDS:,g}",
                )
            else:
                out["rate_count"], out["rate_per_seconds"] = count, float(per)
    if "key" in data:
        key = data["key"]
        if key is None or key == "":
            out["key"] = ""
        elif not isinstance(key, str) or len(key) > 2000:
            err("key", "must be a CEL expression over `parameters` (2000 characters at most)")
        else:
            try:
                compile_expression(key)
                out["key"] = key
            except ExpressionError as exc:
                err("key", str(exc))
    if "fairness" in data:
        if data["fairness"] not in LimitFairness.values:
            err("fairness", f"must be one of: {', '.join(LimitFairness.values)}")
        else:
            out["fairness"] = data["fairness"]
    if "description" in data:
        text = data["description"]
        if not isinstance(text, str) or len(text) > 500:
            err("description", "must be text of at most 500 characters")
        elif problem := unstorable_problem(text, "description"):
            err("description", problem)
        else:
            out["description"] = text
    if errors:
        listed = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ServiceError(listed, errors=errors)
    return out


@transaction.atomic
def limit_create(*, data: Mapping[str, Any]) -> ConcurrencyLimit:
    """Define a limit from ``data`` (``name``, ``max_in_flight``, optional ``rate``
    ``{count, per_seconds}``, ``key``, ``fairness``, ``description``). Conflict (409) when the
    name is taken."""
    fields = _check(data, creating=True)
    if ConcurrencyLimit.objects.filter(name=fields["name"]).exists():
        raise Conflict(
            f"a limit named {fields['name']!r} exists; change it or delete it",
            errors=[{"field": "name", "message": "taken"}],
        )
    try:
        with transaction.atomic():
            limit = ConcurrencyLimit.objects.create(**fields)
    except IntegrityError:  # made meanwhile
        raise Conflict(f"a limit named {fields['name']!r} exists") from None
    logger.info("limit %s defined: %s", limit.name, fields)
    return limit


@transaction.atomic
def limit_update(*, name: str, data: Mapping[str, Any]) -> ConcurrencyLimit:
    """Change a limit (any field but its name). Slots a larger ``max_in_flight`` frees go to
    the steps waiting, in this transaction."""
    fields = _check(data, creating=False)
    if "name" in fields and fields.pop("name") != name:
        raise ServiceError(
            "a limit's name cannot change; define a new one",
            errors=[{"field": "name", "message": "cannot change"}],
        )
    limit = ConcurrencyLimit.objects.select_for_update().filter(name=name).first()
    if limit is None:
        raise NotFound(f"no limit named {name!r}")
    for field, value in fields.items():
        setattr(limit, field, value)
    limit.save()
    engine.limits.grant(name, timezone.now())
    logger.info("limit %s changed: %s", name, fields)
    return limit


@transaction.atomic
def limit_delete(*, name: str) -> None:
    """Delete a limit: the steps waiting for it run (unlimited by it: no step takes a limit
    that is not defined), the slots it held go with it."""
    limit = ConcurrencyLimit.objects.select_for_update().filter(name=name).first()
    if limit is None:
        raise NotFound(f"no limit named {name!r}")
    engine.limits.drop(name, timezone.now())
    limit.delete()
    logger.info("limit %s deleted", name)


def limit_usage(names: list[str] | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """For each limit: its steps ``in_use`` and ``waiting``, per key ("" without a key
    expression). One query however many limits."""
    rows = LimitHold.objects.filter(step__status__in=(TaskRunStatus.PENDING, TaskRunStatus.RUNNING))
    if names is not None:
        rows = rows.filter(limit_id__in=names)
    usage: dict[str, dict[str, dict[str, int]]] = {}
    for name, key, held, count in (
        rows.values_list("limit_id", "key", "held").annotate(n=Count("id")).order_by()
    ):
        entry = usage.setdefault(name, {"in_use": {}, "waiting": {}})
        entry["in_use" if held else "waiting"][key] = count
    return usage
