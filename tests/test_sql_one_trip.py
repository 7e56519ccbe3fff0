"""PostgreSQL: a step that goes on (or ends) is recorded in ONE statement (issue 26).

``flows/sql/onetrip.py``: the step closed, its execution counted and routed, the next step
written and claimed for the same worker, in one statement committed once. These tests run on
PostgreSQL (CI's second and third passes); SQLite has no round trips to save and keeps the
statements ``test_sql_limits_cost.py`` pins.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flows import engine, services
from flows.engine import timing, transitions
from flows.models import Execution, ExecutionEnd, ExecutionEvent, TaskRun, TaskRunStatus
from tests.factories import flow_doc, task

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL only: one round trip a step"
    ),
]


def _run_statements(steps: int) -> int:
    """Statements an inline run of a ``steps``-step noop flow sends, once started."""
    version = services.flow_create(
        document=flow_doc([task(f"t{i}") for i in range(steps)], flow_id=f"chain_{steps}")
    )
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id)
    with CaptureQueriesContext(connection) as run:
        finished = engine.run_inline(execution.id)
    assert finished.status == "COMPLETED"
    assert finished.steps_taken == steps
    return len(run.captured_queries)


def test_each_step_of_a_chain_costs_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    # The looks a dispatcher takes on its clock (for more work, for cancels) out of the count.
    monkeypatch.setattr(timing, "FILL_INTERVAL_SECONDS", 3600.0)
    monkeypatch.setattr(timing, "WATCH_INTERVAL_SECONDS", 3600.0)
    _run_statements(2)  # a first run fills what the process caches (a flow's first look-ups)
    # The difference between a 4- and an 8-step run is 4 steps that went on and nothing
    # else (the claim, the loading and the last step's end are in both).
    four = _run_statements(4)
    assert _run_statements(8) - four == 4


def test_the_steps_read_back_as_the_general_way_writes_them() -> None:
    version = services.flow_create(
        document=flow_doc([task("a"), task("b"), task("c")], flow_id="readback")
    )
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id)
    finished = engine.run_inline(execution.id)

    assert (finished.status, finished.steps_taken, finished.current_task) == ("COMPLETED", 3, "")
    assert finished.ended_at is not None and finished.error == ""
    steps = list(TaskRun.objects.filter(execution=execution).order_by("seq"))
    assert [(s.task_name, s.status, s.worker != "") for s in steps] == [
        ("a", "SUCCESS", True), ("b", "SUCCESS", True), ("c", "SUCCESS", True),
    ]  # fmt: skip
    for before, after in itertools.pairwise(steps):
        # The next step starts at the instant the previous one is recorded (one transaction).
        assert after.started_at == before.ended_at
        assert before.route.endswith(f"-> {after.task_name}")
    assert all(s.lease_expires_at is None and s.duration is not None for s in steps)
    assert steps[-1].route.endswith("-> execution COMPLETED")
    # The outbox row of its end (alerts, triggers), and the end in its log.
    assert ExecutionEnd.objects.filter(execution=execution, status="COMPLETED").exists()
    assert ExecutionEvent.objects.filter(execution=execution, level="INFO").exists()


def _running_step(version_id: int, *, worker: str = "w1") -> tuple[Execution, TaskRun]:
    from flows.models import FlowVersion

    version = FlowVersion.objects.get(pk=version_id)
    execution = Execution.objects.create(
        flow=version.flow, flow_version=version, status="RUNNING", current_task="a"
    )
    now = timezone.now()
    step = TaskRun.objects.create(
        execution=execution, seq=1, task_name="a", task_type="noop", status="RUNNING",
        worker=worker, started_at=now, lease_expires_at=now + timedelta(seconds=6),
    )  # fmt: skip
    return execution, step


def _record(execution: Execution, step: TaskRun, me: str = "w1") -> bool:
    now = timezone.now()
    nxt = transitions.new_step(execution.id, step, now, seq=2, claimed_by=me,
                               lease=timedelta(seconds=6))  # fmt: skip
    nxt.task_name = "b"
    closes = {
        step.pk: transitions.closed(
            TaskRunStatus.SUCCESS,
            now,
            result={"ok": 1},
            error="",
            traceback="",
            duration=0.001,
            route="a -> b",
        )
    }
    return transitions.record_in_one(
        [(execution.id, step.pk, 100)], closes, {execution.id: {"current_task": "b"}},
        [nxt], [], [], me=me,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"execution": {"cancel_requested": True}}, id="cancel asked for"),
        pytest.param({"execution": {"pause_requested": True}}, id="pause asked for"),
        pytest.param({"execution": {"steps_taken": 99}}, id="step limit reached"),
        pytest.param({"step": {"status": "LOST", "worker": "w1"}}, id="step taken over"),
        pytest.param({"step": {"worker": "w2"}}, id="another worker's step"),
    ],
)
def test_a_batch_not_as_assumed_writes_nothing(change: dict) -> None:
    version = services.flow_create(document=flow_doc([task("a"), task("b")], flow_id="guard"))
    execution, step = _running_step(version.pk)
    ok, _ = _running_step(version.pk)
    Execution.objects.filter(pk=execution.pk).update(**change.get("execution", {}))
    TaskRun.objects.filter(pk=step.pk).update(**change.get("step", {}))
    before_exec = Execution.objects.filter(pk=execution.pk).values().get()
    before_step = TaskRun.objects.filter(pk=step.pk).values().get()

    assert _record(execution, step) is False

    # Nothing of it: the execution and the step as they were, no next step, no log line.
    assert Execution.objects.filter(pk=execution.pk).values().get() == before_exec
    assert TaskRun.objects.filter(pk=step.pk).values().get() == before_step
    assert not TaskRun.objects.filter(execution=execution, seq=2).exists()
    assert not ExecutionEvent.objects.filter(execution=execution).exists()
    # The same write for an execution as assumed goes through, whole.
    ok_step = TaskRun.objects.get(execution=ok)
    assert _record(ok, ok_step) is True
    assert TaskRun.objects.get(pk=ok_step.pk).status == "SUCCESS"
    assert TaskRun.objects.get(execution=ok, seq=2).status == "RUNNING"
    assert Execution.objects.get(pk=ok.pk).steps_taken == 1


def test_a_batch_with_one_step_taken_over_writes_none_of_it() -> None:
    version = services.flow_create(document=flow_doc([task("a"), task("b")], flow_id="both"))
    (e1, s1), (e2, s2) = _running_step(version.pk), _running_step(version.pk)
    TaskRun.objects.filter(pk=s2.pk).update(status="LOST")
    now = timezone.now()
    closes = {
        s.pk: transitions.closed(
            TaskRunStatus.SUCCESS,
            now,
            result=None,
            error="",
            traceback="",
            duration=0.0,
            route="a -> b",
        )
        for s in (s1, s2)
    }
    written = transitions.record_in_one(
        [(e1.id, s1.pk, 100), (e2.id, s2.pk, 100)], closes,
        {e1.id: {"current_task": "b"}, e2.id: {"current_task": "b"}}, [], [], [], me="w1",
    )  # fmt: skip
    assert written is False
    assert TaskRun.objects.get(pk=s1.pk).status == "RUNNING"  # the other step: untouched too
    assert Execution.objects.get(pk=e1.pk).steps_taken == 0


def test_the_statement_is_prepared_once_per_connection() -> None:
    _run_statements(3)  # watched: sent plain; the next run is not
    version = services.flow_create(document=flow_doc([task("a"), task("b")], flow_id="prep"))
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id)
    assert engine.run_inline(execution.id).status == "COMPLETED"
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert [sql for sql in prepared if sql.startswith("WITH x AS")]


def test_without_prepared_statements_the_record_is_planned_each_time(settings) -> None:
    # Behind a pooler that cannot keep them (FLOW_PG_PREPARED=0): the same one statement, sent
    # without preparing, on a connection that has prepared nothing.
    connection.close()
    settings.FLOW_PG_PREPARED = False
    version = services.flow_create(document=flow_doc([task("a"), task("b")], flow_id="plain"))
    execution = services.execution_create(flow_version=version)
    services.execution_start(execution_id=execution.id)
    assert engine.run_inline(execution.id).status == "COMPLETED"
    assert TaskRun.objects.filter(execution=execution, status="SUCCESS").count() == 2
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone()[0] == 0


def test_a_batch_of_several_steps_is_one_statement_too() -> None:
    version = services.flow_create(document=flow_doc([task("a"), task("b")], flow_id="many"))
    pairs = [_running_step(version.pk) for _ in range(3)]
    now = timezone.now()
    closes = {
        s.pk: transitions.closed(
            TaskRunStatus.SUCCESS,
            now,
            result={"n": i},
            error="",
            traceback="",
            duration=0.0,
            route="a -> b",
        )
        for i, (_, s) in enumerate(pairs)
    }
    nexts = [
        transitions.new_step(e.id, s, now, seq=2, claimed_by="w1", lease=timedelta(seconds=6))
        for e, s in pairs
    ]
    with CaptureQueriesContext(connection) as sent:
        written = transitions.record_in_one(
            [(e.id, s.pk, 100) for e, s in pairs], closes,
            {e.id: {"current_task": "b"} for e, _ in pairs}, nexts, [], [], me="w1",
        )  # fmt: skip
    assert written is True
    assert len(sent.captured_queries) == 1
    for i, ((execution, step), nxt) in enumerate(zip(pairs, nexts, strict=True)):
        assert TaskRun.objects.get(pk=step.pk).result == {"n": i}
        assert TaskRun.objects.get(pk=nxt.pk).execution_id == execution.id  # keys in order
        assert Execution.objects.get(pk=execution.pk).steps_taken == 1
