"""Every flow document in ``examples/`` runs to the end state it promises, with the results
it promises; and each runs as the README's ``runflow`` lines say.

The folder is globbed, so a new example fails here until its expected run is written down in
``EXPECTED``. Runs use the worker's engine inline (``engine.run_inline``), stopping at a wait
for a signal, which is then answered through the service, as the API's signal endpoint does.
Retry delays and sleeps are set to 0 so the suite does not sleep, which keeps every attempt
and every route as written.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django_q.conf import Conf

from flows import engine, services
from flows.models import Execution
from tests.factories import children_of, run_flow, start_execution

EXAMPLES_DIR = Path(settings.BASE_DIR) / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))


@dataclass(frozen=True)
class Run:
    """What running one example promises."""

    status: str  # the execution's end state
    steps: list[tuple[str, str, int]]  # (task, step status, attempt), in run order
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> keys of its result
    input: dict[str, Any] | None = None
    stored_first: tuple[str, ...] = ()  # example files it calls as sub-flows
    signal: dict[str, Any] | None = None  # answered (execution_signal) once it waits
    limits: tuple[dict[str, Any], ...] = ()  # defined first, as the README's `manage.py limit`


EXPECTED: dict[str, Run] = {
    "sample_flow.json": Run(
        "COMPLETED",
        [("task1", "SUCCESS", 1), ("task2", "SUCCESS", 1), ("task3", "SUCCESS", 1)],
    ),
    # The source is down: three attempts of fetch, then the failure branch to the alert,
    # which recovers the flow (a failure routed to a task that succeeds ends COMPLETED).
    "retry_branch_flow.json": Run(
        "COMPLETED",
        [
            ("fetch", "FAILURE", 1),
            ("fetch", "FAILURE", 2),
            ("fetch", "FAILURE", 3),
            ("alert", "SUCCESS", 1),
        ],
    ),
    "parallel_flow.json": Run(
        "COMPLETED",
        [("both", "SUCCESS", 1), ("summary", "SUCCESS", 1)],
        {
            "both": {
                "report": {"message": "report of the nightly batch"},
                "archive": {"message": "nightly batch archived"},
            },
            "summary": {"message": "report of the nightly batch; nightly batch archived"},
        },
    ),
    "map_flow.json": Run(
        "COMPLETED",
        [("each", "SUCCESS", 1), ("summary", "SUCCESS", 1)],
        {
            "each": {
                "results": [
                    {"message": "#0: pack 2 of order A-1"},
                    {"message": "#1: pack 1 of order B-7"},
                    {"message": "#2: pack 5 of order C-3"},
                ],
                "count": 3,
                "failed": 0,
            },
            "summary": {"message": "3 orders packed"},
        },
    ),
    "subflow_called_flow.json": Run(
        "COMPLETED",
        [("greet", "SUCCESS", 1)],
        {"greet": {"message": "hello you"}},
        input={"who": "you"},
    ),
    "subflow_flow.json": Run(
        "COMPLETED",
        [("call", "SUCCESS", 1), ("after", "SUCCESS", 1)],
        {
            "call": {"status": "COMPLETED", "result": {"message": "hello ops"}},
            "after": {"message": "the called flow COMPLETED: hello ops"},
        },
        stored_first=("subflow_called_flow.json",),
    ),
    # Started by the sample flow's end (on_flow_end; its README lines are in
    # test_events_readme); run here by hand with the input such an end gives.
    "triggered_flow.json": Run(
        "COMPLETED",
        [("report", "SUCCESS", 1)],
        {"report": {"message": "example_flow e-1 ended COMPLETED: Stored 3 records"}},
        input={
            "flow_id": "example_flow",
            "execution_id": "e-1",
            "status": "COMPLETED",
            "result": {"message": "Stored 3 records", "stored": 3},
        },
    ),
    "input_schema_flow.json": Run(
        "COMPLETED",
        [("report", "SUCCESS", 1)],
        {"report": {"message": "report for acme: 7 days as csv"}},
        input={"customer": "acme"},
    ),
    # The secret comes from FLOW_SECRET_partner_token (the fixture below, as in the README).
    "secret_flow.json": Run(
        "COMPLETED",
        [("preview", "SUCCESS", 1)],
        {
            "preview": {
                "message": "GET https://partner.example.com/accounts/acme/changes?days=1 "
                "with Authorization: Bearer ***"
            }
        },
        input={"account": "acme"},
    ),
    # The limit is defined first, as the README's `manage.py limit` line does.
    "partner_api_flow.json": Run(
        "COMPLETED",
        [("accounts", "SUCCESS", 1), ("summary", "SUCCESS", 1)],
        {"summary": {"message": "5 accounts pushed"}},
        limits=(
            {"name": "partner_api", "max_in_flight": 2, "rate": {"count": 5, "per_seconds": 1}},
        ),
    ),
    "sleep_flow.json": Run(
        "COMPLETED",
        [("before", "SUCCESS", 1), ("nap", "SUCCESS", 1), ("after", "SUCCESS", 1)],
        {"after": {"message": "awake"}},
    ),
    "wait_for_signal_flow.json": Run(
        "COMPLETED",
        [("ask", "SUCCESS", 1), ("ship", "SUCCESS", 1)],
        {"ask": {"carrier": "DHL"}, "ship": {"message": "shipping to DHL"}},
        signal={"name": "approval", "decision": "approve", "payload": {"carrier": "DHL"}},
    ),
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def flow_of(document: dict[str, Any]) -> dict[str, Any]:
    """The flow itself, whether the file is bare or wrapped as {"flow": {...}}."""
    return document.get("flow", document)


def without_retry_delays(document: dict[str, Any]) -> dict[str, Any]:
    """The document with retry delays and sleeps at 0 s."""
    document = copy.deepcopy(document)
    for item in flow_of(document)["tasks"]:
        if "retry" in item:
            item["retry"]["delay_seconds"] = 0
        if item.get("task_type") == "sleep":
            item["parameters"]["seconds"] = 0
    return document


def steps(execution: Execution) -> list[tuple[str, str, int]]:
    return list(execution.steps.order_by("seq").values_list("task_name", "status", "attempt"))


PARTNER_TOKEN = "demo-token-123"


def run_example(name: str, expected: Run) -> Execution:
    """Store what it calls, start it, run it inline; answer its signal when it waits."""
    for limit in expected.limits:
        services.limit_create(data=limit)
    for called in expected.stored_first:
        services.flow_create(document=load(EXAMPLES_DIR / called))
    document = without_retry_delays(load(EXAMPLES_DIR / name))
    execution = start_execution(document, input=expected.input)
    execution = engine.run_inline(execution.id, signal_timeouts=False)
    if expected.signal is not None:
        assert execution.steps.get(status="PENDING").waiting["kind"] == "signal"
        services.execution_signal(execution_id=execution.id, **expected.signal)
        execution = engine.run_inline(execution.id, signal_timeouts=False)
    return execution


def subset(value: Any, expected: Any) -> Any:
    """``value`` cut down to the keys ``expected`` names (in dicts, also inside lists)."""
    if isinstance(expected, dict) and isinstance(value, dict):
        return {k: subset(value.get(k), v) for k, v in expected.items()}
    if isinstance(expected, list) and isinstance(value, list):
        return [subset(v, e) for v, e in zip(value, expected, strict=False)] + value[
            len(expected) :
        ]
    return value


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_example_runs_to_the_end_state_it_promises(db, monkeypatch, path):
    monkeypatch.setenv("FLOW_SECRET_partner_token", PARTNER_TOKEN)  # as the README sets it
    if path.name not in EXPECTED:
        pytest.fail(f"examples/{path.name} is new: write the run it promises in EXPECTED")
    expected = EXPECTED[path.name]

    execution = run_example(path.name, expected)

    assert (execution.status, steps(execution)) == (expected.status, expected.steps), (
        execution.error
    )
    for task_name, result in expected.results.items():
        got = execution.steps.filter(task_name=task_name).order_by("-seq").first().result
        assert subset(got, result) == result, (task_name, got)


def test_every_example_written_down_here_is_in_the_folder():
    # A moved folder would otherwise turn the parametrized test above into no test at all.
    assert {path.name for path in EXAMPLES} >= set(EXPECTED)


def test_there_is_an_example_of_each_control_and_wait_task_type():
    used = {item.get("task_type") for path in EXAMPLES for item in flow_of(load(path))["tasks"]}

    assert used >= {"parallel", "map", "subflow", "sleep", "wait_for_signal"}


def test_each_map_item_gets_the_map_s_parameters_resolved_for_it_as_its_input(db):
    execution = run_example("map_flow.json", EXPECTED["map_flow.json"])

    assert [child.input for child in children_of(execution, "each")] == [
        {"order": {"id": "A-1", "qty": 2}, "position": 0},
        {"order": {"id": "B-7", "qty": 1}, "position": 1},
        {"order": {"id": "C-3", "qty": 5}, "position": 2},
    ]


def test_the_approval_example_rejected_holds_the_batch(db):
    rejected = {"name": "approval", "decision": "reject", "comment": "not today"}
    run = EXPECTED["wait_for_signal_flow.json"]

    execution = run_example(
        "wait_for_signal_flow.json", Run(run.status, run.steps, signal=rejected)
    )

    assert steps(execution) == [("ask", "FAILURE", 1), ("hold", "SUCCESS", 1)]
    assert execution.status == "COMPLETED"


# --- the README's runflow lines -----------------------------------------------------------------
# Each as "Run a flow from the command line" writes it (sleep_flow.json sleeps its 1 s here).
README_RUNS: list[tuple[list[str], int, str]] = [
    (["examples/parallel_flow.json"], 0, "COMPLETED"),
    (["examples/map_flow.json"], 0, "COMPLETED"),
    (
        ["examples/subflow_flow.json", "--with", "examples/subflow_called_flow.json"],
        0,
        "COMPLETED",
    ),
    (["examples/subflow_called_flow.json", "--input", '{"who": "you"}'], 0, "COMPLETED"),
    (["examples/input_schema_flow.json", "--input", '{"customer": "acme"}'], 0, "COMPLETED"),
    (["examples/sleep_flow.json"], 0, "COMPLETED"),
    (["examples/wait_for_signal_flow.json"], 1, "waits for signal 'approval'"),
]


@pytest.mark.parametrize(
    ("args", "code", "says"), README_RUNS, ids=[" ".join(a) for a, _, _ in README_RUNS]
)
def test_the_readme_s_runflow_line_runs_the_example(db, monkeypatch, args, code, says):
    monkeypatch.setattr(Conf, "SYNC", Conf.SYNC)
    monkeypatch.chdir(settings.BASE_DIR)
    out, err = StringIO(), StringIO()
    try:
        call_command("runflow", *args, stdout=out, stderr=err)
        exit_code = 0
    except SystemExit as exc:
        exit_code = exc.code

    assert exit_code == code, out.getvalue() + err.getvalue()
    assert says in out.getvalue()


def test_the_readme_s_refused_input_line_exits_2_naming_each_field(db, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", Conf.SYNC)
    monkeypatch.chdir(settings.BASE_DIR)
    err = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command(
            "runflow", *README_REFUSED, stdout=StringIO(), stderr=err
        )  # fmt: skip
    assert exited.value.code == 2
    assert err.getvalue().splitlines() == [
        "--input: does not match the flow's input_schema",
        "  /customer: required",
        "  /days: 0 is less than the minimum of 1",
    ]


# The README's line of a refused input (exit 2): its own test above.
README_REFUSED = ["examples/input_schema_flow.json", "--input", '{"days": 0}']


def test_every_readme_runflow_line_of_these_examples_is_tested_here():
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    written = {
        line.split("#")[0].split("runflow ", 1)[1].strip()
        for line in readme.splitlines()
        if line.startswith(".venv/bin/python manage.py runflow examples/")
    }
    tested = {
        " ".join(f"'{arg}'" if arg.startswith("{") else arg for arg in args)
        for args, _, _ in [*README_RUNS, (README_REFUSED, 2, "")]
    }
    # sample_flow.json and retry_branch_flow.json: their lines are tested in test_commands.
    others = {"examples/sample_flow.json", "examples/retry_branch_flow.json"}
    others.add("examples/sample_flow.json -v 2")
    # partner_api_flow.json needs its limit defined first: tests/test_limits_faces.py runs
    # the README's two lines.
    others.add("examples/partner_api_flow.json")

    assert written - others == tested


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
