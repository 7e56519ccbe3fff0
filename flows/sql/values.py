"""Values as the ORM would send them to the driver, for the hand-written writes.

Each value goes through its field's own ``get_db_prep_save`` (JSON, dates, UUIDs), except
the types the engine writes most, which take a shortcut to the same result: the chain costs
microseconds a value, and a step writes some forty. Each field's converter is built once
per process (``converter``), and a model's all at once (``converters``, ``row_reader``), so
that a statement's values cost a dictionary look-up and a type check each.
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
from django.db.models import DateTimeField, Field, Model

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
# A field's converter: (value, connection) -> what the driver is sent.
Converter = Callable[[Any, BaseDatabaseWrapper], Any]


# The last aware datetime converted to SQLite's text, and the text: a step's rows hold the
# same instant (its "now") in several fields. Held here, so its identity is never reused.
_last_text: tuple[datetime | None, str] = (None, "")


def _as_is(value: Any) -> Any:
    return value


def _shortcut(field: Field, vendor: str, native_uuid: bool) -> tuple[type, Prep] | None:
    """For a field, the one Python type whose value this module converts itself, and how:
    what the field's ``get_db_prep_save`` chain would hand the driver, without the chain.

    - plain strings and numbers of their own field: unchanged;
    - UUIDs: unchanged where the database has a UUID type, else their hex (as Django stores
      them on SQLite);
    - JSON on SQLite: ``json.dumps`` with the field's encoder (PostgreSQL's adapter wraps it
      in its own type, so it keeps the chain); one encoder made once, as ``json.dumps(value,
      cls=encoder)`` would make one at every call with the same (default) options.

    Aware datetimes are handled in ``converter`` (their check needs the connection's zone).
    """
    kind = field.get_internal_type()
    if kind in PLAIN_TYPES:
        return PLAIN_TYPES[kind], _as_is
    if kind == "UUIDField":
        return uuid.UUID, (_as_is if native_uuid else operator.attrgetter("hex"))
    if kind == "JSONField" and vendor == "sqlite":
        return dict, (field.encoder or json.JSONEncoder)().encode
    return None


@functools.lru_cache(maxsize=512)
def converter(field: Field, vendor: str, native_uuid: bool) -> Converter:
    """``field``'s converter on a database of this vendor (see ``prep``)."""
    chain = field.get_db_prep_save
    if field.get_internal_type() in DATETIME:
        sqlite = vendor == "sqlite"

        def convert_datetime(value: Any, db: BaseDatabaseWrapper) -> Any:
            global _last_text
            if value is None:
                return None
            if type(value) is datetime and value.tzinfo is db.timezone:
                # Django's timezone.now() in the connection's own zone (UTC): the driver
                # takes it as it is on PostgreSQL; SQLite stores the naive text, as
                # make_naive + str() does.
                if not sqlite:
                    return value
                last = _last_text
                if last[0] is value:  # the same instant in several fields of a step's rows
                    return last[1]
                text = str(value.replace(tzinfo=None))
                _last_text = (value, text)
                return text
            return chain(value, db)

        return convert_datetime
    shortcut = _shortcut(field, vendor, native_uuid)
    if shortcut is None:

        def convert(value: Any, db: BaseDatabaseWrapper) -> Any:
            return None if value is None else chain(value, db)

        return convert
    kind, quick = shortcut

    def convert_quick(value: Any, db: BaseDatabaseWrapper) -> Any:
        if value is None:
            return None
        if type(value) is kind:
            return quick(value)
        return chain(value, db)

    return convert_quick


@functools.lru_cache(maxsize=64)
def _converters(model: type[Model], vendor: str, native_uuid: bool) -> dict[str, Converter]:
    fields = model._meta.concrete_fields
    by_name = {field.name: converter(field, vendor, native_uuid) for field in fields}
    return by_name | {field.attname: by_name[field.name] for field in fields}


def converters(model: type[Model], db: BaseDatabaseWrapper) -> dict[str, Converter]:
    """The converters of a model's concrete fields, by name and by attribute name."""
    return _converters(model, db.vendor, db.features.has_native_uuid_field)


def _plain_pre_save(field: Field) -> bool:
    """Whether ``field.pre_save(obj, add=True)`` is only the attribute's value."""
    if isinstance(field, DateTimeField):  # DateField's auto_now / auto_now_add set it
        return not (field.auto_now or field.auto_now_add)
    return type(field).pre_save is Field.pre_save


@functools.lru_cache(maxsize=64)
def _row_reader(
    model: type[Model], fields: tuple[Field, ...], vendor: str, native_uuid: bool
) -> Callable[[Model, BaseDatabaseWrapper], list[Any]]:
    converts = tuple(converter(field, vendor, native_uuid) for field in fields)
    if len(fields) > 1 and all(_plain_pre_save(field) for field in fields):
        values = operator.attrgetter(*(field.attname for field in fields))  # one C call

        def read(obj: Model, db: BaseDatabaseWrapper) -> list[Any]:
            pairs = zip(converts, values(obj), strict=True)
            return [convert(value, db) for convert, value in pairs]

        return read

    getters = tuple(
        operator.attrgetter(field.attname)
        if _plain_pre_save(field)
        else functools.partial(_saved, field)
        for field in fields
    )
    pairs = tuple(zip(getters, converts, strict=True))

    def read_each(obj: Model, db: BaseDatabaseWrapper) -> list[Any]:
        return [convert(get(obj), db) for get, convert in pairs]

    return read_each


def _saved(field: Field, obj: Model) -> Any:
    return field.pre_save(obj, True)


def row_reader(
    model: type[Model], fields: tuple[Field, ...], db: BaseDatabaseWrapper
) -> Callable[[Model, BaseDatabaseWrapper], list[Any]]:
    """What an INSERT of ``fields`` sends for an instance: each field's ``pre_save(obj,
    add=True)`` (an ``auto_now_add`` time set on the instance, as the ORM does), converted
    as ``prep`` does; the attributes read in one go where no field has a ``pre_save`` of its
    own."""
    return _row_reader(model, fields, db.vendor, db.features.has_native_uuid_field)


def array_text(keys: Iterable[Any]) -> str:
    """Keys as PostgreSQL array text (UUIDs and integers need no quoting), for a parameter
    the statement casts (``%s::uuid[]``): one statement text whatever the number of keys, and
    the server reads them as the cast says (a Python list would be sent as the smallest
    integer type that holds its values, and every such type prepared again)."""
    return "{" + ",".join(str(key) for key in keys) + "}"


def prep(field: Field, value: Any, db: BaseDatabaseWrapper) -> Any:
    """``value`` as the field's ``get_db_prep_save`` would send it to the driver.

    The chain costs microseconds a value, and a step writes some forty: the types the
    engine writes most take a shortcut to the same result, everything else the chain.
    None is SQL NULL for every field here (a JSONField too, as the ORM stores it).
    """
    return converter(field, db.vendor, db.features.has_native_uuid_field)(value, db)
