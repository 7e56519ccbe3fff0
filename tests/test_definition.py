"""Parsing and validating flow documents (flows.definition.parse_flow).

Pure functions: no database. The task types are the project's own (``tasks/``), except where a
custom parameter schema is needed.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Any

import pytest

from flows.definition import FieldError, FlowValidationError, parse_flow
from flows.registry import TaskRegistry, default_registry

_DROP = object()


def base() -> dict[str, Any]:
    """A valid document: fetch -> report on success, -> cleanup on failure; then archive.

    Nothing refers to ``archive`` by name, so a broken name there is reported once.
    """
    return {
        "id": "orders",
        "tasks": [
            {"name": "fetch", "task_type": "fetch_data", "parameters": {"failure_rate": 0}},
            {"name": "report", "task_type": "print", "parameters": {"message": "done"}},
            {"name": "cleanup", "task_type": "noop"},
            {"name": "archive", "task_type": "noop"},
        ],
        "conditions": [
            {
                "name": "after_fetch",
                "source_task": "fetch",
                "outcome": "success",
                "target_task_success": "report",
                "target_task_failure": "cleanup",
            }
        ],
    }


def _apply(target: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if value is _DROP:
            target.pop(key, None)
        else:
            target[key] = value


def top(**fields: Any) -> dict[str, Any]:
    """``base()`` with top-level fields set (or removed with ``_DROP``)."""
    doc = base()
    _apply(doc, fields)
    return doc


def with_task(index: int, **fields: Any) -> dict[str, Any]:
    doc = base()
    _apply(doc["tasks"][index], fields)
    return doc


def with_condition(index: int, **fields: Any) -> dict[str, Any]:
    doc = base()
    _apply(doc["conditions"][index], fields)
    return doc


def parse(document: Any, registry: Any = None, **kwargs: Any) -> Any:
    return parse_flow(document, registry or default_registry(), **kwargs)


def errors_of(document: Any, registry: Any = None) -> dict[str, str]:
    """Every error of an invalid document, by field path."""
    with pytest.raises(FlowValidationError) as caught:
        parse(document, registry)
    errors = caught.value.errors
    fields = [e.field for e in errors]
    assert len(fields) == len(set(fields)), f"a field was reported twice: {fields}"
    return {e.field: e.message for e in errors}


def test_the_base_document_is_valid() -> None:
    definition = parse(base())
    assert [t.name for t in definition.tasks] == ["fetch", "report", "cleanup", "archive"]
    assert definition.warnings == ()


# --- Every validation error, with its field path ---------------------------------------------
def _tasks(n: int) -> list[dict[str, Any]]:
    return [{"name": f"t{i}", "task_type": "noop"} for i in range(n)]


def _second_condition_for_fetch() -> dict[str, Any]:
    doc = base()
    doc["conditions"].append(
        {
            "source_task": "fetch",
            "outcome": "failure",
            "target_task_success": "cleanup",
            "target_task_failure": "end",
        }
    )
    return doc


def _task_replaced_by(value: Any) -> dict[str, Any]:
    doc = base()
    doc["tasks"][3] = value
    return doc


def _condition_replaced_by(value: Any) -> dict[str, Any]:
    doc = base()
    doc["conditions"][0] = value
    return doc


CASES = [
    # Top level
    ("id-missing", top(id=_DROP), "id", "required"),
    ("id-with-spaces", top(id="bad id!"), "id", "letters, digits"),
    ("id-not-text", top(id=42), "id", "required"),
    ("id-too-long", top(id="x" * 101), "id", "1-100 characters"),
    ("name-not-text", top(name=5), "name", "must be text, not a number"),
    ("description-too-long", top(description="x" * 5001), "description", "at most 5000"),
    ("max-steps-zero", top(max_steps=0), "max_steps", "between 1 and 100000"),
    ("max-steps-too-big", top(max_steps=100_001), "max_steps", "between 1 and 100000"),
    ("max-steps-text", top(max_steps="10"), "max_steps", "whole number, not text"),
    ("max-steps-bool", top(max_steps=True), "max_steps", "whole number, not a boolean"),
    ("max-steps-fraction", top(max_steps=2.5), "max_steps", "whole number"),
    ("tasks-missing", top(tasks=_DROP, conditions=_DROP), "tasks", "required"),
    ("tasks-empty", top(tasks=[], conditions=_DROP), "tasks", "at least one task"),
    ("tasks-not-a-list", top(tasks="fetch", conditions=_DROP), "tasks", "must be a list"),
    ("tasks-too-many", top(tasks=_tasks(501), conditions=_DROP), "tasks", "at most 500"),
    ("start-task-unknown", top(start_task="nope"), "start_task", "'nope' is not one of the tasks"),
    ("start-task-end", top(start_task="end"), "start_task", "'end' is not one of the tasks"),
    ("start-task-not-text", top(start_task=3), "start_task", "must be a task name"),
    ("conditions-not-a-list", top(conditions={}), "conditions", "must be a list"),
    ("unknown-top-field", top(colour="red"), "colour", "unknown field"),
    # Tasks
    ("task-not-object", _task_replaced_by("archive"), "tasks[3]", "must be an object, not text"),
    ("task-name-missing", with_task(3, name=_DROP), "tasks[3].name", "required"),
    ("task-name-empty", with_task(3, name=""), "tasks[3].name", "required"),
    ("task-name-padded", with_task(3, name=" archive "), "tasks[3].name", "required"),
    ("task-name-too-long", with_task(3, name="a" * 101), "tasks[3].name", "at most 100"),
    ("task-name-not-text", with_task(3, name=7), "tasks[3].name", "required"),
    (
        "task-name-duplicate",
        with_task(3, name="fetch"),
        "tasks[3].name",
        "duplicate task name 'fetch' (also tasks[0])",
    ),
    ("task-type-missing", with_task(1, task_type=_DROP), "tasks[1].task_type", "required"),
    ("task-type-empty", with_task(1, task_type=""), "tasks[1].task_type", "required"),
    (
        "task-type-unknown",
        with_task(1, task_type="teleport"),
        "tasks[1].task_type",
        "unknown task type 'teleport'",
    ),
    (
        "parameters-not-object",
        with_task(1, parameters=["done"]),
        "tasks[1].parameters",
        "must be an object, not a list",
    ),
    (
        "parameter-wrong-type",
        with_task(1, parameters={"message": ["a", "list"]}),
        "tasks[1].parameters.message",
        "['a', 'list'] is not of type 'string', 'number', 'boolean'",
    ),
    (
        "parameter-out-of-range",
        with_task(0, parameters={"failure_rate": 2}),
        "tasks[0].parameters.failure_rate",
        "2 is greater than the maximum of 1",
    ),
    (
        "parameter-not-allowed",
        with_task(2, parameters={"colour": "red"}),
        "tasks[2].parameters",
        "'colour' was unexpected",
    ),
    (
        "timeout-zero",
        with_task(1, timeout_seconds=0),
        "tasks[1].timeout_seconds",
        "positive number",
    ),
    (
        "timeout-negative",
        with_task(1, timeout_seconds=-1),
        "tasks[1].timeout_seconds",
        "positive number",
    ),
    (
        "timeout-text",
        with_task(1, timeout_seconds="10"),
        "tasks[1].timeout_seconds",
        "positive number",
    ),
    (
        "timeout-bool",
        with_task(1, timeout_seconds=True),
        "tasks[1].timeout_seconds",
        "positive number",
    ),
    ("task-description-not-text", with_task(1, description=7), "tasks[1].description", "text"),
    ("task-unknown-field", with_task(1, retries=3), "tasks[1].retries", "unknown field"),
    # Conditions
    (
        "condition-not-object",
        _condition_replaced_by("fetch -> report"),
        "conditions[0]",
        "must be an object, not text",
    ),
    (
        "source-missing",
        with_condition(0, source_task=_DROP),
        "conditions[0].source_task",
        "required",
    ),
    (
        "source-unknown",
        with_condition(0, source_task="ghost"),
        "conditions[0].source_task",
        "'ghost' is not one of the tasks",
    ),
    (
        "source-end",
        with_condition(0, source_task="end"),
        "conditions[0].source_task",
        "'end' is not one of the tasks",
    ),
    (
        "second-condition-for-a-task",
        _second_condition_for_fetch(),
        "conditions[1].source_task",
        "task 'fetch' already has a condition (conditions[0])",
    ),
    (
        "outcome-invalid",
        with_condition(0, outcome="maybe"),
        "conditions[0].outcome",
        "must be 'success' or 'failure'",
    ),
    (
        "outcome-missing",
        with_condition(0, outcome=_DROP),
        "conditions[0].outcome",
        "must be 'success' or 'failure'",
    ),
    (
        "outcome-wrong-case",
        with_condition(0, outcome="SUCCESS"),
        "conditions[0].outcome",
        "must be 'success' or 'failure'",
    ),
    (
        "success-target-unknown",
        with_condition(0, target_task_success="ghost"),
        "conditions[0].target_task_success",
        "'ghost' is not one of the tasks or 'end'",
    ),
    (
        "failure-target-unknown",
        with_condition(0, target_task_failure="ghost"),
        "conditions[0].target_task_failure",
        "'ghost' is not one of the tasks or 'end'",
    ),
    (
        "success-target-missing",
        with_condition(0, target_task_success=_DROP),
        "conditions[0].target_task_success",
        "required",
    ),
    (
        "failure-target-not-text",
        with_condition(0, target_task_failure=5),
        "conditions[0].target_task_failure",
        "required",
    ),
    ("condition-name-not-text", with_condition(0, name=5), "conditions[0].name", "text"),
    (
        "condition-description-not-text",
        with_condition(0, description=["x"]),
        "conditions[0].description",
        "text",
    ),
    ("condition-unknown-field", with_condition(0, when="now"), "conditions[0].when", "unknown"),
]


@pytest.mark.parametrize(
    ("document", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_it_reports_each_mistake_at_its_field_path(
    document: dict[str, Any], path: str, fragment: str
) -> None:
    errors = errors_of(document)
    assert path in errors, errors
    assert fragment in errors[path]
    # A single mistake is reported once, not echoed by the fields that depend on it.
    assert list(errors) == [path]


def test_an_unknown_task_type_error_lists_the_registered_types() -> None:
    message = errors_of(with_task(1, task_type="teleport"))["tasks[1].task_type"]
    assert "registered:" in message
    for builtin in ("fetch_data", "http_request", "noop", "print", "wait"):
        assert builtin in message


def test_an_unknown_field_error_names_the_allowed_fields() -> None:
    message = errors_of(with_condition(0, when="now"))["conditions[0].when"]
    assert "source_task" in message
    assert "target_task_failure" in message


def test_it_reports_every_mistake_of_a_document_at_once() -> None:
    doc = base()
    del doc["id"]
    doc["colour"] = "red"
    doc["max_steps"] = 0
    doc["tasks"][0]["parameters"] = {"failure_rate": "often"}
    doc["tasks"][1]["task_type"] = "teleport"
    doc["tasks"][3]["name"] = "fetch"
    doc["conditions"][0]["outcome"] = "maybe"
    doc["conditions"][0]["target_task_failure"] = "ghost"
    doc["conditions"].append({"source_task": "nowhere", "outcome": "failure"})

    with pytest.raises(FlowValidationError) as caught:
        parse(doc)

    fields = [e.field for e in caught.value.errors]
    assert sorted(fields) == sorted(
        [
            "colour",
            "id",
            "max_steps",
            "tasks[0].parameters.failure_rate",
            "tasks[1].task_type",
            "tasks[3].name",
            "conditions[0].outcome",
            "conditions[0].target_task_failure",
            "conditions[1].source_task",
            "conditions[1].target_task_success",
            "conditions[1].target_task_failure",
        ]
    )
    # The same list in the API's shape, and readable in the exception's text.
    as_list = caught.value.as_list()
    assert {"field", "message"} == set(as_list[0])
    assert len(as_list) == len(fields)
    assert "conditions[0].target_task_failure: 'ghost'" in str(caught.value)


def test_a_task_with_a_bad_type_still_counts_as_a_task_for_conditions() -> None:
    doc = with_task(1, task_type="teleport")
    errors = errors_of(doc)
    # conditions[0] targets "report": that task exists, only its type is wrong.
    assert list(errors) == ["tasks[1].task_type"]


# --- Parameters against the task type's JSON Schema ------------------------------------------
def test_parameters_errors_give_the_path_into_nested_parameters() -> None:
    doc = {
        "id": "call",
        "tasks": [
            {
                "name": "call",
                "task_type": "http_request",
                "parameters": {"url": "https://example.com", "headers": {"X-Token": 5}},
            }
        ],
    }
    errors = errors_of(doc)
    assert list(errors) == ["tasks[0].parameters.headers.X-Token"]
    assert "5 is not of type 'string'" in errors["tasks[0].parameters.headers.X-Token"]


def test_a_missing_required_parameter_is_reported_on_the_parameters_object() -> None:
    doc = {"id": "call", "tasks": [{"name": "call", "task_type": "http_request"}]}
    errors = errors_of(doc)
    assert errors == {"tasks[0].parameters": "'url' is a required property"}


def test_every_parameter_mistake_of_a_task_is_reported() -> None:
    doc = {
        "id": "call",
        "tasks": [
            {
                "name": "call",
                "task_type": "http_request",
                "parameters": {"url": "ftp://example.com", "method": "BREW", "timeout": 0},
            }
        ],
    }
    errors = errors_of(doc)
    assert set(errors) == {
        "tasks[0].parameters.url",
        "tasks[0].parameters.method",
        "tasks[0].parameters.timeout",
    }
    assert "'BREW' is not one of" in errors["tasks[0].parameters.method"]


def test_parameter_paths_into_lists_use_the_index(tmp_path: Any) -> None:
    (tmp_path / "task_batch.py").write_text(
        textwrap.dedent(
            """
            from tasks.base_task import BaseTask


            class BatchTask(BaseTask):
                parameters_schema = {
                    "type": "object",
                    "properties": {"sizes": {"type": "array", "items": {"type": "integer"}}},
                }

                async def run(self):
                    return {}
            """
        )
    )
    registry = TaskRegistry(tmp_path)
    doc = {
        "id": "batch",
        "tasks": [{"name": "b", "task_type": "batch", "parameters": {"sizes": [1, "two", 3]}}],
    }
    errors = errors_of(doc, registry)
    assert list(errors) == ["tasks[0].parameters.sizes[1]"]
    assert "'two' is not of type 'integer'" in errors["tasks[0].parameters.sizes[1]"]


def test_parameters_that_match_the_schema_are_kept() -> None:
    definition = parse(base())
    assert definition.task("fetch").parameters == {"failure_rate": 0}
    assert definition.task("report").parameters == {"message": "done"}


# --- Document shapes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("document", "kind"),
    [
        ([], "a list"),
        ("flow", "text"),
        (None, "null"),
        (42, "a number"),
        (True, "a boolean"),
        ({"flow": ["not", "an", "object"]}, "a list"),
    ],
    ids=["list", "text", "null", "number", "boolean", "wrapped-list"],
)
def test_a_document_that_is_not_an_object_is_refused(document: Any, kind: str) -> None:
    errors = errors_of(document)
    assert errors == {"": f"a flow document must be a JSON object, not {kind}"}


def test_a_wrapped_document_parses_like_the_bare_one() -> None:
    bare = parse(base())
    wrapped = parse({"flow": base()})
    assert wrapped == bare
    assert wrapped.id == "orders"


def test_errors_in_a_wrapped_document_have_the_same_paths() -> None:
    bad = with_condition(0, outcome="maybe")
    assert errors_of({"flow": copy.deepcopy(bad)}) == errors_of(bad)


def test_a_flow_key_beside_other_fields_is_not_taken_as_a_wrapper() -> None:
    errors = errors_of({"flow": base(), "version": 2})
    assert "flow" in errors
    assert "version" in errors
    assert "id" in errors


# --- Defaults --------------------------------------------------------------------------------
def test_name_defaults_to_the_id() -> None:
    assert parse(base()).name == "orders"
    assert parse(top(name="")).name == "orders"
    assert parse(top(name="Order pipeline")).name == "Order pipeline"


def test_conditions_default_to_none() -> None:
    definition = parse(top(conditions=_DROP))
    assert definition.conditions == ()
    assert parse(top(conditions=None)).conditions == ()


def test_start_task_defaults_to_the_first_task() -> None:
    assert parse(base()).start_task == "fetch"
    assert parse(top(start_task="report")).start_task == "report"


def test_max_steps_defaults_to_1000() -> None:
    assert parse(base()).max_steps == 1000
    assert parse(top(max_steps=7)).max_steps == 7
    assert parse(base(), default_max_steps=50).max_steps == 50


def test_optional_task_fields_have_defaults() -> None:
    doc = {"id": "one", "tasks": [{"name": "only", "task_type": "noop", "parameters": None}]}
    spec = parse(doc).task("only")
    assert spec.parameters == {}
    assert spec.description == ""
    assert spec.timeout_seconds is None


def test_timeout_seconds_is_kept_as_seconds() -> None:
    assert parse(with_task(1, timeout_seconds=2)).task("report").timeout_seconds == 2.0
    assert parse(with_task(1, timeout_seconds=0.25)).task("report").timeout_seconds == 0.25


def test_the_seed_sample_document_is_valid() -> None:
    from tests.factories import sample_flow

    definition = parse(sample_flow())
    assert definition.id == "example_flow"
    assert definition.name == "Sample Data Pipeline"
    assert definition.start_task == "task1"
    assert [c.source_task for c in definition.conditions] == ["task1", "task2"]


# --- "end" -----------------------------------------------------------------------------------
def test_end_is_a_valid_target_without_a_task_of_that_name() -> None:
    definition = parse(with_condition(0, target_task_failure="end"))
    assert definition.condition_for("fetch").target_task_failure == "end"


def test_a_task_may_be_named_end() -> None:
    doc = {
        "id": "named_end",
        "start_task": "end",
        "tasks": [{"name": "end", "task_type": "noop"}, {"name": "after", "task_type": "noop"}],
    }
    definition = parse(doc)
    assert definition.start_task == "end"
    assert definition.warnings == ()


# --- Warnings --------------------------------------------------------------------------------
def test_a_task_no_path_reaches_is_a_warning_not_an_error() -> None:
    doc = base()
    doc["conditions"][0]["target_task_success"] = "cleanup"
    doc["conditions"][0]["target_task_failure"] = "end"

    definition = parse(doc)

    assert definition.warnings == (
        FieldError("tasks[1]", "task 'report' can never run: no path reaches it"),
    )


def test_tasks_before_a_later_start_task_are_warned_about() -> None:
    definition = parse(top(start_task="report", conditions=_DROP))
    assert [w.field for w in definition.warnings] == ["tasks[0]"]
    assert "'fetch'" in definition.warnings[0].message


def test_tasks_reached_only_through_a_failure_branch_are_not_warned_about() -> None:
    doc = base()
    doc["tasks"] = [
        doc["tasks"][0],
        {"name": "recover", "task_type": "noop"},
        {"name": "report", "task_type": "print"},
    ]
    doc["conditions"] = [
        {
            "source_task": "fetch",
            "outcome": "success",
            "target_task_success": "end",
            "target_task_failure": "recover",
        },
        {
            "source_task": "recover",
            "outcome": "success",
            "target_task_success": "end",
            "target_task_failure": "end",
        },
    ]
    definition = parse(doc)
    assert [w.field for w in definition.warnings] == ["tasks[2]"]
