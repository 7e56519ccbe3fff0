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

A batch holding items of a map (one map step) that end, or go on, adds to it (``MapItems``)::

    f  AS (first of all: the map step's FanOut row, locked, as it is now)
    c  AS (count the items that ended; move ``started`` on by as many)
    i  AS (start the next items, as many as ended: CREATED -> RUNNING, claimed here)
    t  AS (insert their first steps, claimed by this worker)

in the lock order of ``record.write`` and ``fanin.cancel_children`` (the FanOut row, then
the executions, then their steps). It writes only while the count decides nothing (the map
neither done nor past its tolerance of failed items, no item of the batch failed) and the
map is not being redriven; the last items of a map, and a failed item, go the general way,
which ends the map step or fails it. Recorded the general way, a batch of items held the
FanOut row for ten round trips and the Python between them, and two workers running one
map's items took turns on it; here, for the statement alone.

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field

from flows.definition.specs import MAP
from flows.models import (
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    ExecutionStatus,
    FanOut,
    TaskRun,
)
from flows.sql import jsonrows, reads, writes
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
# A map's item ends with its result (what the map step gathers).
ROUTE_ITEMS = (*ROUTE, ("result", False))
GO = "(SELECT ok FROM go)"


@dataclass
class MapItems:
    """Items of one map in a batch (see the module's docstring): ``ended`` of them end, every
    one COMPLETED; as many of the map's next items start, claimed by the worker, their first
    steps copies of ``first_step`` (claimed, unsaved; its execution is set per item). The
    statement fills ``started``: each started item's execution as it left it, and its first
    step (saved), in item order."""

    step_id: int  # the map step's (its FanOut row's key)
    ended: int
    first_step: TaskRun
    now: datetime
    started: list[tuple[Execution, TaskRun]] = field(default_factory=list)


def available() -> bool:
    """Whether the database is PostgreSQL (SQLite has no round trips to save)."""
    return writes.vendor() == "postgresql"


@functools.cache
def _inserted_fields(model: Any) -> tuple[Field, ...]:
    meta = model._meta
    return tuple(f for f in meta.concrete_fields if f is not meta.pk)


@functools.lru_cache(maxsize=32)
def record_sql(
    db: BaseDatabaseWrapper, *, steps: bool, events: bool, ends: bool, items: bool = False
) -> str:
    """The statement (see the module's docstring), with the parts a batch needs (``steps``,
    ``events``, ``ends``: whether it inserts any; a part inserting nothing still costs the
    server its plan nodes; ``items``: a map's items, ``MapItems``): a handful of texts, each
    prepared once. Its parameters, in order: with ``items``, how many of them end and their
    map step's key; the executions' keys, the steps' keys (array text), the check document
    (``e``, ``s``, ``m``), the status a held step has and this worker's name, then each
    part's document and keys, with ``items`` the next items' status, start time and the
    status they leave (``_items_parts``) and their first step's values. Its rows: whether it
    wrote, the new steps' keys; with ``items``, one row per item it started (its first step's
    key and its execution's columns), or one with those NULL."""
    pk_s = _column(db, TaskRun, "id")
    # go checked every step is still this worker's on the rows y locked: the close needs no
    # condition of its own on them (with one, the server would look the steps up through the
    # index of running steps, which holds every step run since it was last vacuumed).
    close = jsonrows.update_sql(db, TaskRun, CLOSE, (), (), (), GO)
    route = jsonrows.update_sql(
        db, Execution, ROUTE_ITEMS if items else ROUTE, ("steps_taken",), (), (), GO
    )
    parts = [f"s AS ({close})", f"e AS ({route})"]
    if steps:
        inserted = jsonrows.insert_sql(db, TaskRun, _inserted_fields(TaskRun), True, GO)
        parts.append(f"n AS ({inserted})")
    if items:
        parts += _items_parts(db)
    parts += _row_parts(db, events=events, ends=ends)
    keys = f"(SELECT array_agg(n.{pk_s}) FROM n)" if steps else "NULL::bigint[]"  # noqa: S608
    # The map goes on once these are counted (its last items, like a failure in the batch,
    # go the general way: it ends or fails the map step).
    undecided = f" AND COALESCE((SELECT {_GOES_ON} FROM f), false)" if items else ""  # noqa: S608
    selected = f"SELECT {GO}, {keys}"
    if items:
        columns = ", ".join(
            f"i.{db.ops.quote_name(f.column)}" for f in Execution._meta.concrete_fields
        )
        selected += (
            f", t.{pk_s}, {columns} FROM (VALUES (1)) AS one (o) "
            f"LEFT JOIN (i JOIN t ON t.{_column(db, TaskRun, 'execution')} = i.id) ON true"
        )
    return (
        f"WITH {_fanout_lock(db) if items else ''}{_locks(db, one=False, after=items)}"  # noqa: S608 - identifiers from the models
        "d AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS d(e uuid, s bigint, m integer)), "
        "go AS (SELECT (SELECT count(*) FROM d JOIN x ON x.id = d.e "
        "WHERE NOT x.cancel AND NOT x.pause AND (d.m IS NULL OR x.taken + 1 < d.m)) "
        "= (SELECT count(*) FROM d) AND (SELECT count(*) FROM d JOIN y ON y.id = d.s "
        f"WHERE y.status = %s AND y.worker = %s) = (SELECT count(*) FROM d){undecided} AS ok), "
        f"{', '.join(parts)} {selected}"
    )


# A map step that these items leave undecided (``fanin.decided_by`` of a map, its count
# taken: neither done nor past its tolerance; the batch's items all completed) and that is not
# being redriven (``fanin._start_again``).
_GOES_ON = (
    f"f.kind = '{MAP}' AND f.next_item IS NULL AND f.done + f.n < f.total AND NOT CASE "
    "WHEN f.tolerated_percent IS NOT NULL THEN f.failed * 100 > f.tolerated_percent * f.total "
    "ELSE f.failed > f.tolerated END"
)


def _fanout_lock(db: BaseDatabaseWrapper) -> str:
    """The ``f`` part: the map step's FanOut row locked before anything else, read as it is
    now, with how many of its items end (``n``). Parameters: that number, the step's key."""
    quote = db.ops.quote_name
    table = quote(FanOut._meta.db_table)
    columns = ", ".join(
        f"{_column(db, FanOut, name)} AS {alias}"
        for name, alias in (
            ("step", "k"), ("kind", "kind"), ("total", "total"), ("started", "started"),
            ("done", "done"), ("failed", "failed"), ("next_item", "next_item"),
            ("tolerated", "tolerated"), ("tolerated_percent", "tolerated_percent"),
        )
    )  # fmt: skip
    return (
        f"f AS (SELECT {columns}, %s::integer AS n FROM {table} "  # noqa: S608
        f"WHERE {_column(db, FanOut, 'step')} = %s FOR UPDATE), "
    )


def _items_parts(db: BaseDatabaseWrapper) -> list[str]:
    """The ``c``, ``i`` and ``t`` parts (the module's docstring). Parameters: the status the
    started items take, their start time (queued and started), the status they leave; their
    first step's values (but its execution: each item's)."""
    quote = db.ops.quote_name
    fanouts, executions = quote(FanOut._meta.db_table), quote(Execution._meta.db_table)
    steps = quote(TaskRun._meta.db_table)
    done, started = _column(db, FanOut, "done"), _column(db, FanOut, "started")
    status, index = _column(db, Execution, "status"), _column(db, Execution, "item_index")
    counted = (
        f"c AS (UPDATE {fanouts} SET {done} = f.done + f.n, "  # noqa: S608
        f"{started} = LEAST(f.total, f.started + f.n) FROM f "
        f"WHERE {fanouts}.{_column(db, FanOut, 'step')} = f.k AND {GO})"
    )
    every = ", ".join(f"{executions}.{quote(f.column)}" for f in Execution._meta.concrete_fields)
    begun = (
        f"i AS (UPDATE {executions} SET {status} = %s, "  # noqa: S608
        f"{_column(db, Execution, 'queued_at')} = %s, {_column(db, Execution, 'started_at')} = %s "
        f"FROM f WHERE {executions}.{_column(db, Execution, 'parent_step')} = f.k "
        # Both bounds from f (c moves ``started`` to the upper one): the index scan reads
        # those items alone (with the upper bound from c, every item from the first on).
        f"AND {executions}.{index} >= f.started "
        f"AND {executions}.{index} < LEAST(f.total, f.started + f.n) "
        f"AND {executions}.{status} = %s AND {GO} RETURNING {every})"
    )
    fields = _inserted_fields(TaskRun)
    values = ", ".join(
        "i.id" if f.name == "execution" else f"%s::{jsonrows.column_type(db, f)}" for f in fields
    )
    first = (
        f"t AS (INSERT INTO {steps} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"SELECT {values} FROM i ORDER BY i.{index} "
        f"RETURNING {_column(db, TaskRun, 'id')}, {_column(db, TaskRun, 'execution')})"
    )
    return [counted, begun, first]


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


def _locks(db: BaseDatabaseWrapper, *, one: bool, after: bool = False) -> str:
    """The ``x`` and ``y`` parts: the executions locked (in key order), then the steps (``one``:
    a key each, else arrays of keys), as they are now; ``after``: after the ``f`` part (the
    FanOut row). Parameters: the execution key(s), the step key(s)."""
    executions = db.ops.quote_name(Execution._meta.db_table)
    table = db.ops.quote_name(TaskRun._meta.db_table)
    pk_e, pk_s = _column(db, Execution, "id"), _column(db, TaskRun, "id")
    match_e = "= %s" if one else "= ANY(%s::uuid[])"
    if after:  # referring to f makes the server lock the FanOut row first
        match_e += " AND (SELECT count(*) FROM f) >= 0"
    match_s = "= %s" if one else "= ANY(%s::bigint[])"
    order_e, order_s = ("", "") if one else (f" ORDER BY {pk_e}", f" ORDER BY {pk_s}")
    return (
        f"x AS (SELECT {pk_e} AS id, {_column(db, Execution, 'cancel_requested')} AS cancel, "  # noqa: S608
        f"{_column(db, Execution, 'pause_requested')} AS pause, "
        f"{_column(db, Execution, 'steps_taken')} AS taken FROM {executions} "
        f"WHERE {pk_e} {match_e}{order_e} FOR UPDATE), "
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
    items: MapItems | None = None,
) -> bool:
    """Write a batch in one statement if everything is as assumed; whether it did.

    ``checks``: each step's (execution, step, step limit: ``None`` when the execution ends
    with it). ``closes``: each step's changes; ``routes``: each execution's (``steps_taken``
    counted by the statement); ``new_steps`` get their keys; ``running``: the status of a
    step this worker holds; ``items``: the batch holds items of a map (``MapItems``, whose
    ``started`` it fills).
    """
    if items is None and len(checks) == 1 and len(new_steps) <= 1:
        ((eid, sid, _),) = checks
        return _record_one(
            checks[0], closes[sid], routes[eid], new_steps, events, ends, running=running, me=me
        )
    db = writes._db()
    insert = _inserted_fields(TaskRun)
    params: list[Any] = [] if items is None else [items.ended, items.step_id]
    params += [
        array_text(sorted({str(eid) for eid, _, _ in checks})),
        array_text(sorted({sid for _, sid, _ in checks})),
        jsonrows.document({"e": str(eid), "s": sid, "m": limit} for eid, sid, limit in checks),
        running,
        me,
        jsonrows.update_rows_document(TaskRun, closes, CLOSE),
        array_text(closes),
        jsonrows.update_rows_document(Execution, routes, ROUTE if items is None else ROUTE_ITEMS),
        array_text(routes),
    ]
    if new_steps:
        params.append(jsonrows.insert_rows_document(new_steps, insert))
    if items is not None:
        now = converters(Execution, db)["queued_at"](items.now, db)
        params += [ExecutionStatus.RUNNING, now, now, ExecutionStatus.CREATED]
        params += row_reader(TaskRun, _first_step_fields(), db)(items.first_step, db)
    params += _row_params(events, ends)
    sql = record_sql(
        db, steps=bool(new_steps), events=bool(events), ends=bool(ends), items=items is not None
    )
    rows = writes.run_prepared(sql, params)
    ok, keys = rows[0][:2]
    if not ok:
        return False
    _inserted(db, new_steps, keys or [], events, ends)
    if items is not None:
        items.started = _started(db, items, [row[2:] for row in rows if row[2] is not None])
    return True


@functools.cache
def _first_step_fields() -> tuple[Field, ...]:
    """The fields of a started item's first step sent as values (its execution is the item)."""
    return tuple(f for f in _inserted_fields(TaskRun) if f.name != "execution")


def _started(
    db: BaseDatabaseWrapper, items: MapItems, rows: list[tuple[Any, ...]]
) -> list[tuple[Execution, TaskRun]]:
    """The started items (each row: its first step's key, then its execution's columns) as
    instances, in item order: the executions as the statement left them, their first steps
    copies of ``items.first_step``, saved."""
    executions = reads.instances(Execution, [row[1:] for row in rows], db)
    started = []
    template = {f.attname: getattr(items.first_step, f.attname) for f in _first_step_fields()}
    for (key, *_), execution in sorted(
        zip(rows, executions, strict=True), key=lambda pair: pair[1].item_index
    ):
        step = TaskRun(id=key, execution_id=execution.id, **template)
        step._state.adding, step._state.db = False, db.alias
        started.append((execution, step))
    return started
