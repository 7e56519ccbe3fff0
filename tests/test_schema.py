"""The OpenAPI schema generates and validates with warnings treated as failures, as in CI."""

from __future__ import annotations

from io import StringIO

import yaml
from django.core.management import call_command


def test_the_openapi_schema_generates_and_validates_without_warnings(db, tmp_path):
    target = tmp_path / "schema.yaml"
    err = StringIO()

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stderr=err)

    assert "Warning" not in err.getvalue() and "Error" not in err.getvalue(), err.getvalue()
    schema = yaml.safe_load(target.read_text())
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Flow Manager API"


def test_the_schema_describes_the_seed_endpoints_with_their_error_shape(db, tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    schema = yaml.safe_load(target.read_text())

    paths = schema["paths"]
    execute = paths["/flow/execute"]["post"]
    assert {"200", "400", "401", "404", "409"} <= set(execute["responses"])
    assert execute["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    request = execute["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = schema["components"]["schemas"][request.rsplit("/", 1)[-1]]
    assert request_schema["properties"]["execution_id"]["format"] == "uuid"
    assert request_schema["required"] == ["execution_id"]
    status = schema["components"]["schemas"]["ExecutionStatus"]["properties"]
    assert {"execution_id", "status", "task_results", "executed_tasks", "error"} <= set(status)
    assert set(paths["/flow/{execution_id}"]) == {"delete"}
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {
        "detail",
        "code",
        "errors",
    }
