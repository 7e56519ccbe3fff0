"""Every duration, count and limit of a flow document has a maximum, and a number past it (a
401-digit integer, 1e308, 1e400 which JSON reads as infinity) is a 400 naming the field and
the range: never a 500, at validation, at creation, or when the flow starts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flows import services
from flows.definition import MAX_DURATION
from flows.models import Execution, Flow, FlowVersion
from tests.factories import flow_doc, mapped, run_flow, stored_counts, task

pytestmark = pytest.mark.django_db

HUGE = 10**400  # Python's json reads any integer; float() of this one overflows


def with_huge(document: dict[str, Any], at: list[Any]) -> dict[str, Any]:
    """``document`` with HUGE written at the path ``at``."""
    doc = json.loads(json.dumps(document))
    target = doc
    for key in at[:-1]:
        target = target[key]
    target[at[-1]] = HUGE
    return doc


CASES = [
    (flow_doc([task("a")], timeout_seconds=1), ["timeout_seconds"], "timeout_seconds"),
    (flow_doc([task("a")], max_steps=1), ["max_steps"], "max_steps"),
    (
        flow_doc([{**task("a"), "timeout_seconds": 1}]),
        ["tasks", 0, "timeout_seconds"],
        "tasks[0].timeout_seconds",
    ),
    (
        flow_doc([{**task("a"), "retry": {"max_attempts": 2, "delay_seconds": 1}}]),
        ["tasks", 0, "retry", "delay_seconds"],
        "tasks[0].retry.delay_seconds",
    ),
    (
        flow_doc([{**task("a"), "retry": {"max_attempts": 2, "max_delay_seconds": 1}}]),
        ["tasks", 0, "retry", "max_delay_seconds"],
        "tasks[0].retry.max_delay_seconds",
    ),
    (
        flow_doc([{**task("a"), "retry": {"max_attempts": 2}}]),
        ["tasks", 0, "retry", "max_attempts"],
        "tasks[0].retry.max_attempts",
    ),
    (flow_doc([task("a", "wait", seconds=1)]), ["tasks", 0, "parameters", "seconds"], None),
    (flow_doc([task("a", "sleep", seconds=1)]), ["tasks", 0, "parameters", "seconds"], None),
    (
        flow_doc([task("a", "wait_for_signal", signal="s", timeout_seconds=1)]),
        ["tasks", 0, "parameters", "timeout_seconds"],
        None,
    ),
    (
        flow_doc(
            [{"name": "s", "task_type": "subflow", "parameters": {"flow_id": "x", "version": 1}}]
        ),
        ["tasks", 0, "parameters", "version"],
        "tasks[0].parameters.version",
    ),
    (
        flow_doc([mapped("m", [1, 2], [task("x")], max_concurrency=1)]),
        ["tasks", 0, "max_concurrency"],
        "tasks[0].max_concurrency",
    ),
    (
        flow_doc([mapped("m", [1, 2], [task("x")], tolerated_failures=1)]),
        ["tasks", 0, "tolerated_failures"],
        "tasks[0].tolerated_failures",
    ),
]
IDS = [c[2] or ".".join(map(str, c[1])) for c in CASES]


def post_json(client: Any, path: str, text: str) -> Any:
    return client.post(path, data=text, content_type="application/json")


@pytest.mark.parametrize(("document", "at", "field"), CASES, ids=IDS)
def test_a_huge_number_is_reported_by_validate_to_a_viewer(client_as, document, at, field):
    response = post_json(
        client_as("viewer"), "/api/flows/validate/", json.dumps(with_huge(document, at))
    )

    assert response.status_code == 200, response.content[:300]
    report = response.json()
    assert report["valid"] is False
    expected = field or "tasks[0].parameters.seconds"
    if at[-1] == "timeout_seconds" and "parameters" in at:
        expected = "tasks[0].parameters.timeout_seconds"
    assert [e["field"] for e in report["errors"]] == [expected]


@pytest.mark.parametrize(("document", "at", "field"), CASES, ids=IDS)
def test_a_huge_number_is_400_on_create_and_on_the_seed_create(client_as, document, at, field):
    editor = client_as("editor")
    text = json.dumps(with_huge(document, at))

    for path in ("/api/flows/", "/flow/create"):
        response = post_json(editor, path, text)
        assert response.status_code == 400, (path, response.content[:300])
    assert stored_counts() == (0, 0, 0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timeout_seconds": 1e308}, "timeout_seconds"),
        ({"timeout_seconds": MAX_DURATION + 1}, "timeout_seconds"),
        ({"tasks": [{**task("a"), "timeout_seconds": 1e308}]}, "tasks[0].timeout_seconds"),
    ],
)
def test_a_duration_past_a_year_is_400_naming_the_range(client_as, change, field):
    document = {**flow_doc([task("a")]), **change}

    response = client_as("editor").post("/api/flows/", document, format="json")

    assert response.status_code == 400
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert f"{MAX_DURATION:,}" in errors[field]
    assert not Flow.objects.exists()


def test_a_year_exactly_is_a_valid_flow_timeout(client_as):
    document = flow_doc([{**task("a"), "timeout_seconds": MAX_DURATION}])
    document["timeout_seconds"] = MAX_DURATION

    response = client_as("editor").post("/api/flows/", document, format="json")

    assert response.status_code == 201, response.content


@pytest.mark.parametrize("path", ["/api/flows/validate/", "/api/flows/", "/flow/create"])
def test_1e400_which_json_reads_as_infinity_is_400_naming_the_field(client_as, path):
    text = json.dumps(flow_doc([task("a")], timeout_seconds=1)).replace(
        '"timeout_seconds": 1', '"timeout_seconds": 1e400'
    )

    response = post_json(client_as("admin"), path, text)

    errors = response.json()["errors"]
    assert response.status_code == (200 if "validate" in path else 400)
    assert [e["field"] for e in errors] == ["timeout_seconds"]
    assert stored_counts() == (0, 0, 0)


def test_a_flow_stored_before_the_bound_answers_409_on_start_and_leaves_no_execution(client_as):
    """A timeout of 1e308 stored before: every start was a 500 (the deadline overflowed)."""
    document = flow_doc([task("a")], timeout_seconds=1e308)
    flow = Flow.objects.create(id="test_flow", name="Old", version=1, definition=document)
    version = FlowVersion.objects.create(flow=flow, version=1, definition=document)
    operator = client_as("operator")

    response = operator.post("/api/flows/test_flow/executions/", {}, format="json")

    assert response.status_code == 409, response.content[:300]
    assert "timeout_seconds" in response.json()["detail"]
    assert not Execution.objects.exists()
    created = services.execution_create(flow_version=version)
    seed = operator.post("/flow/execute", {"execution_id": str(created.id)}, format="json")
    assert seed.status_code == 409


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/api/flows/test_flow/executions/", '{"input": {"n": 1e400}}'),
        ("/api/flows/test_flow/executions/", '{"input": {"n": [-1e999]}}'),
    ],
)
def test_an_input_number_that_reads_as_infinity_is_400_on_input(client_as, path, text):
    services.flow_create(document=flow_doc([task("a")]))

    response = post_json(client_as("operator"), path, text)

    assert response.status_code == 400, response.content[:300]
    assert [e["field"] for e in response.json()["errors"]] == ["input"]
    assert not Execution.objects.exists()


def test_the_seed_execute_refuses_an_input_number_that_reads_as_infinity(client_as):
    version = services.flow_create(document=flow_doc([task("a")]))
    execution = services.execution_create(flow_version=version)

    response = post_json(
        client_as("operator"),
        "/flow/execute",
        f'{{"execution_id": "{execution.id}", "input": {{"n": 1e400}}}}',
    )

    assert response.status_code == 400, response.content[:300]
    assert [e["field"] for e in response.json()["errors"]] == ["input"]
    execution.refresh_from_db()
    assert execution.status == "CREATED"


def test_a_huge_whole_number_in_an_input_is_kept_exactly(client_as):
    services.flow_create(document=flow_doc([task("a")]))

    response = post_json(
        client_as("operator"),
        "/api/flows/test_flow/executions/",
        json.dumps({"input": {"n": HUGE}}),
    )

    assert response.status_code == 201, response.content[:300]
    assert Execution.objects.get().input == {"n": HUGE}


@pytest.mark.parametrize("task_type", ["wait", "sleep"])
def test_a_huge_number_reaching_a_parameter_at_run_time_fails_the_step_not_the_worker(task_type):
    document = flow_doc([task("a", task_type, seconds="${input.n}")])

    execution = run_flow(document, input={"n": HUGE})

    step = execution.steps.get()
    assert (execution.status, step.status) == ("FAILED", "FAILURE")
    assert "seconds" in step.error


def test_the_run_form_refuses_an_input_number_that_reads_as_infinity(client, alice):
    services.flow_create(document=flow_doc([task("a")]))
    client.force_login(alice)

    response = client.post("/flows/test_flow/run", {"input": '{"n": 1e400}'}, follow=True)

    assert "out of range" in response.content.decode()
    assert not Execution.objects.exists()
