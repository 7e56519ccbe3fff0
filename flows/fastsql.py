"""Hand-written statements for the engine's hot path: many rows in one round trip.

The ORM builds each statement through its query compiler, which costs several times the
statement itself; the engine writes a few rows per step, thousands of steps a second. These
helpers write plain SQL from the model's metadata instead — each shape of statement once per
process — sending every value as the ORM would: through its field's own
``get_db_prep_save`` (JSON, dates, UUIDs), except None and plain strings and numbers, which
that chain hands over unchanged. They work on SQLite (3.35+, for ``RETURNING``) and
PostgreSQL alike. Nothing here is for general use: apart from starting an execution (every
client's hot path), the services and views keep to the ORM.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

MAX_PARAMETERS = 30_000  # SQLite takes at most 32,766 in one statement
TEXT_FIELDS = ("CharField", "SlugField", "EmailField", "URLField")


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


@functools.cache
def _plain_type(field: Field) -> type | None:
    return PLAIN_TYPES.get(field.get_internal_type())


def _prep(field: Field, value: Any, db: BaseDatabaseWrapper) -> Any:
    # None is SQL NULL for every field here (a JSONField too, as the ORM stores it), and a
    # plain str, int or float is sent as it is: a step writes some twenty values, and the
    # field's full conversion chain for each was a good part of the cost of recording it.
    if value is None or type(value) is _plain_type(field):
        return value
    return field.get_db_prep_save(value, db)


def _db() -> BaseDatabaseWrapper:
    # The wrapper itself: ``django.db.connection`` is a proxy that looks it up on every use.
    return connections[DEFAULT_DB_ALIAS]


def _typed(db: BaseDatabaseWrapper, field: Field) -> str:
    """A placeholder whose type PostgreSQL cannot mistake inside a CASE (it would take a JSON
    or timestamp literal there for text); SQLite needs no cast.

    Text is cast without its length: a cast to ``varchar(n)`` would cut a long value short
    silently, where assigning it to the column refuses it, as a single-row UPDATE does.
    """
    if db.vendor != "postgresql":
        return "%s"
    if field.get_internal_type() in TEXT_FIELDS:
        return f"CAST(%s AS {db.ops.cast_char_field_without_max_length})"
    return f"CAST(%s AS {field.db_type(db)})"


@functools.lru_cache(maxsize=512)
def _update_sql(
    model: type[Model],
    vendor: str,
    rows: int,
    pattern: tuple[tuple[str, tuple[int, ...]], ...],
    increment: tuple[str, ...],
    returning: tuple[str, ...],
    where: tuple[tuple[str, bool], ...],
) -> str:
    """The text of an ``update_rows`` statement of this shape: ``pattern`` names each field
    set and the rows (by position) that set it; ``where`` names each condition and whether
    its value is None."""
    db = _db()
    meta, quote = model._meta, db.ops.quote_name
    pk_column = quote(meta.pk.column)

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    assignments = [f"{column(name)} = {column(name)} + 1" for name in increment]
    for name, positions in pattern:
        if rows == 1:
            assignments.append(f"{column(name)} = %s")
            continue
        value = _typed(db, meta.get_field(name))
        whens = " ".join(f"WHEN %s THEN {value}" for _ in positions)
        assignments.append(f"{column(name)} = CASE {pk_column} {whens} ELSE {column(name)} END")
    conditions = "".join(
        f" AND {column(name)} {'IS NULL' if is_none else '= %s'}" for name, is_none in where
    )
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {pk_column} IN ({', '.join(['%s'] * rows)}){conditions}"
    )
    if returning:
        sql += f" RETURNING {', '.join([pk_column, *map(column, returning)])}"
    return sql


def update_rows(
    model: type[Model],
    rows: Mapping[Any, Mapping[str, Any]],
    *,
    increment: Sequence[str] = (),
    returning: Sequence[str] = (),
    **where: Any,
) -> list[tuple[Any, ...]] | int:
    """``UPDATE`` the rows whose primary keys are ``rows``' keys, each with its own values, in
    one statement; ``increment`` names counters to add one to; ``where`` adds equalities every
    row must meet (None meaning IS NULL, as in the ORM).

    A field given for only some rows keeps its value in the others. Returns the number of
    rows changed, or with ``returning`` the changed rows' primary keys and those columns.
    """
    if not rows:
        return [] if returning else 0
    db = _db()
    meta = model._meta
    pk = meta.pk
    keys = list(rows)
    names = dict.fromkeys(name for values in rows.values() for name in values)
    pattern = tuple(
        (name, tuple(i for i, key in enumerate(keys) if name in rows[key])) for name in names
    )
    params: list[Any] = []
    for name, positions in pattern:
        field = meta.get_field(name)
        for i in positions:
            if len(keys) > 1:
                params.append(_prep(pk, keys[i], db))
            params.append(_prep(field, rows[keys[i]][name], db))
    params += [_prep(pk, key, db) for key in keys]
    params += [
        _prep(meta.get_field(name), value, db) for name, value in where.items() if value is not None
    ]
    sql = _update_sql(
        model,
        db.vendor,
        len(keys),
        pattern,
        tuple(increment),
        tuple(returning),
        tuple((name, value is None) for name, value in where.items()),
    )
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            # The key as the model holds it (SQLite returns a UUID as its hex text).
            return [(pk.to_python(row[0]), *row[1:]) for row in cursor.fetchall()]
        return cursor.rowcount


@functools.lru_cache(maxsize=64)
def _insert_sql(model: type[Model], vendor: str, rows: int) -> tuple[str, tuple[Field, ...]]:
    """The text of an ``insert_rows`` statement for ``rows`` rows, and the fields it writes."""
    meta, quote = model._meta, _db().ops.quote_name
    fields = tuple(f for f in meta.concrete_fields if f is not meta.pk)
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * rows)} RETURNING {quote(meta.pk.column)}"
    )
    return sql, fields


def insert_rows(model: type[Model], objs: Iterable[Model]) -> None:
    """``INSERT`` unsaved instances of a model with an auto primary key in one statement (or a
    few, for very many), and set their primary keys (``RETURNING``, in the order given, as
    Django's bulk_create relies on for both databases)."""
    objs = list(objs)
    if not objs:
        return
    db = _db()
    pk = model._meta.pk
    per_statement = max(1, MAX_PARAMETERS // (len(model._meta.concrete_fields) - 1))
    with db.cursor() as cursor:
        for start in range(0, len(objs), per_statement):
            chunk = objs[start : start + per_statement]
            sql, fields = _insert_sql(model, db.vendor, len(chunk))
            params = [_prep(f, f.pre_save(obj, add=True), db) for obj in chunk for f in fields]
            cursor.execute(sql, params)
            for obj, (key,) in zip(chunk, cursor.fetchall(), strict=True):
                setattr(obj, pk.attname, key)
                obj._state.adding = False
                obj._state.db = db.alias
