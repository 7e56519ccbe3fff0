"""Reads on the hottest paths, as SQL built once per process instead of once per request.

``GET /flow/{id}/status`` is what clients poll, and every API request looks up its token.
Profiling showed that building the ORM's SQL (not running it) was most of their cost: about
0.3-0.5 ms per query against 0.02 ms to run it on SQLite. These functions build the same
queries from the models' metadata once, run them through ``Model.objects.raw`` (which still
applies the fields' converters, so values are the same Python objects the ORM gives), and
return ordinary model instances. bench/api_load.py measures the effect. The claim's reads
(``ready_steps``, ``by_keys``), which select every column of one model and nothing else, go
through ``_rows`` instead: the same converters and ``Model.from_db``, without the raw
queryset's column mapping (0.13 against 0.40 ms for one execution's row on SQLite).

Only identifiers from the models' metadata, quoted by the backend, are put into the SQL text;
every value is a query parameter (asserted while ``settings.DEBUG`` is on: ``flows.sql.rules``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections

from flows.models import ACTIVE_STATUSES, Execution, Flow, FlowVersion, TaskRun, TaskRunStatus
from flows.sql import rules, writes
from flows.sql.values import array_text, prep


def _raw(model: Any, sql: str, params: list[Any]) -> list[Any]:
    if settings.DEBUG:
        rules.check_statement(sql, params, connection.vendor)
    return list(model.objects.raw(sql, params))


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _col(model: Any, field: str, alias: str) -> str:
    return f"{alias}.{_q(model._meta.get_field(field).column)}"


@cache
def _status_sql(vendor: str) -> tuple[str, str]:
    """(execution with flow name and version number, steps of an execution) for ``vendor``."""
    e, f, v = Execution, Flow, FlowVersion
    fields = ["id", "status", "current_task", "error", "created_at", "started_at", "ended_at"]
    execution = (
        "SELECT "
        + ", ".join(_col(e, name, "e") for name in [*fields, "flow", "flow_version"])
        + f", {_col(f, 'name', 'f')} AS flow_name, {_col(v, 'version', 'v')} AS version_number"
        + f" FROM {_q(e._meta.db_table)} e"
        + f" JOIN {_q(f._meta.db_table)} f ON {_col(f, 'id', 'f')} = {_col(e, 'flow', 'e')}"
        + f" JOIN {_q(v._meta.db_table)} v ON {_col(v, 'id', 'v')} = {_col(e, 'flow_version', 'e')}"
        + f" WHERE {_col(e, 'id', 'e')} = %s"
    )
    step_fields = ["id", "seq", "task_name", "status", "result", "error", "ended_at", "duration"]
    steps = (
        "SELECT "
        + ", ".join(_col(TaskRun, name, "s") for name in step_fields)
        + f" FROM {_q(TaskRun._meta.db_table)} s"
        + f" WHERE {_col(TaskRun, 'execution', 's')} = %s ORDER BY {_col(TaskRun, 'seq', 's')}"
    )
    return execution, steps


def execution_for_status(key: uuid.UUID) -> Execution | None:
    """The execution with its flow's name and version number, or None (one query)."""
    sql, _ = _status_sql(connection.vendor)
    param = Execution._meta.pk.get_db_prep_value(key, connection)
    found = _raw(Execution, sql, [param])
    if not found:
        return None
    execution = found[0]
    execution.flow = Flow(id=execution.flow_id, name=execution.flow_name)
    execution.flow_version = FlowVersion(
        id=execution.flow_version_id, flow_id=execution.flow_id, version=execution.version_number
    )
    return execution


def steps_for_status(execution: Execution) -> list[TaskRun]:
    """The execution's steps in run order, with the columns the status document shows."""
    _, sql = _status_sql(connection.vendor)
    param = Execution._meta.pk.get_db_prep_value(execution.pk, connection)
    return _raw(TaskRun, sql, [param])


@cache
def _token_sql(vendor: str) -> str:
    user = get_user_model()
    # DRF's token model, by its app label: this layer imports no DRF (tests/test_layers.py).
    Token = apps.get_model("authtoken", "Token")
    return (
        f"SELECT u.* FROM {_q(user._meta.db_table)} u"
        f" JOIN {_q(Token._meta.db_table)} t"
        f" ON {_col(Token, 'user', 't')} = {_col(user, user._meta.pk.name, 'u')}"
        f" WHERE {_col(Token, 'key', 't')} = %s"
    )


def user_for_token(key: str) -> Any | None:
    """The user whose API token is ``key`` (active or not), or None (one query)."""
    found = _raw(get_user_model(), _token_sql(connection.vendor), [key])
    return found[0] if found else None


# -- the dispatcher's look for ready steps -----------------------------------------------------
@lru_cache(maxsize=64)
def _ready_sql(vendor: str, only: bool, excluded: int, claim: bool = False) -> str:
    """The statement of ``ready_exists`` (``claim`` False) or ``ready_steps`` (True): PostgreSQL
    one text per ``only`` (the excluded keys travel as one array), SQLite one per number of
    excluded keys."""
    s, e = TaskRun, Execution
    step_execution = _col(s, "execution", "s")
    selected = _columns(s, "s") if claim else "1"
    sql = (
        f"SELECT {selected} FROM {_q(s._meta.db_table)} s"
        f" JOIN {_q(e._meta.db_table)} e ON {_col(e, 'id', 'e')} = {step_execution}"
        f" WHERE {_col(s, 'status', 's')} = %s"
        f" AND {_col(e, 'status', 'e')} IN ({', '.join(['%s'] * len(ACTIVE_STATUSES))})"
        f" AND NOT {_col(e, 'pause_requested', 'e')}"
        f" AND ({_col(s, 'not_before', 's')} IS NULL OR {_col(s, 'not_before', 's')} <= %s)"
    )
    if only:
        sql += f" AND ({step_execution} = %s OR {_col(e, 'root', 'e')} = %s)"
    if vendor == "postgresql":
        sql += f" AND {step_execution} <> ALL(%s::uuid[])"
    elif excluded:
        sql += f" AND {step_execution} NOT IN ({', '.join(['%s'] * excluded)})"
    if not claim:
        return sql + " LIMIT 1"
    # Oldest wake-up first; on PostgreSQL rows another claim holds are passed over, so that
    # workers claiming at once take different steps (SQLite's IMMEDIATE transaction
    # serialises the claims instead).
    sql += f" ORDER BY {_col(s, 'woken_at', 's')} LIMIT %s"
    return sql + (" FOR UPDATE OF s SKIP LOCKED" if vendor == "postgresql" else "")


def _ready_params(
    db: Any, now: datetime, exclude: list[uuid.UUID], only: uuid.UUID | None
) -> list[Any]:
    pk = Execution._meta.pk
    params: list[Any] = [
        TaskRunStatus.PENDING,
        *ACTIVE_STATUSES,
        prep(TaskRun._meta.get_field("not_before"), now, db),
    ]
    if only is not None:
        params += [prep(pk, only, db)] * 2
    if db.vendor == "postgresql":
        params.append(array_text(exclude))
    else:
        params += [prep(pk, key, db) for key in exclude]
    return params


def ready_exists(now: datetime, exclude: list[uuid.UUID], only: uuid.UUID | None) -> bool:
    """Whether a step is ready (``flows.engine.claim.ready``'s question, asked before each
    claim): a worker asks it every FILL_INTERVAL_SECONDS or more while it has room, and it
    mostly finds nothing. The ORM built the query anew each time (about 1 ms here, more than
    running it); this builds it once, and on PostgreSQL prepares it once per connection."""
    db = connections[DEFAULT_DB_ALIAS]
    params = _ready_params(db, now, exclude, only)
    sql = _ready_sql(db.vendor, only is not None, len(exclude))
    if settings.DEBUG:
        rules.check_statement(sql, params, db.vendor)
    if db.vendor == "postgresql":
        return bool(writes.run_prepared(sql, params))
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


def ready_steps(
    now: datetime, exclude: list[uuid.UUID], only: uuid.UUID | None, room: int
) -> list[TaskRun]:
    """Up to ``room`` ready steps, oldest wake-up first, locked for the caller's transaction:
    ``claim.ready(...).order_by("woken_at").select_for_update(skip_locked=True, of=("self",))``
    with its SQL built once (the ORM's building cost more than the claim's other statements
    together)."""
    db = connections[DEFAULT_DB_ALIAS]
    if not db.in_atomic_block:
        raise rules.SqlRuleError("ready_steps locks rows: call it inside a transaction")
    params = [*_ready_params(db, now, exclude, only), room]
    return _rows(TaskRun, db, _ready_sql(db.vendor, only is not None, len(exclude), True), params)


# -- rows by key -------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _by_keys_sql(model: Any, vendor: str, keys: int) -> str:
    pk = model._meta.pk
    table, column = _q(model._meta.db_table), _col(model, pk.name, "r")
    if vendor == "postgresql":  # one text for any number of keys: an array
        where = f"{column} = ANY(%s::{pk.rel_db_type(connection)}[])"
    else:
        where = f"{column} IN ({', '.join(['%s'] * keys)})"
    return f"SELECT {_columns(model, 'r')} FROM {table} r WHERE {where}"


def by_keys(model: Any, keys: Iterable[Any]) -> dict[Any, Any]:
    """``model.objects.in_bulk(keys)`` (every concrete field), its SQL built once."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    db = connections[DEFAULT_DB_ALIAS]
    pk = model._meta.pk
    if db.vendor == "postgresql":
        params: list[Any] = [array_text(prep(pk, key, db) for key in keys)]
    else:
        params = [prep(pk, key, db) for key in keys]
    found = _rows(model, db, _by_keys_sql(model, db.vendor, len(keys)), params)
    return {obj.pk: obj for obj in found}


# -- rows as model instances -------------------------------------------------------------------
def _columns(model: Any, alias: str) -> str:
    return ", ".join(f"{alias}.{_q(field.column)}" for field in model._meta.concrete_fields)


@lru_cache(maxsize=16)
def _read_converters(
    model: Any, vendor: str
) -> tuple[list[str], tuple[tuple[int, tuple[Any, ...], Any], ...]]:
    """The attribute names of a model's concrete fields, in order, and for each field with
    converters (the backend's, then the field's own, as the ORM's compiler applies them): its
    position, its converters and the column expression they are called with."""
    found = []
    for position, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        converters = (
            *connection.ops.get_db_converters(column),
            *field.get_db_converters(connection),
        )
        if converters:
            found.append((position, converters, column))
    return [field.attname for field in model._meta.concrete_fields], tuple(found)


def _rows(model: Any, db: Any, sql: str, params: list[Any]) -> list[Any]:
    """Run a statement selecting ``_columns(model, ...)``: its rows as instances, each value
    converted as the ORM converts it (``Model.from_db``, as a queryset makes them)."""
    if settings.DEBUG:
        rules.check_statement(sql, params, db.vendor)
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return instances(model, rows, db)


def instances(model: Any, rows: Iterable[Any], db: Any = None) -> list[Any]:
    """Rows of every concrete column of ``model`` in field order (a statement's ``RETURNING``
    them, ``flows.sql.writes.update_matching``) as instances, converted as ``_rows`` converts."""
    if db is None:
        db = connections[DEFAULT_DB_ALIAS]
    names, converters = _read_converters(model, db.vendor)
    found = []
    for row in rows:
        values = list(row)
        for position, functions, column in converters:
            value = values[position]
            for convert in functions:
                value = convert(value, column, db)
            values[position] = value
        found.append(model.from_db(db.alias, names, values))
    return found
