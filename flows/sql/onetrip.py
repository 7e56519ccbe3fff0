"""PostgreSQL: a batch of finished steps recorded in ONE statement, one round trip (issue 26).

Recorded the general way (``record.write``), a step costs PostgreSQL three round trips: BEGIN
with the UPDATE that counts the step on its execution (and reads back whether a cancel or a
pause was asked for), the UPDATE that closes the step, the next step's INSERT with COMMIT.
Each of them is planned again by the server, since values travel in the statement's text.

The common case needs none of what that read back decides: a step after which its
execution goes on in this worker, or ends. For it the worker sends one data-modifying
statement in autocommit (committed once), prepared once per connection (planned once)::

    WITH x  AS (the executions, locked in key order: the lock order of ``transitions``),
         y  AS (then the steps, locked, read as they are now),
         d  AS (each step's execution, and its step limit when it goes on),
         go AS (whether every execution and step is as the worker assumed: no cancel and no
                pause asked for, the step limit not reached, every step still RUNNING and
                this worker's, no execution deleted),
         s  AS (close the steps)             -- each of these only where go:
         e  AS (count the steps; route or end)  all of them or nothing
         n  AS (insert the next steps, claimed by this worker)
         v  AS (the log lines), o AS (the outbox rows of ended executions)
    SELECT go, the keys of the new steps in order

Nothing is written unless everything is as assumed; then it says so and the caller writes
the batch the general way, which decides each of those cases. So the guarantees are those of
``record.write``: the lease (the step closes only while it is this worker's), the reaper, the
cancel and pause checks, the step limit.

A batch of one step (every step of a chain, most batches) sends its values as plain
parameters: reading JSON documents (``jsonrows``: the records, their joins, a cast for every
column) costs the server more than the rest of the statement. A bigger batch sends them as
documents, so that one text serves every size. Either text depends only on which fields are
written (a few variants, each prepared once per connection). The key arrays are sent as
PostgreSQL array text ("{1,2}"), which the server reads as the cast says: a Python list would
be sent as the smallest integer type that holds its values, and every such type prepared
again.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field

from flows.models import Execution, ExecutionEnd, ExecutionEvent, TaskRun
from flows.sql import jsonrows, writes
from flows.sql.values import array_text, converters, row_reader

# The fields each part writes, the same every time (one statement text: see the docstring).
# A step closes with these; a step that resolved its parameters writes them too (a flag).
CLOSE = (
    ("status", True),
    ("ended_at", True),
    ("lease_expires_at", True),
    ("result", True),
    ("error", True),
    ("traceback", True),
    ("duration", True),
    ("route", True),
    ("parameters", False),
)
# An execution goes on (its next task) or ends (its status, error and end time too).
ROUTE = (("current_task", True), ("status", False), ("error", False), ("ended_at", False))
GO = "(SELECT ok FROM go)"


def available() -> bool:
    """Whether the database is PostgreSQL (SQLite has no round trips to save)."""
    return writes.vendor() == "postgresql"


@functools.cache
def _inserted_fields(model: Any) -> tuple[Field, ...]:
    meta = model._meta
    return tuple(f for f in meta.concrete_fields if f is not meta.pk)


@functools.lru_cache(maxsize=16)
def record_sql(db: BaseDatabaseWrapper, *, steps: bool, events: bool, ends: bool) -> str:
    """The statement (see the module's docstring), with the parts a batch needs (``steps``,
    ``events``, ``ends``: whether it inserts any; a part inserting nothing still costs the
    server its plan nodes): a handful of texts, each prepared once. Its parameters, in order:
    the executions' keys, the steps' keys (array text), the check document (``e``, ``s``,
    ``m``), the status a held step has and this worker's name, then each part's document and
    keys."""
    pk_s = _column(db, TaskRun, "id")
    close = jsonrows.update_sql(
        db, TaskRun, CLOSE, (), (), (("status", False), ("worker", False)), GO
    )
    route = jsonrows.update_sql(db, Execution, ROUTE, ("steps_taken",), (), (), GO)
    parts = [f"s AS ({close})", f"e AS ({route})"]
    if steps:
        inserted = jsonrows.insert_sql(db, TaskRun, _inserted_fields(TaskRun), True, GO)
        parts.append(f"n AS ({inserted})")
    parts += _row_parts(db, events=events, ends=ends)
    keys = f"(SELECT array_agg(n.{pk_s}) FROM n)" if steps else "NULL::bigint[]"  # noqa: S608
    return (
        f"WITH {_locks(db, one=False)}"  # noqa: S608 - identifiers from the models
        "d AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS d(e uuid, s bigint, m integer)), "
        "go AS (SELECT (SELECT count(*) FROM d JOIN x ON x.id = d.e "
        "WHERE NOT x.cancel AND NOT x.pause AND (d.m IS NULL OR x.taken + 1 < d.m)) "
        "= (SELECT count(*) FROM d) AND (SELECT count(*) FROM d JOIN y ON y.id = d.s "
        "WHERE y.status = %s AND y.worker = %s) = (SELECT count(*) FROM d) AS ok), "
        f"{', '.join(parts)} SELECT {GO}, {keys}"
    )


@functools.lru_cache(maxsize=64)
def record_one_sql(
    db: BaseDatabaseWrapper,
    close: tuple[str, ...],
    route: tuple[str, ...],
    *,
    step: bool,
    events: bool,
    ends: bool,
) -> str:
    """``record_sql`` for a batch of one step, its values as plain parameters: the JSON
    documents' reading (the records, their joins, the casts of every column) costs the
    server more than the rest of the statement, and most batches are one step (a chain).
    ``close`` and ``route``: the fields the step's and the execution's changes set. Its
    parameters, in order: the execution's key, the step's key, its step limit (None: none),
    the status a held step has and this worker's name; the close's values and the step's
    key; the route's values and the execution's key; the next step's values; the event and
    end documents."""
    table, pk_s = db.ops.quote_name(TaskRun._meta.db_table), _column(db, TaskRun, "id")
    parts = [
        f"s AS ({writes.update_one_sql(TaskRun, close)} AND {GO})",
        f"e AS ({writes.update_one_sql(Execution, route, increment=('steps_taken',))} AND {GO})",
    ]
    if step:
        fields = _inserted_fields(TaskRun)
        # Cast: in a SELECT (not VALUES) a parameter's type comes from nothing else.
        values = ", ".join(f"%s::{jsonrows.column_type(db, f)}" for f in fields)
        parts.append(
            f"n AS (INSERT INTO {table} ({', '.join(db.ops.quote_name(f.column) for f in fields)}) "
            f"SELECT {values} WHERE {GO} RETURNING {pk_s})"
        )
    parts += _row_parts(db, events=events, ends=ends)
    key = f"(SELECT n.{pk_s} FROM n)" if step else "NULL::bigint"  # noqa: S608
    return (
        f"WITH {_locks(db, one=True)}"  # noqa: S608 - identifiers from the models
        "go AS (SELECT EXISTS (SELECT 1 FROM x WHERE NOT x.cancel AND NOT x.pause "
        "AND x.taken + 1 < COALESCE(%s::integer, x.taken + 2)) "
        "AND EXISTS (SELECT 1 FROM y WHERE y.status = %s AND y.worker = %s) AS ok), "
        f"{', '.join(parts)} SELECT {GO}, {key}"
    )


def _record_one(
    check: tuple[uuid.UUID, int, int | None],
    close: dict[str, Any],
    route: dict[str, Any],
    new_steps: Sequence[TaskRun],
    events: Sequence[ExecutionEvent],
    ends: Sequence[ExecutionEnd],
    *,
    running: str,
    me: str,
) -> bool:
    db = writes._db()
    eid, sid, limit = check
    close_names, route_names = tuple(close), tuple(route)
    step_values, run_values = converters(TaskRun, db), converters(Execution, db)
    key = run_values["id"](eid, db)
    params: list[Any] = [
        key, sid, limit, running, me,
        *(step_values[name](close[name], db) for name in close_names),
        sid,
        *(run_values[name](route[name], db) for name in route_names),
        key,
    ]  # fmt: skip
    read = row_reader(TaskRun, _inserted_fields(TaskRun), db)
    for obj in new_steps:  # at most one: one execution's next step
        params += read(obj, db)
    params += _row_params(events, ends)
    sql = record_one_sql(
        db, close_names, route_names, step=bool(new_steps), events=bool(events), ends=bool(ends)
    )
    ok, key = writes.run_prepared(sql, params)[0]
    if not ok:
        return False
    _inserted(db, new_steps, [key] if new_steps else [], events, ends)
    return True


def _inserted(
    db: BaseDatabaseWrapper,
    steps: Sequence[TaskRun],
    keys: Sequence[int],
    events: Sequence[ExecutionEvent],
    ends: Sequence[ExecutionEnd],
) -> None:
    """The rows the statement inserted, saved as ``writes.insert_rows`` leaves them: the new
    steps with their keys (in order), the others marked saved."""
    writes._set_keys(list(steps), TaskRun._meta.pk.attname, db.alias, [(key,) for key in keys])
    writes._set_keys([*events, *ends], "", db.alias, [])


def _column(db: BaseDatabaseWrapper, model: Any, name: str) -> str:
    return db.ops.quote_name(model._meta.get_field(name).column)


def _locks(db: BaseDatabaseWrapper, *, one: bool) -> str:
    """The ``x`` and ``y`` parts: the executions locked (in key order), then the steps (``one``:
    a key each, else arrays of keys), as they are now. Parameters: the execution key(s), the
    step key(s)."""
    executions = db.ops.quote_name(Execution._meta.db_table)
    table = db.ops.quote_name(TaskRun._meta.db_table)
    pk_e, pk_s = _column(db, Execution, "id"), _column(db, TaskRun, "id")
    match_e = "= %s" if one else f"= ANY(%s::uuid[]) ORDER BY {pk_e}"
    match_s = "= %s" if one else "= ANY(%s::bigint[])"
    order_s = "" if one else f" ORDER BY {pk_s}"
    return (
        f"x AS (SELECT {pk_e} AS id, {_column(db, Execution, 'cancel_requested')} AS cancel, "  # noqa: S608
        f"{_column(db, Execution, 'pause_requested')} AS pause, "
        f"{_column(db, Execution, 'steps_taken')} AS taken FROM {executions} "
        f"WHERE {pk_e} {match_e} FOR UPDATE), "
        # After x (its count), so the steps are locked after their executions.
        f"y AS (SELECT {pk_s} AS id, {_column(db, TaskRun, 'status')} AS status, "
        f"{_column(db, TaskRun, 'worker')} AS worker FROM {table} "
        f"WHERE {pk_s} {match_s} AND (SELECT count(*) FROM x) >= 0{order_s} FOR UPDATE), "
    )


def _row_parts(db: BaseDatabaseWrapper, *, events: bool, ends: bool) -> list[str]:
    """The log lines' and the outbox rows' inserts (``v``, ``o``), from their documents, in
    both statements (few batches have any: one-step variants gain nothing from plain ones)."""
    parts = []
    for wanted, name, model in ((events, "v", ExecutionEvent), (ends, "o", ExecutionEnd)):
        if wanted:
            inserted = jsonrows.insert_sql(db, model, _inserted_fields(model), False, GO)
            parts.append(f"{name} AS ({inserted})")
    return parts


def _row_params(events: Sequence[ExecutionEvent], ends: Sequence[ExecutionEnd]) -> list[str]:
    """The documents ``_row_parts`` reads, those of the rows there are."""
    return [
        jsonrows.insert_rows_document(rows, _inserted_fields(model))
        for rows, model in ((events, ExecutionEvent), (ends, ExecutionEnd))
        if rows
    ]


def record(
    checks: Sequence[tuple[uuid.UUID, int, int | None]],
    closes: dict[int, dict[str, Any]],
    routes: dict[uuid.UUID, dict[str, Any]],
    new_steps: Sequence[TaskRun],
    events: Sequence[ExecutionEvent],
    ends: Sequence[ExecutionEnd],
    *,
    running: str,
    me: str,
) -> bool:
    """Write a batch in one statement if everything is as assumed; whether it did.

    ``checks``: each step's (execution, step, step limit: ``None`` when the execution ends
    with it). ``closes``: each step's changes; ``routes``: each execution's (``steps_taken``
    counted by the statement); ``new_steps`` get their keys; ``running``: the status of a
    step this worker holds.
    """
    if len(checks) == 1 and len(new_steps) <= 1:
        ((eid, sid, _),) = checks
        return _record_one(
            checks[0], closes[sid], routes[eid], new_steps, events, ends, running=running, me=me
        )
    db = writes._db()
    insert = _inserted_fields(TaskRun)
    params: list[Any] = [
        array_text(sorted({str(eid) for eid, _, _ in checks})),
        array_text(sorted({sid for _, sid, _ in checks})),
        jsonrows.document({"e": str(eid), "s": sid, "m": limit} for eid, sid, limit in checks),
        running,
        me,
        jsonrows.update_rows_document(TaskRun, closes, CLOSE),
        array_text(closes),
        running,
        me,
        jsonrows.update_rows_document(Execution, routes, ROUTE),
        array_text(routes),
    ]
    if new_steps:
        params.append(jsonrows.insert_rows_document(new_steps, insert))
    params += _row_params(events, ends)
    sql = record_sql(db, steps=bool(new_steps), events=bool(events), ends=bool(ends))
    ok, keys = writes.run_prepared(sql, params)[0]
    if not ok:
        return False
    _inserted(db, new_steps, keys or [], events, ends)
    return True
