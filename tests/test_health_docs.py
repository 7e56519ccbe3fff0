"""GET /health for load balancers and operators; Swagger UI at /docs and the OpenAPI schema at
/api/schema/, all three without a login."""

from __future__ import annotations

import re
from datetime import datetime
from unittest import mock

import pytest
from django.contrib.staticfiles import finders
from django.db import OperationalError, connection

from flows.api import seed


# --- /health -----------------------------------------------------------------------------------
def test_health_is_healthy_without_credentials(anon_client, db):
    response = anon_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["database"] == "ok"
    assert body["workers"] == 0  # no cluster is running in the test process
    assert datetime.fromisoformat(body["timestamp"])


def test_health_ignores_a_bad_token_so_probes_never_need_one(anon_client, db):
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert anon_client.get("/health").status_code == 200


def test_health_counts_the_worker_clusters_that_report_in(anon_client, db):
    with mock.patch.object(seed.Stat, "get_all", return_value=[object(), object()]):
        body = anon_client.get("/health").json()

    assert body["workers"] == 2


def test_health_stays_healthy_with_zero_workers_when_cluster_status_is_unreadable(anon_client, db):
    with mock.patch.object(seed.Stat, "get_all", side_effect=ConnectionError("cache down")):
        response = anon_client.get("/health")

    assert response.status_code == 200
    assert response.json()["workers"] == 0


def test_health_is_503_with_the_reason_when_the_database_is_unreachable(anon_client, db):
    boom = OperationalError("unable to open database file")
    with mock.patch.object(connection, "cursor", side_effect=boom):
        response = anon_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert "unable to open database file" in body["database"]
    assert body["workers"] == 0


# --- /docs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_swagger_ui_is_served_without_a_login(anon_client, db, path):
    response = anon_client.get(path)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "SwaggerUIBundle" in page
    assert "/api/schema/" in page


def test_swagger_ui_loads_its_assets_from_our_static_files_not_a_cdn(anon_client, db):
    page = anon_client.get("/docs").content.decode()

    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert assets
    external = [a for a in assets if re.match(r"^(https?:)?//", a)]
    assert external == []
    static = [a for a in assets if a.startswith("/static/")]
    assert any(a.endswith("swagger-ui-bundle.js") for a in static)
    assert any(a.endswith("swagger-ui.css") for a in static)
    for asset in static:
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"


# --- /api/schema/ ------------------------------------------------------------------------------
def test_the_openapi_schema_is_served_without_a_login(anon_client, db):
    response = anon_client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {
        "/flow/create",
        "/flow/execute",
        "/flow/{execution_id}/status",
        "/flow/{execution_id}",
        "/health",
    } <= set(schema["paths"])


def test_the_schema_documents_token_and_bearer_auth_and_leaves_health_open(anon_client, db):
    schema = anon_client.get("/api/schema/", {"format": "json"}).json()

    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"]["name"] == "Authorization"
    assert (schemes["bearerAuth"]["type"], schemes["bearerAuth"]["scheme"]) == ("http", "bearer")
    assert {} in schema["paths"]["/health"]["get"]["security"]
    create = schema["paths"]["/flow/create"]["post"]
    assert {"tokenAuth": []} in create["security"]
    assert {"bearerAuth": []} in create["security"]
    assert {"200", "400", "401"} <= set(create["responses"])
