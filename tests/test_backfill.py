"""Backfills: a flow's cron slots over a range, planned (dry run) or run at most max_active at
once, with the flow's current version and input; reprocess none / failed / all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from flows import services
from flows.models import Backfill, Execution, ExecutionStatus, ExecutionTrigger, FlowVersion
from tests.factories import flow_doc, run_to_end, task

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SIX_HOURS = T0 + timedelta(hours=5, minutes=30)  # slots 00:00 .. 05:00


def hour(n: int) -> datetime:
    return T0 + timedelta(hours=n)


@pytest.fixture
def flow_id() -> str:
    services.flow_create(
        document=flow_doc([task("a", "print", message="${input.n}")], flow_id="etl")
    )
    services.flow_schedule_set(flow_id="etl", cron="0 * * * *", input={"n": 1})
    return "etl"


def slot_run(flow_id: str, slot: datetime, status: str) -> Execution:
    """A run of ``slot`` that ended ``status`` (as the scheduler would have made it)."""
    execution = services.execution_submit(
        flow_version=_version(flow_id),
        input={"n": 0},
        trigger=ExecutionTrigger.SCHEDULE,
        scheduled_for=slot,
    )[0]
    if status == ExecutionStatus.COMPLETED:
        run_to_end(execution.id)
    else:
        services.execution_cancel(execution_id=execution.id)
    return Execution.objects.get(pk=execution.id)


def _version(flow_id: str) -> FlowVersion:
    return FlowVersion.objects.filter(flow_id=flow_id).order_by("-version").first()


def plan(flow_id: str, **options) -> list[tuple[datetime, str]]:
    _, plans = services.backfill_create(
        flow_id=flow_id, start=T0, end=SIX_HOURS, dry_run=True, **options
    )
    return [(p.slot, p.action) for p in plans]


def test_a_dry_run_lists_every_slot_and_starts_nothing(flow_id) -> None:
    assert plan(flow_id) == [(hour(n), "run") for n in range(6)]
    assert not Execution.objects.exists()
    assert not Backfill.objects.exists()


@pytest.mark.parametrize(
    ("reprocess", "completed", "cancelled"),
    [("none", "skip", "skip"), ("failed", "skip", "rerun"), ("all", "rerun", "rerun")],
)
def test_reprocess_decides_what_happens_to_slots_that_ran(
    flow_id, reprocess, completed, cancelled
) -> None:
    slot_run(flow_id, hour(1), ExecutionStatus.COMPLETED)
    slot_run(flow_id, hour(2), ExecutionStatus.CANCELLED)
    actions = dict(plan(flow_id, reprocess=reprocess))
    assert (actions[hour(0)], actions[hour(1)], actions[hour(2)]) == ("run", completed, cancelled)


def test_a_slot_whose_run_still_goes_is_skipped_even_with_reprocess_all(flow_id) -> None:
    services.execution_submit(
        flow_version=_version(flow_id), trigger=ExecutionTrigger.SCHEDULE, scheduled_for=hour(3)
    )
    assert dict(plan(flow_id, reprocess="all"))[hour(3)] == "skip"


def test_a_real_run_starts_max_active_and_the_rest_as_earlier_ones_end(flow_id) -> None:
    made, plans = services.backfill_create(flow_id=flow_id, start=T0, end=SIX_HOURS, max_active=2)
    runs = list(Execution.objects.filter(backfill=made).order_by("scheduled_for"))
    assert [r.scheduled_for for r in runs] == [hour(n) for n in range(6)]
    assert [r.status for r in runs] == ["QUEUED", "QUEUED", *["CREATED"] * 4]
    assert {r.trigger for r in runs} == {ExecutionTrigger.BACKFILL}
    assert [p.execution for p in plans] == [r.id for r in runs]

    run_to_end(runs[0].id)
    services.handle_ends()
    statuses = dict(Execution.objects.filter(backfill=made).values_list("scheduled_for", "status"))
    assert [statuses[hour(n)] for n in range(6)] == [
        "COMPLETED",
        "QUEUED",
        "QUEUED",
        "CREATED",
        "CREATED",
        "CREATED",
    ]
    # To the end, never more than two at once.
    while waiting := Execution.objects.filter(backfill=made, status="QUEUED").first():
        assert (
            Execution.objects.filter(backfill=made, status__in=["QUEUED", "RUNNING"]).count() <= 2
        )
        run_to_end(waiting.id)
        services.handle_ends()
    assert set(Execution.objects.filter(backfill=made).values_list("status", flat=True)) == {
        "COMPLETED"
    }


def test_a_real_run_uses_the_current_version_and_the_schedule_s_current_input(flow_id) -> None:
    old = slot_run(flow_id, hour(0), ExecutionStatus.CANCELLED)
    services.flow_create(
        document=flow_doc([task("a", "print", message="v2 ${input.n}")], flow_id="etl")
    )
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *", input={"n": 7})
    made, _ = services.backfill_create(
        flow_id=flow_id, start=T0, end=T0, reprocess="failed", max_active=1
    )
    rerun = Execution.objects.get(backfill=made)
    assert (rerun.flow_version.version, rerun.input, rerun.rerun_of_id) == (2, {"n": 7}, old.id)
    assert old.input == {"n": 0}


def test_a_second_backfill_of_the_same_range_runs_nothing_twice(flow_id) -> None:
    services.backfill_create(flow_id=flow_id, start=T0, end=SIX_HOURS, max_active=6)
    _, plans = services.backfill_create(flow_id=flow_id, start=T0, end=SIX_HOURS)
    assert {p.action for p in plans} == {"skip"}
    assert Execution.objects.count() == 6


def test_too_many_slots_are_refused_with_a_400_at_end(api, flow_id) -> None:
    body = {"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z", "dry_run": True}
    response = api.post(f"/api/flows/{flow_id}/backfill/", body, format="json")
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "end"
    assert "more than 1000 slots" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "end"),
        ({"start": "yesterday", "end": "2026-03-01T00:00:00Z"}, "start"),
        (
            {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T05:00:00Z", "max_active": 0},
            "max_active",
        ),
        (
            {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T05:00:00Z", "reprocess": "x"},
            "reprocess",
        ),
    ],
)
def test_a_bad_backfill_is_a_400_at_its_field(api, flow_id, body, field) -> None:
    response = api.post(f"/api/flows/{flow_id}/backfill/", body, format="json")
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]
    assert not Execution.objects.exists()


def test_a_flow_without_a_schedule_cannot_be_backfilled(api) -> None:
    services.flow_create(document=flow_doc([task("a")], flow_id="plain"))
    body = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T05:00:00Z"}
    response = api.post("/api/flows/plain/backfill/", body, format="json")
    assert response.status_code == 400
    assert "has no schedule" in response.json()["errors"][0]["message"]


def test_the_api_answers_the_plan_then_makes_the_runs(api, flow_id) -> None:
    body = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-01T02:00:00Z", "dry_run": True}
    dry = api.post(f"/api/flows/{flow_id}/backfill/", body, format="json")
    assert dry.status_code == 200
    assert dry.json()["counts"] == {"run": 3, "rerun": 0, "skip": 0}
    assert dry.json()["backfill"] is None
    assert [s["action"] for s in dry.json()["slots"]] == ["run"] * 3

    real = api.post(
        f"/api/flows/{flow_id}/backfill/",
        {**body, "dry_run": False, "max_active": 3},
        format="json",
    )
    assert real.status_code == 201, real.content
    ids = [s["execution"] for s in real.json()["slots"]]
    assert Execution.objects.filter(pk__in=ids, status="QUEUED").count() == 3
    shown = api.get(f"/api/executions/{ids[0]}/").json()
    assert shown["scheduled_for"].startswith("2026-03-01T00:00:00")
    assert shown["backfill"] == real.json()["backfill"]


def test_the_command_prints_the_plan_and_runs_it(flow_id) -> None:
    out = StringIO()
    call_command(
        "backfill",
        "etl",
        "--start",
        "2026-03-01T00:00+00:00",
        "--end",
        "2026-03-01T01:00+00:00",
        "--dry-run",
        stdout=out,
    )
    assert out.getvalue().splitlines() == [
        "2026-03-01T00:00:00+00:00  run    never ran",
        "2026-03-01T01:00:00+00:00  run    never ran",
        "dry run: 2 slot(s): 2 run, 0 rerun, 0 skip; nothing started",
    ]
    assert not Execution.objects.exists()
    out = StringIO()
    call_command(
        "backfill",
        "etl",
        "--start",
        "2026-03-01T00:00+00:00",
        "--end",
        "2026-03-01T01:00+00:00",
        "--max-active",
        "2",
        "--reprocess",
        "failed",
        stdout=out,
    )
    assert out.getvalue().splitlines()[-1].endswith(": 2 slot(s): 2 run, 0 rerun, 0 skip")
    assert Execution.objects.filter(trigger="backfill", status="QUEUED").count() == 2


def test_the_command_refuses_a_bad_range_with_the_reason(flow_id) -> None:
    with pytest.raises(CommandError, match="end: must not be before start"):
        call_command("backfill", "etl", "--start", "2026-03-02", "--end", "2026-03-01")


def test_each_reprocess_reruns_the_slot_s_latest_run_and_deleting_one_breaks_nothing(
    flow_id,
) -> None:
    first = slot_run(flow_id, hour(0), ExecutionStatus.CANCELLED)
    made, _ = services.backfill_create(flow_id=flow_id, start=T0, end=T0, reprocess="failed")
    second = Execution.objects.get(backfill=made)
    services.execution_cancel(execution_id=second.id)
    made, plans = services.backfill_create(flow_id=flow_id, start=T0, end=T0, reprocess="failed")
    third = Execution.objects.get(backfill=made)

    assert [p.reason for p in plans] == ["CANCELLED; reprocess failed"]
    assert (second.rerun_of_id, second.slot_attempt) == (first.id, 1)
    assert (third.rerun_of_id, third.slot_attempt) == (second.id, 2)
    services.execution_delete(execution_id=second.id)  # a run in the middle of the chain
    assert dict(plan(flow_id, reprocess="failed"))[hour(0)] == "skip"  # the third still goes


def test_deleting_a_running_backfill_run_starts_the_next(flow_id) -> None:
    made, _ = services.backfill_create(flow_id=flow_id, start=T0, end=hour(2), max_active=1)
    first = Execution.objects.get(backfill=made, status="QUEUED")
    services.execution_delete(execution_id=first.id)  # a deleted run writes no end
    statuses = dict(Execution.objects.filter(backfill=made).values_list("scheduled_for", "status"))
    assert statuses == {hour(1): "QUEUED", hour(2): "CREATED"}


def test_a_waiting_run_its_flow_now_refuses_is_dropped_and_counted(flow_id) -> None:
    made, _ = services.backfill_create(flow_id=flow_id, start=T0, end=hour(2), max_active=1)
    services.execution_cancel(execution_id=Execution.objects.get(backfill=made, status="QUEUED").id)
    # Its task type was removed since: the version the runs wait to start no longer validates.
    FlowVersion.objects.filter(flow_id=flow_id).update(
        definition=flow_doc([task("a", "gone")], flow_id=flow_id)
    )
    services.handle_ends()
    made.refresh_from_db()
    assert made.refused == 2
    assert "cannot start: its flow is no longer valid" in made.last_error
    assert list(Execution.objects.filter(backfill=made).values_list("status", flat=True)) == [
        "CANCELLED"
    ]
