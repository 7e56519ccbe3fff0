"""The OpenAPI schema generates and validates with warnings treated as failures, as in CI."""

from __future__ import annotations

import json
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


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def test_every_operation_documents_its_answers_and_errors_with_examples(db, tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    schema = yaml.safe_load(target.read_text())

    operations = _operations(schema)
    assert len(operations) >= 18
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, where
        for code in success:
            if "content" in responses[code]:
                assert responses[code]["content"]["application/json"].get("examples"), (where, code)
        if path == "/health":
            continue  # public, and its 503 is the health document itself (the seed's shape)
        errors = {code: r for code, r in responses.items() if code[0] in "45"}
        assert {"401", "403"} <= set(errors), where
        if "{" in path:
            assert "404" in errors, where
        bodiless = ("/cancel/", "/rerun/", "/pause/", "/resume/", "/redrive/", "/test/")
        if method in {"post", "put"} and not path.endswith(bodiless):
            assert "requestBody" in operation, where
            assert {"400", "415"} <= set(errors), where
        for code, response in errors.items():
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (where, code)
            assert content["examples"], (where, code)


def test_the_resource_api_is_in_the_schema_with_its_parameters(db, tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    paths = yaml.safe_load(target.read_text())["paths"]

    assert {
        "/api/flows/",
        "/api/flows/{id}/",
        "/api/flows/{id}/versions/",
        "/api/flows/{id}/versions/{version}/",
        "/api/flows/{id}/executions/",
        "/api/flows/validate/",
        "/api/executions/",
        "/api/executions/{id}/",
        "/api/executions/{id}/cancel/",
        "/api/executions/{id}/rerun/",
        "/api/executions/{id}/events/",
        "/api/task-types/",
        "/api/task-types/{name}/",
    } <= set(paths)
    listing = {p["name"] for p in paths["/api/executions/"]["get"]["parameters"]}
    assert {"status", "flow", "created_after", "created_before", "ordering", "page"} <= listing
    start = {p["name"] for p in paths["/api/flows/{id}/executions/"]["post"]["parameters"]}
    assert "Idempotency-Key" in start
    assert set(paths["/api/flows/{id}/executions/"]["post"]["responses"]) >= {"200", "201", "409"}


def _as_json_schema(node):
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable`` becomes "or null"; refs stay refs."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def test_every_example_answer_matches_the_schema_it_illustrates(db, tmp_path):
    import jsonschema

    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    components = _as_json_schema(schema["components"]["schemas"])

    checked = 0
    for path, method, operation in _operations(schema):
        for code, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            for name, example in (content.get("examples") or {}).items():
                document = {**_as_json_schema(content["schema"]), "components": components}
                document = json.loads(
                    json.dumps(document).replace("#/components/schemas/", "#/components/")
                )
                try:
                    jsonschema.validate(example["value"], document)
                except jsonschema.ValidationError as exc:
                    raise AssertionError(f"{method.upper()} {path} {code} {name}: {exc}") from exc
                checked += 1
    assert checked >= 40
