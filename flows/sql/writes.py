"""Hand-written statements for the engine's hot path: many rows in one round trip.

The ORM builds each statement through its query compiler, which costs several times the
statement itself; the engine writes a few rows per step, thousands of steps a second. These
helpers write plain SQL from the model's metadata instead — each shape of statement once per
process — sending every value as the ORM would: through its field's own
``get_db_prep_save`` (JSON, dates, UUIDs), except None and plain strings and numbers, which
that chain hands over unchanged. They work on SQLite (3.35+, for ``RETURNING``) and
PostgreSQL alike; on PostgreSQL, the values of many rows go in one JSON document instead
(``flows.sql.jsonrows``: psycopg binds each parameter on the client). Nothing here is for
general use: apart from starting an execution (every client's hot path), the services and
views keep to the ORM. These rules, and that every
value is a parameter, are asserted in code while ``settings.DEBUG`` is on (``flows.sql.rules``);
that the first statement inside ``atomic`` is this module's, always (``_first_not_ours``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

from flows.sql import jsonrows, rules
from flows.sql.values import converters, prep, row_reader

logger = logging.getLogger("flows.sql.writes")

MAX_PARAMETERS = 30_000  # SQLite takes at most 32,766 in one statement
AUTO_KEYS = ("AutoField", "BigAutoField", "SmallAutoField")
COPY_FROM = 100  # rows; fewer go in an INSERT (PostgreSQL, keys set already: see _copy)


def _db() -> BaseDatabaseWrapper:
    # The wrapper itself: ``django.db.connection`` is a proxy that looks it up on every use,
    # and the look-up (asgiref's context-aware local) costs more than some statements here.
    # Inside ``atomic`` the transaction holds the wrapper of this thread already.
    lean: _Lean | None = getattr(_state, "lean", None)
    return lean.db if lean is not None else connections[DEFAULT_DB_ALIAS]


@functools.cache
def vendor() -> str:
    """The default database's vendor: the same for the life of the process, and a look-up
    of the connection (``_db``) costs more than a cached call."""
    return connections[DEFAULT_DB_ALIAS].vendor


@functools.lru_cache(maxsize=1024)
def _driver_sql(sql: str, vendor: str) -> str:
    # sqlite3 takes qmark placeholders; Django's cursor converts on every call, with a regex.
    return sql.replace("%s", "?") if vendor == "sqlite" else sql


def _execute(
    db: BaseDatabaseWrapper, sql: str, params: list[Any], *, many: bool = False
) -> tuple[list[Any], int]:
    """Run one statement: its rows (with ``RETURNING``) and its row count. ``many``: once for
    each of the parameter lists ``params`` (SQLite, no ``RETURNING``: the driver prepares it
    once, loops in C and sums the counts).

    On the driver's own cursor, with Django's error translation, when nothing watches the
    queries: Django's cursor wrapper, its placeholder conversion and its per-call checks
    cost as much as one of these statements on SQLite. When something does watch (DEBUG's
    query log, ``CaptureQueriesContext``, an ``execute_wrapper``), through Django's cursor,
    so they see every statement.
    """
    if getattr(_state, "guarded", None) is not None:
        _first_is_ours()
    if _watched(db):
        if settings.DEBUG:  # DEBUG's query log always takes this path: the lean one never checks
            _check(db, sql, params[0] if many else params)
        with db.cursor() as cursor:
            (cursor.executemany if many else cursor.execute)(sql, params)
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount
    if db.connection is None:
        db.ensure_connection()
    lean: _Lean | None = getattr(_state, "lean", None)
    begin = ""
    if lean is not None and lean.begin:
        begin, lean.begin = lean.begin, ""  # a failure from here leaves one to roll back
    with db.wrap_database_errors, contextlib.closing(db.connection.cursor()) as cursor:
        if begin:  # PostgreSQL's multi-statement driver: never ``many``
            cursor.execute(f"{begin}; {sql}", params)
            cursor.nextset()
        else:
            (cursor.executemany if many else cursor.execute)(_driver_sql(sql, db.vendor), params)
        return (cursor.fetchall() if cursor.description else []), cursor.rowcount


def run_prepared(sql: str, params: list[Any]) -> list[Any]:
    """Run one PostgreSQL statement as a server-side prepared statement: planned once per
    connection, not at every call (``FLOW_PG_PREPARED``: off behind a pooler that cannot
    keep them, such as PgBouncer in transaction mode before 1.21). Its rows.

    Outside a transaction it commits on its own (autocommit). Inside one (a caller's atomic
    block, a test's), in a savepoint, so that a statement that fails leaves that transaction
    usable, as ``atomic`` would. Watched (DEBUG's query log, ``CaptureQueriesContext``), it
    goes through Django's cursor, so they see it, unprepared.
    """
    db = _db()
    if getattr(_state, "lean", None) is not None:
        raise rules.SqlRuleError("run_prepared commits on its own: not inside writes.atomic()")
    if db.in_atomic_block:
        with transaction.atomic(using=db.alias):
            return _prepared(db, sql, params)
    return _prepared(db, sql, params)


def _prepared(db: BaseDatabaseWrapper, sql: str, params: list[Any]) -> list[Any]:
    if _watched(db) or not settings.FLOW_PG_PREPARED:
        return _execute(db, sql, params)[0]
    import psycopg

    if db.connection is None:
        db.ensure_connection()
    # Server-side binding (psycopg.Cursor, not the connection's client-binding cursor): only
    # a statement whose values travel apart from its text can be prepared.
    with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall()


def _check(db: BaseDatabaseWrapper, sql: str, params: list[Any]) -> None:
    """The rules of ``flows.sql.rules`` for a statement about to run (DEBUG only)."""
    rules.check_statement(sql, params, db.vendor)
    rules.check_writer(_caller())


def _first_not_ours(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """An ``execute_wrapper`` on the connection from ``atomic``'s start until this module's
    first statement: a statement through Django's cursor before it (an ORM query) is refused.
    With the lean transaction on PostgreSQL, BEGIN goes out with this module's first
    statement, so that query would run outside the transaction; on SQLite it would not, and
    the tests, which run there by default, would never see it. Django calls it only for its
    own cursor's statements: it costs this module's statements nothing."""
    raise rules.SqlRuleError(
        "an ORM query ran inside writes.atomic() before its first statement; with the lean "
        "transaction it would run outside the transaction"
    )


def _guard_first(db: BaseDatabaseWrapper) -> None:
    db.execute_wrappers.append(_first_not_ours)
    _state.guarded = db


def _first_is_ours() -> None:
    """This module's first statement in ``atomic`` is about to run: lift the guard."""
    db, _state.guarded = _state.guarded, None
    wrappers = db.execute_wrappers
    if _first_not_ours in wrappers:  # else gone already: the wrappers were reset under it
        wrappers.remove(_first_not_ours)


def _caller() -> str:
    """The module that called into this one (the first frame outside it)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


def _watched(db: BaseDatabaseWrapper) -> bool:
    # atomic's own guard alone (_first_not_ours) watches nothing.
    wrappers = db.execute_wrappers
    return db.queries_logged or (bool(wrappers) and wrappers != [_first_not_ours])


@dataclass
class _Lean:
    """The transaction ``atomic`` opened on this thread's connection, without Django's block."""

    db: BaseDatabaseWrapper
    multi: bool  # the driver takes several statements in one round trip (_multi_statement)
    begin: str  # "" once sent: PostgreSQL's goes out with the first statement
    hooks: list[Callable[[], None]] = field(default_factory=list)
    # Statements whose rows are wanted only after the commit, and what to do with the rows.
    deferred: list[tuple[str, list[Any], Callable[[list[Any]], None]]] = field(default_factory=list)


_state = threading.local()  # .lean: the open _Lean of this thread; .guarded: see _guard_first


def _multi_statement(db: BaseDatabaseWrapper) -> bool:
    """Whether the driver takes several statements, with parameters, in one round trip:
    psycopg's client-side binding cursor, which Django uses unless told otherwise."""
    if db.vendor != "postgresql":
        return False
    import psycopg

    return issubclass(db.connection.cursor_factory, psycopg.ClientCursor)


@contextlib.contextmanager
def atomic() -> Iterator[None]:
    """A transaction for the engine's writes: where nothing can tell the difference, BEGIN
    and COMMIT sent to the driver, else ``transaction.atomic()``.

    Django's atomic block keeps books (savepoints, autocommit switches) that cost as much as
    two of a step's statements on SQLite, and on PostgreSQL BEGIN and COMMIT are round trips
    of their own; a step commits thousands of times a second. So here, on PostgreSQL, BEGIN
    goes out with the transaction's first statement and COMMIT with the statements queued by
    ``insert_rows(..., after_commit=...)``: a step costs three round trips, not five.
    ``on_commit`` hooks run after the COMMIT, as Django's would. Django's block is kept
    where its books matter: inside an outer atomic block (a caller's, a test's) and while
    queries are watched. The first statement inside must be this module's (an ORM query
    before it would run outside the transaction): one before it is refused (``SqlRuleError``),
    on every database, wherever the lean transaction is or would be used.
    """
    db = _db()
    if db.in_atomic_block or _watched(db) or not db.get_autocommit():
        outermost = not db.in_atomic_block
        try:
            with transaction.atomic(using=db.alias):
                if outermost:  # the lean transaction but for the watching: the same rule
                    _guard_first(db)
                yield
        finally:
            if outermost and getattr(_state, "guarded", None) is not None:
                _first_is_ours()
        return
    if db.connection is None:
        db.ensure_connection()
    multi = _multi_statement(db)
    mode = getattr(db, "transaction_mode", None)  # SQLite's IMMEDIATE, as Django would begin
    begin = f"BEGIN {mode}" if db.vendor == "sqlite" and mode else "BEGIN"
    lean = _Lean(db, multi, begin if multi else "")
    if not multi:
        with db.wrap_database_errors:
            db.connection.execute(begin)
    _state.lean = lean
    _guard_first(db)
    try:
        yield
        _state.lean = None
        if _state.guarded is not None:  # nothing ran (at most statements deferred to COMMIT)
            _first_is_ours()
        _commit(lean)
    except BaseException:
        _state.lean = None
        if _state.guarded is not None:
            _first_is_ours()
        if not lean.begin:  # a transaction is open on the server
            try:
                with db.wrap_database_errors:
                    db.connection.execute("ROLLBACK")
            except DatabaseError:
                db.close()  # the connection is gone or unusable: the next query opens a new one
        raise
    for hook in lean.hooks:
        try:
            hook()
        except Exception:  # as Django's robust on_commit: the commit stands, the hook is logged
            logger.exception("a commit hook failed")


def _commit(lean: _Lean) -> None:
    db, statements = lean.db, lean.deferred
    if not lean.multi:  # nothing was deferred (insert_rows defers only where this is multi)
        with db.wrap_database_errors:
            db.connection.execute("COMMIT")
        return
    if lean.begin and not statements:
        return  # nothing was written: nothing to begin or commit
    parts = [lean.begin] if lean.begin else []
    lean.begin = ""  # from here a failure leaves a transaction to roll back
    sql = "; ".join([*parts, *(sql for sql, _, _ in statements), "COMMIT"])
    params = [value for _, values, _ in statements for value in values]
    with db.wrap_database_errors, contextlib.closing(db.connection.cursor()) as cursor:
        cursor.execute(sql, params)
        if parts:
            cursor.nextset()
        for _, _, then in statements:
            then(cursor.fetchall() if cursor.description else [])
            cursor.nextset()


def on_commit(func: Callable[[], None]) -> None:
    """Run ``func`` once the current transaction commits: ``atomic``'s own, else Django's
    (``transaction.on_commit``, robust)."""
    lean: _Lean | None = getattr(_state, "lean", None)
    if lean is not None:
        lean.hooks.append(func)
    else:
        transaction.on_commit(func, robust=True)


@functools.lru_cache(maxsize=512)
def _update_sql(
    model: type[Model],
    vendor: str,
    names: tuple[str, ...],
    increment: tuple[str, ...],
    returning: tuple[str, ...],
    where: tuple[tuple[str, bool], ...],
) -> str:
    """The text of a one-row ``update_rows`` statement of this shape (``vendor`` keys the
    cache): ``names`` the fields set, then the key; ``where`` names each condition and
    whether its value is None."""
    db = _db()
    meta, quote = model._meta, db.ops.quote_name
    pk_column = quote(meta.pk.column)

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    assignments = [f"{column(name)} = {column(name)} + 1" for name in increment]
    assignments += [f"{column(name)} = %s" for name in names]
    conditions = "".join(
        f" AND {column(name)} {'IS NULL' if is_none else '= %s'}" for name, is_none in where
    )
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {pk_column} = %s{conditions}"
    )
    if returning:
        sql += f" RETURNING {', '.join([pk_column, *map(column, returning)])}"
    return sql


def update_one_sql(
    model: type[Model], names: tuple[str, ...], *, increment: tuple[str, ...] = ()
) -> str:
    """The text of ``update_rows``' single-row UPDATE setting ``names`` (their values, then
    the key): for a statement that holds it (``onetrip``)."""
    return _update_sql(model, _db().vendor, names, increment, (), ())


def update_rows(
    model: type[Model],
    rows: Mapping[Any, Mapping[str, Any]],
    *,
    increment: Sequence[str] = (),
    returning: Sequence[str] = (),
    **where: Any,
) -> list[tuple[Any, ...]] | int:
    """``UPDATE`` the rows whose primary keys are ``rows``' keys, each with its own values (on
    PostgreSQL in one statement, on SQLite one prepared statement run per row);
    ``increment`` names counters to add one to; ``where`` adds equalities every row must meet
    (None meaning IS NULL, as in the ORM).

    A field given for only some rows keeps its value in the others. Returns the number of
    rows changed, or with ``returning`` the changed rows' primary keys and those columns.
    """
    if not rows:
        return [] if returning else 0
    db = _db()
    if db.vendor == "postgresql" and len(rows) > 1:
        return _update_rows_document(db, model, rows, increment, returning, where)
    return _update_rows_each(db, model, rows, increment, returning, where)


@functools.lru_cache(maxsize=16)
def _update_matching_sql(
    model: type[Model],
    vendor: str,
    names: tuple[str, ...],
    add: tuple[str, ...],
    where: tuple[str, ...],
    ranges: tuple[str, ...],
) -> str:
    """The text of an ``update_matching`` statement of this shape."""
    meta, quote = model._meta, _db().ops.quote_name

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)

    assignments = [f"{column(name)} = %s" for name in names]
    assignments += [f"{column(name)} = {column(name)} + %s" for name in add]
    conditions = [f"{column(name)} = %s" for name in where]
    conditions += [f"{column(name)} >= %s AND {column(name)} < %s" for name in ranges]
    every = ", ".join(quote(field.column) for field in meta.concrete_fields)
    return (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {' AND '.join(conditions)} RETURNING {every}"
    )


def update_matching(
    model: type[Model],
    values: Mapping[str, Any],
    *,
    add: Mapping[str, int] | None = None,
    where: Mapping[str, Any],
    ranges: Mapping[str, tuple[Any, Any]] | None = None,
) -> list[tuple[Any, ...]]:
    """``UPDATE`` every row meeting ``where`` (equalities, no None) and ``ranges`` (``low <=
    value < high``) with the same ``values``, adding ``add``'s amounts to those counters, in
    one statement: the rows changed, every concrete column in field order as the driver
    returns them (``flows.sql.reads.instances`` makes them model instances). Where the
    caller would otherwise look the rows up first, or read them again after: one round trip
    instead of two or three."""
    add, ranges = add or {}, ranges or {}
    db = _db()
    convert = converters(model, db)
    params = [convert[name](value, db) for name, value in values.items()]
    params += list(add.values())
    params += [convert[name](value, db) for name, value in where.items()]
    for name, (low, high) in ranges.items():
        params += (convert[name](low, db), convert[name](high, db))
    sql = _update_matching_sql(
        model, db.vendor, tuple(values), tuple(add), tuple(where), tuple(ranges)
    )
    return _execute(db, sql, params)[0]


def _update_rows_each(
    db: BaseDatabaseWrapper,
    model: type[Model],
    rows: Mapping[Any, Mapping[str, Any]],
    increment: Sequence[str],
    returning: Sequence[str],
    where: dict[str, Any],
) -> list[tuple[Any, ...]] | int:
    """``update_rows`` of one row, or of several on SQLite: the one-row statement, once per
    row (one text per set of fields written). One statement for several rows would choose
    each row's values with ``CASE key WHEN ... END``, which SQLite evaluates by walking the
    keys for every row and column: 3 ms for 50 steps' closes against 0.35 ms this way.
    Several rows without ``returning`` go through the driver's ``executemany``."""
    convert = converters(model, db)
    key_of = convert[model._meta.pk.name]
    conditions = [convert[name](value, db) for name, value in where.items() if value is not None]
    shape = tuple((name, value is None) for name, value in where.items())
    by_names: dict[tuple[str, ...], list[list[Any]]] = {}
    sent: dict[Any, Any] = {}
    for key, values in rows.items():
        names = tuple(values)
        sent[key] = key_of(key, db)
        params = [convert[name](values[name], db) for name in names]
        by_names.setdefault(names, []).append([*params, sent[key], *conditions])
    count = 0
    fetched: list[Any] = []
    for names, params_rows in by_names.items():
        sql = _update_sql(model, db.vendor, names, tuple(increment), tuple(returning), shape)
        if not returning and len(params_rows) > 1:
            count += _execute(db, sql, params_rows, many=True)[1]
            continue
        for params in params_rows:
            got, changed = _execute(db, sql, params)
            fetched += got
            count += changed
    if not returning:
        return count
    return _returned(model, rows, sent, fetched)


def _returned(
    model: type[Model], rows: Mapping[Any, Any], sent: Mapping[Any, Any], fetched: list[Any]
) -> list[tuple[Any, ...]]:
    """``RETURNING`` rows with their keys as the model holds them (SQLite returns a UUID as
    its hex text): the one given, where it was given so."""
    given = {sent[k]: k for k in rows if type(k) in (uuid.UUID, int)}
    pk = model._meta.pk
    return [
        (given[row[0]] if row[0] in given else pk.to_python(row[0]), *row[1:]) for row in fetched
    ]


def _update_rows_document(
    db: BaseDatabaseWrapper,
    model: type[Model],
    rows: Mapping[Any, Mapping[str, Any]],
    increment: Sequence[str],
    returning: Sequence[str],
    where: dict[str, Any],
) -> list[tuple[Any, ...]] | int:
    """``update_rows`` on PostgreSQL: the rows' values in one JSON document (``jsonrows``)."""
    meta = model._meta
    names = dict.fromkeys(name for values in rows.values() for name in values)
    pattern = tuple((name, all(name in values for values in rows.values())) for name in names)
    sql = jsonrows.update_sql(
        db,
        model,
        pattern,
        tuple(increment),
        tuple(returning),
        tuple((name, value is None) for name, value in where.items()),
    )
    params = [
        jsonrows.update_rows_document(model, dict(rows), pattern),
        [prep(meta.pk, key, db) for key in rows],
    ]
    params += [
        prep(meta.get_field(name), value, db) for name, value in where.items() if value is not None
    ]
    fetched, count = _execute(db, sql, params)
    return fetched if returning else count


@functools.lru_cache(maxsize=64)
def _insert_sql(model: type[Model], vendor: str, rows: int) -> tuple[str, tuple[Field, ...]]:
    """The text of an ``insert_rows`` statement for ``rows`` rows, and the fields it writes:
    an auto primary key comes back (``RETURNING``); any other is written as given."""
    meta, quote = model._meta, _db().ops.quote_name
    auto = meta.pk.get_internal_type() in AUTO_KEYS
    fields = tuple(f for f in meta.concrete_fields if f is not meta.pk or not auto)
    row = f"({', '.join(['%s'] * len(fields))})"
    returning = f" RETURNING {quote(meta.pk.column)}" if auto else ""
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * rows)}{returning}"
    )
    return sql, fields


def insert_rows(model: type[Model], objs: Iterable[Model], *, after_commit: bool = False) -> None:
    """``INSERT`` unsaved instances of a model in one statement (or a few, for very many). An
    auto primary key is set on them (``RETURNING``, in the order given, as Django's
    bulk_create relies on for both databases); any other (a UUID) must be set already.

    ``after_commit``: the keys are not needed before the transaction commits, so inside
    ``atomic`` on PostgreSQL the statement goes out with the COMMIT (one round trip less);
    the keys are set once it has committed. Anywhere else it runs at once.
    """
    objs = list(objs)
    if not objs:
        return
    db = _db()
    pk = model._meta.pk
    auto = pk.get_internal_type() in AUTO_KEYS
    if not auto and any(getattr(obj, pk.attname) is None for obj in objs):
        raise rules.SqlRuleError(f"insert_rows: set {model.__name__}.{pk.attname} first")
    lean: _Lean | None = getattr(_state, "lean", None)
    defer = after_commit and lean is not None and lean.multi and not _watched(db)
    big = not auto and len(objs) >= COPY_FROM and db.vendor == "postgresql"
    if big and not defer and not _watched(db):
        _copy(db, model, objs)
        return
    if db.vendor == "postgresql" and len(objs) > 1:
        # One JSON document for all the rows (``jsonrows``): one statement whatever their
        # number. (One row goes in a plain VALUES: cheaper for the server to plan.)
        fields = tuple(f for f in model._meta.concrete_fields if f is not pk or not auto)
        sql = jsonrows.insert_sql(db, model, fields, auto)
        then = functools.partial(_set_keys, objs, pk.attname if auto else "", db.alias)
        params = [jsonrows.insert_rows_document(objs, fields)]
        if defer:
            lean.deferred.append((sql, params, then))  # type: ignore[union-attr]
        else:
            then(_execute(db, sql, params)[0])
        return
    width = len(model._meta.concrete_fields) - (1 if auto else 0)
    per_statement = max(1, MAX_PARAMETERS // width)
    for start in range(0, len(objs), per_statement):
        chunk = objs[start : start + per_statement]
        sql, fields = _insert_sql(model, db.vendor, len(chunk))
        read = row_reader(model, fields, db)
        params = [value for obj in chunk for value in read(obj, db)]
        then = functools.partial(_set_keys, chunk, pk.attname if auto else "", db.alias)
        if defer:
            lean.deferred.append((sql, params, then))  # type: ignore[union-attr]
        else:
            then(_execute(db, sql, params)[0])


def insert_copies(
    model: type[Model],
    template: Model,
    values: Sequence[Any],
    *,
    vary: str,
    index: str,
    base: int,
    started: Mapping[str, Any],
    bound: int,
) -> list[Any]:
    """``INSERT`` a copy of ``template`` (unsaved; its UUID key is not used) for each of
    ``values``: each with a new UUID key, its value in the JSON field ``vary``, its position
    plus ``base`` in ``index``, and, where that position is below ``bound``, the values of
    ``started`` (field -> value). Returns the keys of those below ``bound``, in order.

    A map's children: on PostgreSQL one statement, the rows made by the server from the
    template and the items (``jsonrows.copies_sql``): no instance, no value bound per row.
    """
    db = _db()
    meta = model._meta
    if meta.pk.get_internal_type() != "UUIDField" or meta.get_field(vary).get_internal_type() != (
        "JSONField"
    ):
        raise rules.SqlRuleError("insert_copies: a UUID key and a JSON field to vary")
    if not values:
        return []
    if db.vendor != "postgresql":
        copies = []
        for n, value in enumerate(values):
            copy = model(**{f.attname: getattr(template, f.attname) for f in meta.concrete_fields})
            setattr(copy, meta.pk.attname, uuid.uuid4())
            setattr(copy, vary, value)
            setattr(copy, index, base + n)
            if base + n < bound:
                for name, started_value in started.items():
                    setattr(copy, name, started_value)
            copies.append(copy)
        insert_rows(model, copies)
        return [getattr(c, meta.pk.attname) for c in copies if getattr(c, index) < bound]
    sql, fields = jsonrows.copies_sql(db, model, vary, index, tuple(started))
    params = [
        "null",
        jsonrows.row_document(fields, template),
        jsonrows.values_document(model, dict(started)),
        json.dumps({"base": base, "bound": bound}),
        jsonrows.document(values),
    ]
    rows, _ = _execute(db, sql, params)
    return [key for key, position in sorted(rows, key=lambda row: row[1]) if position < bound]


def lock_rows(model: type[Model], keys: Sequence[Any]) -> None:
    """Lock these rows for the rest of the transaction, in the order given (``SELECT ... FOR
    UPDATE``), so transactions that take several locks take them in one order. PostgreSQL
    only: SQLite's IMMEDIATE transactions already hold the database's one write lock."""
    db = _db()
    if not keys or db.vendor != "postgresql":
        return
    meta, quote = model._meta, db.ops.quote_name
    pk = quote(meta.pk.column)
    sql = (
        f"SELECT {pk} FROM {quote(meta.db_table)} "  # noqa: S608 - quoted identifiers, %s values
        f"WHERE {pk} IN ({', '.join(['%s'] * len(keys))}) ORDER BY {pk} FOR UPDATE"
    )
    _execute(db, sql, [prep(meta.pk, key, db) for key in keys])


def _copy(db: BaseDatabaseWrapper, model: type[Model], objs: list[Model]) -> None:
    """PostgreSQL's COPY for many rows whose keys are set already (a map's children): a big
    multi-row INSERT costs psycopg more to bind on the client than the server to run, and
    COPY sends the rows as they are."""
    meta, quote = model._meta, db.ops.quote_name
    fields = tuple(meta.concrete_fields)
    sql = (
        f"COPY {quote(meta.db_table)} "  # quoted identifiers from the model
        f"({', '.join(quote(f.column) for f in fields)}) FROM STDIN"
    )
    if db.connection is None:
        db.ensure_connection()
    if getattr(_state, "guarded", None) is not None:
        _first_is_ours()
    lean: _Lean | None = getattr(_state, "lean", None)
    with db.wrap_database_errors, contextlib.closing(db.connection.cursor()) as cursor:
        if lean is not None and lean.begin:
            begin, lean.begin = lean.begin, ""  # a failure from here leaves one to roll back
            cursor.execute(begin)
        with cursor.copy(sql) as copy:
            for obj in objs:
                copy.write_row([prep(f, f.pre_save(obj, add=True), db) for f in fields])
    _set_keys(objs, "", db.alias, [])


def _set_keys(objs: list[Model], attname: str, alias: str, rows: list[Any]) -> None:
    """Mark the inserted instances saved; ``attname``: set the auto keys that came back."""
    if attname:
        for obj, (key,) in zip(objs, rows, strict=True):
            setattr(obj, attname, key)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = alias
