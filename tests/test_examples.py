"""Every flow document in ``examples/`` runs to the end state it promises.

The folder is globbed, so a new example fails here until its expected run is written down in
``EXPECTED``. Runs use the worker's engine inline (tests/factories.run_flow); retry delays are
set to 0 so the suite does not sleep, which keeps every attempt and every route as written.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from flows.models import Execution
from tests.factories import run_flow

EXAMPLES = sorted((Path(settings.BASE_DIR) / "examples").glob("*.json"))

# file name -> (execution status, [(task, step status, attempt), ...] in run order)
EXPECTED: dict[str, tuple[str, list[tuple[str, str, int]]]] = {
    "sample_flow.json": (
        "COMPLETED",
        [("task1", "SUCCESS", 1), ("task2", "SUCCESS", 1), ("task3", "SUCCESS", 1)],
    ),
    # The source is down: three attempts of fetch, then the failure branch to the alert,
    # which recovers the flow (a failure routed to a task that succeeds ends COMPLETED).
    "retry_branch_flow.json": (
        "COMPLETED",
        [
            ("fetch", "FAILURE", 1),
            ("fetch", "FAILURE", 2),
            ("fetch", "FAILURE", 3),
            ("alert", "SUCCESS", 1),
        ],
    ),
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def flow_of(document: dict[str, Any]) -> dict[str, Any]:
    """The flow itself, whether the file is bare or wrapped as {"flow": {...}}."""
    return document.get("flow", document)


def without_retry_delays(document: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    for item in flow_of(document)["tasks"]:
        if "retry" in item:
            item["retry"]["delay_seconds"] = 0
    return document


def steps(execution: Execution) -> list[tuple[str, str, int]]:
    return list(execution.steps.order_by("seq").values_list("task_name", "status", "attempt"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_example_runs_to_the_end_state_it_promises(db, path):
    if path.name not in EXPECTED:
        pytest.fail(f"examples/{path.name} is new: write the run it promises in EXPECTED")
    status, expected_steps = EXPECTED[path.name]

    execution = run_flow(without_retry_delays(load(path)))

    assert (execution.status, steps(execution)) == (status, expected_steps), execution.error


def test_every_example_written_down_here_is_in_the_folder():
    # A moved folder would otherwise turn the parametrized test above into no test at all.
    assert {path.name for path in EXAMPLES} >= set(EXPECTED)


# --- retry_branch_flow.json: both branches ------------------------------------------------------
RETRY_BRANCH = Path(settings.BASE_DIR) / "examples" / "retry_branch_flow.json"


def with_fetch_failure_rate(rate: float) -> dict[str, Any]:
    """The example as its description says to change it: fetch's failure_rate set."""
    document = without_retry_delays(load(RETRY_BRANCH))
    (fetch,) = [item for item in document["tasks"] if item["name"] == "fetch"]
    fetch["parameters"]["failure_rate"] = rate
    return document


def test_retry_branch_example_declares_a_real_retry_on_fetch():
    (fetch,) = [item for item in load(RETRY_BRANCH)["tasks"] if item["name"] == "fetch"]

    assert fetch["retry"] == {"max_attempts": 3, "delay_seconds": 1}


def test_retry_branch_example_routes_the_last_failed_attempt_to_the_alert(db):
    execution = run_flow(with_fetch_failure_rate(1))

    last_fetch = execution.steps.filter(task_name="fetch").order_by("seq").last()
    assert last_fetch.route.endswith("-> alert"), last_fetch.route
    assert not execution.steps.filter(task_name__in=["process", "store"]).exists()
    alert = execution.steps.get(task_name="alert")
    assert alert.result["message"] == "fetch failed 3 times: sending an alert instead"


def test_retry_branch_example_when_the_source_answers_stores_and_never_alerts(db):
    execution = run_flow(with_fetch_failure_rate(0))

    assert execution.status == "COMPLETED"
    assert steps(execution) == [
        ("fetch", "SUCCESS", 1),
        ("process", "SUCCESS", 1),
        ("store", "SUCCESS", 1),
    ]


def test_retry_branch_example_retries_a_flaky_fetch_until_it_succeeds(db, monkeypatch):
    # With failure_rate 0.5, the first draw fails and the second passes: one retry, then the
    # success branch. random.random is the demo tasks' only source of failure.
    draws = iter([0.1, 0.9, 0.9, 0.9])
    monkeypatch.setattr("tasks._demo.random.random", lambda: next(draws))

    execution = run_flow(with_fetch_failure_rate(0.5))

    assert execution.status == "COMPLETED"
    assert steps(execution) == [
        ("fetch", "FAILURE", 1),
        ("fetch", "SUCCESS", 2),
        ("process", "SUCCESS", 1),
        ("store", "SUCCESS", 1),
    ]
