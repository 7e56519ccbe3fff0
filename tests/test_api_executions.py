"""The resource API's executions: start one from a flow (idempotently), list and filter them,
look at one with its steps, cancel, re-run, and tail its log lines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from flows import services
from flows.models import Execution, ExecutionEvent, ExecutionStatus, FlowVersion
from tests.factories import cond, error_body, failing, flow_doc, run_to_end, task


@pytest.fixture
def operator(client_as: Any) -> Any:
    return client_as("operator")


@pytest.fixture
def version(db: Any) -> FlowVersion:
    return services.flow_create(document=flow_doc([task("a"), task("b")]))


def submit(version: FlowVersion, **kwargs: Any) -> Execution:
    execution, _ = services.execution_submit(flow_version=version, **kwargs)
    return execution


def start(client: Any, body: dict | None = None, **headers: Any) -> Any:
    return client.post("/api/flows/test_flow/executions/", body or {}, format="json", **headers)


# --- start -----------------------------------------------------------------------------------
def test_starting_queues_an_execution_of_the_latest_version_with_its_first_step(operator, version):
    services.flow_create(document=flow_doc([task("a"), task("b"), task("c")]))

    response = start(operator, {"input": {"customer": 42}})

    assert response.status_code == 201
    body = response.json()
    assert (body["flow"], body["flow_version"], body["status"]) == ("test_flow", 2, "QUEUED")
    assert body["input"] == {"customer": 42}
    assert body["created_by"] == "operator_user"
    assert [(s["seq"], s["task_name"], s["status"]) for s in body["steps"]] == [(1, "a", "PENDING")]
    assert Execution.objects.get(pk=body["id"]).input == {"customer": 42}


def test_starting_a_given_version_runs_that_version(operator, version):
    services.flow_create(document=flow_doc([task("z")]))

    body = start(operator, {"version": 1}).json()

    assert body["flow_version"] == 1
    assert body["steps"][0]["task_name"] == "a"
    assert run_to_end(body["id"]).status == ExecutionStatus.COMPLETED


def test_a_started_execution_runs_to_completion_on_the_worker(operator, version, sync_jobs):
    with sync_jobs():
        execution_id = start(operator).json()["id"]

    body = operator.get(f"/api/executions/{execution_id}/").json()

    assert body["status"] == "COMPLETED"
    assert [(s["task_name"], s["status"]) for s in body["steps"]] == [
        ("a", "SUCCESS"),
        ("b", "SUCCESS"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": [1, 2]}, "input"),
        ({"input": "text"}, "input"),
        ({"version": 0}, "version"),
        ({"version": "latest"}, "version"),
    ],
)
def test_a_bad_start_request_is_400_naming_the_field_and_starts_nothing(
    operator, version, body, field
):
    response = start(operator, body)

    assert [e["field"] for e in error_body(response, 400)["errors"]] == [field]
    assert not Execution.objects.exists()


def test_starting_a_version_that_does_not_exist_is_404_naming_the_latest(operator, version):
    body = error_body(start(operator, {"version": 7}), 404)

    assert body["detail"] == "flow 'test_flow' has no version 7 (latest is 1)"
    assert not Execution.objects.exists()


def test_starting_an_unknown_flow_is_404(operator, db):
    error_body(operator.post("/api/flows/ghost/executions/", {}, format="json"), 404)


def test_starting_a_version_that_no_longer_validates_is_409_and_starts_nothing(operator, version):
    # A plugin the version uses was removed since it was stored.
    FlowVersion.objects.filter(pk=version.pk).update(
        definition=flow_doc([task("a", "removed_plugin")])
    )

    body = error_body(start(operator), 409)

    assert "no longer valid" in body["detail"]
    assert not Execution.objects.exists()


# --- Idempotency-Key -------------------------------------------------------------------------
def test_a_repeated_start_with_the_same_key_answers_200_with_the_first_execution(operator, version):
    first = start(operator, {"input": {"n": 1}}, HTTP_IDEMPOTENCY_KEY="order-17")
    again = start(operator, {"input": {"n": 1}}, HTTP_IDEMPOTENCY_KEY="order-17")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert Execution.objects.count() == 1


def test_a_repeated_key_with_a_different_body_is_422_naming_the_conflict(operator, version):
    first = start(operator, {"input": {"n": 1}}, HTTP_IDEMPOTENCY_KEY="order-17")

    again = start(operator, {"input": {"n": 2}}, HTTP_IDEMPOTENCY_KEY="order-17")

    body = error_body(again, 422)
    assert body["code"] == "idempotency_conflict"
    assert "different request body" in body["detail"]
    assert "new key" in body["detail"]
    assert first.json()["id"] not in again.content.decode()
    assert Execution.objects.count() == 1


def test_a_repeated_key_compares_bodies_as_json_not_as_text(operator, version):
    first = operator.post(
        "/api/flows/test_flow/executions/",
        '{"input": {"a": 1, "b": 2}, "version": 1}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    again = operator.post(
        "/api/flows/test_flow/executions/",
        '{"version": 1,\n "input": {"b": 2, "a": 1}}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
    )

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


def test_different_keys_start_different_executions(operator, version):
    one = start(operator, HTTP_IDEMPOTENCY_KEY="k1").json()["id"]
    two = start(operator, HTTP_IDEMPOTENCY_KEY="k2").json()["id"]

    assert one != two


def test_the_same_key_from_two_users_starts_two_executions(alice, bob, grant, version):
    from tests.conftest import token_client

    mine = start(token_client(grant(alice, "operator")), HTTP_IDEMPOTENCY_KEY="k")
    theirs = start(token_client(grant(bob, "operator")), HTTP_IDEMPOTENCY_KEY="k")

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_a_key_over_200_characters_is_400(operator, version):
    body = error_body(start(operator, HTTP_IDEMPOTENCY_KEY="k" * 201), 400)

    assert body["errors"] == [{"field": "Idempotency-Key", "message": "at most 200 characters"}]
    assert not Execution.objects.exists()


# --- list ------------------------------------------------------------------------------------
def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content[:300]
    return [row["id"] for row in response.json()["results"]]


def test_the_list_shows_newest_first(operator, version):
    older, newer = submit(version), submit(version)

    assert ids(operator.get("/api/executions/")) == [str(newer.id), str(older.id)]


def test_the_list_filters_by_status(operator, version):
    done = run_to_end(submit(version).id)
    queued = submit(version)
    services.execution_cancel(execution_id=submit(version).id)

    assert ids(operator.get("/api/executions/?status=COMPLETED")) == [str(done.id)]
    assert set(ids(operator.get("/api/executions/?status=COMPLETED&status=QUEUED"))) == {
        str(done.id),
        str(queued.id),
    }


def test_the_list_filters_by_flow(operator, version):
    other = services.flow_create(document=flow_doc([task("x")], flow_id="other"))
    mine, _ = submit(version), submit(other)

    assert ids(operator.get("/api/executions/?flow=test_flow")) == [str(mine.id)]


def test_the_list_filters_by_creation_time(operator, version):
    old, new = submit(version), submit(version)
    Execution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()

    assert ids(operator.get("/api/executions/", {"created_after": yesterday})) == [str(new.id)]
    assert ids(operator.get("/api/executions/", {"created_before": yesterday})) == [str(old.id)]


def test_the_list_filters_by_trigger(operator, version):
    original = run_to_end(submit(version).id)
    rerun = services.execution_rerun(execution_id=original.id)

    assert ids(operator.get("/api/executions/?trigger=rerun")) == [str(rerun.id)]


def test_the_list_orders_by_a_chosen_field(operator, version):
    first, second = submit(version), submit(version)
    Execution.objects.filter(pk=first.pk).update(status=ExecutionStatus.FAILED)

    assert ids(operator.get("/api/executions/?ordering=status")) == [str(first.id), str(second.id)]
    assert ids(operator.get("/api/executions/?ordering=created_at")) == [
        str(first.id),
        str(second.id),
    ]


def test_the_list_pages_by_50_by_default(operator, version):
    for _ in range(51):
        submit(version)

    first = operator.get("/api/executions/").json()
    second = operator.get(first["next"]).json()

    assert (first["count"], len(first["results"]), len(second["results"])) == (51, 50, 1)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=DONE", "status"),
        ("created_after=yesterday", "created_after"),
        ("trigger=cron", "trigger"),
    ],
)
def test_a_bad_filter_is_400_naming_it(operator, version, query, field):
    body = error_body(operator.get(f"/api/executions/?{query}"), 400)

    assert [e["field"] for e in body["errors"]] == [field]


@pytest.mark.parametrize("rows", [1, 20, 60])
def test_listing_executions_costs_the_same_queries_however_many_there_are(
    operator, alice, rows, django_assert_num_queries
):
    for i in range(rows):
        flow = services.flow_create(document=flow_doc([task("a")], flow_id=f"flow_{i % 3}"))
        submit(flow, user=alice)
    operator.get("/api/executions/")

    # token + user, user permissions, group permissions, count, one page with its joins, the
    # page's input sizes (issue 20: rows carry the size, not the input)
    with django_assert_num_queries(6):
        response = operator.get("/api/executions/?status=QUEUED&ordering=-created_at")

    assert len(response.json()["results"]) == min(rows, 50)
    assert {row["created_by"] for row in response.json()["results"]} == {"alice"}


# --- retrieve --------------------------------------------------------------------------------
def test_an_execution_shows_every_step_with_where_the_flow_went(operator):
    document = flow_doc(
        [failing("try"), task("recover"), task("skipped")],
        [cond("try", "success", "skipped", "recover"), cond("recover", "success", "end", "end")],
    )
    execution = run_to_end(submit(services.flow_create(document=document)).id)

    body = operator.get(f"/api/executions/{execution.id}/").json()

    assert body["status"] == "COMPLETED"
    steps = [(s["seq"], s["task_name"], s["status"]) for s in body["steps"]]
    assert steps == [(1, "try", "FAILURE"), (2, "recover", "SUCCESS")]
    assert body["steps"][0]["error"]
    assert "recover" in body["steps"][0]["route"]


@pytest.mark.parametrize("key", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_an_unknown_execution_is_404_naming_it(operator, db, key):
    body = error_body(operator.get(f"/api/executions/{key}/"), 404)

    assert key in body["detail"]


# --- cancel ----------------------------------------------------------------------------------
def test_cancelling_a_queued_execution_ends_it_cancelled(operator, version):
    execution = submit(version)

    response = operator.post(f"/api/executions/{execution.id}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["steps"][0]["status"] == "CANCELLED"
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.CANCELLED


def test_cancelling_a_finished_execution_is_409_and_changes_nothing(operator, version):
    execution = run_to_end(submit(version).id)

    body = error_body(operator.post(f"/api/executions/{execution.id}/cancel/"), 409)

    assert "already COMPLETED" in body["detail"]
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED


def test_cancelling_an_unknown_execution_is_404(operator, db):
    error_body(operator.post("/api/executions/00000000-0000-0000-0000-000000000000/cancel/"), 404)


# --- rerun -----------------------------------------------------------------------------------
def test_a_rerun_is_a_new_execution_of_the_same_version_and_input(operator, version):
    original = run_to_end(submit(version, input={"day": "monday"}).id)
    services.flow_create(document=flow_doc([task("changed")]))  # the flow moved on

    response = operator.post(f"/api/executions/{original.id}/rerun/")

    assert response.status_code == 201
    body = response.json()
    assert body["id"] != str(original.id)
    assert (body["flow_version"], body["input"]) == (1, {"day": "monday"})
    assert (body["trigger"], body["rerun_of"]) == ("rerun", str(original.id))
    assert body["created_by"] == "operator_user"


def test_rerunning_a_version_that_no_longer_validates_is_409(operator, version):
    original = run_to_end(submit(version).id)
    FlowVersion.objects.filter(pk=version.pk).update(definition=flow_doc([task("a", "gone")]))

    error_body(operator.post(f"/api/executions/{original.id}/rerun/"), 409)

    assert Execution.objects.count() == 1


def test_rerunning_an_unknown_execution_is_404(operator, db):
    error_body(operator.post("/api/executions/00000000-0000-0000-0000-000000000000/rerun/"), 404)


# --- events ----------------------------------------------------------------------------------
def log(execution: Execution, *messages: str) -> list[int]:
    now = timezone.now()
    return [
        ExecutionEvent.objects.create(execution=execution, created_at=now, message=m).id
        for m in messages
    ]


def test_events_after_a_seq_are_only_the_lines_written_since(operator, version):
    execution = submit(version)
    first, second, third = log(execution, "one", "two", "three")

    body = operator.get(f"/api/executions/{execution.id}/events/?after={first}").json()

    assert [(e["seq"], e["message"]) for e in body["events"]] == [(second, "two"), (third, "three")]
    assert (body["next_after"], body["more"], body["finished"]) == (third, False, False)


def test_a_tail_with_nothing_new_keeps_its_offset(operator, version):
    execution = submit(version)
    (last,) = log(execution, "only")

    body = operator.get(f"/api/executions/{execution.id}/events/?after={last}").json()

    assert body["events"] == []
    assert body["next_after"] == last


def test_events_come_in_pages_of_limit_lines(operator, version):
    execution = submit(version)
    seqs = log(execution, *[f"line {i}" for i in range(5)])

    body = operator.get(f"/api/executions/{execution.id}/events/?limit=2").json()

    assert [e["seq"] for e in body["events"]] == seqs[:2]
    assert (body["next_after"], body["more"]) == (seqs[1], True)


def test_a_tail_of_a_run_shows_what_its_tasks_logged_and_that_it_finished(operator):
    document = flow_doc([task("hello", "print", message="hello from the task")])
    execution = run_to_end(submit(services.flow_create(document=document)).id)

    body = operator.get(f"/api/executions/{execution.id}/events/").json()

    lines = [(e["task_name"], e["message"]) for e in body["events"]]
    assert ("hello", "hello from the task") in lines
    assert (body["status"], body["finished"]) == ("COMPLETED", True)


def test_events_never_include_another_executions_lines(operator, version):
    mine, other = submit(version), submit(version)
    log(other, "not mine")
    log(mine, "mine")

    body = operator.get(f"/api/executions/{mine.id}/events/").json()

    assert [e["message"] for e in body["events"]] == ["mine"]


@pytest.mark.parametrize(
    ("query", "field"), [("after=-1", "after"), ("after=x", "after"), ("limit=0", "limit")]
)
def test_a_bad_offset_or_limit_is_400_naming_it(operator, version, query, field):
    execution = submit(version)

    body = error_body(operator.get(f"/api/executions/{execution.id}/events/?{query}"), 400)

    assert [e["field"] for e in body["errors"]] == [field]


def test_events_of_an_unknown_execution_are_404(operator, db):
    error_body(operator.get("/api/executions/00000000-0000-0000-0000-000000000000/events/"), 404)


@pytest.mark.parametrize("rows", [1, 10, 50])
def test_tailing_events_costs_the_same_queries_however_many_lines_there_are(
    operator, version, rows, django_assert_num_queries
):
    execution = run_to_end(submit(version).id)
    log(execution, *[f"line {i}" for i in range(rows)])
    operator.get(f"/api/executions/{execution.id}/events/")

    # token + user, user permissions, group permissions, the execution, the lines with steps
    with django_assert_num_queries(5):
        response = operator.get(f"/api/executions/{execution.id}/events/")

    assert len(response.json()["events"]) >= rows


@pytest.mark.parametrize(
    "moment", ["2026-01-01T00:00:00+22:58", "2026-01-01T00:00:00-15:30", "2026-01-01T05:00:00Z"]
)
def test_a_creation_time_with_any_offset_is_compared_in_utc(operator, version, moment):
    submit(version)

    assert len(ids(operator.get("/api/executions/", {"created_after": moment}))) == 1


def test_a_creation_time_that_does_not_exist_in_utc_is_400(operator, version):
    response = operator.get("/api/executions/", {"created_before": "0001-01-01T00:00:00+05:00"})

    assert error_body(response, 400)["errors"] == [
        {"field": "created_before", "message": "out of range"}
    ]
