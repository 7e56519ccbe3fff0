"""Every URL under /api/ and /flow/ answers in the one JSON error shape: unknown paths are 404,
known paths with a method they do not take are 405 with an Allow header, with DEBUG off and
on (as under `make run`), and a trailing slash is optional on every endpoint."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from flows import services
from tests.factories import error_body, flow_doc, sample_flow, task

METHODS = ["get", "post", "put", "delete", "patch"]


@pytest.fixture(params=[False, True], ids=["debug_off", "debug_on"])
def debug(request: Any, settings: Any) -> bool:
    settings.DEBUG = request.param
    return request.param


@pytest.fixture
def admin(client_as: Any) -> Any:
    return client_as("admin")


def call(client: Any, method: str, path: str) -> Any:
    if method in ("post", "put", "patch"):
        return getattr(client, method)(path, {}, format="json")
    return getattr(client, method)(path)


# --- unknown paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/api/",
        "/api/nope",
        "/api/nope/",
        "/api/flows/test_flow/nope/",
        "/api/flows/test_flow/versions/latest",
        "/flow",
        "/flow/",
        "/flow/create/extra",
        "/flow/nope/x/y",
    ],
)
def test_an_unknown_path_is_404_in_the_error_shape(admin, debug, method, path):
    body = error_body(call(admin, method, path), 404)

    assert body["code"] == "not_found"
    assert path in body["detail"]


def test_an_unknown_path_is_404_json_without_credentials_too(anon_client, db, debug):
    body = error_body(anon_client.post("/api/nope", {}, format="json"), 404)

    assert body["code"] == "not_found"


def test_pages_outside_the_api_keep_their_html_404(admin, settings):
    settings.DEBUG = False

    response = admin.get("/flowsy/nope")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


# --- known paths, wrong methods ----------------------------------------------------------------
EXECUTION = "6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01"
WRONG_METHODS = [
    ("get", "/flow/create", "POST"),
    ("put", "/flow/execute", "POST"),
    ("post", f"/flow/{EXECUTION}/status", "GET"),
    ("patch", f"/flow/{EXECUTION}", "DELETE"),
    ("post", "/health", "GET"),
    ("delete", "/api/flows/", "POST"),
    ("patch", "/api/flows/test_flow/", "PUT"),
    ("put", "/api/executions/", "GET"),
    ("get", f"/api/executions/{EXECUTION}/cancel/", "POST"),
    ("delete", "/api/task-types/", "GET"),
    ("post", "/api/schema/", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
def test_a_method_a_path_does_not_take_is_405_in_the_error_shape_with_allow(
    admin, debug, method, path, allowed
):
    services.flow_create(document=flow_doc([task("a")]))

    response = call(admin, method, path)

    body = error_body(response, 405)
    assert body["code"] == "method_not_allowed"
    assert method.upper() in body["detail"]
    assert allowed in [m.strip() for m in response["Allow"].split(",")]


# --- trailing slashes --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/flows", "/api/flows/", "/api/flows/test_flow"])
def test_resource_api_paths_answer_with_or_without_a_trailing_slash(admin, debug, path):
    services.flow_create(document=flow_doc([task("a")]))

    response = admin.get(path)

    assert response.status_code == 200, response.content[:300]


def test_a_flow_is_created_by_a_post_without_the_trailing_slash(admin, debug):
    response = admin.post("/api/flows", flow_doc([task("a")]), format="json")

    assert response.status_code == 201, response.content[:300]
    assert response.json()["id"] == "test_flow"


def test_an_execution_is_started_and_cancelled_without_trailing_slashes(admin, debug):
    services.flow_create(document=flow_doc([task("a")]))

    started = admin.post("/api/flows/test_flow/executions", {}, format="json")
    cancelled = admin.post(f"/api/executions/{started.json()['id']}/cancel")

    assert (started.status_code, cancelled.status_code) == (201, 200)
    assert cancelled.json()["status"] == "CANCELLED"


def test_the_seed_endpoints_answer_with_a_trailing_slash_too(admin, debug):
    created = admin.post("/flow/create/", sample_flow(), format="json")
    execution_id = created.json()["execution_id"]

    executed = admin.post("/flow/execute/", {"execution_id": execution_id}, format="json")
    status = admin.get(f"/flow/{execution_id}/status/")
    deleted = admin.delete(f"/flow/{execution_id}/")

    assert created.status_code == 200, created.content[:300]
    assert (executed.status_code, status.status_code, deleted.status_code) == (200, 200, 200)
    assert admin.get("/health/").status_code == 200


def test_the_schema_answers_with_or_without_its_trailing_slash(anon_client, db, debug):
    for path in ("/api/schema", "/api/schema/"):
        response = anon_client.get(path, {"format": "json"})
        assert response.status_code == 200, path


def test_an_unknown_execution_under_a_slashed_seed_path_is_404_naming_it(admin, debug):
    missing = uuid.uuid4()

    body = error_body(admin.get(f"/flow/{missing}/status/"), 404)

    assert str(missing) in body["detail"]
