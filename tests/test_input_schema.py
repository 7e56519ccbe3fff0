"""A flow's ``input_schema``: checked when the flow is stored, and every way an execution starts
refuses an input that breaks it, with the same errors, storing nothing; defaults are filled in.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django_q.conf import Conf

from flows import jobs, services
from flows.definition import check_input, parse_flow
from flows.models import Execution, ExecutionStatus, FlowSchedule, TaskRun
from flows.registry import default_registry
from tests.factories import error_body, flow_doc, run_to_end, stored_counts, task

pytestmark = pytest.mark.django_db

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer"],
    "properties": {
        "customer": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "integer"},
                "tier": {"enum": ["basic", "gold"], "default": "basic"},
            },
        },
        "count": {"type": "integer", "minimum": 1, "default": 3},
        "email": {"type": "string", "format": "email"},
    },
    "additionalProperties": False,
}
BAD_INPUT = {"customer": {"tier": "platinum"}, "count": 0, "email": "nobody", "colour": "red"}
# What every start path answers BAD_INPUT with: each error at its JSON Pointer.
BAD_ERRORS = [
    {"field": "/colour", "message": "not declared by the input_schema; remove it"},
    {"field": "/count", "message": "0 is less than the minimum of 1"},
    {"field": "/customer/id", "message": "required"},
    {"field": "/customer/tier", "message": "'platinum' is not one of ['basic', 'gold']"},
    {"field": "/email", "message": "'nobody' is not a 'email'"},
]


def schema_flow(flow_id: str = "orders", schema: Any = SCHEMA) -> dict[str, Any]:
    return flow_doc(
        [task("say", "print", message="customer ${input.customer.id} x ${input.count}")],
        flow_id=flow_id,
        input_schema=schema,
    )


@pytest.fixture
def version():
    return services.flow_create(document=schema_flow())


def errors_of(caught: Any) -> list[dict[str, str]]:
    return sorted(caught.value.errors, key=lambda e: e["field"])


def rows() -> tuple[int, int, int, int, int]:
    return (*stored_counts(), TaskRun.objects.count(), FlowSchedule.objects.count())


# --- the schema, checked when the flow is stored ---------------------------------------------
@pytest.mark.parametrize(
    ("schema", "field", "words"),
    [
        ({"type": "object", "properties": {"count": {"type": "intger"}}},
         "input_schema.properties.count.type", "is not valid"),
        ({"type": "object", "required": "count"}, "input_schema.required", "not of type 'array'"),
        ({"type": "array"}, "input_schema.type", 'write "type": "object"'),
        ({"description": "no type, no properties"}, "input_schema", '"type": "object"'),
        ("object", "input_schema", "must be a JSON Schema object"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
         "input_schema.properties.a.$ref", "only references inside the schema"),
    ],
)  # fmt: skip
def test_a_bad_input_schema_is_refused_with_the_path_of_its_field(schema, field, words):
    with pytest.raises(services.InvalidFlow) as caught:
        services.flow_create(document=flow_doc([task("a")], input_schema=schema))
    found = {e["field"]: e["message"] for e in caught.value.errors}
    assert field in found, found
    assert words in found[field]
    assert stored_counts() == (0, 0, 0)


def test_an_object_schema_is_kept_on_the_definition_and_in_the_stored_document(version):
    definition = parse_flow(schema_flow(), default_registry())
    assert definition.input_schema == SCHEMA
    assert version.definition["input_schema"] == SCHEMA


def test_properties_without_a_type_make_an_object_schema_too():
    schema = {"properties": {"n": {"type": "integer"}}}
    assert parse_flow(flow_doc([task("a")], input_schema=schema), default_registry())


# --- check_input: the one check ---------------------------------------------------------------
def test_check_input_lists_every_error_at_its_json_pointer():
    _, errors = check_input(SCHEMA, BAD_INPUT)
    assert sorted((e.as_dict() for e in errors), key=lambda e: e["field"]) == BAD_ERRORS


def test_check_input_fills_defaults_at_the_top_and_in_nested_objects_without_touching_the_value():
    given = {"customer": {"id": 7}}
    filled, errors = check_input(SCHEMA, given)
    assert errors == []
    assert filled == {"customer": {"id": 7, "tier": "basic"}, "count": 3}
    assert given == {"customer": {"id": 7}}


def test_a_given_value_wins_over_the_default_and_a_default_is_checked_too():
    assert check_input(SCHEMA, {"customer": {"id": 1}, "count": 9})[0]["count"] == 9
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": "x"}}}
    _, errors = check_input(schema, {})
    assert [e.field for e in errors] == ["/n"]


def test_formats_are_checked_date_time_and_uri_included():
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "link": {"type": "string", "format": "uri"},
        },
    }
    good = {"when": "2026-01-02T03:04:05Z", "day": "2026-01-02", "link": "https://example.com/x"}
    assert check_input(schema, good)[1] == []
    bad = {"when": "2026-01-02", "day": "2026-13-40", "link": "not a uri"}
    assert sorted(e.field for e in check_input(schema, bad)[1]) == ["/day", "/link", "/when"]


def test_an_error_about_a_password_never_quotes_it():
    schema = {
        "type": "object",
        "properties": {"pw": {"type": "string", "format": "password", "minLength": 12}},
    }
    _, errors = check_input(schema, {"pw": "hunter2"})
    assert [e.field for e in errors] == ["/pw"]
    assert "hunter2" not in errors[0].message


def test_an_error_about_a_whole_object_does_not_quote_it():
    schema = {
        "type": "object",
        "properties": {"pw": {"type": "string", "format": "password"}},
        "minProperties": 2,
    }
    _, errors = check_input(schema, {"pw": "hunter2"})
    assert [e.as_dict() for e in errors] == [
        {"field": "", "message": "the object does not have enough properties"}
    ]


def test_a_key_with_a_slash_is_escaped_in_its_pointer():
    schema = {"type": "object", "properties": {"a/b": {"type": "integer"}}}
    assert [e.field for e in check_input(schema, {"a/b": "x"})[1]] == ["/a~1b"]


# --- every start path: the same errors, nothing stored ----------------------------------------
def test_the_api_start_refuses_a_bad_input_with_400_listing_each_pointer(api, version):
    before = rows()
    response = api.post("/api/flows/orders/executions/", {"input": BAD_INPUT}, format="json")
    body = error_body(response, 400)
    assert body["code"] == "invalid_input"
    assert sorted(body["errors"], key=lambda e: e["field"]) == BAD_ERRORS
    assert "/customer/id: required" in body["detail"]
    assert rows() == before


def test_the_api_start_stores_the_input_with_its_defaults(api, version):
    response = api.post(
        "/api/flows/orders/executions/", {"input": {"customer": {"id": 7}}}, format="json"
    )
    assert response.status_code == 201, response.content
    execution = Execution.objects.get()
    assert execution.input == {"customer": {"id": 7, "tier": "basic"}, "count": 3}
    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED
    step = execution.steps.get()
    assert step.result["message_printed"] == "customer 7 x 3"


def test_a_start_without_input_is_refused_when_the_schema_requires_a_field(api, version):
    body = error_body(api.post("/api/flows/orders/executions/", {}, format="json"), 400)
    assert body["errors"] == [{"field": "/customer", "message": "required"}]
    assert not Execution.objects.exists()


def test_the_seed_execute_refuses_a_bad_input_and_leaves_the_execution_created(api):
    created = api.post("/flow/create", {"flow": schema_flow()}, format="json").json()
    before = rows()
    response = api.post(
        "/flow/execute",
        {"execution_id": created["execution_id"], "input": BAD_INPUT},
        format="json",
    )
    body = error_body(response, 400)
    assert sorted(body["errors"], key=lambda e: e["field"]) == BAD_ERRORS
    assert rows() == before
    assert Execution.objects.get().status == ExecutionStatus.CREATED


def test_a_rerun_of_an_input_the_schema_now_refuses_is_refused(api, version):
    # An execution stored before the check existed (written here without the services).
    old = Execution.objects.create(flow_id="orders", flow_version=version, input=BAD_INPUT)
    before = rows()
    body = error_body(api.post(f"/api/executions/{old.id}/rerun/"), 400)
    assert sorted(body["errors"], key=lambda e: e["field"]) == BAD_ERRORS
    assert rows() == before


def test_a_scheduled_run_with_a_refused_input_starts_nothing(version, caplog):
    services.flow_schedule_set(flow_id="orders", cron="0 * * * *", input={"customer": {"id": 1}})
    FlowSchedule.objects.update(input=BAD_INPUT)  # as if the flow's schema changed since
    with pytest.raises(services.InvalidInput) as caught:
        services.flow_run_scheduled(flow_id="orders")
    assert errors_of(caught) == BAD_ERRORS
    before = rows()
    jobs.run_scheduled("orders")  # the job never raises: it logs why
    assert rows() == before
    assert not Execution.objects.exists()
    assert "/customer/id: required" in caplog.text


def test_setting_a_schedule_refuses_an_input_its_runs_would_refuse(version):
    with pytest.raises(services.InvalidInput) as caught:
        services.flow_schedule_set(flow_id="orders", cron="0 * * * *", input=BAD_INPUT)
    assert errors_of(caught) == BAD_ERRORS
    assert not FlowSchedule.objects.exists()


def test_a_scheduled_run_fills_the_defaults(version):
    services.flow_schedule_set(flow_id="orders", cron="0 * * * *", input={"customer": {"id": 1}})
    jobs.run_scheduled("orders")
    assert Execution.objects.get().input["count"] == 3


def runflow(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    was = Conf.SYNC
    try:
        call_command("runflow", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        Conf.SYNC = was
    return code, out.getvalue(), err.getvalue()


def test_runflow_refuses_a_bad_input_exits_2_and_stores_nothing(tmp_path: Path):
    path = tmp_path / "orders.json"
    path.write_text(json.dumps(schema_flow()))
    code, _, err = runflow(str(path), "--input", json.dumps(BAD_INPUT))
    assert code == 2
    assert "--input: does not match the flow's input_schema" in err
    for error in BAD_ERRORS:
        assert f"  {error['field']}: {error['message']}" in err
    assert rows() == (0, 0, 0, 0, 0)


def test_runflow_runs_with_the_defaults_filled(tmp_path: Path):
    path = tmp_path / "orders.json"
    path.write_text(json.dumps(schema_flow()))
    code, _, err = runflow(str(path), "--input", '{"customer": {"id": 5}}')
    assert code == 0, err
    assert Execution.objects.get().input == {"customer": {"id": 5, "tier": "basic"}, "count": 3}


def called_by(input: dict[str, Any]) -> dict[str, Any]:
    services.flow_create(document=schema_flow())
    call = {"flow_id": "orders", "input": input}
    tasks = [{"name": "call", "task_type": "subflow", "parameters": call}]
    return flow_doc(tasks, flow_id="parent")


def test_a_sub_flow_call_with_a_bad_input_fails_its_step_listing_the_errors_and_starts_no_child():
    version = services.flow_create(document=called_by(BAD_INPUT))
    execution, _ = services.execution_submit(flow_version=version)
    execution = run_to_end(execution.id)
    assert execution.status == ExecutionStatus.FAILED
    step = execution.steps.get(task_name="call")
    assert "does not match its input_schema" in step.error
    for error in BAD_ERRORS:
        assert f"{error['field']}: {error['message']}" in step.error
    assert Execution.objects.count() == 1  # the parent alone: no child was made


def test_a_sub_flow_child_starts_with_the_defaults_filled():
    version = services.flow_create(document=called_by({"customer": {"id": 9}}))
    execution, _ = services.execution_submit(flow_version=version)
    assert run_to_end(execution.id).status == ExecutionStatus.COMPLETED
    child = Execution.objects.get(flow_id="orders")
    assert child.input == {"customer": {"id": 9, "tier": "basic"}, "count": 3}


def test_a_flow_without_a_schema_takes_any_object_as_before(api):
    services.flow_create(document=flow_doc([task("a")], flow_id="free"))
    response = api.post("/api/flows/free/executions/", {"input": {"anything": [1]}}, format="json")
    assert response.status_code == 201
    assert Execution.objects.get().input == {"anything": [1]}


# --- POST /api/flows/{id}/validate-input/ -----------------------------------------------------
def test_validate_input_answers_the_input_with_its_defaults_and_starts_nothing(api, version):
    response = api.post("/api/flows/orders/validate-input/", {"customer": {"id": 2}}, format="json")
    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "input": {"customer": {"id": 2, "tier": "basic"}, "count": 3},
    }
    assert not Execution.objects.exists()


def test_validate_input_refuses_a_bad_input_with_the_start_endpoints_errors(api, version):
    body = error_body(api.post("/api/flows/orders/validate-input/", BAD_INPUT, format="json"), 400)
    assert body["code"] == "invalid_input"
    assert sorted(body["errors"], key=lambda e: e["field"]) == BAD_ERRORS
    assert not Execution.objects.exists()


def test_validate_input_checks_a_given_version_and_404s_an_unknown_one(api, version):
    services.flow_update(flow_id="orders", document=schema_flow(schema={"type": "object"}))
    assert api.post("/api/flows/orders/validate-input/", {}, format="json").status_code == 200
    old = api.post("/api/flows/orders/validate-input/?version=1", {}, format="json")
    assert error_body(old, 400)["errors"] == [{"field": "/customer", "message": "required"}]
    assert error_body(
        api.post("/api/flows/orders/validate-input/?version=9", {}, format="json"), 404
    )
    assert error_body(
        api.post("/api/flows/orders/validate-input/?version=x", {}, format="json"), 400
    )


def test_validate_input_refuses_a_body_that_is_not_an_object(api, version):
    body = error_body(api.post("/api/flows/orders/validate-input/", [1], format="json"), 400)
    assert body["errors"] == [{"field": "", "message": "the input must be a JSON object"}]


def test_validate_input_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    assert "post" in schema["paths"]["/api/flows/{id}/validate-input/"]


# --- warnings ---------------------------------------------------------------------------------
def test_a_reference_to_an_undeclared_input_is_a_warning_when_no_other_field_is_allowed(api):
    document = schema_flow()
    document["tasks"].append(
        task("post", "http_request", url="https://example.com", json={"n": "${input.cuont}"})
    )
    response = api.post("/api/flows/", document, format="json")
    assert response.status_code == 201, response.content
    warnings = response.json()["warnings"]
    assert [w["field"] for w in warnings] == ["tasks[1].parameters.json.n"]
    assert "'cuont'" in warnings[0]["message"]


def test_an_undeclared_reference_is_no_warning_when_the_schema_allows_other_fields():
    schema = {**SCHEMA, "additionalProperties": True}
    document = flow_doc([task("a", "print", message="${input.extra}")], input_schema=schema)
    assert parse_flow(document, default_registry()).warnings == ()


# --- the README's lines ---------------------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "input_schema_flow.json"


def test_the_readme_s_api_lines_answer_as_written(api):
    document = json.loads(EXAMPLE.read_text())
    assert api.post("/api/flows/", document, format="json").status_code == 201
    checked = api.post(
        "/api/flows/customer_report/validate-input/", {"customer": "acme"}, format="json"
    )
    assert checked.status_code == 200
    assert json.dumps(checked.json()) == (
        '{"valid": true, "input": {"customer": "acme", "days": 7, "format": "csv", '
        '"notify": false, "recipients": []}}'
    )
    refused = api.post(
        "/api/flows/customer_report/executions/", {"input": {"days": 0}}, format="json"
    )
    assert error_body(refused, 400) == {
        "detail": "the input does not match the flow's input_schema: /customer: required; "
        "/days: 0 is less than the minimum of 1",
        "code": "invalid_input",
        "errors": [
            {"field": "/customer", "message": "required"},
            {"field": "/days", "message": "0 is less than the minimum of 1"},
        ],
    }
    assert not Execution.objects.exists()
