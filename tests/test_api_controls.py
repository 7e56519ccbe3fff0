"""Engine controls and schedules on the resource API: actions with the same rules as the pages."""

import pytest

from flows import services
from flows.models import ExecutionStatus, FlowSchedule
from tests.factories import failing, flow_doc, run_flow, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


def url(execution, action):
    return f"/api/executions/{execution.id}/{action}/"


def test_an_operator_pauses_and_resumes_an_execution(client_as):
    execution = start_execution(flow_doc([task("a"), task("b")]))
    api = client_as("operator")

    paused = api.post(url(execution, "pause"))
    assert paused.status_code == 200
    assert paused.json()["status"] == "PAUSED"
    assert paused.json()["pause_requested"] is True

    resumed = api.post(url(execution, "resume"))
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "QUEUED"
    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED


def test_resuming_an_execution_that_is_not_paused_is_409(client_as):
    execution = run_flow(flow_doc([task("a")]))
    response = client_as("operator").post(url(execution, "resume"))
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "only a PAUSED one can resume" in response.json()["detail"]


def test_an_operator_redrives_a_failed_execution_keeping_its_id(client_as):
    execution = run_flow(flow_doc([failing("a")]))
    response = client_as("operator").post(url(execution, "redrive"))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(execution.id)
    assert body["status"] == "QUEUED"
    assert body["redrive_count"] == 1
    assert [s["task_name"] for s in body["steps"]] == ["a", "a"]


def test_redriving_a_completed_execution_is_409_and_changes_nothing(client_as):
    execution = run_flow(flow_doc([task("a")]))
    response = client_as("operator").post(url(execution, "redrive"))
    assert response.status_code == 409
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.redrive_count == 0


@pytest.mark.parametrize("action", ["pause", "resume", "redrive"])
def test_a_viewer_may_not_use_engine_controls(client_as, action):
    execution = start_execution(flow_doc([task("a")]))
    response = client_as("viewer").post(url(execution, action))
    assert response.status_code == 403
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED


@pytest.mark.parametrize("action", ["pause", "resume", "redrive"])
def test_engine_controls_on_an_unknown_execution_are_404(client_as, action):
    response = client_as("operator").post(
        f"/api/executions/6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01/{action}/"
    )
    assert response.status_code == 404


def test_engine_controls_need_credentials(anon_client):
    execution = start_execution(flow_doc([task("a")]))
    assert anon_client.post(url(execution, "pause")).status_code == 401


@pytest.fixture
def flow_id():
    return services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id


def test_an_editor_sets_changes_and_deletes_a_schedule(client_as, flow_id):
    api = client_as("editor")
    path = f"/api/flows/{flow_id}/schedule/"
    assert api.get(path).status_code == 404

    created = api.put(path, {"cron": "*/15 * * * *", "input": {"n": 1}}, format="json")
    assert created.status_code == 200
    assert created.json()["enabled"] is True
    assert created.json()["next_run"] is not None

    paused = api.put(path, {"cron": "0 3 * * *", "enabled": False}, format="json")
    assert paused.json()["enabled"] is False
    assert paused.json()["next_run"] is None
    assert api.get(path).json()["cron"] == "0 3 * * *"

    assert api.delete(path).status_code == 204
    assert not FlowSchedule.objects.exists()


def test_a_bad_cron_expression_is_400_at_its_field(client_as, flow_id):
    response = client_as("editor").put(
        f"/api/flows/{flow_id}/schedule/", {"cron": "whenever"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "cron"
    assert not FlowSchedule.objects.exists()


def test_viewers_read_schedules_and_operators_may_not_change_them(client_as, flow_id):
    services.flow_schedule_set(flow_id=flow_id, cron="0 * * * *")
    path = f"/api/flows/{flow_id}/schedule/"
    assert client_as("viewer").get(path).status_code == 200
    operator = client_as("operator")
    assert operator.put(path, {"cron": "* * * * *"}, format="json").status_code == 403
    assert operator.delete(path).status_code == 403
    assert FlowSchedule.objects.get().cron == "0 * * * *"
