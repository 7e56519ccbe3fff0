"""Engine controls and schedules in the operator pages: the same services, as buttons."""

import pytest

from flows import services
from flows.models import ExecutionStatus, FlowSchedule
from tests.factories import failing, flow_doc, run_flow, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, alice):
    client.force_login(alice)
    return client


def page(client, execution):
    return client.get(f"/executions/{execution.id}/").content.decode()


def test_a_queued_execution_offers_pause_and_pausing_it_shows_paused(operator):
    execution = start_execution(flow_doc([task("a"), task("b")]))
    assert "Pause</button>" in page(operator, execution)

    response = operator.post(f"/executions/{execution.id}/pause", follow=True)

    assert response.status_code == 200
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.PAUSED
    text = response.content.decode()
    assert "Resume</button>" in text
    assert "Pause</button>" not in text


def test_resume_continues_a_paused_execution(operator):
    execution = start_execution(flow_doc([task("a"), task("b")]))
    services.execution_pause(execution_id=execution.id)

    operator.post(f"/executions/{execution.id}/resume")

    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED


def test_a_failed_execution_offers_redrive_and_redriving_queues_it_again(operator):
    execution = run_flow(flow_doc([failing("a")]))
    assert "Redrive</button>" in page(operator, execution)

    operator.post(f"/executions/{execution.id}/redrive")

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED
    assert execution.redrive_count == 1


def test_redriving_a_completed_execution_is_refused_with_a_message(operator):
    execution = run_flow(flow_doc([task("a")]))
    assert "Redrive</button>" not in page(operator, execution)

    response = operator.post(f"/executions/{execution.id}/redrive", follow=True)

    assert "only a FAILED or CANCELLED execution can be redriven" in response.content.decode()
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_schedule_is_added_paused_and_deleted_from_the_flow_page(operator):
    flow_id = services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id
    assert "Not scheduled" in operator.get(f"/flows/{flow_id}/").content.decode()

    operator.post(
        f"/flows/{flow_id}/schedule",
        {"action": "save", "cron": "*/15 * * * *", "enabled": "on", "input": '{"n": 2}'},
    )
    schedule = FlowSchedule.objects.get(flow_id=flow_id)
    assert (schedule.cron, schedule.enabled, schedule.input) == ("*/15 * * * *", True, {"n": 2})
    assert (
        "Runs on <code>*/15 * * * *</code>" in operator.get(f"/flows/{flow_id}/").content.decode()
    )

    operator.post(f"/flows/{flow_id}/schedule", {"action": "save", "cron": "*/15 * * * *"})
    assert not FlowSchedule.objects.get(flow_id=flow_id).enabled

    operator.post(f"/flows/{flow_id}/schedule", {"action": "delete"})
    assert not FlowSchedule.objects.exists()


def test_a_bad_cron_expression_is_explained_and_nothing_is_stored(operator):
    flow_id = services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id

    response = operator.post(
        f"/flows/{flow_id}/schedule", {"action": "save", "cron": "every day"}, follow=True
    )

    assert "cron" in response.content.decode()
    assert "*/15 * * * *" in response.content.decode()
    assert not FlowSchedule.objects.exists()


def test_engine_controls_need_a_login(client):
    execution = start_execution(flow_doc([task("a")]))
    response = client.post(f"/executions/{execution.id}/pause")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED
