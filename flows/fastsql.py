"""Hand-written statements for the engine's hot path: many rows in one round trip.

The ORM builds each statement through its query compiler, which costs several times the
statement itself; the engine writes a few rows per step, thousands of steps a second. These
helpers write plain SQL from the model's metadata instead, sending every value through its
field's own ``get_db_prep_save`` (JSON, dates, UUIDs) exactly as the ORM would, and work on
SQLite (3.35+, for ``RETURNING``) and PostgreSQL alike. Nothing here is for general use: apart
from starting an execution (every client's hot path), the services and views keep to the ORM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connection
from django.db.models import Field, Model

MAX_PARAMETERS = 30_000


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _prep(field: Field, value: Any) -> Any:
    return field.get_db_prep_save(value, connection)


def _typed(field: Field) -> str:
    """A placeholder whose type PostgreSQL cannot mistake inside a CASE (it would take a JSON
    or timestamp literal there for text); SQLite needs no cast.

    Text is cast without its length: a cast to ``varchar(n)`` would cut a long value short
    silently, where assigning it to the column refuses it, as a single-row UPDATE does.
    """
    if connection.vendor != "postgresql":
        return "%s"
    if field.get_internal_type() in ("CharField", "SlugField", "EmailField", "URLField"):
        return f"CAST(%s AS {connection.ops.cast_char_field_without_max_length})"
    return f"CAST(%s AS {field.db_type(connection)})"


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
    row must meet.

    A field given for only some rows keeps its value in the others. Returns the number of
    rows changed, or with ``returning`` the changed rows' primary keys and those columns.
    """
    if not rows:
        return [] if returning else 0
    meta = model._meta
    pk = meta.pk
    assert pk is not None
    keys = list(rows)
    names = list(dict.fromkeys(name for values in rows.values() for name in values))
    assignments: list[str] = []
    for name in increment:
        column = _quote(meta.get_field(name).column)
        assignments.append(f"{column} = {column} + 1")
    params: list[Any] = []
    for name in names:
        field = meta.get_field(name)
        column = _quote(field.column)
        if len(rows) == 1:
            assignments.append(f"{column} = %s")
            params.append(_prep(field, rows[keys[0]][name]))
            continue
        cases = []
        for key in keys:
            if name in rows[key]:
                cases.append(f"WHEN %s THEN {_typed(field)}")
                params += [_prep(pk, key), _prep(field, rows[key][name])]
        assignments.append(
            f"{column} = CASE {_quote(pk.column)} {' '.join(cases)} ELSE {column} END"
        )
    conditions = "".join(
        f" AND {_quote(meta.get_field(name).column)} {'IS NULL' if value is None else '= %s'}"
        for name, value in where.items()
    )
    params += [_prep(pk, key) for key in keys]
    params += [
        _prep(meta.get_field(name), value) for name, value in where.items() if value is not None
    ]
    sql = (
        f"UPDATE {_quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {_quote(pk.column)} IN ({', '.join(['%s'] * len(keys))}){conditions}"
    )
    if returning:
        columns = [_quote(pk.column)] + [_quote(meta.get_field(name).column) for name in returning]
        sql += f" RETURNING {', '.join(columns)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            # The key as the model holds it (SQLite returns a UUID as its hex text).
            return [(pk.to_python(row[0]), *row[1:]) for row in cursor.fetchall()]
        return cursor.rowcount


def insert_rows(model: type[Model], objs: Iterable[Model]) -> None:
    """``INSERT`` unsaved instances of a model with an auto primary key in one statement, and
    set their primary keys (``RETURNING``, in the order given, as Django's bulk_create relies
    on for both databases)."""
    objs = list(objs)
    if not objs:
        return
    meta = model._meta
    pk = meta.pk
    assert pk is not None
    fields = [f for f in meta.concrete_fields if f is not pk]
    row = f"({', '.join(['%s'] * len(fields))})"
    # SQLite takes at most 32,766 parameters in one statement.
    per_statement = max(1, MAX_PARAMETERS // len(fields))
    with connection.cursor() as cursor:
        for start in range(0, len(objs), per_statement):
            chunk = objs[start : start + per_statement]
            params = [_prep(f, f.pre_save(obj, add=True)) for obj in chunk for f in fields]
            cursor.execute(
                f"INSERT INTO {_quote(meta.db_table)} "  # noqa: S608
                f"({', '.join(_quote(f.column) for f in fields)}) "
                f"VALUES {', '.join([row] * len(chunk))} RETURNING {_quote(pk.column)}",
                params,
            )
            for obj, (key,) in zip(chunk, cursor.fetchall(), strict=True):
                setattr(obj, pk.attname, key)
                obj._state.adding = False
                obj._state.db = connection.alias
