"""What limits cost a flow that takes none: nothing. A step whose task lists no limits (and
whose type has no default_limits), of a flow without max_concurrent_executions, runs not one
statement more than before limits existed, even with limits defined for other flows; the
statements a run takes are pinned here, so a new one shows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from flows import engine, services
from flows.models import ConcurrencyLimit
from tests.factories import flow_doc, task

pytestmark = pytest.mark.django_db

# Statements of one start and one inline run of a 3-step flow, on SQLite, before limits were
# added (counted on that commit with this very test): start 6, then 27 for the run (3 steps).
# Since, 2 fewer: a job's first claim no longer probes before its transaction, nor reads the
# results of an execution at its first step (tests/test_dispatcher.py).
STATEMENTS = {"start": 6, "run": 25}
LIMIT_TABLES = ("flows_limithold", "flows_concurrencylimit", "flows_flowslot")


def test_a_flow_without_limits_runs_the_same_statements_as_before_limits_existed() -> None:
    if hasattr(services, "limit_create"):  # absent before limits: the count stands alone
        ConcurrencyLimit.objects.create(name="elsewhere", max_in_flight=1)
    version = services.flow_create(
        document=flow_doc([task("a"), task("b"), task("c")], flow_id="plain")
    )
    execution = services.execution_create(flow_version=version)

    with CaptureQueriesContext(connection) as start:
        services.execution_start(execution_id=execution.id)
    with CaptureQueriesContext(connection) as run:
        finished = engine.run_inline(execution.id)

    assert finished.status == "COMPLETED"
    statements = [q["sql"] for q in (*start.captured_queries, *run.captured_queries)]
    assert not [sql for sql in statements if any(t in sql for t in LIMIT_TABLES)]
    if connection.vendor == "sqlite":
        got = {"start": len(start.captured_queries), "run": len(run.captured_queries)}
        assert got == STATEMENTS, [q["sql"][:80] for q in run.captured_queries]
