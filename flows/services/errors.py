"""What the services refuse with: one exception per answer, each carrying its HTTP status.

The API's exception handler (flows/api/errors.py) turns any of them into the one error shape;
the operator pages and the commands show ``message`` and ``errors``.
"""

from __future__ import annotations

from typing import Any

from flows.definition import unstorable_problem


class ServiceError(Exception):
    """A request the domain refuses; ``status`` is the HTTP status the API answers with."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class InvalidFlow(ServiceError):
    status = 400
    code = "invalid_flow"


class InvalidInput(ServiceError):
    """An input that breaks its flow's ``input_schema``; ``errors`` are at JSON Pointers into
    the input (``/customer/id``)."""

    status = 400
    code = "invalid_input"


class IdempotencyConflict(ServiceError):
    """An Idempotency-Key used again with another request body (Stripe answers the same)."""

    status = 422
    code = "idempotency_conflict"


def check_storable(value: Any, field: str) -> None:
    """Refuse ``value`` (an input, a payload, a key) holding text no database stores: a NUL,
    a lone surrogate. Checked before any row is written, so nothing half-made is left."""
    problem = unstorable_problem(value, field)
    if problem:
        raise ServiceError(f"{field} {problem}", errors=[{"field": field, "message": problem}])
