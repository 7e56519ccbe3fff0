"""GET /health for load balancers and operators; Swagger UI at /docs and the OpenAPI schema at
/api/schema/, all three without a login."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.contrib.staticfiles import finders
from django.db import OperationalError, connection
from django.utils import timezone
from django_q.humanhash import humanize

from flows.api import health


# --- /health -----------------------------------------------------------------------------------
def fake_cluster(status: str = "Idle", processes: int = 2, host: str = "worker-1") -> Any:
    """A cluster's status as django-q2's sentinel publishes it to the cache every few seconds."""
    now = timezone.now()
    return SimpleNamespace(
        cluster_id=uuid.uuid4(),
        host=host,
        status=status,
        workers=list(range(1000, 1000 + processes)),
        timestamp=now,
        tob=now - timedelta(minutes=5),
    )


@pytest.fixture
def web_started(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``web_started(seconds_ago)``: pretend the web process started that long ago."""
    return lambda ago: monkeypatch.setattr(health, "STARTED", time.monotonic() - ago)


def test_health_is_starting_while_no_cluster_has_reported_yet(anon_client, db, web_started):
    web_started(5)

    response = anon_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "starting"
    assert body["database"] == "ok"
    assert (body["workers"], body["clusters"]) == (0, [])
    assert "no worker cluster has reported yet" in body["message"]
    assert "manage.py qcluster" in body["message"]
    assert datetime.fromisoformat(body["timestamp"])


def test_health_is_degraded_but_200_when_no_cluster_reports_after_the_grace_period(
    anon_client, db, web_started
):
    web_started(61)

    response = anon_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert "manage.py qcluster" in body["message"]


def test_the_grace_period_is_configurable(anon_client, db, web_started, settings):
    web_started(5)
    settings.FLOW_HEALTH_STARTING_SECONDS = 1

    assert anon_client.get("/health").json()["status"] == "degraded"


def test_health_ignores_a_bad_token_so_probes_never_need_one(anon_client, db):
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert anon_client.get("/health").status_code == 200


def test_health_lists_each_live_cluster_and_counts_their_worker_processes(anon_client, db):
    one, two = fake_cluster("Idle", 2, "worker-1"), fake_cluster("Working", 4, "worker-2")
    with mock.patch.object(health.Stat, "get_all", return_value=[two, one]):
        body = anon_client.get("/health").json()

    assert body["status"] == "healthy"
    assert body["workers"] == 6
    assert [c["host"] for c in body["clusters"]] == ["worker-1", "worker-2"]
    first = body["clusters"][0]
    assert set(first) == {"id", "name", "host", "status", "processes", "started_at", "last_seen"}
    assert first["id"] == str(one.cluster_id)
    assert first["name"] == humanize(one.cluster_id.hex)
    assert (first["status"], first["processes"]) == ("Idle", 2)
    assert datetime.fromisoformat(first["last_seen"]) == one.timestamp
    assert "6 worker processes in 2 clusters" in body["message"]


def test_a_cluster_that_is_stopping_is_listed_but_its_processes_are_not_counted(
    anon_client, db, web_started
):
    web_started(5)
    with mock.patch.object(health.Stat, "get_all", return_value=[fake_cluster("Stopping", 2)]):
        body = anon_client.get("/health").json()

    assert (body["status"], body["workers"]) == ("starting", 0)
    assert [c["status"] for c in body["clusters"]] == ["Stopping"]


def test_health_says_why_it_cannot_see_the_clusters_when_their_status_is_unreadable(
    anon_client, db, web_started
):
    web_started(120)
    with mock.patch.object(health.Stat, "get_all", side_effect=ConnectionError("cache down")):
        response = anon_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["workers"], body["clusters"]) == ("degraded", 0, [])
    assert "cache down" in body["message"]


def test_health_is_503_with_the_reason_when_the_database_is_unreachable(anon_client, db):
    boom = OperationalError("unable to open database file")
    with mock.patch.object(connection, "cursor", side_effect=boom):
        response = anon_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert "unable to open database file" in body["database"]
    assert (body["workers"], body["clusters"]) == (0, [])
    assert "database" in body["message"]


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
