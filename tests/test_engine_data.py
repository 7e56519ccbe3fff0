"""Data passing: ``${...}`` references to earlier results and the input, resolved when
the step starts and checked against the task type's schema.

Through the real engine run inline (tests/controls.py has the task types and helpers).
"""

from __future__ import annotations

import pytest

from flows import services
from flows.models import ExecutionStatus
from tests.controls import (
    FAIL,
    OK,
    field_errors,
)
from tests.factories import (
    cond,
    flow_doc,
    ran,
    run_flow,
    run_to_end,
    task,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]


def test_a_whole_value_reference_keeps_its_json_type() -> None:
    execution = run_flow(
        flow_doc(
            [
                task("fetch", "numbers"),
                task(
                    "use",
                    "echo",
                    records="${results.fetch.data.records}",
                    count="${results.fetch.data.count}",
                    ok="${results.fetch.data.meta.ok}",
                    first="${results.fetch.data.records[0].id}",
                    status="${results.fetch.status}",
                ),
            ]
        )
    )

    assert execution.status == ExecutionStatus.COMPLETED
    expected = {
        "records": [{"id": 1}, {"id": 2}, {"id": 3}],
        "count": 3,
        "ok": True,
        "first": 1,
        "status": "SUCCESS",
    }
    use = execution.steps.get(task_name="use")
    assert use.result == {"got": expected}
    assert use.parameters == expected  # stored as resolved for this run


def test_a_reference_inside_a_string_is_interpolated() -> None:
    execution = run_flow(
        flow_doc(
            [
                task("fetch", "numbers"),
                task(
                    "say",
                    "print",
                    message="${results.fetch.data.count} records from "
                    "${results.fetch.data.meta.source} for ${input.customer}: "
                    "${results.fetch.data.records[1]}",
                ),
            ]
        ),
        input={"customer": "acme"},
    )

    assert execution.steps.get(task_name="say").result["message"] == (
        '3 records from api for acme: {"id": 2}'
    )


def test_input_given_to_submit_is_what_references_read() -> None:
    version = services.flow_create(
        document=flow_doc([task("use", "echo", who="${input.customer.name}", n="${input.n}")])
    )

    execution, _ = services.execution_submit(
        flow_version=version, input={"customer": {"name": "acme"}, "n": 7}
    )

    use = run_to_end(execution.id).steps.get()
    assert use.result == {"got": {"who": "acme", "n": 7}}


def test_input_given_at_start_replaces_the_input_given_at_create() -> None:
    version = services.flow_create(document=flow_doc([task("use", "echo", n="${input.n}")]))
    execution = services.execution_create(flow_version=version, input={"n": 1})

    services.execution_start(execution_id=execution.id, input={"n": 2})

    execution = run_to_end(execution.id)
    assert execution.input == {"n": 2}
    assert execution.steps.get().result == {"got": {"n": 2}}


def test_an_input_that_is_not_an_object_is_refused() -> None:
    version = services.flow_create(document=flow_doc([task("a")]))

    with pytest.raises(services.ServiceError) as refused:
        services.execution_submit(flow_version=version, input=[1, 2])  # type: ignore[arg-type]

    assert refused.value.errors == [{"field": "input", "message": "must be an object"}]


def test_a_reference_to_the_whole_input_gives_the_input_object() -> None:
    execution = run_flow(flow_doc([task("use", "echo", whole="${input}")]), input={"a": [1, 2]})

    assert execution.steps.get().result == {"got": {"whole": {"a": [1, 2]}}}


def test_a_reference_to_a_task_not_in_the_flow_is_refused_at_the_parameter_path() -> None:
    document = flow_doc(
        [
            task("fetch", "numbers"),
            task("call", "http_request", url="${results.fetcher.data.url}"),
        ]
    )

    errors = field_errors(document)

    assert list(errors) == ["tasks[1].parameters.url"]
    assert "fetcher" in errors["tasks[1].parameters.url"]


def test_a_nested_reference_to_an_unknown_task_is_refused_at_its_full_path() -> None:
    document = flow_doc(
        [
            task(
                "call",
                "http_request",
                url="https://example.com",
                headers={"X-Token": "Bearer ${results.login.data.token}"},
            )
        ]
    )

    assert list(field_errors(document)) == ["tasks[0].parameters.headers.X-Token"]


def test_a_malformed_reference_is_refused_at_the_parameter_path() -> None:
    errors = field_errors(flow_doc([task("say", "print", message="${env.password}")]))

    assert list(errors) == ["tasks[0].parameters.message"]
    assert "results., input. or secrets." in errors["tasks[0].parameters.message"]


def test_a_reference_where_the_schema_wants_a_number_is_accepted_until_run_time() -> None:
    document = flow_doc([task("pause", "wait", seconds="${input.seconds}")])
    services.validate_flow(document)

    execution = run_flow(document, input={"seconds": 0})

    assert execution.status == "COMPLETED"
    assert execution.steps.get(task_name="pause").result["waited_seconds"] == 0


def test_a_reference_unresolvable_at_run_time_fails_its_step_with_a_clear_error() -> None:
    execution = run_flow(
        flow_doc(
            [task("say", "print", message="hello ${input.customer}"), task("recover")],
            [cond("say", "success", "end", "recover")],
        ),
        input={"client": "acme"},
    )

    failed = execution.steps.get(task_name="say")
    assert failed.status == FAIL
    assert "${input.customer}" in failed.error
    assert "'customer'" in failed.error
    # It fails the step, not the worker: the failure routes as usual.
    assert ran(execution) == [("say", FAIL), ("recover", OK)]
    assert execution.status == ExecutionStatus.COMPLETED


def test_a_resolved_value_that_breaks_the_schema_fails_the_step() -> None:
    execution = run_flow(
        flow_doc([task("pause", "wait", seconds="${input.seconds}")]),
        input={"seconds": "soon"},
    )

    failed = execution.steps.get()
    assert failed.status == FAIL
    assert "parameters.seconds" in failed.error
    assert "'soon' is not of type 'number'" in failed.error


def test_resolved_parameters_are_stored_on_a_step_that_fails() -> None:
    execution = run_flow(
        flow_doc([task("call", "echo_then_fail", customer="${input.customer}")]),
        input={"customer": "acme"},
    )

    failed = execution.steps.get()
    assert failed.status == FAIL
    assert "acme" in failed.error  # the task did get the resolved value
    assert failed.parameters == {"customer": "acme"}


def test_the_flow_document_keeps_its_references_after_a_run() -> None:
    execution = run_flow(flow_doc([task("use", "echo", n="${input.n}")]), input={"n": 1})

    assert execution.flow_version.definition["tasks"][0]["parameters"] == {"n": "${input.n}"}


@pytest.mark.parametrize(
    "parameters",
    [
        {"message": "cost: $${price}"},
        {"message": "cost: $${price}", "extra": "${input.n}"},
    ],
    ids=["alone", "beside-a-reference"],
)
def test_a_doubled_dollar_writes_a_literal_dollar_brace(parameters: dict[str, str]) -> None:
    execution = run_flow(flow_doc([task("say", "echo", **parameters)]), input={"n": 1})

    assert execution.steps.get().result["got"]["message"] == "cost: ${price}"
