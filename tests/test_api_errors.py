"""Bad and hostile input gets a 4xx that says what to fix, never a 500 or a half-written row;
everything but /health and the docs needs a token or a session (with its CSRF token)."""

from __future__ import annotations

import json
import secrets
import string
import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from flows import services
from flows.models import Flow
from tests.factories import flow_doc, sample_flow, stored_counts, task


def post_raw(client: APIClient, path: str, body: str | bytes, content_type="application/json"):
    return client.post(path, body, content_type=content_type)


def assert_error_shape(response, status_code: int) -> dict:
    assert response.status_code == status_code, response.content[:500]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}
    assert body["detail"]
    assert "Traceback" not in body["detail"]
    return body


# --- Malformed bodies --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/flow/create", "/flow/execute"])
def test_malformed_json_is_400_saying_it_is_a_json_parse_error(api, path):
    body = assert_error_shape(post_raw(api, path, '{"id": "x", "tasks": [}'), 400)

    assert body["detail"].startswith("JSON parse error")
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize("path", ["/flow/create", "/flow/execute"])
def test_json_nested_too_deeply_is_400_not_a_server_error(api, path):
    deep = "[" * 50_000 + "]" * 50_000

    body = assert_error_shape(post_raw(api, path, deep), 400)

    assert "nested too deeply" in body["detail"]


def test_a_document_nested_near_the_parser_limit_is_stored_or_refused_cleanly(api):
    # Deep enough that parsing may work but storing the parameters may not: either way no 500.
    for depth in (200, 600, 900, 990):
        deep = "[" * depth + "1" + "]" * depth
        body = (
            '{"id": "deep", "tasks": [{"name": "a", "task_type": "fetch_data", '
            f'"parameters": {{"deep": {deep}}}}}]}}'
        )

        response = post_raw(api, "/flow/create", body)

        assert response.status_code in (200, 400), (depth, response.content[:300])


@pytest.mark.parametrize("body", ["[1, 2, 3]", '"a flow"', "42", "null", "true"])
def test_create_with_json_that_is_not_an_object_is_400(api, body):
    response = assert_error_shape(post_raw(api, "/flow/create", body), 400)

    assert "must be a JSON object" in response["detail"]
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize("body", ["[1, 2, 3]", '"an id"', "42"])
def test_execute_with_json_that_is_not_an_object_is_400(api, body):
    response = assert_error_shape(post_raw(api, "/flow/execute", body), 400)

    assert "Expected a dictionary" in response["detail"]


LIST_BODY_PATHS = [
    "/flow/create",
    "/flow/execute",
    "/api/flows/",
    "/api/flows/validate/",
    "/api/flows/test_flow/executions/",
]


@pytest.mark.parametrize("path", LIST_BODY_PATHS)
def test_a_list_body_is_refused_with_a_message_that_starts_with_the_problem(api, path):
    services.flow_create(document=flow_doc([task("a")]))

    response = post_raw(api, path, "[1, 2]")

    body = response.json()
    messages = [body["errors"][0]["message"]]
    if response.status_code != 200:  # validate answers 200 with the report
        body = assert_error_shape(response, 400)
        messages.append(body["detail"].removeprefix("Failed to create flow: "))
    for message in messages:
        assert message[0].isalpha(), message
        assert ": :" not in message and not message.startswith(":")
        assert "dictionary" in message or "JSON object" in message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/flow/create"),
        ("post", "/flow/execute"),
        ("post", "/api/flows/"),
        ("put", "/api/flows/test_flow/"),
        ("post", "/api/flows/validate/"),
        ("post", "/api/flows/test_flow/executions/"),
    ],
)
def test_a_body_without_a_content_type_is_415_asking_for_json(api, method, path):
    services.flow_create(document=flow_doc([task("a")]))
    before = stored_counts()

    response = api.generic(method.upper(), path, json.dumps(sample_flow()), content_type="")

    body = assert_error_shape(response, 415)
    assert body["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in body["detail"]
    assert stored_counts() == before


def test_create_with_an_empty_body_is_400_listing_the_required_fields(api):
    body = assert_error_shape(post_raw(api, "/flow/create", ""), 400)

    assert {e["field"] for e in body["errors"]} == {"id", "tasks"}


def test_create_with_nan_in_the_document_is_400(api):
    body = (
        '{"id": "x", "tasks": [{"name": "a", "task_type": "fetch_data", '
        '"parameters": {"failure_rate": NaN}}]}'
    )

    response = assert_error_shape(post_raw(api, "/flow/create", body), 400)

    assert "JSON parse error" in response["detail"]
    assert stored_counts() == (0, 0, 0)


def test_a_form_encoded_body_is_415_asking_for_json(api):
    response = post_raw(
        api, "/flow/create", "id=x", content_type="application/x-www-form-urlencoded"
    )

    body = assert_error_shape(response, 415)
    assert "application/x-www-form-urlencoded" in body["detail"]
    assert "Content-Type: application/json" in body["detail"]


def test_a_body_over_the_upload_limit_is_413_naming_the_limit(api):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    document = flow_doc([task("a")], description="x" * (limit + 1))

    response = post_raw(api, "/flow/create", json.dumps(document))

    body = assert_error_shape(response, 413)
    assert str(limit) in body["detail"]
    assert stored_counts() == (0, 0, 0)


def test_a_document_over_the_flow_size_limit_but_under_the_upload_limit_is_400(api, settings):
    settings.FLOW_MAX_DOCUMENT_BYTES = 2048
    document = flow_doc([task(f"task_{i}") for i in range(60)])

    body = assert_error_shape(api.post("/flow/create", document, format="json"), 400)

    assert "the limit is 2048" in body["detail"]
    assert stored_counts() == (0, 0, 0)


# --- Wrong types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tasks": "task1"}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"tasks": [["a", "noop"]]}, "tasks[0]"),
        ({"tasks": [{"name": 7, "task_type": "noop"}]}, "tasks[0].name"),
        ({"tasks": [{"name": "a", "task_type": "noop", "parameters": [1]}]}, "tasks[0].parameters"),
        (
            {"tasks": [task("a", "fetch_data", failure_rate="x")]},
            "tasks[0].parameters.failure_rate",
        ),
        ({"conditions": {"source_task": "a"}}, "conditions"),
        ({"max_steps": "10"}, "max_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"name": ["list"]}, "name"),
        ({"start_task": 1}, "start_task"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_a_field_of_the_wrong_type_is_400_naming_the_field(api, change, field):
    document = {**flow_doc([task("a")]), **change}

    body = assert_error_shape(api.post("/flow/create", document, format="json"), 400)

    assert field in [e["field"] for e in body["errors"]]
    assert stored_counts() == (0, 0, 0)


def test_an_invalid_new_version_leaves_the_stored_flow_as_it_was(api):
    api.post("/flow/create", flow_doc([task("a")]), format="json")
    before = stored_counts()

    response = api.post("/flow/create", flow_doc([task("a", "no_such_type")]), format="json")

    assert response.status_code == 400
    assert stored_counts() == before
    assert Flow.objects.get(pk="test_flow").version == 1


# --- Hostile strings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "x" * 10_000}, "id"),
        ({"id": "<script>alert(1)</script>"}, "id"),
        ({"id": "x'; DROP TABLE flows_flow; --"}, "id"),
        ({"id": "../../etc/passwd"}, "id"),
        ({"name": "n" * 100_000}, "name"),
        ({"tasks": [task("a" * 5_000)]}, "tasks[0].name"),
        ({"tasks": [task("bad\x00name")]}, "tasks[0].name"),
        ({"tasks": [task("line\nbreak")]}, "tasks[0].name"),
        ({"tasks": [task("a", "../../os")]}, "tasks[0].task_type"),
        ({"tasks": [task("a", "noop'; DROP TABLE x; --")]}, "tasks[0].task_type"),
    ],
)
def test_a_hostile_string_where_it_is_not_allowed_is_400_and_writes_nothing(api, change, field):
    document = {**flow_doc([task("a")]), **change}

    body = assert_error_shape(api.post("/flow/create", document, format="json"), 400)

    assert field in [e["field"] for e in body["errors"]]
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "name",
    ["<script>alert(1)</script>", "Robert'); DROP TABLE flows_flow; --", "Ünïcödé ✓ 流程"],
)
def test_free_text_names_are_stored_and_returned_verbatim_as_json(api, name):
    created = api.post("/flow/create", flow_doc([task("a")], name=name), format="json")

    assert created.status_code == 200
    assert created["Content-Type"] == "application/json"
    status = api.get(f"/flow/{created.json()['execution_id']}/status")
    assert status.json()["flow_name"] == name
    assert Flow.objects.get(pk="test_flow").name == name


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "bad\x00name"}, "name"),
        ({"name": "bell\x07"}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"description": "esc\x1b[31m"}, "description"),
        ({"tasks": [task("a", "print", message="nul\x00")]}, "tasks[0].parameters.message"),
    ],
)
def test_control_characters_in_free_text_are_400_naming_the_field(api, change, field):
    document = {**flow_doc([task("a")]), **change}

    body = assert_error_shape(api.post("/flow/create", document, format="json"), 400)

    assert field in [e["field"] for e in body["errors"]]
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "execution_id",
    ["x" * 5_000, "'; DROP TABLE flows_execution; --", "<script>", "%00", "00000000-0000"],
)
def test_hostile_ids_in_the_path_are_404_json(api, execution_id):
    for response in (
        api.get(f"/flow/{execution_id}/status"),
        api.delete(f"/flow/{execution_id}"),
    ):
        assert_error_shape(response, 404)


@pytest.mark.parametrize(
    "execution_id", [True, 1, -1, 2**200, 1.5, ["x"], {"id": "x"}, "x" * 5_000, "<script>"]
)
def test_execute_with_a_non_uuid_of_any_type_is_400(api, execution_id):
    response = api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    body = assert_error_shape(response, 400)
    assert body["errors"] == [
        {"field": "execution_id", "message": "must be a UUID, as returned by POST /flow/create"}
    ]


def test_wrong_methods_are_405_json(api):
    assert_error_shape(api.get("/flow/create"), 405)
    assert_error_shape(api.get("/flow/execute"), 405)
    assert_error_shape(api.post(f"/flow/{uuid.uuid4()}/status"), 405)
    assert_error_shape(api.get(f"/flow/{uuid.uuid4()}"), 405)


# --- Authentication ----------------------------------------------------------------------------
def _seed_requests(execution_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("post", "/flow/create", sample_flow()),
        ("post", "/flow/execute", {"execution_id": execution_id}),
        ("get", f"/flow/{execution_id}/status", None),
        ("delete", f"/flow/{execution_id}", None),
    ]


@pytest.mark.parametrize("index", range(4), ids=["create", "execute", "status", "delete"])
def test_anonymous_requests_are_401_json_and_change_nothing(api, anon_client, index):
    execution_id = api.post("/flow/create", sample_flow(), format="json").json()["execution_id"]
    before = stored_counts()
    method, path, body = _seed_requests(execution_id)[index]

    response = getattr(anon_client, method)(path, body, format="json")

    payload = assert_error_shape(response, 401)
    assert payload["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Token")
    assert stored_counts() == before
    assert api.get(f"/flow/{execution_id}/status").json()["status"] == "CREATED"


def bearer_client(user) -> APIClient:
    from rest_framework.authtoken.models import Token

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


def test_a_bearer_token_works_wherever_a_token_does(alice):
    client = bearer_client(alice)

    created = client.post("/flow/create", sample_flow(), format="json")
    execution_id = created.json()["execution_id"]

    assert created.status_code == 200
    assert client.get(f"/flow/{execution_id}/status").status_code == 200
    assert (
        client.post("/flow/execute", {"execution_id": execution_id}, format="json").json()["status"]
        == "QUEUED"
    )
    assert client.get("/api/flows/").json()["count"] == 1
    assert client.get(f"/api/executions/{execution_id}/").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Token"])
def test_a_wrong_token_after_either_scheme_is_401(anon_client, alice, scheme):
    anon_client.credentials(HTTP_AUTHORIZATION=f"{scheme} " + "0" * 40)

    body = assert_error_shape(anon_client.post("/flow/create", sample_flow(), format="json"), 401)

    assert body["detail"] == "Invalid token."
    assert stored_counts() == (0, 0, 0)


def test_a_wrong_token_is_401(anon_client, alice):
    anon_client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    body = assert_error_shape(anon_client.post("/flow/create", sample_flow(), format="json"), 401)

    assert body["detail"] == "Invalid token."
    assert stored_counts() == (0, 0, 0)


def test_a_token_of_a_deactivated_user_is_401(api, alice):
    alice.is_active = False
    alice.save()

    assert_error_shape(api.post("/flow/create", sample_flow(), format="json"), 401)


def test_any_authenticated_user_can_use_the_seed_endpoints(api, bob):
    execution_id = api.post("/flow/create", sample_flow(), format="json").json()["execution_id"]
    client = APIClient()
    client.force_login(bob)

    assert client.get(f"/flow/{execution_id}/status").status_code == 200


# --- Sessions and CSRF -------------------------------------------------------------------------
def _csrf_secret() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@pytest.fixture
def session_client(alice) -> APIClient:
    """alice logged in through a session, with CSRF checks on as in a browser."""
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="alice", password="alice-pass-123")
    return client


def test_a_logged_in_session_can_read_status(api, session_client):
    execution_id = api.post("/flow/create", sample_flow(), format="json").json()["execution_id"]

    assert session_client.get(f"/flow/{execution_id}/status").status_code == 200


@pytest.mark.parametrize("method", ["post_create", "post_execute", "delete"])
def test_a_session_write_without_a_csrf_token_is_403_and_changes_nothing(
    api, session_client, method
):
    execution_id = api.post("/flow/create", sample_flow(), format="json").json()["execution_id"]
    before = stored_counts()

    if method == "post_create":
        response = session_client.post("/flow/create", sample_flow(), format="json")
    elif method == "post_execute":
        response = session_client.post(
            "/flow/execute", {"execution_id": execution_id}, format="json"
        )
    else:
        response = session_client.delete(f"/flow/{execution_id}")

    body = assert_error_shape(response, 403)
    assert "CSRF" in body["detail"]
    assert stored_counts() == before
    assert api.get(f"/flow/{execution_id}/status").json()["status"] == "CREATED"


def test_a_session_write_with_the_csrf_token_is_accepted(session_client):
    secret = _csrf_secret()
    session_client.cookies[settings.CSRF_COOKIE_NAME] = secret

    response = session_client.post(
        "/flow/create", sample_flow(), format="json", HTTP_X_CSRFTOKEN=secret
    )

    assert response.status_code == 200
    assert stored_counts() == (1, 1, 1)
