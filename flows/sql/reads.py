"""Reads on the hottest paths, as SQL built once per process instead of once per request.

``GET /flow/{id}/status`` is what clients poll, and every API request looks up its token.
Profiling showed that building the ORM's SQL (not running it) was most of their cost: about
0.3-0.5 ms per query against 0.02 ms to run it on SQLite. These functions build the same
queries from the models' metadata once, run them through ``Model.objects.raw`` (which still
applies the fields' converters, so values are the same Python objects the ORM gives), and
return ordinary model instances. bench/api_load.py measures the effect.

Only identifiers from the models' metadata, quoted by the backend, are put into the SQL text;
every value is a query parameter (asserted while ``settings.DEBUG`` is on: ``flows.sql.rules``).
"""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from flows.models import Execution, Flow, FlowVersion, TaskRun
from flows.sql import rules


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
