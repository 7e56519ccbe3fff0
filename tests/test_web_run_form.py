"""The Run form drawn from a flow's ``input_schema``: a field per property, typed; plain POST
with CSRF, so it works without JavaScript; the schema's errors next to their fields."""

from __future__ import annotations

import html as htmlmod
import json
import re
from typing import Any

import pytest
from django.test import Client

from flows.models import Execution, Flow, TaskRun
from tests.factories import flow_doc, sample_flow, task
from tests.web_helpers import builder_post, field_block, field_errors, stored

pytestmark = pytest.mark.django_db

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer", "count"],
    "properties": {
        "customer": {"type": "string", "description": "Who the report is for"},
        "count": {"type": "integer", "minimum": 1, "default": 3},
        "ratio": {"type": "number"},
        "dry_run": {"type": "boolean", "default": True},
        "region": {"enum": ["eu", "us"], "default": "eu"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object"},
        "api_key": {"type": "string", "format": "password"},
    },
    "additionalProperties": False,
}


@pytest.fixture
def operator(client: Client, alice: Any) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def flow() -> Any:
    say = task("say", "print", message="${input.customer}")
    return stored(flow_doc([say], flow_id="report", input_schema=SCHEMA))


def tag(html: str, field_id: str) -> str:
    """The opening tag of the element with id ``field_id`` (input, select or textarea)."""
    found = re.search(rf'<(input|select|textarea)[^>]*id="{field_id}"[^>]*>', html)
    assert found, f"no #{field_id}"
    return found.group(0)


def test_the_flow_page_run_button_opens_the_form_for_a_flow_with_a_schema(operator, flow):
    html = operator.get("/flows/report/").content.decode()
    assert 'href="/flows/report/run"' in html
    assert "Input (JSON object, optional)" not in html  # not the JSON box


def test_a_flow_without_a_schema_keeps_the_json_box(operator):
    stored(sample_flow())
    html = operator.get("/flows/example_flow/").content.decode()
    assert "Input (JSON object, optional)" in html
    assert operator.get("/flows/example_flow/run").status_code == 302


def test_the_form_has_a_field_of_the_right_kind_for_each_property(operator, flow):
    response = operator.get("/flows/report/run")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'name="csrfmiddlewaretoken"' in html and 'method="post"' in html
    assert 'type="text"' in tag(html, "id_input-customer")
    assert 'type="number"' in tag(html, "id_input-count") and 'step="1"' in tag(
        html, "id_input-count"
    )
    assert 'step="any"' in tag(html, "id_input-ratio")
    assert 'type="checkbox"' in tag(html, "id_input-dry_run")
    assert tag(html, "id_input-region").startswith("<select")
    assert tag(html, "id_input-tags").startswith("<textarea")
    assert tag(html, "id_input-options").startswith("<textarea")
    assert 'type="password"' in tag(html, "id_input-api_key")


def test_the_form_shows_help_required_marks_and_defaults(operator, flow):
    html = operator.get("/flows/report/run").content.decode()
    assert "Who the report is for" in field_block(html, "id_input-customer")
    assert 'title="required"' in field_block(html, "id_input-customer")
    assert "required" in tag(html, "id_input-customer")
    assert 'title="required"' not in field_block(html, "id_input-ratio")
    assert 'value="3"' in tag(html, "id_input-count")
    assert "checked" in tag(html, "id_input-dry_run")
    region = field_block(html, "id_input-region")
    assert re.search(r'<option value="&quot;eu&quot;" selected>eu</option>', region), region


def test_posting_the_form_starts_an_execution_with_typed_values_and_defaults(operator, flow):
    response = operator.post(
        "/flows/report/run",
        {
            "input-customer": "acme",
            "input-count": "",
            "input-ratio": "0.5",
            "input-region": '"us"',
            "input-tags": '["a", "b"]',
            "input-options": "",
            "input-api_key": "s3cret",
        },
    )
    execution = Execution.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/executions/{execution.id}/"
    assert execution.input == {
        "customer": "acme",
        "count": 3,  # blank: the schema's default
        "ratio": 0.5,
        "dry_run": False,  # an unticked box
        "region": "us",
        "tags": ["a", "b"],
        "api_key": "s3cret",
    }


def test_values_that_do_not_convert_are_refused_at_their_fields(operator, flow):
    response = operator.post(
        "/flows/report/run",
        {"input-customer": "acme", "input-count": "three", "input-tags": "[1,"},
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert field_errors(html, "id_input-count") == ["Enter a whole number."]
    assert "Enter valid JSON" in field_errors(html, "id_input-tags")[0]
    assert not Execution.objects.exists()


def test_the_schemas_errors_are_shown_next_to_their_fields_and_nothing_is_stored(operator, flow):
    response = operator.post(
        "/flows/report/run",
        {"input-count": "0", "input-tags": "[1]", "input-region": '"eu"'},
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert field_errors(html, "id_input-customer") == ["required"]
    assert field_errors(html, "id_input-count") == ["0 is less than the minimum of 1"]
    assert field_errors(html, "id_input-tags") == ["/0: 1 is not of type &#x27;string&#x27;"]
    assert "The input was refused" in html
    assert 'value="0"' in tag(html, "id_input-count")  # what was typed, kept
    assert (Execution.objects.count(), TaskRun.objects.count()) == (0, 0)


def test_an_error_at_no_field_is_shown_above_the_form(operator):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 2}
    stored(flow_doc([task("x")], flow_id="few", input_schema=schema))
    response = operator.post("/flows/few/run", {"input-a": "1"})
    html = response.content.decode()
    assert response.status_code == 400
    callout = re.search(r'<div class="callout bad"[^>]*id="input-errors">(.*?)</div>', html, re.S)
    assert callout and "does not have enough properties" in callout.group(1)
    assert field_errors(html, "id_input-a") == []


def test_the_run_form_needs_the_start_permission(client, make_user, flow):
    client.force_login(make_user("vera", "viewer"))
    assert client.get("/flows/report/run").status_code == 403
    assert client.post("/flows/report/run", {"input-customer": "x"}).status_code == 403
    assert not Execution.objects.exists()


def test_a_post_without_the_csrf_token_is_refused(alice, flow):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post("/flows/report/run", {"input-customer": "acme"}).status_code == 403
    assert not Execution.objects.exists()


# --- the builder keeps and edits the schema ----------------------------------------------------
def test_the_builder_shows_the_schema_and_a_save_from_it_keeps_it(operator, flow):
    page = operator.get("/flows/report/edit").content.decode()
    assert "&quot;dry_run&quot;" in field_block(page, "id_input_schema")
    rows = [{"name": "say", "task_type": "print", "param_message": "hi ${input.customer}"}]
    data = builder_post({"input_schema": page_value(page, "id_input_schema")}, rows, initial=1)
    assert operator.post("/flows/report/edit", data).status_code == 302
    latest = Flow.objects.get(pk="report")
    assert (latest.version, latest.definition["input_schema"]) == (2, SCHEMA)


def test_a_bad_schema_from_the_builder_is_shown_at_its_field_with_its_path(operator):
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "intger"}}})
    rows = [{"name": "a", "task_type": "noop"}]
    response = operator.post("/flows/new", builder_post({"id": "x", "input_schema": schema}, rows))
    assert response.status_code == 400
    errors = field_errors(response.content.decode(), "id_input_schema")
    assert errors and errors[0].startswith("properties.n.type: ")
    assert not Flow.objects.exists()


def page_value(html: str, field_id: str) -> str:
    """The text of the textarea ``field_id`` as the browser would send it back."""
    found = re.search(rf'<textarea[^>]*id="{field_id}"[^>]*>\n?(.*?)</textarea>', html, re.S)
    assert found
    return htmlmod.unescape(found.group(1))


def test_the_pages_rerun_of_an_input_the_schema_refuses_says_why_and_starts_nothing(operator, flow):
    # An execution stored before the check existed (written here without the services).
    bad = {"customer": "acme", "count": 0}
    old = Execution.objects.create(flow_id="report", flow_version=flow, input=bad)
    response = operator.post(f"/executions/{old.id}/rerun", follow=True)
    page = response.content.decode()
    assert "does not match the flow&#x27;s input_schema: /count: 0 is less than the minimum" in page
    assert Execution.objects.count() == 1
