"""GET /api/task-types/: every registered task type with its description, parameter schema and
defaults, so that a flow author can see what to write without reading the plugins."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from flows.registry import default_registry
from tests.factories import error_body

REGISTERED = sorted(default_registry().types)


@pytest.fixture
def viewer(client_as: Any) -> Any:
    return client_as("viewer")


def test_the_list_names_every_registered_type_in_order(viewer):
    body = viewer.get("/api/task-types/").json()

    assert [t["name"] for t in body] == REGISTERED


@pytest.mark.parametrize("name", REGISTERED)
def test_each_type_is_described_with_a_valid_parameter_schema(viewer, name):
    body = viewer.get(f"/api/task-types/{name}/").json()

    assert body["name"] == name
    assert body["description"]
    jsonschema.Draft202012Validator.check_schema(body["parameters_schema"])
    # Each declared default is a valid value of its own parameter.
    properties = body["parameters_schema"].get("properties", {})
    for key, value in body["defaults"].items():
        jsonschema.validate(value, properties[key])


def test_the_defaults_are_the_ones_the_schema_declares(viewer):
    body = viewer.get("/api/task-types/fetch_data/").json()

    properties = body["parameters_schema"]["properties"]
    assert body["defaults"] == {k: v["default"] for k, v in properties.items() if "default" in v}
    assert body["defaults"]["failure_rate"] == 0


def test_an_unknown_type_is_404_naming_it(viewer):
    body = error_body(viewer.get("/api/task-types/no_such_type/"), 404)

    assert body["detail"] == "no task type 'no_such_type'"


def test_listing_task_types_reads_no_rows_but_the_callers(viewer, django_assert_num_queries):
    viewer.get("/api/task-types/")

    # token + user, user permissions, group permissions: the types come from the registry
    with django_assert_num_queries(3):
        viewer.get("/api/task-types/")
