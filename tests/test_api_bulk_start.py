"""``POST /api/flows/{id}/executions/bulk/``: many executions in one call, every item checked
before any is stored, written together, each with its own idempotency key."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from flows import services
from flows.engine import wakeup
from flows.models import Execution, ExecutionStatus, FlowVersion, TaskRun, TaskRunStatus
from tests.factories import error_body, flow_doc, task

URL = "/api/flows/test_flow/executions/bulk/"
SCHEMA = {
    "type": "object",
    "required": ["customer"],
    "properties": {
        "customer": {"type": "integer"},
        "region": {"type": "string", "default": "eu"},
    },
}


@pytest.fixture
def operator(client_as: Any) -> Any:
    return client_as("operator")


@pytest.fixture
def version(db: Any) -> FlowVersion:
    return services.flow_create(document=flow_doc([task("a"), task("b")], input_schema=SCHEMA))


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The queue messages sent (each ``wake`` is one), whatever the broker."""
    sent: list[Any] = []
    real = wakeup.wake

    def wake(execution_id: Any, **kwargs: Any) -> None:
        sent.append(execution_id)
        real(execution_id, **kwargs)

    monkeypatch.setattr(wakeup, "wake", wake)
    return sent


def bulk(client: Any, body: Any) -> Any:
    return client.post(URL, body, format="json")


def stored() -> tuple[int, int]:
    return Execution.objects.count(), TaskRun.objects.count()


# --- starting -----------------------------------------------------------------------------------
def test_inputs_start_one_queued_execution_each_answered_in_order(operator, version, wakes):
    response = bulk(operator, {"inputs": [{"customer": n} for n in range(5)]})

    assert response.status_code == 201, response.content
    answered = response.json()["executions"]
    ids = [row["id"] for row in answered]
    rows = {str(pk): row for pk, row in Execution.objects.in_bulk(ids).items()}
    # In the order asked, each with the input it was given (the schema's default filled in).
    assert [rows[pk].input for pk in ids] == [{"customer": n, "region": "eu"} for n in range(5)]
    assert {row.status for row in rows.values()} == {ExecutionStatus.QUEUED}
    assert {row.created_by.username for row in rows.values()} == {"operator_user"}
    steps = TaskRun.objects.filter(execution_id__in=ids)
    assert set(steps.values_list("task_name", "status", "seq")) == {("a", TaskRunStatus.PENDING, 1)}
    assert steps.count() == 5
    assert all(row["created"] for row in answered)
    # Their status URLs answer the executions, first step included.
    detail = operator.get(answered[3]["status_url"]).json()
    assert (detail["id"], detail["input"]["customer"], detail["status"]) == (ids[3], 3, "QUEUED")
    assert [s["task_name"] for s in detail["steps"]] == ["a"]
    # Woken together: no more queue messages than worker processes.
    assert 1 <= len(wakes) <= 2


def test_a_bulk_started_execution_is_stored_as_a_single_start_stores_it(operator, version):
    single = operator.post(
        "/api/flows/test_flow/executions/", {"input": {"customer": 1}}, format="json"
    ).json()
    bulked = bulk(operator, {"inputs": [{"customer": 1}]}).json()["executions"][0]

    def stored_row(pk: str) -> tuple[dict, dict]:
        skip = {"id", "created_at", "queued_at", "execution", "woken_at"}
        execution = Execution.objects.filter(pk=pk).values().get()
        step = TaskRun.objects.filter(execution_id=pk).values().get()
        return (
            {k: v for k, v in execution.items() if k not in skip},
            {k: v for k, v in step.items() if k not in skip | {"execution_id"}},
        )

    assert stored_row(bulked["id"]) == stored_row(single["id"])


def test_a_thousand_inputs_in_one_call_are_queued_with_their_first_steps(
    operator, version, wakes, settings
):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 2}

    response = bulk(operator, {"inputs": [{"customer": n} for n in range(1000)]})

    assert response.status_code == 201, response.content[:300]
    ids = [row["id"] for row in response.json()["executions"]]
    assert len(set(ids)) == 1000
    assert Execution.objects.filter(pk__in=ids, status=ExecutionStatus.QUEUED).count() == 1000
    assert (
        TaskRun.objects.filter(execution_id__in=ids, seq=1, status=TaskRunStatus.PENDING).count()
        == 1000
    )
    first = Execution.objects.get(pk=ids[999])
    assert first.input == {"customer": 999, "region": "eu"}
    assert len(wakes) <= 2


def test_a_thousand_started_in_bulk_all_run_to_completion(operator, version, sync_jobs):
    with sync_jobs():
        response = bulk(operator, {"inputs": [{"customer": n} for n in range(1000)]})

    assert response.status_code == 201
    ids = [row["id"] for row in response.json()["executions"]]
    done = Execution.objects.filter(pk__in=ids, status=ExecutionStatus.COMPLETED)
    assert done.count() == 1000
    assert TaskRun.objects.filter(execution_id__in=ids, status=TaskRunStatus.SUCCESS).count() == (
        2000
    )


def test_a_batch_costs_the_same_statements_however_many_items_it_has(operator, version):
    def statements(n: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert bulk(operator, {"inputs": [{"customer": i} for i in range(n)]}).status_code == (
                201
            )
        return len(queries)

    # Rows go in a statement a table (on SQLite, one more for each 32,766 values: 1,000
    # executions of some 30 columns take two), never one a row.
    assert statements(1000) - statements(2) <= 1


def test_items_take_a_version(operator, version):
    services.flow_create(document=flow_doc([task("z")]))

    answered = bulk(operator, {"version": 1, "items": [{"input": {"customer": 1}}]}).json()

    execution = Execution.objects.get(pk=answered["executions"][0]["id"])
    assert (execution.flow_version.version, execution.current_task) == (1, "a")


# --- every item checked before any is stored ----------------------------------------------------
def test_one_bad_item_refuses_the_batch_naming_each_error_and_stores_nothing(
    operator, version, wakes
):
    items = [{"input": {"customer": n}} for n in range(6)]
    items[3] = {"input": {"customer": "forty-two"}}
    items[5] = {"input": {}}

    body = error_body(bulk(operator, {"items": items}), 400)

    assert body["code"] == "invalid_input"
    assert [e["field"] for e in body["errors"]] == [
        "items[3].input/customer",
        "items[5].input/customer",
    ]
    assert "nothing was started" in body["detail"]
    assert stored() == (0, 0)
    assert wakes == []


def test_errors_of_inputs_point_into_the_list(operator, version):
    body = error_body(bulk(operator, {"inputs": [{"customer": 1}, [1, 2], {"customer": 2.5}]}), 400)

    assert [(e["field"], e["message"]) for e in body["errors"]] == [
        ("inputs[1]", "must be a JSON object"),
        ("inputs[2]/customer", body["errors"][1]["message"]),
    ]
    assert stored() == (0, 0)


def test_text_no_database_stores_is_refused_naming_the_item(operator, version):
    body = error_body(
        bulk(operator, {"inputs": [{"customer": 1}, {"customer": 2, "x": "a\x00"}]}), 400
    )

    assert body["errors"][0]["field"] == "inputs[1]"
    assert "inputs[1].x" in body["errors"][0]["message"]
    assert stored() == (0, 0)


def test_more_items_than_flow_bulk_max_is_400_and_stores_nothing(operator, version, settings):
    settings.FLOW_BULK_MAX = 3

    body = error_body(bulk(operator, {"inputs": [{"customer": n} for n in range(4)]}), 400)

    assert "at most 3" in body["detail"]
    assert "FLOW_BULK_MAX" in body["detail"]
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "items"),
        ({"items": [], "inputs": []}, "items"),
        ({"items": []}, "items"),
        ({"items": "many"}, "items"),
        ({"items": [{"input": {"customer": 1}}, 7]}, "items[1]"),
        ({"items": [{"inputs": {"customer": 1}}]}, "items[0]"),
        ({"items": [{"input": {"customer": 1}, "idempotency_key": 5}]}, "items[0].idempotency_key"),
        (
            {"items": [{"input": {"customer": 1}, "idempotency_key": "k" * 201}]},
            "items[0].idempotency_key",
        ),
        (
            {"items": [{"input": {"customer": 1}, "idempotency_key": "a\nb"}]},
            "items[0].idempotency_key",
        ),
        ({"inputs": [{"customer": 1}], "version": 0}, "version"),
    ],
)
def test_a_malformed_batch_is_400_naming_the_field(operator, version, body, field):
    response = bulk(operator, body)

    assert [e["field"] for e in error_body(response, 400)["errors"]] == [field]
    assert stored() == (0, 0)


def test_a_version_that_no_longer_validates_is_409_and_starts_nothing(operator, version):
    FlowVersion.objects.filter(pk=version.pk).update(
        definition=flow_doc([task("a", "removed_plugin")])
    )

    body = error_body(bulk(operator, {"inputs": [{"customer": 1}]}), 409)

    assert "no longer valid" in body["detail"]
    assert stored() == (0, 0)


# --- per-item idempotency -----------------------------------------------------------------------
def keyed(*pairs: tuple[str, int]) -> dict[str, Any]:
    return {"items": [{"input": {"customer": n}, "idempotency_key": key} for key, n in pairs]}


def test_a_repeated_batch_answers_the_same_executions_and_starts_nothing(operator, version):
    first = bulk(operator, keyed(("order-1", 1), ("order-2", 2)))
    again = bulk(operator, keyed(("order-1", 1), ("order-2", 2)))

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["executions"] == [
        {**row, "created": False} for row in first.json()["executions"]
    ]
    assert stored() == (2, 2)


def test_only_the_items_with_new_keys_start_executions(operator, version):
    first = bulk(operator, keyed(("order-2", 2))).json()["executions"][0]

    answered = bulk(operator, keyed(("order-1", 1), ("order-2", 2), ("order-3", 3))).json()

    rows = answered["executions"]
    assert [row["created"] for row in rows] == [True, False, True]
    assert rows[1]["id"] == first["id"]
    assert Execution.objects.count() == 3


def test_an_item_repeating_a_single_starts_key_and_body_answers_its_execution(operator, version):
    single = operator.post(
        "/api/flows/test_flow/executions/",
        {"input": {"customer": 7}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="order-7",
    ).json()

    rows = bulk(operator, keyed(("order-7", 7))).json()["executions"]

    assert (rows[0]["id"], rows[0]["created"]) == (single["id"], False)
    assert Execution.objects.count() == 1


def test_a_used_key_with_another_body_is_422_and_nothing_of_the_batch_starts(operator, version):
    bulk(operator, keyed(("order-1", 1)))

    body = error_body(bulk(operator, keyed(("order-0", 0), ("order-1", 99))), 422)

    assert body["code"] == "idempotency_conflict"
    assert body["errors"] == [
        {"field": "items[1].idempotency_key", "message": "already used with another body"}
    ]
    assert not Execution.objects.filter(idempotency_key="order-0").exists()
    assert Execution.objects.count() == 1


def test_two_items_of_one_batch_with_the_same_key_are_400(operator, version):
    body = error_body(bulk(operator, keyed(("order-1", 1), ("order-1", 1))), 400)

    assert body["errors"] == [
        {"field": "items[1].idempotency_key", "message": "the same key as items[0]"}
    ]
    assert stored() == (0, 0)


def test_keys_are_each_users_own(client_as, version):
    alice, bob = client_as("operator"), client_as("editor")

    mine = bulk(alice, keyed(("order-1", 1))).json()["executions"][0]
    theirs = bulk(bob, keyed(("order-1", 1))).json()["executions"][0]

    assert mine["id"] != theirs["id"]
    assert theirs["created"]


# --- who may -----------------------------------------------------------------------------------
def test_a_viewer_may_not_start_in_bulk(client_as, version):
    error_body(bulk(client_as("viewer"), {"inputs": [{"customer": 1}]}), 403)
    assert stored() == (0, 0)


def test_an_unknown_flow_is_404(operator, db):
    error_body(
        operator.post("/api/flows/ghost/executions/bulk/", {"inputs": [{}]}, format="json"), 404
    )
