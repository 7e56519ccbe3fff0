"""flows/sql/values.py: what the hand-written statements send for a value is what the ORM
sends (``get_db_prep_save``), for every field of the models the engine writes, on the
database the suite runs on: the shortcuts (built once per field) only skip the chain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import Field, Model
from django.utils import timezone as dj_timezone

from flows.models import (
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    FanOut,
    Flow,
    FlowVersion,
    TaskRun,
)
from flows.sql.values import prep, row_reader

pytestmark = pytest.mark.django_db

MODELS = [Execution, TaskRun, ExecutionEvent, ExecutionEnd, FanOut, FlowVersion]
VALUES: list[Any] = [
    "text",
    "",
    'it\'s "quoted" — ünïcode',
    "42",
    42,
    0,
    -7,
    2.5,
    True,
    False,
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "12345678-1234-5678-1234-567812345678",
    datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
    datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2))),
    dj_timezone.now(),
    {"a": [1, 2.5, None, "x"], "b": {"c": True}, "ü": "—\n"},
    {},
    [1, "two", {"three": 3}],
    Decimal("1.5"),
]


def _comparable(value: Any) -> Any:
    # psycopg's JSON wrapper (Jsonb) has no equality of its own: its type and what it wraps.
    if hasattr(value, "obj") and type(value).__module__.startswith("psycopg"):
        return (type(value), value.obj)
    if isinstance(value, int) and not isinstance(value, bool):
        # On PostgreSQL the ORM names an integer's SQL type (psycopg's Int4, an int); the
        # shortcut sends the int, which the column's type takes on assignment.
        return (int, int(value))
    return value


def _orm(field: Field, value: Any) -> Any:
    return field.get_db_prep_save(value, connection)


def _outcome(send: Any) -> tuple[Any, ...]:
    """What sending gave: the value and its type, or the type of the error it raised."""
    try:
        value = send()
    except Exception as exc:  # whatever the ORM raises, the same must be raised
        return ("refused", type(exc))
    return ("sent", _comparable(value), type(_comparable(value)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_value_is_sent_as_the_orm_sends_it(model: type[Model]) -> None:
    sent = 0
    for field in model._meta.concrete_fields:
        for value in VALUES:
            expected = _outcome(lambda f=field, v=value: _orm(f, v))
            got = _outcome(lambda f=field, v=value: prep(f, v, connection))
            assert got == expected, (field.name, value)
            sent += expected[0] == "sent"
    assert sent > 2 * len(model._meta.concrete_fields)  # most fields took several values


def test_none_is_sql_null_for_every_field() -> None:
    for model in MODELS:
        for field in model._meta.concrete_fields:
            assert prep(field, None, connection) is None, field.name


def test_an_inserted_row_sends_what_the_orm_would_and_sets_auto_now_add_on_it() -> None:
    flow = Flow.objects.create(id="values", name="Values", definition={"id": "values"})
    version = FlowVersion(flow=flow, version=1, definition={"id": "values", "tasks": []})
    fields = tuple(f for f in FlowVersion._meta.concrete_fields if not f.primary_key)
    assert any(getattr(f, "auto_now_add", False) for f in fields)  # what this test is about
    before = dj_timezone.now()
    sent = row_reader(FlowVersion, fields, connection)(version, connection)
    assert version.created_at is not None and version.created_at >= before  # set, as the ORM
    assert [_comparable(v) for v in sent] == [
        _comparable(_orm(f, getattr(version, f.attname))) for f in fields
    ]


def test_a_step_row_is_read_in_one_go_and_sent_as_the_orm_would() -> None:
    step = TaskRun(
        execution_id=uuid.uuid4(),
        seq=3,
        task_name="t",
        task_type="noop",
        parameters={"k": "v"},
        result=[1, 2],
        created_at=dj_timezone.now(),
        duration=0.25,
    )
    fields = tuple(f for f in TaskRun._meta.concrete_fields if not f.primary_key)
    sent = row_reader(TaskRun, fields, connection)(step, connection)
    assert [_comparable(v) for v in sent] == [
        _comparable(_orm(f, f.pre_save(step, True))) for f in fields
    ]


def test_instants_sent_one_after_another_each_keep_their_own_value() -> None:
    # A step's rows send the same instant in several fields, and the next step another.
    field = TaskRun._meta.get_field("ended_at")
    first, second = dj_timezone.now(), dj_timezone.now() + timedelta(microseconds=1)
    for value in (first, first, second, first, second, second):
        assert prep(field, value, connection) == _orm(field, value)
