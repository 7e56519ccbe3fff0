"""Hostile input to the resource API gets a 4xx in the one error shape, never a 500, on every
database the project supports (PostgreSQL refuses NUL characters that SQLite stores)."""

from __future__ import annotations

from typing import Any

import pytest

from flows import services
from flows.models import Execution
from tests.factories import error_body, flow_doc, task


@pytest.fixture
def admin(client_as: Any) -> Any:
    services.flow_create(document=flow_doc([task("a")]))
    return client_as("admin")


@pytest.mark.parametrize(
    "body",
    [
        {"input": {"note": "nul\u0000here"}},
        {"input": {"key\u0000": 1}},
        {"input": {"a": ["\u0000"]}},
    ],
)
def test_an_input_with_a_nul_character_is_400_on_the_input_field(admin, body):
    response = admin.post("/api/flows/test_flow/executions/", body, format="json")

    assert [e["field"] for e in error_body(response, 400)["errors"]] == ["input"]
    assert not Execution.objects.exists()


def test_an_idempotency_key_with_control_characters_is_400(admin):
    response = admin.post(
        "/api/flows/test_flow/executions/", {}, format="json", HTTP_IDEMPOTENCY_KEY="a\x00b"
    )

    assert error_body(response, 400)["errors"][0]["field"] == "Idempotency-Key"
    assert not Execution.objects.exists()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/flows/a%00b/"),
        ("put", "/api/flows/a%00b/"),
        ("delete", "/api/flows/a%00b/"),
        ("get", "/api/flows/a%00b/versions/"),
        ("post", "/api/flows/a%00b/executions/"),
        ("get", "/api/executions/a%00b/"),
        ("get", "/api/task-types/a%00b/"),
    ],
)
def test_a_nul_character_in_an_id_is_404(admin, method, path):
    error_body(getattr(admin, method)(path, {}, format="json"), 404)


@pytest.mark.parametrize(
    "query", [{"search": "a\x00b"}, {"ordering": "name\x00"}, {"page_size": "\x00"}]
)
def test_a_nul_character_in_a_flow_list_query_is_never_a_server_error(admin, query):
    assert admin.get("/api/flows/", query).status_code in (200, 400)


@pytest.mark.parametrize("query", [{"flow": "a\x00b"}, {"status": "\x00"}])
def test_a_nul_character_in_an_execution_filter_is_400(admin, query):
    error_body(admin.get("/api/executions/", query), 400)


@pytest.mark.parametrize(
    "document",
    [
        flow_doc([task("a", "print", message="nul\u0000")]),
        flow_doc([task("a")], description="nul\u0000"),
        flow_doc([{"name": "a", "task_type": "noop", "parameters": {"k\u0000": 1}}]),
    ],
)
def test_a_flow_document_with_a_nul_character_is_refused_not_stored(admin, document):
    response = admin.post("/api/flows/", document, format="json")

    error_body(response, 400)


def test_a_path_that_no_route_matches_is_404_json(admin):
    body = error_body(admin.get("/api/flows/a/b/c/d/"), 404)

    assert body["detail"] == "no endpoint at /api/flows/a/b/c/d/"


def test_options_is_405_in_the_error_shape(admin):
    error_body(admin.options("/api/flows/"), 405)
