"""The seed-compatible endpoints: POST /flow/create, POST /flow/execute, GET /flow/{id}/status,
DELETE /flow/{id} — same paths, shapes and status codes as the seed's README."""

from __future__ import annotations

import uuid

import pytest

from flows import engine
from flows.models import Execution, ExecutionEvent, Flow, FlowVersion, TaskRun
from tests.factories import cond, failing, flow_doc, run_to_end, sample_flow, start_execution, task

SEED_STATUS_FIELDS = {
    "execution_id",
    "flow_name",
    "status",
    "current_task",
    "completed_tasks",
    "started_at",
    "ended_at",
    "task_results",
}
SEED_RESULT_FIELDS = {
    "task_name",
    "status",
    "message",
    "data",
    "execution_time",
    "timestamp",
    "error",
}


def create(api, document):
    response = api.post("/flow/create", document, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def run_through_api(api, sync_jobs, document) -> dict:
    """Create, execute (the job runs inline) and return the final status document."""
    execution_id = create(api, document)["execution_id"]
    with sync_jobs():
        started = api.post("/flow/execute", {"execution_id": execution_id}, format="json")
    assert started.status_code == 200, started.json()
    return api.get(f"/flow/{execution_id}/status").json()


def rows_of(execution_id) -> int:
    return (
        Execution.objects.filter(pk=execution_id).count()
        + TaskRun.objects.filter(execution_id=execution_id).count()
        + ExecutionEvent.objects.filter(execution_id=execution_id).count()
    )


# --- POST /flow/create -------------------------------------------------------------------------
def test_creating_the_seed_sample_answers_with_an_execution_id_in_created_state(api):
    body = create(api, sample_flow())

    assert uuid.UUID(body["execution_id"])
    assert body["flow_name"] == "Sample Data Pipeline"
    assert body["flow_id"] == "example_flow"
    assert body["status"] == "created"
    assert body["version"] == 1
    assert "POST /flow/execute" in body["message"]
    assert body["warnings"] == []
    assert Execution.objects.get(pk=body["execution_id"]).status == "CREATED"


def test_create_accepts_a_bare_document_as_well_as_one_wrapped_in_flow(api):
    bare = create(api, sample_flow()["flow"])

    assert bare["flow_id"] == "example_flow"
    assert Execution.objects.filter(pk=bare["execution_id"]).exists()


def test_creating_with_an_existing_flow_id_stores_a_new_version(api):
    first = create(api, flow_doc([task("a")]))
    second = create(api, flow_doc([task("a"), task("b")]))

    assert (first["version"], second["version"]) == (1, 2)
    assert second["flow_id"] == first["flow_id"] == "test_flow"
    assert Flow.objects.count() == 1
    assert FlowVersion.objects.filter(flow_id="test_flow").count() == 2
    assert len(Flow.objects.get(pk="test_flow").definition["tasks"]) == 2
    # Each execution keeps the version it was created with.
    status = api.get(f"/flow/{first['execution_id']}/status").json()
    assert status["flow_version"] == 1


def test_creating_the_current_document_again_reuses_its_version_with_a_new_execution(api):
    first = create(api, sample_flow())
    again = create(api, sample_flow()["flow"])

    assert (first["version"], again["version"]) == (1, 1)
    assert (first["new_version"], again["new_version"]) == (True, False)
    assert again["execution_id"] != first["execution_id"]
    assert "unchanged" in again["message"]
    assert FlowVersion.objects.filter(flow_id="example_flow").count() == 1
    assert Execution.objects.count() == 2


def test_create_reports_tasks_that_no_path_reaches_as_warnings_not_errors(api):
    document = flow_doc([task("a"), task("orphan")], [cond("a", "success", "end", "end")])

    body = create(api, document)

    assert body["status"] == "created"
    assert body["warnings"] == [
        {"field": "tasks[1]", "message": "task 'orphan' can never run: no path reaches it"}
    ]


def test_an_invalid_flow_is_refused_with_every_error_and_its_field(api):
    document = flow_doc(
        [task("a", "no_such_type"), task("a")],
        [cond("ghost", "maybe", "a", "end")],
        start_task="nowhere",
    )

    response = api.post("/flow/create", document, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith("Failed to create flow: ")
    assert body["code"] == "invalid_flow"
    fields = {e["field"] for e in body["errors"]}
    assert {
        "tasks[0].task_type",
        "tasks[1].name",
        "start_task",
        "conditions[0].source_task",
        "conditions[0].outcome",
    } <= fields
    assert all(e["message"] for e in body["errors"])
    assert Flow.objects.count() == 0
    assert Execution.objects.count() == 0


# --- POST /flow/execute ------------------------------------------------------------------------
def test_executing_the_sample_runs_it_to_completed(api, sync_jobs):
    status = run_through_api(api, sync_jobs, sample_flow())

    assert status["status"] == "COMPLETED"
    assert status["completed_tasks"] == ["task1", "task2", "task3"]
    assert status["executed_tasks"] == ["task1", "task2", "task3"]
    assert status["current_task"] is None
    assert status["error"] is None
    assert status["started_at"] and status["ended_at"]
    assert {r["status"] for r in status["task_results"].values()} == {"SUCCESS"}


def test_execute_answers_with_the_status_document_of_the_queued_execution(api):
    execution_id = create(api, sample_flow())["execution_id"]

    response = api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["execution_id"] == execution_id
    assert body["status"] == "QUEUED"
    assert body["current_task"] == "task1"
    assert body["task_results"] == {}


def test_executing_an_unknown_execution_is_404(api):
    execution_id = str(uuid.uuid4())
    response = api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    assert response.status_code == 404
    assert response.json()["detail"] == f"Flow execution {execution_id} not found"


def test_executing_an_execution_twice_is_409_and_leaves_it_as_it_was(api):
    execution_id = create(api, sample_flow())["execution_id"]
    api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    again = api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    assert again.status_code == 409
    assert "only a CREATED execution can be executed" in again.json()["detail"]
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == "QUEUED"
    assert execution.steps.count() == 1


def test_executing_a_finished_execution_is_409_and_it_stays_completed(api, sync_jobs):
    execution_id = run_through_api(api, sync_jobs, sample_flow())["execution_id"]

    again = api.post("/flow/execute", {"execution_id": execution_id}, format="json")

    assert again.status_code == 409
    assert api.get(f"/flow/{execution_id}/status").json()["status"] == "COMPLETED"
    assert TaskRun.objects.filter(execution_id=execution_id).count() == 3


@pytest.mark.parametrize(
    "body", [{}, {"execution_id": "not-a-uuid"}, {"execution_id": 7}, {"execution_id": None}]
)
def test_execute_without_a_uuid_is_400_naming_the_field(api, body):
    response = api.post("/flow/execute", body, format="json")

    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["execution_id"]
    assert "execution_id" in response.json()["detail"]


def test_execute_explains_that_the_id_must_be_the_uuid_from_create(api):
    response = api.post("/flow/execute", {"execution_id": "123"}, format="json")

    assert response.json()["errors"][0]["message"] == (
        "must be a UUID, as returned by POST /flow/create"
    )


# --- GET /flow/{id}/status ---------------------------------------------------------------------
def test_status_of_a_created_execution_has_the_seed_fields_and_nothing_run(api):
    execution_id = create(api, sample_flow())["execution_id"]

    status = api.get(f"/flow/{execution_id}/status").json()

    assert SEED_STATUS_FIELDS | {"executed_tasks", "error"} <= set(status)
    assert status["status"] == "CREATED"
    assert status["flow_name"] == "Sample Data Pipeline"
    assert status["started_at"] is None and status["ended_at"] is None
    assert status["completed_tasks"] == [] and status["executed_tasks"] == []
    assert status["task_results"] == {}


def test_status_task_results_are_keyed_by_task_name_in_the_seed_shape(api, sync_jobs):
    document = flow_doc([task("fetch", "fetch_data", delay_seconds=0.05)])

    status = run_through_api(api, sync_jobs, document)

    result = status["task_results"]["fetch"]
    assert set(result) == SEED_RESULT_FIELDS
    assert result["task_name"] == "fetch"
    assert result["status"] == "SUCCESS"
    assert result["message"] == "Fetched 3 records"
    assert len(result["data"]["records"]) == 3
    assert result["error"] is None
    assert result["timestamp"]
    # Seconds, not milliseconds: the task slept 0.05 s.
    assert 0.05 <= result["execution_time"] < 50


def test_status_shows_a_failed_task_and_the_recovery_task_that_completed_the_flow(api, sync_jobs):
    document = flow_doc(
        [failing("fetch"), task("alert", "print", message="fetch failed")],
        [cond("fetch", "success", "end", "alert")],
    )

    status = run_through_api(api, sync_jobs, document)

    assert status["status"] == "COMPLETED"
    assert status["executed_tasks"] == ["fetch", "alert"]
    assert status["completed_tasks"] == ["alert"]
    failed = status["task_results"]["fetch"]
    assert failed["status"] == "FAILURE"
    assert "Simulated failure in task fetch" in failed["error"]


def test_status_lists_repeats_in_executed_tasks_and_names_the_step_limit(api, sync_jobs):
    document = flow_doc(
        [failing("retry_me")], [cond("retry_me", "success", "end", "retry_me")], max_steps=3
    )

    status = run_through_api(api, sync_jobs, document)

    assert status["status"] == "FAILED"
    assert status["executed_tasks"] == ["retry_me", "retry_me", "retry_me"]
    assert status["completed_tasks"] == []
    assert "step limit" in status["error"]


def test_status_of_a_failed_flow_names_the_task_that_failed(api, sync_jobs):
    status = run_through_api(api, sync_jobs, flow_doc([failing("fetch"), task("never")]))

    assert status["status"] == "FAILED"
    assert status["executed_tasks"] == ["fetch"]
    assert "fetch" in status["error"]
    assert status["task_results"]["fetch"]["status"] == "FAILURE"


@pytest.mark.parametrize("execution_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
def test_status_of_an_unknown_or_malformed_id_is_404_json(api, execution_id):
    response = api.get(f"/flow/{execution_id}/status")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"] == f"Flow execution {execution_id} not found"


@pytest.mark.parametrize("steps", [1, 20])
def test_status_reads_a_fixed_number_of_queries_however_many_steps_ran(
    api, django_assert_num_queries, steps
):
    execution = run_to_end(start_execution(flow_doc([task(f"t{i}") for i in range(steps)])).id)
    assert execution.steps.count() == steps

    # Token lookup, the execution with its flow and version, its steps.
    with django_assert_num_queries(3):
        response = api.get(f"/flow/{execution.id}/status")

    assert len(response.json()["executed_tasks"]) == steps


# --- DELETE /flow/{id} -------------------------------------------------------------------------
def test_deleting_an_execution_removes_it(api):
    execution_id = create(api, sample_flow())["execution_id"]

    response = api.delete(f"/flow/{execution_id}")

    assert response.status_code == 200
    assert response.json() == {"message": f"Flow execution {execution_id} deleted successfully"}
    assert api.get(f"/flow/{execution_id}/status").status_code == 404
    assert rows_of(execution_id) == 0
    # The flow itself stays: only the execution is deleted.
    assert Flow.objects.filter(pk="example_flow").exists()


def test_deleting_a_finished_execution_removes_its_steps_and_log(api, sync_jobs):
    execution_id = run_through_api(api, sync_jobs, sample_flow())["execution_id"]
    assert rows_of(execution_id) > 1

    assert api.delete(f"/flow/{execution_id}").status_code == 200

    assert rows_of(execution_id) == 0


@pytest.mark.parametrize("execution_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_deleting_an_unknown_execution_is_404(api, execution_id):
    response = api.delete(f"/flow/{execution_id}")

    assert response.status_code == 404
    assert response.json()["detail"] == f"Flow execution {execution_id} not found"


def test_deleting_twice_is_404_the_second_time(api):
    execution_id = create(api, sample_flow())["execution_id"]
    api.delete(f"/flow/{execution_id}")

    assert api.delete(f"/flow/{execution_id}").status_code == 404


def test_a_queued_execution_deleted_before_a_worker_woke_is_not_run(api):
    execution = start_execution(flow_doc([task("a")]))

    assert api.delete(f"/flow/{execution.id}").status_code == 200

    assert engine.dispatch(execution.id) == 0
    assert rows_of(execution.id) == 0


def test_a_worker_holding_the_step_of_a_deleted_execution_does_not_bring_it_back(api):
    execution = start_execution(flow_doc([task("a"), task("b")]))
    worker = engine.Dispatcher(concurrency=1, only=execution.id)
    worker.fill()  # claims the step and starts its task
    assert worker.slots
    assert Execution.objects.get(pk=execution.id).status == "RUNNING"

    assert api.delete(f"/flow/{execution.id}").status_code == 200
    worker.run()  # the task ends and its step is recorded: into an execution that is gone

    assert not worker.slots  # it did not go on to "b"
    assert rows_of(execution.id) == 0
    assert engine.dispatch(execution.id) == 0
    assert rows_of(execution.id) == 0


def test_an_execution_deleted_while_its_task_runs_ends_the_worker_quietly(api, monkeypatch):
    execution = start_execution(flow_doc([task("a"), task("b"), task("c")]))
    real_advance = engine.Dispatcher.advance

    def delete_then_advance(self, slot, outcome):  # the task ended; not recorded yet
        assert api.delete(f"/flow/{execution.id}").status_code == 200
        return real_advance(self, slot, outcome)

    monkeypatch.setattr(engine.Dispatcher, "advance", delete_then_advance)

    ran = engine.dispatch(execution.id)

    assert ran == 1  # the step that was running when the execution vanished, and no more
    assert rows_of(execution.id) == 0
