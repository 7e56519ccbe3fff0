"""PostgreSQL: many rows' values sent as one JSON document, read by ``jsonb_to_recordset``.

A batch of a hundred steps is a hundred rows of a dozen values. Written as one ``%s`` each
(``VALUES`` lists, ``CASE`` chains), every value costs psycopg a dump and a quote on the
client (it binds parameters into the text), and the text, longer than psycopg caches, is
parsed again on both sides each time. Sent as one JSON array instead, the rows cost one
``json.dumps`` (C), the statement's text depends only on which columns are written, and the
server casts each value to its column's type while it reads the document::

    UPDATE t SET a = v.c0, ... FROM jsonb_to_recordset(%s::jsonb) AS v(k bigint, c0 text, ...)
    WHERE t.id = v.k ...

Values go in as the ORM would send them: JSON fields as their JSON (None, as the ORM writes
it, SQL NULL: ``jsonb_to_recordset`` reads a JSON ``null`` as NULL), datetimes as ISO 8601
with their offset and microseconds, UUIDs as text; text is read as ``text`` and assigned to
its column, so a value too long for a ``varchar(n)`` is refused, as a single-row write is.
SQLite keeps the statements of ``writes``: its driver binds values natively already.
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

TEXT_TYPES = ("CharField", "SlugField", "EmailField", "URLField", "TextField")
KEY = "k"  # the record column holding a row's primary key


def column_type(db: BaseDatabaseWrapper, field: Field) -> str:
    """The type a value of ``field`` is read as from the document: its column's, except text,
    read without a length so that assigning it checks the length instead of cutting."""
    if field.get_internal_type() in TEXT_TYPES:
        return "text"
    return field.db_type(db)  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """A value of a field that is not JSON, as the document holds it."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _as_is(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=256)
def converter(field: Field) -> Callable[[Any], Any]:
    """How a value of ``field`` goes in the document (see the module's docstring): a JSON
    field's value as it is (``json.dumps`` refuses what is not JSON, as the ORM does), dates
    as ISO 8601, UUIDs as text."""
    return _as_is if field.get_internal_type() == "JSONField" else _plain


@functools.lru_cache(maxsize=64)
def _readers(fields: tuple[Field, ...]) -> tuple[tuple[str, Callable[[Model], Any], Callable], ...]:
    """For each field to insert: its document key, how to read its value off an instance
    (``pre_save`` where it sets one, as ``auto_now_add`` does; else the attribute), and its
    converter."""
    readers = []
    for i, f in enumerate(fields):
        if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            read = functools.partial(_pre_save, f)
        else:
            read = operator.attrgetter(f.attname)
        readers.append((f"c{i}", read, converter(f)))
    return tuple(readers)


def _pre_save(field: Field, obj: Model) -> Any:
    return field.pre_save(obj, add=True)


def document(rows: Iterable[dict[str, Any]]) -> str:
    # allow_nan=False: NaN is no JSON and PostgreSQL would refuse the whole document with a
    # less helpful message.
    return json.dumps(list(rows), allow_nan=False, separators=(",", ":"))


def _record(db: BaseDatabaseWrapper, columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in columns)


@functools.lru_cache(maxsize=512)
def update_sql(
    db: BaseDatabaseWrapper,
    model: type[Model],
    pattern: tuple[tuple[str, bool], ...],
    increment: tuple[str, ...],
    returning: tuple[str, ...],
    where: tuple[tuple[str, bool], ...],
    guard: str = "",
) -> str:
    """``UPDATE`` of the rows of one document, then an array of their keys: ``pattern`` names
    each field written and whether every row writes it (else a row's ``s<i>`` flag says
    whether it does, and the others keep their value); ``where`` as in
    ``writes.update_rows``. Each document row: ``k`` the key, ``c<i>`` the i-th field's
    value, ``s<i>`` its flag. ``guard``: one more condition, SQL written here (``onetrip``)."""
    meta, quote = model._meta, db.ops.quote_name
    table = quote(meta.db_table)

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    columns = [(KEY, column_type(db, meta.pk))]
    assignments = [f"{column(name)} = {table}.{column(name)} + 1" for name in increment]
    for i, (name, everywhere) in enumerate(pattern):
        columns.append((f"c{i}", column_type(db, meta.get_field(name))))
        if everywhere:
            assignments.append(f"{column(name)} = v.c{i}")
        else:
            columns.append((f"s{i}", "boolean"))
            assignments.append(
                f"{column(name)} = CASE WHEN v.s{i} THEN v.c{i} ELSE {table}.{column(name)} END"
            )
    conditions = "".join(
        f" AND {table}.{column(name)} {'IS NULL' if is_none else '= %s'}" for name, is_none in where
    )
    pk = f"{table}.{quote(meta.pk.column)}"
    # The keys again, as an array: the planner knows how many rows that is, and looks them up
    # by the primary key; of a set-returning function's rows it knows nothing, and would
    # rather read the whole table.
    sql = (
        f"UPDATE {table} SET {', '.join(assignments)} "  # noqa: S608 - identifiers from the model
        f"FROM jsonb_to_recordset(%s::jsonb) AS v({_record(db, columns)}) "
        f"WHERE {pk} = ANY(%s::{columns[0][1]}[]) AND {pk} = v.{KEY}{conditions}"
    )
    if guard:
        sql += f" AND {guard}"
    if returning:
        sql += f" RETURNING {', '.join([pk, *(f'{table}.{column(n)}' for n in returning)])}"
    return sql


def update_rows_document(
    model: type[Model],
    rows: dict[Any, dict[str, Any]],
    pattern: tuple[tuple[str, bool], ...],
) -> str:
    """The document ``update_sql`` reads for ``rows`` (key -> field name -> value)."""
    meta = model._meta
    pk = meta.pk
    fields = [
        (f"c{i}", f"s{i}", name, everywhere, converter(meta.get_field(name)))
        for i, (name, everywhere) in enumerate(pattern)
    ]
    key_of = converter(pk)
    out = []
    for key, values in rows.items():
        row: dict[str, Any] = {KEY: key_of(key)}
        for column, flag, name, everywhere, convert in fields:
            if everywhere or name in values:
                value = values[name]
                row[column] = None if value is None else convert(value)
                if not everywhere:
                    row[flag] = True
        out.append(row)
    return document(out)


@functools.lru_cache(maxsize=64)
def insert_sql(
    db: BaseDatabaseWrapper,
    model: type[Model],
    fields: tuple[Field, ...],
    returning: bool,
    guard: str = "",
) -> str:
    """``INSERT`` of the rows of one document (``c<i>``: the i-th of ``fields``), in the
    document's order, so that keys coming back (``returning``: the auto primary key) are in
    that order too. ``guard``: a condition on them all, SQL written here (``onetrip``)."""
    meta, quote = model._meta, db.ops.quote_name
    names = [f"c{i}" for i in range(len(fields))]
    columns = [*zip(names, (column_type(db, f) for f in fields), strict=True), ("n", "integer")]
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608 - identifiers from the model
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT {', '.join(f'v.{n}' for n in names)} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS v({_record(db, columns)})"
        f"{f' WHERE {guard}' if guard else ''} ORDER BY v.n"
    )
    if returning:
        sql += f" RETURNING {quote(meta.pk.column)}"
    return sql


def insert_rows_document(objs: Sequence[Model], fields: tuple[Field, ...]) -> str:
    """The document ``insert_sql`` reads: each instance's values as ``pre_save`` gives them
    (``auto_now_add`` times set on the instance, as the ORM's insert does)."""
    return document({"n": n, **_row(fields, obj)} for n, obj in enumerate(objs))


def _row(fields: tuple[Field, ...], obj: Model) -> dict[str, Any]:
    """One instance's values of ``fields`` (``c<i>``), as ``pre_save`` gives them."""
    row: dict[str, Any] = {}
    for column, read, convert in _readers(fields):
        value = read(obj)
        row[column] = None if value is None else convert(value)
    return row


@functools.lru_cache(maxsize=16)
def copies_sql(
    db: BaseDatabaseWrapper,
    model: type[Model],
    vary: str,
    index: str,
    started: tuple[str, ...],
) -> tuple[str, tuple[Field, ...]]:
    """``INSERT`` of one copy of a template row per element of a JSON array, the rows made by
    the server: a new UUID key, the element in ``vary``, its position plus an offset in
    ``index``, the template's values in the other fields, and below a bound position the
    values of ``started`` instead. It returns each copy's key and position.

    Parameters: JSON ``null``, then four documents: the template (``c<i>`` for each of the
    fields returned, the values of a copy not started), the started values (``s<i>``, in
    ``started``'s order), ``{"base", "bound"}`` (the first element's position; where started
    ends), the array."""
    meta, quote = model._meta, db.ops.quote_name
    pk = meta.pk
    template = tuple(f for f in meta.concrete_fields if f.name not in (pk.name, vary, index))
    position = "(p.base + i.n - 1)"
    pick = {f.name: f"t.c{i}" for i, f in enumerate(template)}
    for i, name in enumerate(started):
        pick[name] = f"CASE WHEN {position} < p.bound THEN s.s{i} ELSE {pick[name]} END"
    # An element that is JSON null goes in as SQL NULL, as the ORM stores None.
    pick.update({pk.name: "gen_random_uuid()", vary: "NULLIF(i.value, %s::jsonb)", index: position})
    fields = tuple(meta.concrete_fields)
    tcols = [(f"c{i}", column_type(db, f)) for i, f in enumerate(template)]
    scols = [(f"s{i}", column_type(db, meta.get_field(n))) for i, n in enumerate(started)]
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608 - identifiers from the model
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT {', '.join(pick[f.name] for f in fields)} "
        f"FROM jsonb_to_record(%s::jsonb) AS t({_record(db, tcols)}), "
        f"jsonb_to_record(%s::jsonb) AS s({_record(db, scols)}), "
        "jsonb_to_record(%s::jsonb) AS p(base integer, bound integer), "
        "jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS i(value, n) ORDER BY i.n "
        f"RETURNING {quote(pk.column)}, {quote(meta.get_field(index).column)}"
    )
    return sql, template


def row_document(fields: tuple[Field, ...], obj: Model) -> str:
    """One instance's values of ``fields`` as a JSON object (``c<i>``), as ``pre_save``
    gives them."""
    return json.dumps(_row(fields, obj), allow_nan=False, separators=(",", ":"))


def values_document(model: type[Model], values: dict[str, Any]) -> str:
    """Field values as a JSON object (``s<i>``, in ``values``' order)."""
    meta = model._meta
    return json.dumps(
        {
            f"s{i}": None if value is None else converter(meta.get_field(name))(value)
            for i, (name, value) in enumerate(values.items())
        },
        allow_nan=False,
        separators=(",", ":"),
    )
