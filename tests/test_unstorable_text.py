"""Text no database can store (a NUL, a lone UTF-16 surrogate such as \\ud800, which JSON's
\\u escapes let through) is refused at every door with a 400 naming the field, and nothing is
stored. Rows that hold one from before still render and can be deleted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from flows import services
from flows.models import Execution, Flow, FlowSchedule, FlowVersion, TaskRun
from tests.factories import error_body, flow_doc, run_to_end, start_execution, stored_counts, task
from tests.web_helpers import builder_post

pytestmark = pytest.mark.django_db

LONE = "\ud800"


def post_json(client: Any, path: str, body: Any, method: str = "post", **extra: Any) -> Any:
    """Send ``body`` as JSON text with \\u escapes (what a client with a lone surrogate sends:
    it cannot be encoded as UTF-8)."""
    return getattr(client, method)(
        path, data=json.dumps(body), content_type="application/json", **extra
    )


def fields(response: Any) -> list[str]:
    return [e["field"] for e in error_body(response, 400)["errors"]]


@pytest.fixture
def admin(client_as: Any) -> Any:
    return client_as("admin")


@pytest.fixture
def flow() -> Any:
    return services.flow_create(document=flow_doc([task("a")]))


BAD_DOCUMENTS = [
    (flow_doc([task("a", "print", message=f"x{LONE}")]), "tasks[0].parameters.message"),
    (flow_doc([task("a")], description=LONE), "description"),
    (flow_doc([task("a")], name=f"N{LONE}"), "name"),
    (
        flow_doc([{"name": "a", "task_type": "noop", "parameters": {f"k{LONE}": 1}}]),
        "tasks[0].parameters.k\\ud800",
    ),
]


@pytest.mark.parametrize(("document", "field"), BAD_DOCUMENTS)
def test_a_flow_document_with_a_lone_surrogate_is_400_naming_the_field(admin, document, field):
    response = post_json(admin, "/api/flows/", document)

    assert field in fields(response)
    assert "surrogate" in response.json()["detail"]
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize(("document", "field"), BAD_DOCUMENTS[:2])
def test_the_seed_create_refuses_a_lone_surrogate_and_stores_nothing(admin, document, field):
    response = post_json(admin, "/flow/create", {"flow": document})

    assert field in fields(response)
    assert stored_counts() == (0, 0, 0)


def test_an_update_with_a_lone_surrogate_is_400_and_keeps_the_version(admin, flow):
    response = post_json(admin, "/api/flows/test_flow/", BAD_DOCUMENTS[0][0], method="put")

    assert fields(response) == ["tasks[0].parameters.message"]
    assert FlowVersion.objects.count() == 1


def test_validate_reports_a_lone_surrogate_as_an_error(client_as):
    response = post_json(client_as("viewer"), "/api/flows/validate/", BAD_DOCUMENTS[3][0])

    assert response.status_code == 200
    assert response.json()["valid"] is False
    assert [e["field"] for e in response.json()["errors"]] == ["tasks[0].parameters.k\\ud800"]


@pytest.mark.parametrize(
    "input", [{"note": f"a{LONE}"}, {f"key{LONE}": 1}, {"a": [{"b": LONE}]}, {"a": "\udfff"}]
)
def test_an_execution_input_with_a_lone_surrogate_is_400_on_input(admin, flow, input):
    response = post_json(admin, "/api/flows/test_flow/executions/", {"input": input})

    assert fields(response) == ["input"]
    assert not Execution.objects.exists()


def test_the_seed_execute_refuses_an_input_with_a_lone_surrogate(admin, flow):
    execution = services.execution_create(flow_version=flow)

    response = post_json(
        admin, "/flow/execute", {"execution_id": str(execution.id), "input": {"n": LONE}}
    )

    assert fields(response) == ["input"]
    execution.refresh_from_db()
    assert (execution.status, execution.input, execution.steps.count()) == ("CREATED", {}, 0)


def test_a_schedule_input_with_a_lone_surrogate_is_400(admin, flow):
    response = post_json(
        admin,
        "/api/flows/test_flow/schedule/",
        {"cron": "0 * * * *", "input": {"n": LONE}},
        method="put",
    )

    assert fields(response) == ["input"]
    assert not FlowSchedule.objects.exists()


def test_a_valid_surrogate_pair_is_ordinary_text(admin, flow):
    response = post_json(admin, "/api/flows/test_flow/executions/", {"input": {"n": "😀"}})

    assert response.status_code == 201, response.content
    assert Execution.objects.get().input == {"n": "😀"}


APPROVAL = flow_doc(
    [task("approve", "wait_for_signal", signal="deploy"), task("done")], flow_id="approval"
)


@pytest.fixture
def waiting() -> Execution:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    return execution


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "deploy", "payload": {"v": LONE}}, "payload"),
        ({"name": "deploy", "payload": {f"k{LONE}": 1}}, "payload"),
        ({"name": "deploy", "comment": f"why{LONE}"}, "comment"),
        ({"name": f"deploy{LONE}"}, "name"),
    ],
)
def test_a_signal_with_a_lone_surrogate_is_400_and_the_step_still_waits(
    admin, waiting, body, field
):
    response = post_json(admin, f"/api/executions/{waiting.id}/signal/", body)

    assert fields(response) == [field]
    step = waiting.steps.get(task_name="approve")
    assert "signal" not in step.waiting


@pytest.mark.parametrize(
    "call",
    [
        lambda v: services.execution_create(flow_version=v, input={"a": LONE}),
        lambda v: services.execution_submit(flow_version=v, input={"a": LONE}),
        lambda v: services.execution_submit(flow_version=v, idempotency_key=f"k{LONE}"),
        lambda v: services.flow_schedule_set(flow_id=v.flow_id, cron="0 * * * *", input={LONE: 1}),
    ],
)
def test_the_services_refuse_a_lone_surrogate_whoever_calls_them(flow, call):
    with pytest.raises(services.ServiceError) as caught:
        call(flow)

    assert caught.value.status == 400
    assert caught.value.errors[0]["field"] in ("input", "Idempotency-Key")
    assert not Execution.objects.exists() and not FlowSchedule.objects.exists()


# --- the operator pages ----------------------------------------------------------------------
@pytest.fixture
def operator(client: Any, alice: Any) -> Any:
    client.force_login(alice)
    return client


def test_the_json_tab_refuses_a_lone_surrogate_with_the_field(operator):
    text = json.dumps(flow_doc([task("a", "print", message=LONE)], flow_id="tab"))

    response = operator.post("/flows/new", {"mode": "json", "action": "save", "document": text})

    assert response.status_code == 400
    assert "tasks[0].parameters.message" in response.content.decode()
    assert not Flow.objects.exists()


def test_the_builder_refuses_a_lone_surrogate_in_a_json_parameter(operator):
    rows = [{"name": "a", "task_type": "noop", "params_extra": '{"k": "\\ud800"}'}]

    response = operator.post("/flows/new", builder_post({"id": "built"}, rows))

    assert response.status_code == 400
    assert "surrogate" in response.content.decode()
    assert not Flow.objects.exists()


def test_the_run_form_refuses_an_input_with_a_lone_surrogate(operator, flow):
    response = operator.post("/flows/test_flow/run", {"input": '{"n": "\\ud800"}'}, follow=True)

    assert response.status_code == 200
    assert "surrogate" in response.content.decode()
    assert not Execution.objects.exists()


def test_the_schedule_form_refuses_an_input_with_a_lone_surrogate(operator, flow):
    response = operator.post(
        "/flows/test_flow/schedule",
        {"action": "save", "cron": "0 * * * *", "input": '{"n": "\\udc00"}'},
        follow=True,
    )

    assert "surrogate" in response.content.decode()
    assert not FlowSchedule.objects.exists()


# --- rows written before this check ----------------------------------------------------------
needs_text_json = pytest.mark.skipif(
    connection.vendor == "postgresql",
    reason="PostgreSQL's jsonb refuses \\ud800 at insert: no such row can exist there",
)


@pytest.fixture
def poisoned() -> Execution:
    """A flow, its version and a failed execution with a step, each holding a lone surrogate
    in its JSON, written as they were before the check (straight through the ORM)."""
    document = flow_doc([task("a", "print", message=f"x{LONE}")], flow_id="old")
    document["description"] = f"d{LONE}"
    flow = Flow.objects.create(id="old", name="Old", version=1, definition=document)
    version = FlowVersion.objects.create(flow=flow, version=1, definition=document)
    execution = Execution.objects.create(
        flow=flow, flow_version=version, input={f"k{LONE}": LONE}, status="FAILED"
    )
    TaskRun.objects.create(
        execution=execution,
        seq=1,
        task_name="a",
        task_type="print",
        status="FAILED",
        parameters={"message": f"x{LONE}"},
        result={"v": LONE},
    )
    return execution


@needs_text_json
def test_an_old_row_with_a_lone_surrogate_renders_on_every_read(admin, make_user, poisoned):
    staff = Client()
    staff.force_login(make_user("root", "admin"))
    for path in [
        "/api/flows/old/",
        "/api/flows/old/versions/1/",
        f"/api/executions/{poisoned.id}/",
        f"/flow/{poisoned.id}/status",
    ]:
        response = admin.get(path)
        assert response.status_code == 200, path
        assert "\ufffd" in response.content.decode(), path
    for path in [
        "/flows/old/",
        "/flows/old/v1/",
        "/flows/old/edit",
        f"/executions/{poisoned.id}/",
        "/admin/flows/flow/old/change/",
        "/admin/flows/flow/",
        "/admin/flows/execution/",
        f"/admin/flows/execution/{poisoned.id}/change/",
    ]:
        assert staff.get(path).status_code == 200, path


@needs_text_json
def test_an_old_row_with_a_lone_surrogate_can_be_deleted(admin, poisoned):
    assert admin.post(f"/api/executions/{poisoned.id}/cancel/").status_code == 409  # it ended
    assert admin.delete(f"/flow/{poisoned.id}").status_code == 200
    assert admin.delete("/api/flows/old/").status_code == 204

    assert stored_counts() == (0, 0, 0)
