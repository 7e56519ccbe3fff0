"""Named concurrency limits as people and programs see them: ``/api/limits/``, the step's
``waiting`` in the API and on the execution page, the Limits page, the metrics, the
validation of flows that name limits, ``manage.py limit`` and the README's lines."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from flows import engine, services
from flows.models import ConcurrencyLimit, TaskRun
from tests.factories import error_body, flow_doc, task

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=30)


@pytest.fixture
def limits_admin(client_as: Any) -> Any:
    return client_as("limits_admin")


def keyed_flow() -> dict[str, Any]:
    call = {**task("call", "wait", seconds=0, tenant="${input.tenant}"), "limits": ["api"]}
    return flow_doc([call], flow_id="keyed")


def start(document: dict[str, Any], count: int, **input: Any) -> list[Any]:
    version = services.flow_create(document=document)
    return [
        services.execution_submit(flow_version=version, input=dict(input))[0] for _ in range(count)
    ]


def test_a_limit_is_defined_read_changed_and_deleted(limits_admin: Any) -> None:
    body = {"name": "api", "max_in_flight": 2, "rate": {"count": 20, "per_seconds": 1}}

    created = limits_admin.post("/api/limits/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["rate"] == {"count": 20, "per_seconds": 1.0}
    assert (created.json()["in_use"], created.json()["waiting"]) == ({}, {})

    changed = limits_admin.patch(
        "/api/limits/api/", {"max_in_flight": 5, "rate": None}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["max_in_flight"], changed.json()["rate"]) == (5, None)

    assert limits_admin.delete("/api/limits/api/").status_code == 204
    assert not ConcurrencyLimit.objects.exists()


def test_get_answers_in_use_and_waiting_per_key(limits_admin: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 2, "key": "parameters.tenant"})
    start(keyed_flow(), 3, tenant="acme")
    start(keyed_flow(), 1, tenant="globex")
    engine.claim_steps("w", LEASE, 10)

    got = limits_admin.get("/api/limits/api/").json()

    assert got["in_use"] == {"acme": 2}
    assert got["waiting"] == {"acme": 1, "globex": 1}
    assert limits_admin.get("/api/limits/").json()["results"][0]["waiting"] == got["waiting"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "api", "max_in_flight": 0}, "max_in_flight"),
        ({"name": "a b", "max_in_flight": 1}, "name"),
        ({"name": "api", "max_in_flight": 1, "key": "parameters.("}, "key"),
        ({"name": "api", "max_in_flight": 1, "rate": {"count": 0, "per_seconds": 1}}, "rate.count"),
        (
            {"name": "api", "max_in_flight": 1, "rate": {"count": 1, "per_seconds": -1}},
            "rate.per_seconds",
        ),
        ({"name": "api", "max_in_flight": 1, "fairness": "lifo"}, "fairness"),
        ({"name": "api", "max_in_flight": 1, "colour": "red"}, "colour"),
    ],
)
def test_a_bad_limit_is_a_400_at_its_field(limits_admin: Any, body: dict, field: str) -> None:
    body_ = error_body(limits_admin.post("/api/limits/", body, format="json"), 400)

    assert field in [e["field"] for e in body_["errors"]]
    assert not ConcurrencyLimit.objects.exists()


def test_a_taken_name_is_a_409(limits_admin: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 1})

    error_body(
        limits_admin.post("/api/limits/", {"name": "api", "max_in_flight": 2}, format="json"), 409
    )


def test_an_editor_reads_limits_but_may_not_define_one(api: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 1})

    assert api.get("/api/limits/").status_code == 200
    error_body(api.post("/api/limits/", {"name": "b", "max_in_flight": 1}, format="json"), 403)
    error_body(api.delete("/api/limits/api/"), 403)


def test_a_flow_naming_an_unknown_limit_is_refused_at_the_path(api: Any) -> None:
    document = flow_doc([{**task("a"), "limits": ["nope"]}])

    body = error_body(api.post("/api/flows/", document, format="json"), 400)

    assert body["errors"] == [
        {
            "field": "tasks[0].limits[0]",
            "message": "unknown limit 'nope'; define it first (POST /api/limits/)",
        }
    ]


def test_a_task_type_s_default_limits_are_taken(monkeypatch: Any) -> None:
    from flows.registry import default_registry

    # The class the registry loaded (a test with plugins of its own may have loaded the
    # module again, so tasks.task_noop.NoopTask can be another class object).
    noop = default_registry().get("noop").cls
    monkeypatch.setattr(noop, "default_limits", ["api"], raising=False)
    services.limit_create(data={"name": "api", "max_in_flight": 1})
    # A document of its own: a parsed flow is kept per process by its text (engine.inputs),
    # and the patch above is not a change of the plugin's file the cache would notice.
    start(flow_doc([task("a", "noop")], flow_id="noop_with_default_limits"), 2)

    engine.claim_steps("w", LEASE, 10)

    assert [s.limits for s in TaskRun.objects.order_by("id")] == ["api", "api"]
    assert TaskRun.objects.filter(status="RUNNING").count() == 1


def test_the_step_s_wait_is_in_the_api_and_on_the_execution_page(api: Any, alice: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 1})
    _, second = start(keyed_flow(), 2, tenant="acme")
    engine.claim_steps("w", LEASE, 10)

    step = api.get(f"/api/executions/{second.id}/").json()["steps"][0]
    assert step["waiting"]["kind"] == "limit"
    assert (step["waiting"]["limit"], step["waiting"]["place"]) == ("api", 1)

    web = Client()
    web.force_login(alice)
    page = web.get(f"/executions/{second.id}/").content.decode()
    assert "Waiting for limit" in page and "Place 1 in the queue" in page


def test_the_limits_page_shows_each_limit_with_its_use(alice: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 1, "key": "parameters.tenant"})
    start(keyed_flow(), 2, tenant="acme")
    engine.claim_steps("w", LEASE, 10)
    web = Client()
    web.force_login(alice)

    page = web.get("/limits/").content.decode()

    assert 'id="limit-api"' in page
    assert "1 of 1" in page
    assert "<code>acme</code>" in page


def test_the_metrics_count_steps_in_use_and_waiting(api: Any) -> None:
    services.limit_create(data={"name": "api", "max_in_flight": 1})
    start(keyed_flow(), 3, tenant="acme")
    engine.claim_steps("w", LEASE, 10)

    text = api.get("/metrics").content.decode()

    assert 'flowmanager_limit_in_use{limit="api"} 1.0' in text
    assert 'flowmanager_limit_waiting{limit="api"} 2.0' in text


def test_the_readme_s_lines_define_the_limit_and_run_the_example(monkeypatch: Any) -> None:
    monkeypatch.chdir(settings.BASE_DIR)
    out = StringIO()
    call_command("limit", "partner_api", "--max-in-flight", "2", "--rate", "5/1", stdout=out)
    assert "limit partner_api defined: 2 at once, 5 per 1 s" in out.getvalue()

    out = StringIO()
    call_command("runflow", "examples/partner_api_flow.json", stdout=out)

    assert out.getvalue().rstrip().endswith("COMPLETED")
