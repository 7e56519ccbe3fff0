"""Flows written for the original seed run here unchanged, on a real worker.

Each file in ``tests/seed_flows/`` is a flow from the seed's own tests and README with the end
state the seed expects (see the README there). Every one is posted, as it is, to the
seed-compatible endpoints of a live stack (gunicorn and ``manage.py qcluster`` on the CI
pass's backend: SQLite + the ORM broker, PostgreSQL, or PostgreSQL + Redis), executed, and
watched through ``GET /flow/{id}/status`` until it ends, as the seed's clients do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.seed_api import SeedStack, seed_stack

pytestmark = pytest.mark.worker

FIXTURES = sorted((Path(__file__).parent / "seed_flows").glob("*.json"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedStack]:
    with seed_stack(tmp_path_factory.mktemp("seed_flows"), "seed") as running:
        yield running


def _results(doc: dict[str, Any]) -> dict[str, str]:
    return {name: result["status"] for name, result in doc["task_results"].items()}


def test_the_fixture_folder_holds_the_seed_flows() -> None:
    # A glob that found nothing would make the parametrized test below pass vacuously.
    assert len(FIXTURES) >= 8, FIXTURES


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_seed_flow_ends_as_the_seed_expects(stack: SeedStack, path: Path) -> None:
    fixture = json.loads(path.read_text())
    expect = fixture["expect"]

    doc = stack.wait_until_ended(stack.create_and_execute(fixture["document"]))

    results = _results(doc)
    if "order" in expect:
        _assert_consistent_with_routing(doc, expect["order"])
        return
    assert doc["status"] == expect["status"], doc
    for name in expect["completed_tasks"]:
        assert name in doc["completed_tasks"], doc
    for name in expect.get("not_completed", []):
        assert name not in doc["completed_tasks"], doc
        assert name not in results, doc  # never even started
    assert doc["executed_tasks"] == expect["executed_tasks"], doc
    failed = sorted(name for name, status in results.items() if status == "FAILURE")
    assert failed == sorted(expect["failures"]), doc
    for name in expect["failures"]:
        assert "Simulated failure" in doc["task_results"][name]["error"], doc
    for name in set(results) - set(expect["failures"]):
        assert results[name] == "SUCCESS", doc
        assert doc["task_results"][name]["error"] is None, doc
    assert doc["error"] is None if doc["status"] == "COMPLETED" else doc["error"], doc


def _assert_consistent_with_routing(doc: dict[str, Any], order: list[str]) -> None:
    """A flow that fails at random: each task ran after the one before succeeded, and the
    execution ended COMPLETED after the last, or FAILED right after the one that failed."""
    executed = doc["executed_tasks"]
    assert executed == order[: len(executed)] and executed, doc
    results = _results(doc)
    assert all(results[name] == "SUCCESS" for name in executed[:-1]), doc
    if doc["status"] == "COMPLETED":
        assert executed == order and results[order[-1]] == "SUCCESS", doc
        assert doc["completed_tasks"] == order, doc
    else:
        assert doc["status"] == "FAILED", doc
        assert results[executed[-1]] == "FAILURE", doc
        assert "Simulated failure" in doc["task_results"][executed[-1]]["error"], doc


def test_the_seed_api_sequence_health_create_execute_status_delete(stack: SeedStack) -> None:
    """The seed's tests/test_api_integration.py, step by step, against a real worker."""
    health = stack.poll(
        "/health reporting a healthy stack",
        lambda: stack.client.get("/health"),
        lambda response: response.status_code == 200 and response.json()["status"] == "healthy",
    )
    assert health.json()["status"] == "healthy"
    fixture = json.loads(
        (Path(__file__).parent / "seed_flows/tests_api_integration.json").read_text()
    )

    created = stack.client.post("/flow/create", json=fixture["document"])
    assert created.status_code == 200, created.text
    execution_id = created.json().get("execution_id")
    assert execution_id
    executed = stack.client.post("/flow/execute", json={"execution_id": execution_id})
    assert executed.status_code == 200, executed.text
    final = stack.wait_until_ended(execution_id)
    assert final["status"] == "COMPLETED", final
    assert "start" in final["completed_tasks"] and "end" in final["completed_tasks"], final

    deleted = stack.client.delete(f"/flow/{execution_id}")

    assert deleted.status_code == 200, deleted.text
    assert "deleted successfully" in deleted.json().get("message", "")
    assert stack.client.get(f"/flow/{execution_id}/status").status_code == 404
