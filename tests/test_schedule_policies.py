"""Schedules' overlap policies and catch-up, with a fake clock (``now``) and the real
database: what runs when a slot is due while the last run goes, and after downtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows import services
from flows.models import Execution, ExecutionStatus, ExecutionTrigger, FlowSchedule
from tests.factories import flow_doc, run_to_end, task

pytestmark = pytest.mark.django_db

HOURLY = "0 * * * *"
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def flow_id() -> str:
    return services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id


def schedule(flow_id: str, *, last_slot_at: datetime = T0, **options: object) -> FlowSchedule:
    """A schedule that has dealt with every slot up to ``last_slot_at``."""
    services.flow_schedule_set(flow_id=flow_id, cron=HOURLY, **options)
    FlowSchedule.objects.update(last_slot_at=last_slot_at)
    return FlowSchedule.objects.get()


def fire(flow_id: str, at: datetime) -> list[datetime]:
    """The scheduler's fire at ``at``: the slots it started."""
    return [e.scheduled_for for e in services.flow_run_scheduled(flow_id=flow_id, now=at)]


def slots_run() -> list[datetime]:
    return list(Execution.objects.order_by("scheduled_for").values_list("scheduled_for", flat=True))


def hours(*n: int) -> list[datetime]:
    return [T0 + timedelta(hours=h) for h in n]


def test_an_on_time_fire_runs_its_slot_once(flow_id) -> None:
    schedule(flow_id)
    assert fire(flow_id, T0 + timedelta(hours=1, seconds=5)) == hours(1)
    assert fire(flow_id, T0 + timedelta(hours=1, seconds=9)) == []  # a redelivered job
    execution = Execution.objects.get()
    assert (execution.trigger, execution.scheduled_for) == (ExecutionTrigger.SCHEDULE, hours(1)[0])


# -- overlap ----------------------------------------------------------------------------------
def test_skip_records_a_skipped_slot_while_the_last_run_goes(flow_id) -> None:
    schedule(flow_id)  # skip is the default
    fire(flow_id, hours(1)[0])
    assert fire(flow_id, hours(2)[0]) == []
    saved = FlowSchedule.objects.get()
    assert (saved.skipped_slots, saved.last_skipped_at) == (1, hours(2)[0])
    run_to_end(Execution.objects.get().id)
    assert fire(flow_id, hours(3)[0]) == hours(3)


def test_buffer_one_keeps_one_slot_and_starts_it_when_the_run_ends(flow_id) -> None:
    schedule(flow_id, overlap="buffer_one")
    fire(flow_id, hours(1)[0])
    assert fire(flow_id, hours(2)[0]) == []
    assert fire(flow_id, hours(3)[0]) == []  # one waits already: this one is skipped
    saved = FlowSchedule.objects.get()
    assert (saved.buffered_slot, saved.skipped_slots) == (hours(2)[0], 1)

    run_to_end(Execution.objects.get().id)
    services.handle_ends()
    assert slots_run() == hours(1, 2)
    assert FlowSchedule.objects.get().buffered_slot is None
    assert Execution.objects.get(scheduled_for=hours(2)[0]).status == ExecutionStatus.QUEUED


def test_allow_starts_the_slot_beside_the_running_one(flow_id) -> None:
    schedule(flow_id, overlap="allow")
    fire(flow_id, hours(1)[0])
    assert fire(flow_id, hours(2)[0]) == hours(2)
    assert Execution.objects.filter(status=ExecutionStatus.QUEUED).count() == 2


def test_a_run_of_another_trigger_does_not_count_as_the_schedule_s(flow_id) -> None:
    schedule(flow_id)
    version = services.flow_create(document=flow_doc([task("a")], flow_id="nightly"))
    services.execution_submit(flow_version=version)  # a manual run, still queued
    assert fire(flow_id, hours(1)[0]) == hours(1)


# -- catch-up ---------------------------------------------------------------------------------
DOWN_UNTIL = T0 + timedelta(hours=5, minutes=20)  # slots 11:00 .. 15:00 were missed


def test_catchup_none_skips_every_missed_slot(flow_id) -> None:
    schedule(flow_id, catchup="none")
    assert fire(flow_id, DOWN_UNTIL) == []
    saved = FlowSchedule.objects.get()
    assert (saved.skipped_slots, saved.last_slot_at) == (5, hours(5)[0])
    assert fire(flow_id, hours(6)[0]) == hours(6)  # and goes on from there


def test_catchup_last_runs_the_latest_missed_slot(flow_id) -> None:
    schedule(flow_id, catchup="last")
    assert fire(flow_id, DOWN_UNTIL) == hours(5)
    assert FlowSchedule.objects.get().skipped_slots == 4


def test_catchup_all_runs_the_missed_slots_within_the_window(flow_id) -> None:
    # A window of 3.5 hours back from 15:20 reaches 12:00: 11:00 is too old.
    schedule(flow_id, catchup="all", overlap="allow", catchup_window_seconds=3 * 3600 + 1800)
    assert fire(flow_id, DOWN_UNTIL) == hours(2, 3, 4, 5)
    assert FlowSchedule.objects.get().skipped_slots == 1


def test_catchup_all_obeys_the_overlap_policy(flow_id) -> None:
    schedule(flow_id, catchup="all", overlap="skip")
    assert fire(flow_id, DOWN_UNTIL) == hours(1)  # the others find it running
    assert FlowSchedule.objects.get().skipped_slots == 4


def test_a_paused_time_is_never_caught_up(flow_id) -> None:
    schedule(flow_id, catchup="all", overlap="allow")
    services.flow_schedule_set(flow_id=flow_id, cron=HOURLY, enabled=False)
    services.flow_schedule_set(flow_id=flow_id, cron=HOURLY, enabled=True)
    assert FlowSchedule.objects.get().last_slot_at > T0  # counted from the enabling


# -- the API and the page ---------------------------------------------------------------------
def test_the_api_takes_and_shows_overlap_and_catchup(api, flow_id) -> None:
    body = {
        "cron": HOURLY,
        "overlap": "buffer_one",
        "catchup": "last",
        "catchup_window_seconds": 600,
    }
    response = api.put(f"/api/flows/{flow_id}/schedule/", body, format="json")
    assert response.status_code == 200, response.content
    shown = api.get(f"/api/flows/{flow_id}/schedule/").json()
    assert {k: shown[k] for k in body} == body
    assert shown["skipped_slots"] == 0


def test_a_schedule_left_without_the_new_fields_keeps_them(api, flow_id) -> None:
    api.put(f"/api/flows/{flow_id}/schedule/", {"cron": HOURLY, "overlap": "allow"}, format="json")
    api.put(f"/api/flows/{flow_id}/schedule/", {"cron": "5 * * * *"}, format="json")
    assert FlowSchedule.objects.get().overlap == "allow"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"overlap": "queue"}, "overlap"),
        ({"catchup": "some"}, "catchup"),
        ({"catchup_window_seconds": 0}, "catchup_window_seconds"),
        ({"catchup_window_seconds": "soon"}, "catchup_window_seconds"),
    ],
)
def test_a_bad_policy_is_a_400_at_its_field(api, flow_id, body, field) -> None:
    response = api.put(f"/api/flows/{flow_id}/schedule/", {"cron": HOURLY, **body}, format="json")
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert not FlowSchedule.objects.exists()


def test_the_flow_page_sets_and_shows_the_policies(client, alice, flow_id) -> None:
    client.force_login(alice)
    client.post(
        f"/flows/{flow_id}/schedule",
        {
            "action": "save",
            "cron": HOURLY,
            "enabled": "on",
            "overlap": "buffer_one",
            "catchup": "all",
            "catchup_window_seconds": "7200",
        },
    )
    saved = FlowSchedule.objects.get()
    assert (saved.overlap, saved.catchup, saved.catchup_window_seconds) == (
        "buffer_one",
        "all",
        7200,
    )
    page = client.get(f"/flows/{flow_id}/").content.decode()
    assert "Overlap <code>buffer_one</code>, catch-up <code>all</code> (window 7200 s)" in page
    assert '<option value="buffer_one" selected>' in page


def test_the_flow_page_explains_a_bad_window_and_stores_nothing(client, alice, flow_id) -> None:
    client.force_login(alice)
    response = client.post(
        f"/flows/{flow_id}/schedule",
        {"action": "save", "cron": HOURLY, "catchup_window_seconds": "0"},
        follow=True,
    )
    assert "catchup_window_seconds" in response.content.decode()
    assert not FlowSchedule.objects.exists()
