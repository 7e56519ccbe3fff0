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

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

from flows.models import Execution, Flow, FlowVersion, TaskRun
from flows.services import NotFound
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


def execution_for_status(execution_id: Any) -> Execution:
    """The execution with its flow's name and version number, or NotFound (one query)."""
    try:
        key = uuid.UUID(str(execution_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no execution with id '{execution_id}' (ids are UUIDs)") from None
    sql, _ = _status_sql(connection.vendor)
    param = Execution._meta.pk.get_db_prep_value(key, connection)
    found = _raw(Execution, sql, [param])
    if not found:
        raise NotFound(f"no execution with id '{key}'")
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
    return (
        f"SELECT u.* FROM {_q(user._meta.db_table)} u"
        f" JOIN {_q(Token._meta.db_table)} t"
        f" ON {_col(Token, 'user', 't')} = {_col(user, user._meta.pk.name, 'u')}"
        f" WHERE {_col(Token, 'key', 't')} = %s"
    )


class PrebuiltTokenAuthentication(TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, also taken as ``Authorization: Bearer <key>``
    (what most HTTP clients and API gateways send), with the user looked up by prebuilt SQL.

    Anonymous requests are still asked for ``Token`` in WWW-Authenticate (the seed's scheme).
    """

    SCHEMES = (b"token", b"bearer")

    def authenticate(self, request: Any) -> tuple[Any, Token] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in self.SCHEMES:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid token header: send 'Authorization: Token <key>' (or Bearer <key>)."
            )
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                "Invalid token header. Token string should not contain invalid characters."
            ) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        found = _raw(get_user_model(), _token_sql(connection.vendor), [key])
        if not found:
            raise exceptions.AuthenticationFailed("Invalid token.")
        user = found[0]
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)
