"""The resource API's flows: list, create, retrieve, update (a new version), delete, versions
and the dry-run validation, as an editor (who may do all of it) sees them."""

from __future__ import annotations

from typing import Any

import pytest

from flows import services
from flows.models import Flow, FlowVersion
from tests.factories import (
    cond,
    error_body,
    flow_doc,
    run_to_end,
    sample_flow,
    stored_counts,
    task,
)


@pytest.fixture
def editor(client_as: Any) -> Any:
    return client_as("editor")


def store(flow_id: str, *tasks: str, name: str | None = None) -> FlowVersion:
    doc = flow_doc([task(t) for t in tasks or ("a",)], flow_id=flow_id)
    if name:
        doc["name"] = name
    return services.flow_create(document=doc)


# --- list ------------------------------------------------------------------------------------
def test_the_list_shows_every_flow_by_id_without_their_documents(editor):
    store("b_flow")
    store("a_flow")

    body = editor.get("/api/flows/").json()

    assert body["count"] == 2
    assert [f["id"] for f in body["results"]] == ["a_flow", "b_flow"]
    assert set(body["results"][0]) == {"id", "name", "version", "created_at", "updated_at"}


def test_search_matches_the_id_or_the_name(editor):
    store("nightly_etl", name="Nightly load")
    store("hourly_sync", name="Sync the CRM")
    store("other")

    by_id = editor.get("/api/flows/?search=etl").json()["results"]
    by_name = editor.get("/api/flows/?search=crm").json()["results"]

    assert [f["id"] for f in by_id] == ["nightly_etl"]
    assert [f["id"] for f in by_name] == ["hourly_sync"]


def test_ordering_by_version_descending_puts_the_most_revised_flow_first(editor):
    store("once")
    store("twice")
    store("twice", "a", "b")

    body = editor.get("/api/flows/?ordering=-version").json()

    assert [(f["id"], f["version"]) for f in body["results"]] == [("twice", 2), ("once", 1)]


def test_the_list_is_paginated(editor):
    for i in range(5):
        store(f"flow_{i}")

    body = editor.get("/api/flows/?page_size=2&page=3").json()

    assert body["count"] == 5
    assert [f["id"] for f in body["results"]] == ["flow_4"]
    assert body["next"] is None


def test_a_page_past_the_end_is_404_in_the_error_shape(editor):
    store("only")

    error_body(editor.get("/api/flows/?page=9"), 404)


@pytest.mark.parametrize("rows", [1, 10, 40])
def test_listing_flows_costs_the_same_queries_however_many_there_are(
    editor, rows, django_assert_num_queries
):
    for i in range(rows):
        store(f"flow_{i}")
    editor.get("/api/flows/")  # the token's user and permissions are cached per request only

    # token + user, user permissions, group permissions, count, page
    with django_assert_num_queries(5):
        response = editor.get("/api/flows/")

    assert len(response.json()["results"]) == rows


# --- create ----------------------------------------------------------------------------------
def test_creating_a_flow_answers_201_with_its_document_and_version_1(editor):
    response = editor.post("/api/flows/", sample_flow(), format="json")

    assert response.status_code == 201
    body = response.json()
    assert (body["id"], body["name"], body["version"]) == (
        "example_flow",
        "Sample Data Pipeline",
        1,
    )
    assert [t["name"] for t in body["definition"]["tasks"]] == ["task1", "task2", "task3"]
    assert body["warnings"] == []
    assert FlowVersion.objects.get(flow_id="example_flow").created_by.username == "editor_user"


def test_creating_a_flow_whose_id_exists_stores_its_next_version(editor):
    store("test_flow")

    response = editor.post("/api/flows/", flow_doc([task("a"), task("b")]), format="json")

    assert response.status_code == 201
    assert response.json()["version"] == 2


def test_creating_reports_unreachable_tasks_as_warnings(editor):
    document = flow_doc([task("a"), task("orphan")], [cond("a", "success", "end", "end")])

    body = editor.post("/api/flows/", document, format="json").json()

    assert body["warnings"] == [
        {"field": "tasks[1]", "message": "task 'orphan' can never run: no path reaches it"}
    ]


def test_an_invalid_flow_is_400_with_every_field_error_and_nothing_stored(editor):
    document = flow_doc([task("a", "no_such_type"), task("a")], start_task="nowhere")

    body = error_body(editor.post("/api/flows/", document, format="json"), 400)

    assert body["code"] == "invalid_flow"
    assert {"tasks[0].task_type", "tasks[1].name", "start_task"} <= {
        e["field"] for e in body["errors"]
    }
    assert stored_counts() == (0, 0, 0)


def test_a_body_that_is_not_json_is_400_and_a_form_is_415(editor):
    broken = editor.post("/api/flows/", '{"id": [', content_type="application/json")
    form = editor.post("/api/flows/", "id=x", content_type="application/x-www-form-urlencoded")

    assert error_body(broken, 400)["detail"].startswith("JSON parse error")
    error_body(form, 415)


# --- retrieve --------------------------------------------------------------------------------
def test_retrieving_a_flow_shows_its_latest_document_and_description(editor):
    store("test_flow")
    services.flow_create(document=flow_doc([task("x")], description="Loads the warehouse"))

    body = editor.get("/api/flows/test_flow/").json()

    assert body["version"] == 2
    assert body["description"] == "Loads the warehouse"
    assert [t["name"] for t in body["definition"]["tasks"]] == ["x"]


def test_an_unknown_flow_is_404_naming_it(editor):
    body = error_body(editor.get("/api/flows/nope/"), 404)

    assert body["detail"] == "no flow with id 'nope'"


# --- update ----------------------------------------------------------------------------------
def test_updating_a_flow_stores_a_new_version_and_keeps_the_old_one(editor):
    store("test_flow", "a")

    response = editor.put("/api/flows/test_flow/", flow_doc([task("a"), task("b")]), format="json")

    assert response.status_code == 200
    assert response.json()["version"] == 2
    versions = FlowVersion.objects.filter(flow_id="test_flow").values_list("version", flat=True)
    assert sorted(versions) == [1, 2]
    assert FlowVersion.objects.get(flow_id="test_flow", version=1).definition["tasks"] == [
        task("a")
    ]


def test_an_update_may_leave_out_the_id(editor):
    store("test_flow")
    document = {"tasks": [task("only")]}

    response = editor.put("/api/flows/test_flow/", document, format="json")

    assert response.status_code == 200
    assert response.json()["definition"]["id"] == "test_flow"


def test_an_update_whose_id_names_another_flow_is_400_on_the_id_field(editor):
    store("test_flow")
    store("other_flow")

    document = flow_doc([task("a")], flow_id="other_flow")

    response = editor.put("/api/flows/test_flow/", document, format="json")

    body = error_body(response, 400)
    assert body["errors"] == [{"field": "id", "message": "must be 'test_flow' (or left out)"}]
    assert Flow.objects.get(pk="other_flow").version == 1
    assert Flow.objects.get(pk="test_flow").version == 1


def test_an_invalid_update_is_400_and_keeps_the_current_version(editor):
    store("test_flow")

    response = editor.put("/api/flows/test_flow/", flow_doc([task("a", "nope")]), format="json")

    assert error_body(response, 400)["errors"][0]["field"] == "tasks[0].task_type"
    assert Flow.objects.get(pk="test_flow").version == 1


def test_updating_an_unknown_flow_is_404_and_creates_nothing(editor):
    response = editor.put(
        "/api/flows/ghost/", flow_doc([task("a")], flow_id="ghost"), format="json"
    )

    error_body(response, 404)
    assert not Flow.objects.exists()


def test_a_partial_update_is_405(editor):
    store("test_flow")

    error_body(editor.patch("/api/flows/test_flow/", {"name": "x"}, format="json"), 405)


# --- delete ----------------------------------------------------------------------------------
def test_deleting_a_flow_removes_it_with_its_versions_and_finished_executions(editor):
    version = store("test_flow")
    execution, _ = services.execution_submit(flow_version=version)
    run_to_end(execution.id)

    response = editor.delete("/api/flows/test_flow/")

    assert response.status_code == 204
    assert stored_counts() == (0, 0, 0)


def test_deleting_a_flow_with_a_queued_execution_is_409_and_deletes_nothing(editor):
    version = store("test_flow")
    services.execution_submit(flow_version=version)

    body = error_body(editor.delete("/api/flows/test_flow/"), 409)

    assert "cancel them first" in body["detail"]
    assert stored_counts() == (1, 1, 1)


def test_deleting_an_unknown_flow_is_404(editor):
    error_body(editor.delete("/api/flows/ghost/"), 404)


# --- versions --------------------------------------------------------------------------------
def test_versions_are_listed_newest_first_with_who_stored_them(editor, alice):
    services.flow_create(document=flow_doc([task("a")]), user=alice)
    editor.put("/api/flows/test_flow/", flow_doc([task("b")]), format="json")

    body = editor.get("/api/flows/test_flow/versions/").json()

    assert [(v["version"], v["created_by"]) for v in body["results"]] == [
        (2, "editor_user"),
        (1, "alice"),
    ]


def test_one_version_shows_the_document_it_was_stored_with(editor):
    store("test_flow", "a")
    store("test_flow", "b")

    body = editor.get("/api/flows/test_flow/versions/1/").json()

    assert body["version"] == 1
    assert [t["name"] for t in body["definition"]["tasks"]] == ["a"]


@pytest.mark.parametrize(
    "path", ["/api/flows/test_flow/versions/9/", "/api/flows/ghost/versions/", "/api/flows/x/v/"]
)
def test_an_unknown_version_or_flow_is_404(editor, path):
    store("test_flow")

    error_body(editor.get(path), 404)


@pytest.mark.parametrize("rows", [1, 10, 30])
def test_listing_versions_costs_the_same_queries_however_many_there_are(
    editor, alice, rows, django_assert_num_queries
):
    for i in range(rows):
        services.flow_create(document=flow_doc([task("a")], description=f"v{i}"), user=alice)
    editor.get("/api/flows/test_flow/versions/")

    # token + user, user perms, group perms, the flow, count, page (with its users)
    with django_assert_num_queries(6):
        response = editor.get("/api/flows/test_flow/versions/")

    assert len(response.json()["results"]) == rows


# --- validate --------------------------------------------------------------------------------
def test_validating_a_good_document_reports_its_warnings_and_stores_nothing(editor):
    document = flow_doc([task("a"), task("orphan")], [cond("a", "success", "end", "end")])

    response = editor.post("/api/flows/validate/", document, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "flow_id": "test_flow",
        "errors": [],
        "warnings": [
            {"field": "tasks[1]", "message": "task 'orphan' can never run: no path reaches it"}
        ],
    }
    assert stored_counts() == (0, 0, 0)


def test_validating_a_bad_document_lists_every_error_with_its_field(editor):
    document = flow_doc([task("a", "nope")], [cond("a", "maybe", "ghost", "end")])

    body = editor.post("/api/flows/validate/", document, format="json").json()

    assert body["valid"] is False
    assert {e["field"] for e in body["errors"]} >= {
        "tasks[0].task_type",
        "conditions[0].outcome",
        "conditions[0].target_task_success",
    }
    assert stored_counts() == (0, 0, 0)


def test_validating_something_that_is_not_a_document_says_so(editor):
    body = editor.post("/api/flows/validate/", [1, 2], format="json").json()

    assert body["valid"] is False
    assert "must be a JSON object" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("document", "flow_id"),
    [
        ({"id": "half", "tasks": []}, "half"),
        ({"id": "Not Valid!", "tasks": [task("a")]}, "Not Valid!"),
        ({"tasks": [task("a")]}, None),
        ({"id": 7, "tasks": [task("a")]}, None),  # not text: no id to echo
    ],
)
def test_validating_a_bad_document_echoes_the_id_it_was_given(editor, document, flow_id):
    body = editor.post("/api/flows/validate/", document, format="json").json()

    assert body["valid"] is False
    assert body["flow_id"] == flow_id


# --- an identical document ---------------------------------------------------------------------
def test_posting_the_current_document_again_stores_no_new_version_and_answers_200(editor):
    document = flow_doc([task("a"), task("b")])
    first = editor.post("/api/flows/", document, format="json")

    again = editor.post("/api/flows/", {"flow": dict(reversed(document.items()))}, format="json")

    assert (first.status_code, again.status_code) == (201, 200)
    assert (first.json()["new_version"], again.json()["new_version"]) == (True, False)
    assert again.json()["version"] == 1
    assert FlowVersion.objects.filter(flow_id="test_flow").count() == 1


def test_putting_the_current_document_again_stores_no_new_version(editor):
    store("test_flow", "a", "b")
    document = flow_doc([task("a"), task("b")])
    del document["id"]

    response = editor.put("/api/flows/test_flow/", document, format="json")

    assert response.status_code == 200
    assert (response.json()["version"], response.json()["new_version"]) == (1, False)
    assert FlowVersion.objects.filter(flow_id="test_flow").count() == 1


def test_a_document_that_differs_only_in_a_value_type_is_a_new_version(editor):
    store("test_flow", "a")
    changed = flow_doc([task("a", "wait", seconds=1)])
    editor.post("/api/flows/", changed, format="json")

    response = editor.post("/api/flows/", flow_doc([task("a", "wait", seconds=1.0)]), format="json")

    assert response.status_code == 201
    assert response.json()["version"] == 3


def test_an_older_document_posted_again_is_a_new_version(editor):
    store("test_flow", "a")
    store("test_flow", "a", "b")

    response = editor.post("/api/flows/", flow_doc([task("a")]), format="json")

    assert (response.status_code, response.json()["version"]) == (201, 3)
