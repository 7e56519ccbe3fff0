"""Roles govern the seed-compatible endpoints and the operator pages as they do /api/."""

import pytest

from flows.models import Execution, ExecutionStatus, Flow
from tests.factories import flow_doc, run_flow, sample_flow, start_execution, task

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "allowed"), [("viewer", False), ("operator", False), ("editor", True), ("admin", True)]
)
def test_only_editors_create_flows_through_the_seed_endpoint(client_as, role, allowed):
    response = client_as(role).post("/flow/create", sample_flow(), format="json")
    assert response.status_code == (200 if allowed else 403)
    assert Flow.objects.exists() == allowed
    if not allowed:
        assert "flows.add_flow" in response.json()["detail"]


@pytest.mark.parametrize(("role", "allowed"), [("viewer", False), ("operator", True)])
def test_operators_execute_and_delete_through_the_seed_endpoints(client_as, role, allowed):
    from flows import services

    version = services.flow_create(document=flow_doc([task("a")]))
    execution = services.execution_create(flow_version=version)
    client = client_as(role)

    started = client.post("/flow/execute", {"execution_id": str(execution.id)}, format="json")
    assert started.status_code == (200 if allowed else 403)
    execution.refresh_from_db()
    assert execution.status == (ExecutionStatus.QUEUED if allowed else ExecutionStatus.CREATED)

    deleted = client.delete(f"/flow/{execution.id}")
    assert deleted.status_code == (200 if allowed else 403)
    assert Execution.objects.filter(pk=execution.id).exists() != allowed


def test_any_signed_in_user_polls_a_status(client_as):
    execution = run_flow(flow_doc([task("a")]))
    response = client_as(None).get(f"/flow/{execution.id}/status")
    assert response.status_code == 200
    assert response.json()["status"] == "COMPLETED"


@pytest.fixture
def page_user(client, make_user):
    def login(role):
        client.force_login(make_user("carol", role))
        return client

    return login


def test_a_viewer_sees_the_pages_but_may_not_run_cancel_or_edit(page_user):
    execution = start_execution(flow_doc([task("a")], flow_id="f"))
    client = page_user("viewer")

    assert client.get("/").status_code == 200
    assert client.get("/flows/f/").status_code == 200
    assert client.get(f"/executions/{execution.id}/").status_code == 200

    assert client.post("/flows/f/run", {"input": ""}).status_code == 403
    assert client.post(f"/executions/{execution.id}/cancel").status_code == 403
    assert client.post(f"/executions/{execution.id}/pause").status_code == 403
    assert client.get("/flows/f/edit").status_code == 403
    assert client.get("/flows/new").status_code == 403
    assert Execution.objects.count() == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED


def test_an_operator_runs_and_cancels_but_may_not_edit_flows(page_user):
    start_execution(flow_doc([task("a")], flow_id="f"))
    client = page_user("operator")

    assert client.post("/flows/f/run", {"input": ""}).status_code == 302
    running = Execution.objects.order_by("-created_at").first()
    assert client.post(f"/executions/{running.id}/cancel").status_code == 302
    running.refresh_from_db()
    assert running.status == ExecutionStatus.CANCELLED
    assert client.get("/flows/f/edit").status_code == 403
    assert (
        client.post("/flows/f/schedule", {"action": "save", "cron": "0 * * * *"}).status_code == 403
    )


def test_a_user_with_no_role_is_refused_the_pages(page_user):
    assert page_user(None).get("/flows/").status_code == 403
