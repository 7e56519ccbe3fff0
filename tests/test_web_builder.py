"""The flow builder: build, validate, switch to JSON, import, export, edit, version."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from flows.models import Flow, FlowVersion
from tests.factories import cond, flow_doc, sample_flow, task
from tests.web_helpers import builder_post, field_errors, stored

pytestmark = pytest.mark.django_db

THREE_TASKS = [
    {"name": "fetch", "task_type": "fetch_data", "param_failure_rate": "0", "outcome": "success",
     "target_task_success": "store", "target_task_failure": "alert"},
    {"name": "store", "task_type": "store_data", "outcome": "success",
     "target_task_success": "end", "target_task_failure": "end"},
    {"name": "alert", "task_type": "print", "param_message": "fetch failed"},
]  # fmt: skip


@pytest.fixture
def operator(client, alice):
    client.force_login(alice)
    return client


def test_the_new_flow_page_offers_every_registered_type_with_its_description(operator):
    html = operator.get("/flows/new").content.decode()
    for name in ("fetch_data", "http_request", "noop", "print", "wait"):
        assert f'<option value="{name}"' in html
    assert "Writes `message` to the execution" in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_a_three_task_flow_with_a_failure_branch_is_saved_from_the_builder(operator, alice):
    data = builder_post({"id": "orders", "name": "Orders", "start_task": "fetch"}, THREE_TASKS)

    response = operator.post("/flows/new", data)

    assert response.status_code == 302
    assert response["Location"] == "/flows/orders/"
    version = FlowVersion.objects.get(flow_id="orders")
    assert version.created_by == alice
    assert version.definition == {
        "id": "orders",
        "name": "Orders",
        "start_task": "fetch",
        "tasks": [
            {"name": "fetch", "task_type": "fetch_data", "parameters": {"failure_rate": 0}},
            {"name": "store", "task_type": "store_data", "parameters": {}},
            {"name": "alert", "task_type": "print", "parameters": {"message": "fetch failed"}},
        ],
        "conditions": [
            cond("fetch", "success", "store", "alert"),
            cond("store", "success", "end", "end"),
        ],
    }
    assert "Saved orders version 1" in operator.get(response["Location"]).content.decode()


def test_rows_are_saved_in_the_order_the_operator_set(operator):
    rows = [{"name": "b", "task_type": "noop"}, {"name": "a", "task_type": "noop"}]
    data = builder_post({"id": "ordered"}, rows)
    data["tasks-0-ORDER"], data["tasks-1-ORDER"] = "2", "1"
    data["tasks-1-DELETE"] = ""

    operator.post("/flows/new", data)

    names = [t["name"] for t in Flow.objects.get(pk="ordered").definition["tasks"]]
    assert names == ["a", "b"]


def test_a_deleted_row_and_blank_rows_are_left_out(operator):
    rows = [{"name": "keep", "task_type": "noop"}, {"name": "drop", "task_type": "noop"}, {}]
    data = builder_post({"id": "pruned"}, rows)
    data["tasks-1-DELETE"] = "on"

    operator.post("/flows/new", data)

    assert [t["name"] for t in Flow.objects.get(pk="pruned").definition["tasks"]] == ["keep"]


def test_validation_errors_appear_next_to_their_fields(operator):
    rows = [
        {"name": "a", "task_type": "http_request", "param_method": "GET"},  # url is required
        {"name": "a", "task_type": "noop", "outcome": "success",  # duplicate name
         "target_task_success": "ghost", "target_task_failure": "end"},
        {"name": "w", "task_type": "wait", "param_seconds": "-1"},  # below the minimum
    ]  # fmt: skip
    response = operator.post("/flows/new", builder_post({"id": "bad flow"}, rows))

    assert response.status_code == 400
    html = response.content.decode()
    assert "letters, digits" in " ".join(field_errors(html, "id_id"))
    assert "required property" in " ".join(field_errors(html, "id_tasks-0-param_url"))
    assert "duplicate task name" in " ".join(field_errors(html, "id_tasks-1-name"))
    assert "not one of the tasks" in " ".join(field_errors(html, "id_tasks-1-target_task_success"))
    assert "minimum" in " ".join(field_errors(html, "id_tasks-2-param_seconds"))
    assert field_errors(html, "id_tasks-2-name") == []
    assert not Flow.objects.exists()


def test_a_shape_error_is_shown_at_its_field_before_any_validation(operator):
    rows = [{"name": "a", "task_type": "fetch_data", "params_extra": "{not json"}]
    response = operator.post("/flows/new", builder_post({"id": "shape"}, rows))

    assert response.status_code == 400
    assert field_errors(response.content.decode(), "id_tasks-0-params_extra")


def test_the_new_flow_page_never_overwrites_an_existing_flow(operator):
    stored(sample_flow())
    rows = [{"name": "a", "task_type": "noop"}]
    response = operator.post("/flows/new", builder_post({"id": "example_flow"}, rows))

    assert response.status_code == 400
    assert "exists already" in " ".join(field_errors(response.content.decode(), "id_id"))
    assert Flow.objects.get(pk="example_flow").version == 1


def test_editing_saves_a_new_version_and_lists_the_earlier_ones(operator):
    stored(sample_flow())
    page = operator.get("/flows/example_flow/edit").content.decode()
    assert 'value="task2"' in page and "saving makes v2" in page

    rows = [{"name": "only", "task_type": "print", "param_message": "v2"}]
    response = operator.post(
        "/flows/example_flow/edit", builder_post({"name": "Pipeline v2"}, rows, initial=1)
    )

    assert response.status_code == 302
    flow = Flow.objects.get(pk="example_flow")
    assert (flow.version, flow.name) == (2, "Pipeline v2")
    detail = operator.get("/flows/example_flow/").content.decode()
    assert "/flows/example_flow/v1/" in detail and "/flows/example_flow/v2/" in detail
    old = operator.get("/flows/example_flow/v1/").content.decode()
    assert "task3" in old and "Version 1" in old


def test_saving_an_edit_that_changes_nothing_keeps_the_current_version(operator):
    operator.post("/flows/new", builder_post({"id": "orders", "start_task": "fetch"}, THREE_TASKS))
    same = builder_post({"id": "orders", "start_task": "fetch"}, THREE_TASKS)

    response = operator.post("/flows/orders/edit", same)

    assert response.status_code == 302
    assert FlowVersion.objects.filter(flow_id="orders").count() == 1
    page = operator.get(response["Location"]).content.decode()
    assert "No changes: orders version 1 is already this document." in page


def test_the_json_tab_shows_the_builders_document_and_saves_with_the_same_validation(operator):
    data = builder_post({"id": "switch"}, THREE_TASKS, action="json")
    page = operator.post("/flows/new", data).content.decode()
    assert "&quot;target_task_failure&quot;: &quot;alert&quot;" in page

    broken = flow_doc([task("a", "no_such_type")], flow_id="switch")
    response = operator.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(broken)}
    )
    assert response.status_code == 400
    assert "tasks[0].task_type" in response.content.decode()
    assert not Flow.objects.exists()

    good = flow_doc([task("a"), task("b", "print", message="hi")], flow_id="switch")
    response = operator.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(good)}
    )
    assert response.status_code == 302
    assert Flow.objects.get(pk="switch").definition["tasks"][1]["parameters"] == {"message": "hi"}


def test_broken_json_is_reported_with_its_line(operator):
    response = operator.post(
        "/flows/new", {"mode": "json", "action": "save", "document": '{"id": "x",\n  "tasks": ['}
    )
    assert response.status_code == 400
    assert "Not valid JSON" in response.content.decode()
    assert "line 2" in response.content.decode()


def test_the_json_tab_goes_back_to_the_builder_with_the_same_rows(operator):
    doc = flow_doc([task("one"), task("two", "print", message="x")], flow_id="back")
    page = operator.post(
        "/flows/new", {"mode": "json", "action": "builder", "document": json.dumps(doc)}
    ).content.decode()
    assert 'name="tasks-1-param_message"' in page
    assert 'value="two"' in page


def test_a_json_file_is_imported_into_the_builder_and_exported_back(operator):
    upload = SimpleUploadedFile(
        "pipeline.json", json.dumps(sample_flow()).encode(), content_type="application/json"
    )
    data = builder_post({"id": ""}, [{}], action="import")
    data["import_file"] = upload
    page = operator.post("/flows/new", data).content.decode()
    assert "Imported pipeline.json" in page
    assert 'value="example_flow"' in page and 'value="task3"' in page

    stored(sample_flow())
    exported = operator.get("/flows/example_flow/v1/export")
    assert exported["Content-Disposition"] == 'attachment; filename="example_flow-v1.json"'
    assert json.loads(exported.content) == Flow.objects.get(pk="example_flow").definition


def test_the_draft_can_be_exported_before_it_is_saved(operator):
    response = operator.post("/flows/new", builder_post({"id": "draft"}, THREE_TASKS, "export"))
    assert response["Content-Disposition"] == 'attachment; filename="draft.json"'
    assert [t["name"] for t in json.loads(response.content)["tasks"]] == ["fetch", "store", "alert"]
    assert not Flow.objects.exists()


@pytest.mark.parametrize(
    ("action", "names"),
    [
        ("add", ["fetch", "store", "alert", None]),
        ("remove:1", ["fetch", "alert"]),
        ("up:2", ["fetch", "alert", "store"]),
        ("down:0", ["store", "fetch", "alert"]),
    ],
)
def test_rows_are_added_removed_and_moved_without_javascript(operator, action, names):
    page = operator.post(
        "/flows/new", builder_post({"id": "rows"}, THREE_TASKS, action=action)
    ).content.decode()
    for i, name in enumerate(names):
        field = f'name="tasks-{i}-name"'
        assert field in page
        if name:
            assert (
                f'{field} value="{name}"' in page
                or f'value="{name}" {field}' in page
                or (f'value="{name}"' in page.split(field)[1].split(">")[0])
            )
    assert f'name="tasks-{len(names)}-name"' not in page
    assert not Flow.objects.exists()


def test_the_fields_of_a_type_come_from_its_schema(operator):
    html = operator.get("/flows/builder/task-fields?prefix=tasks-3&type=http_request").content
    html = html.decode()
    assert 'name="tasks-3-param_url"' in html
    assert '<option value="POST">' in html  # enum -> a select
    assert 'name="tasks-3-param_follow_redirects"' in html
    assert "<textarea" in html  # headers / json: a JSON field
    assert "Sends an HTTP request" in html


def test_a_flow_whose_type_disappeared_opens_in_the_builder_and_says_so(
    operator, settings, tmp_path
):
    stored(flow_doc([task("gone", "print", message="x")], flow_id="orphan"))
    settings.FLOW_TASKS_DIR = tmp_path  # a registry with no task types at all

    page = operator.get("/flows/orphan/edit").content.decode()

    assert "print (not registered)" in page
    assert "not registered: restore its file" in page
    detail = operator.get("/flows/orphan/").content.decode()
    assert "This flow cannot run as it is" in detail


def test_the_error_handler_flow_is_set_in_the_builder_and_kept_on_an_edit(operator):
    rows = [{"name": "only", "task_type": "print", "param_message": "hi"}]
    operator.post("/flows/new", builder_post({"id": "orders", "on_failure": "page_on_call"}, rows))
    assert Flow.objects.get(pk="orders").definition["on_failure"] == {"flow_id": "page_on_call"}

    page = operator.get("/flows/orders/edit").content.decode()
    assert 'value="page_on_call"' in page
    operator.post(
        "/flows/orders/edit",
        builder_post({"name": "v2", "on_failure": "page_on_call"}, rows, initial=1),
    )
    assert Flow.objects.get(pk="orders").definition["on_failure"] == {"flow_id": "page_on_call"}
    page = operator.get("/flows/orders/").content.decode()
    assert "starts the error-handler flow" in page and 'href="/flows/page_on_call/"' in page
