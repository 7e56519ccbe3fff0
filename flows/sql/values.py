"""Values as the ORM would send them to the driver, for the hand-written writes.

Each value goes through its field's own ``get_db_prep_save`` (JSON, dates, UUIDs), except
the types the engine writes most, which take a shortcut to the same result: the chain costs
microseconds a value, and a step writes some twenty.
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field

DATETIME = ("DateTimeField",)


# Field types whose conversion chain hands a value of exactly this Python type to the
# driver unchanged, on SQLite and PostgreSQL alike.
PLAIN_TYPES: dict[str, type] = {
    "CharField": str,
    "TextField": str,
    "IntegerField": int,
    "PositiveIntegerField": int,
    "BigIntegerField": int,
    "FloatField": float,
    "BooleanField": bool,
}


Prep = Callable[[Any], Any]


def _as_is(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=256)
def _shortcut(field: Field, vendor: str, native_uuid: bool) -> tuple[type, Prep] | None:
    """For a field, the one Python type whose value this module converts itself, and how:
    what the field's ``get_db_prep_save`` chain would hand the driver, without the chain.

    - plain strings and numbers of their own field: unchanged;
    - UUIDs: unchanged where the database has a UUID type, else their hex (as Django stores
      them on SQLite);
    - JSON on SQLite: ``json.dumps`` with the field's encoder (PostgreSQL's adapter wraps it
      in its own type, so it keeps the chain).

    Aware datetimes are handled in ``prep`` (their check needs the connection's zone).
    """
    kind = field.get_internal_type()
    if kind in PLAIN_TYPES:
        return PLAIN_TYPES[kind], _as_is
    if kind == "UUIDField":
        return uuid.UUID, (_as_is if native_uuid else operator.attrgetter("hex"))
    if kind == "JSONField" and vendor == "sqlite":
        return dict, functools.partial(json.dumps, cls=field.encoder)
    return None


def array_text(keys: Iterable[Any]) -> str:
    """Keys as PostgreSQL array text (UUIDs and integers need no quoting), for a parameter
    the statement casts (``%s::uuid[]``): one statement text whatever the number of keys, and
    the server reads them as the cast says (a Python list would be sent as the smallest
    integer type that holds its values, and every such type prepared again)."""
    return "{" + ",".join(str(key) for key in keys) + "}"


def prep(field: Field, value: Any, db: BaseDatabaseWrapper) -> Any:
    """``value`` as the field's ``get_db_prep_save`` would send it to the driver.

    The chain costs microseconds a value, and a step writes some twenty: the types the
    engine writes most take a shortcut to the same result, everything else the chain.
    None is SQL NULL for every field here (a JSONField too, as the ORM stores it).
    """
    if value is None:
        return None
    kind = type(value)
    if kind is datetime and value.tzinfo is db.timezone and field.get_internal_type() in DATETIME:
        # Django's timezone.now() in the connection's own zone (UTC): the driver takes it
        # as it is on PostgreSQL; SQLite stores the naive text, as make_naive + str() does.
        return value if db.vendor != "sqlite" else str(value.replace(tzinfo=None))
    shortcut = _shortcut(field, db.vendor, db.features.has_native_uuid_field)
    if shortcut is not None and kind is shortcut[0]:
        return shortcut[1](value)
    return field.get_db_prep_save(value, db)
