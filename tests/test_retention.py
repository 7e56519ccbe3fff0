"""Retention: `manage.py purge_executions`, the executions_purge service and its schedule."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

from flows import jobs, services
from flows.management.commands.purge_executions import parse_age
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun
from tests.factories import failing, flow_doc, run_flow, start_execution, task

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def finished(status: str = "COMPLETED", *, age_days: float = 40) -> Execution:
    """A finished execution (steps and log lines included) that ended ``age_days`` ago."""
    doc = flow_doc([failing("a")] if status == "FAILED" else [task("a"), task("b")])
    execution = run_flow(doc)
    assert execution.status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)
    at = timezone.now() - timedelta(days=age_days)
    Execution.objects.filter(pk=execution.pk).update(status=status, ended_at=at, created_at=at)
    return execution


def in_flight(status: str, *, age_days: float = 40) -> Execution:
    """An execution in ``status`` created ``age_days`` ago that has not ended."""
    execution = start_execution(flow_doc([task("a")]))
    at = timezone.now() - timedelta(days=age_days)
    Execution.objects.filter(pk=execution.pk).update(status=status, created_at=at, ended_at=None)
    return execution


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_executions", *args, stdout=out)
    return out.getvalue()


def remaining() -> set[Any]:
    return set(Execution.objects.values_list("pk", flat=True))


def test_old_finished_executions_go_with_their_steps_and_log_lines() -> None:
    old = [finished("COMPLETED"), finished("FAILED"), finished("CANCELLED")]
    recent = finished("COMPLETED", age_days=5)
    assert TaskRun.objects.filter(execution__in=old).exists()
    assert ExecutionEvent.objects.filter(execution__in=old).exists()

    output = purge("--older-than", "30d")

    assert remaining() == {recent.pk}
    assert not TaskRun.objects.filter(execution_id__in=[e.pk for e in old]).exists()
    assert not ExecutionEvent.objects.filter(execution_id__in=[e.pk for e in old]).exists()
    assert TaskRun.objects.filter(execution=recent).count() == 2
    assert "Deleted 3 executions" in output


@pytest.mark.parametrize("status", ["QUEUED", "RUNNING", "PAUSED"])
def test_executions_in_flight_stay_however_old(status: str) -> None:
    running = in_flight(status, age_days=400)
    finished("COMPLETED")

    purge("--older-than", "1m")

    assert remaining() == {running.pk}
    assert TaskRun.objects.filter(execution=running).exists()


@pytest.mark.parametrize("status", ["QUEUED", "RUNNING", "PAUSED", "running"])
def test_asking_for_an_in_flight_status_is_refused(status: str) -> None:
    in_flight("RUNNING")
    with pytest.raises(CommandError, match="cannot purge executions in status"):
        purge("--older-than", "30d", "--status", status)
    assert Execution.objects.count() == 1


def test_the_age_counts_from_the_end_not_the_creation() -> None:
    long_running = finished("COMPLETED", age_days=5)
    Execution.objects.filter(pk=long_running.pk).update(
        created_at=timezone.now() - 90 * DAY  # created long ago, ended five days ago
    )
    purge("--older-than", "30d")
    assert remaining() == {long_running.pk}


def test_status_filter_deletes_only_the_named_statuses() -> None:
    failed = finished("FAILED")
    cancelled = finished("CANCELLED")
    completed = finished("COMPLETED")

    purge("--older-than", "30d", "--status", "FAILED", "--status", "CANCELLED")

    assert remaining() == {completed.pk}
    assert failed.pk not in remaining() and cancelled.pk not in remaining()


def test_never_started_executions_go_only_when_asked_for_by_name() -> None:
    created = in_flight("CREATED")
    purge("--older-than", "30d")
    assert remaining() == {created.pk}

    purge("--older-than", "30d", "--status", "CREATED")
    assert remaining() == set()


def test_it_deletes_in_batches_of_the_given_size() -> None:
    for _ in range(5):
        finished("COMPLETED")
    batches: list[int] = []

    deleted = services.executions_purge(
        older_than=30 * DAY,
        statuses=None,
        batch_size=2,
        on_batch=lambda executions, steps, events: batches.append(executions),
    )

    assert deleted == 5
    assert batches == [2, 2, 1]
    assert Execution.objects.count() == 0


def test_the_command_reports_each_batch_when_verbose() -> None:
    for _ in range(5):
        finished("COMPLETED")
    out = StringIO()
    call_command(
        "purge_executions", "--older-than", "30d", "--batch-size", "2", verbosity=2, stdout=out
    )
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split(",")[0].strip() for line in lines[:3]] == [
        "2 executions",
        "2 executions",
        "1 executions",
    ]
    assert "Deleted 5 executions, 10 steps" in lines[-1]


def test_dry_run_counts_and_deletes_nothing() -> None:
    finished("COMPLETED")
    finished("FAILED")
    finished("COMPLETED", age_days=1)
    before = (Execution.objects.count(), TaskRun.objects.count(), ExecutionEvent.objects.count())

    output = purge("--older-than", "30d", "--dry-run")

    assert "would delete 2 executions, 3 steps" in output
    after = (Execution.objects.count(), TaskRun.objects.count(), ExecutionEvent.objects.count())
    assert after == before


def test_a_rerun_outlives_the_execution_it_reran() -> None:
    original = finished("COMPLETED")
    rerun = services.execution_rerun(execution_id=original.pk)

    purge("--older-than", "30d")

    rerun.refresh_from_db()
    assert rerun.rerun_of_id is None
    assert remaining() == {rerun.pk}


@pytest.mark.parametrize("age", ["30", "30x", "d", "0d", "-1d", "1.5d", "30 days", ""])
def test_bad_ages_are_refused_with_a_clear_message(age: str) -> None:
    finished("COMPLETED")
    with pytest.raises(CommandError, match="--older-than"):
        purge("--older-than", age)
    assert Execution.objects.count() == 1


@pytest.mark.parametrize(
    ("age", "expected"),
    [("30d", 30 * DAY), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90))],
)
def test_ages_in_days_hours_and_minutes(age: str, expected: timedelta) -> None:
    assert parse_age(age) == expected


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(CommandError, match="--batch-size"):
        purge("--older-than", "30d", "--batch-size", "0")


# --- the daily schedule -----------------------------------------------------------------------
def purge_schedules() -> list[Schedule]:
    return list(Schedule.objects.filter(name=services.PURGE_SCHEDULE_NAME))


def test_no_purge_schedule_by_default(settings: Any) -> None:
    settings.FLOW_PURGE_AFTER_DAYS = 0
    call_command("migrate", verbosity=0)
    assert purge_schedules() == []


def test_migrate_creates_updates_and_removes_the_schedule(settings: Any) -> None:
    settings.FLOW_PURGE_AFTER_DAYS = 30
    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)  # idempotent: still one schedule
    [schedule] = purge_schedules()
    assert schedule.func == "flows.jobs.purge_executions"
    assert schedule.schedule_type == Schedule.DAILY
    assert schedule.kwargs == "days=30"

    settings.FLOW_PURGE_AFTER_DAYS = 7
    call_command("migrate", verbosity=0)
    [schedule] = purge_schedules()
    assert schedule.kwargs == "days=7"

    settings.FLOW_PURGE_AFTER_DAYS = 0
    call_command("migrate", verbosity=0)
    assert purge_schedules() == []


def test_the_scheduled_job_purges_finished_executions_older_than_its_days() -> None:
    old = finished("FAILED", age_days=10)
    recent = finished("COMPLETED", age_days=3)
    running = in_flight("RUNNING", age_days=10)

    jobs.purge_executions(days=7)

    assert old.pk not in remaining()
    assert remaining() == {recent.pk, running.pk}
