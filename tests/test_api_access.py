"""Who may call what in the resource API: viewers read, approvers read and answer signals,
operators also start/cancel/rerun, editors change flows, admins do all; anonymous callers get
401 and a role that may not act 403.

One table drives the tests: every endpoint and action, with the least role of the line
viewer < operator < editor < admin that may call it and the status a permitted caller gets.
The approver stands beside that line: a viewer who may also signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from flows import services
from flows.models import Execution, Flow
from tests.conftest import token_client
from tests.factories import error_body, flow_doc, task

ORDER = ["viewer", "operator", "editor", "admin"]


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str
    least_role: str
    ok: int
    body: dict | None = None


CALLS = [
    Call("list flows", "get", "/api/flows/", "viewer", 200),
    Call("retrieve a flow", "get", "/api/flows/test_flow/", "viewer", 200),
    Call("list versions", "get", "/api/flows/test_flow/versions/", "viewer", 200),
    Call("retrieve a version", "get", "/api/flows/test_flow/versions/1/", "viewer", 200),
    Call("validate", "post", "/api/flows/validate/", "viewer", 200, flow_doc([task("a")])),
    Call("list task types", "get", "/api/task-types/", "viewer", 200),
    Call("retrieve a task type", "get", "/api/task-types/noop/", "viewer", 200),
    Call("list executions", "get", "/api/executions/", "viewer", 200),
    Call("retrieve an execution", "get", "/api/executions/{execution}/", "viewer", 200),
    Call("tail events", "get", "/api/executions/{execution}/events/", "viewer", 200),
    Call("start", "post", "/api/flows/test_flow/executions/", "operator", 201, {}),
    Call("cancel", "post", "/api/executions/{execution}/cancel/", "operator", 200),
    Call("rerun", "post", "/api/executions/{execution}/rerun/", "operator", 201),
    # The execution waits for no signal: a caller the permission lets through gets the 409.
    Call("signal", "post", "/api/executions/{execution}/signal/", "operator", 409, {"name": "go"}),
    Call(
        "create a flow", "post", "/api/flows/", "editor", 201, flow_doc([task("a")], flow_id="new")
    ),
    Call("update a flow", "put", "/api/flows/test_flow/", "editor", 200, flow_doc([task("b")])),
    Call("delete a flow", "delete", "/api/flows/idle_flow/", "editor", 204),
]
IDS = [c.name for c in CALLS]


@pytest.fixture
def execution(db: Any) -> Execution:
    """test_flow with one queued execution, and idle_flow with none."""
    services.flow_create(document=flow_doc([task("idle")], flow_id="idle_flow"))
    version = services.flow_create(document=flow_doc([task("a"), task("b")]))
    execution, _ = services.execution_submit(flow_version=version)
    return execution


def send(client: Any, call: Call, execution: Execution) -> Any:
    path = call.path.format(execution=execution.id)
    return getattr(client, call.method)(path, call.body, format="json")


@pytest.mark.parametrize("role", ORDER)
@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_each_role_may_call_exactly_the_endpoints_of_its_level(client_as, execution, call, role):
    client = client_as(role)
    before = (Flow.objects.count(), Execution.objects.count())

    response = send(client, call, execution)

    if ORDER.index(role) >= ORDER.index(call.least_role):
        assert response.status_code == call.ok, response.content[:500]
    else:
        body = error_body(response, 403)
        assert body["code"] == "permission_denied"
        assert "needs permission 'flows." in body["detail"]
        assert (Flow.objects.count(), Execution.objects.count()) == before


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_an_approver_may_read_and_signal_but_nothing_else(client_as, execution, call):
    before = (Flow.objects.count(), Execution.objects.count())

    response = send(client_as("approver"), call, execution)

    if call.least_role == "viewer" or call.name == "signal":
        assert response.status_code == call.ok, response.content[:500]
    else:
        body = error_body(response, 403)
        assert body["code"] == "permission_denied"
        assert (Flow.objects.count(), Execution.objects.count()) == before


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_a_user_in_no_role_is_refused_everything_with_403(client_as, execution, call):
    body = error_body(send(client_as(None), call, execution), 403)

    assert body["code"] == "permission_denied"


@pytest.mark.parametrize("call", CALLS, ids=IDS)
def test_anonymous_callers_get_401_asking_for_a_token(anon_client, execution, call):
    before = (Flow.objects.count(), Execution.objects.count())

    response = send(anon_client, call, execution)

    body = error_body(response, 401)
    assert body["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"
    assert (Flow.objects.count(), Execution.objects.count()) == before


def test_a_bad_token_is_401_not_403(anon_client, execution):
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    body = error_body(anon_client.get("/api/flows/"), 401)

    assert body["code"] == "authentication_failed"


def test_a_logged_in_session_can_read(make_user, client, execution):
    client.force_login(make_user("vera", "viewer"))

    response = client.get("/api/executions/")

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [str(execution.id)]


def test_a_session_write_without_its_csrf_token_is_403_and_starts_nothing(make_user, execution):
    from rest_framework.test import APIClient

    session = APIClient(enforce_csrf_checks=True)
    session.force_login(make_user("olga", "operator"))

    response = session.post("/api/flows/test_flow/executions/", {}, format="json")

    assert "CSRF" in error_body(response, 403)["detail"]
    assert Execution.objects.count() == 1


def test_a_session_write_with_its_csrf_token_starts_an_execution(make_user, execution):
    from django.middleware.csrf import _get_new_csrf_string
    from rest_framework.test import APIClient

    session = APIClient(enforce_csrf_checks=True)
    session.force_login(make_user("olga", "operator"))
    secret = _get_new_csrf_string()
    session.cookies[settings.CSRF_COOKIE_NAME] = secret

    response = session.post(
        "/api/flows/test_flow/executions/", {}, format="json", HTTP_X_CSRFTOKEN=secret
    )

    assert response.status_code == 201
    assert Execution.objects.count() == 2


def test_every_user_with_view_permission_sees_every_execution_not_only_their_own(
    alice, bob, grant, execution
):
    started = token_client(grant(alice, "operator")).post(
        "/api/flows/test_flow/executions/", {}, format="json"
    )

    seen_by_bob = token_client(grant(bob, "viewer")).get("/api/executions/").json()["results"]

    assert started.json()["id"] in [row["id"] for row in seen_by_bob]
    assert {row["created_by"] for row in seen_by_bob} == {"alice", None}


def test_the_token_of_a_deactivated_user_is_401(make_user, execution):
    user = make_user("gone", "viewer")
    client = token_client(user)
    user.is_active = False
    user.save()

    body = error_body(client.get("/api/flows/"), 401)

    assert body["detail"] == "User inactive or deleted."


def test_a_token_authenticates_as_its_own_user_among_many(make_user, execution):
    users = [make_user(f"user{i}", "operator") for i in range(3)]
    clients = [token_client(u) for u in users]

    started = clients[1].post("/api/flows/test_flow/executions/", {}, format="json")

    assert started.json()["created_by"] == "user1"
