"""The built-in task types, called directly and (for http_request) through the engine."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from werkzeug import Request, Response

from flows.engine import timing
from flows.models import ExecutionEvent, ExecutionStatus, TaskRunStatus
from tasks import _demo
from tasks.base_task import PermanentTaskError, TaskContext
from tasks.task_fetch_data import FetchDataTask
from tasks.task_http_request import HttpRequestTask
from tasks.task_noop import NoopTask
from tasks.task_print import PrintTask
from tasks.task_process_data import ProcessDataTask
from tasks.task_store_data import StoreDataTask
from tasks.task_wait import WaitTask
from tests.factories import flow_doc, run_flow, task

RECORDS = [{"id": 1, "value": 100}, {"id": 2, "value": 250}]


def run(cls: type, *, results: dict[str, Any] | None = None, **parameters: Any) -> Any:
    """Build the task the way the engine does and run it to its result."""
    instance = cls(name="t1", parameters=parameters)
    instance.context = TaskContext(execution_id="exec-1", results=results or {})
    outcome = asyncio.run(instance.run())
    return outcome, instance


# --- The seed's demo tasks -------------------------------------------------------------------
def test_fetch_data_returns_its_records() -> None:
    result, instance = run(FetchDataTask, failure_rate=0)
    assert result["message"] == "Fetched 3 records"
    assert [r["id"] for r in result["records"]] == [1, 2, 3]
    assert ("INFO", "fetched 3 records") in instance.context.logger.lines
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("cls", "what"),
    [(FetchDataTask, "fetch data"), (ProcessDataTask, "process data"), (StoreDataTask, "store")],
)
def test_a_failure_rate_of_one_always_fails(cls: type, what: str) -> None:
    with pytest.raises(RuntimeError, match=f"Simulated failure in task t1 while trying to {what}"):
        run(cls, failure_rate=1)


@pytest.mark.parametrize("cls", [FetchDataTask, ProcessDataTask, StoreDataTask])
def test_a_failure_rate_of_zero_never_fails(cls: type) -> None:
    for _ in range(20):
        result, _instance = run(cls, failure_rate=0)
        assert isinstance(result, dict)


def test_process_data_doubles_the_most_recent_records() -> None:
    results = {"old": {"records": [{"id": 9, "value": 1}]}, "fetch": {"records": RECORDS}}
    result, _ = run(ProcessDataTask, results=results)
    assert result == {
        "message": "Processed 2 records",
        "records": [
            {"id": 1, "value": 200, "processed": True},
            {"id": 2, "value": 500, "processed": True},
        ],
    }


def test_process_data_with_nothing_fetched_processes_nothing() -> None:
    result, _ = run(ProcessDataTask, results={"note": {"message": "no records here"}})
    assert result == {"message": "Processed 0 records", "records": []}


def test_store_data_counts_the_most_recent_records() -> None:
    result, _ = run(StoreDataTask, results={"fetch": {"records": RECORDS * 3}})
    assert result == {"message": "Stored 6 records", "stored": 6}


@pytest.mark.django_db
def test_the_demo_pipeline_hands_records_from_task_to_task() -> None:
    execution = run_flow(
        flow_doc(
            [
                task("fetch", "fetch_data"),
                task("process", "process_data"),
                task("store", "store_data"),
            ]
        )
    )
    assert execution.status == ExecutionStatus.COMPLETED
    results = dict(execution.steps.values_list("task_name", "result"))
    assert [r["value"] for r in results["process"]["records"]] == [200, 400, 600]
    assert results["store"]["stored"] == 3


def test_delay_seconds_sets_how_long_a_demo_task_pauses(monkeypatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_demo.asyncio, "sleep", fake_sleep)
    run(FetchDataTask, delay_seconds=0.25)
    monkeypatch.setenv("FLOW_DEMO_DELAY_SECONDS", "0.125")
    run(StoreDataTask)
    run(ProcessDataTask, delay_seconds=0)
    assert slept == [0.25, 0.125, 0.0]


# --- print, wait, noop -----------------------------------------------------------------------
def test_print_logs_and_returns_its_message() -> None:
    result, instance = run(PrintTask, message="hello operators")
    assert result == {"message": "hello operators", "message_printed": "hello operators"}
    assert instance.context.logger.lines == [("INFO", "hello operators")]


def test_print_without_a_message_prints_an_empty_line() -> None:
    result, _ = run(PrintTask)
    assert result == {"message": "", "message_printed": ""}


def test_print_keeps_percent_signs_literally() -> None:
    result, instance = run(PrintTask, message="100% done %s")
    assert result == {"message": "100% done %s", "message_printed": "100% done %s"}
    assert instance.context.logger.lines == [("INFO", "100% done %s")]


def test_print_logs_a_number_as_json_and_returns_it_as_given() -> None:
    result, instance = run(PrintTask, message=42)
    assert result == {"message": "42", "message_printed": 42}
    assert instance.context.logger.lines == [("INFO", "42")]


@pytest.mark.django_db
def test_print_lines_appear_in_the_execution_log() -> None:
    execution = run_flow(flow_doc([task("say", "print", message="deploy finished")]))
    assert execution.status == ExecutionStatus.COMPLETED
    assert ExecutionEvent.objects.filter(
        execution=execution, level="INFO", message="deploy finished"
    ).exists()


def test_wait_waits_the_given_seconds(monkeypatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("tasks.task_wait.asyncio.sleep", fake_sleep)
    result, _ = run(WaitTask, seconds=0.05)
    assert slept == [0.05]
    assert result == {"message": "Waited 0.05 seconds", "waited_seconds": 0.05}


def test_wait_of_zero_seconds_succeeds() -> None:
    result, _ = run(WaitTask, seconds=0)
    assert result["waited_seconds"] == 0


def test_wait_without_seconds_waits_one_second_as_the_seed_does(monkeypatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("tasks.task_wait.asyncio.sleep", fake_sleep)
    result, _ = run(WaitTask)
    assert slept == [1.0]
    assert result["waited_seconds"] == 1


# --- The seed's failure_rate on print and wait -----------------------------------------------
@pytest.mark.parametrize(
    ("cls", "parameters"), [(PrintTask, {"message": "hi"}), (WaitTask, {"seconds": 0})]
)
def test_print_and_wait_with_a_failure_rate_of_one_always_fail(cls: type, parameters) -> None:
    with pytest.raises(RuntimeError, match="Simulated failure in task t1"):
        run(cls, failure_rate=1, **parameters)


def test_a_failing_print_prints_nothing() -> None:
    instance = PrintTask(name="t1", parameters={"message": "never shown", "failure_rate": 1})
    instance.context = TaskContext(execution_id="exec-1")
    with pytest.raises(RuntimeError):
        asyncio.run(instance.run())
    assert instance.context.logger.lines == []


@pytest.mark.parametrize(
    ("cls", "parameters"), [(PrintTask, {"message": "hi"}), (WaitTask, {"seconds": 0})]
)
def test_print_and_wait_with_a_failure_rate_of_zero_never_fail(cls: type, parameters) -> None:
    for _ in range(20):
        result, _instance = run(cls, failure_rate=0, **parameters)
        assert isinstance(result, dict)


def test_noop_returns_an_empty_result() -> None:
    result, _ = run(NoopTask)
    assert result == {}


# --- http_request ----------------------------------------------------------------------------
@pytest.fixture
def allow_private(monkeypatch) -> None:
    """These tests call a server on 127.0.0.1, which http_request refuses by default
    (tests/test_http_policy.py); a developer's machine allows it the same way."""
    monkeypatch.setenv("FLOW_HTTP_ALLOW_PRIVATE", "1")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-here"


def test_http_get_parses_a_json_body(httpserver, allow_private) -> None:
    httpserver.expect_request("/orders", method="GET").respond_with_json(
        {"orders": [1, 2]}, headers={"X-Total": "2"}
    )
    result, instance = run(HttpRequestTask, url=httpserver.url_for("/orders"))

    assert result["status_code"] == 200
    assert result["body"] == {"orders": [1, 2]}
    assert result["headers"]["x-total"] == "2"
    assert result["message"] == f"GET {httpserver.url_for('/orders')} -> 200"
    assert instance.context.logger.lines == [("INFO", result["message"])]
    json.dumps(result, allow_nan=False)
    httpserver.check_assertions()


def test_http_a_text_body_is_returned_as_text(httpserver, allow_private) -> None:
    httpserver.expect_request("/hello").respond_with_data("hi there", content_type="text/plain")
    result, _ = run(HttpRequestTask, url=httpserver.url_for("/hello"))
    assert result["body"] == "hi there"


def test_http_post_sends_the_json_body_headers_and_query(httpserver, allow_private) -> None:
    httpserver.expect_request(
        "/orders",
        method="POST",
        json={"item": "book", "qty": 2},
        headers={"X-Token": "secret"},
        query_string="dry_run=true",
    ).respond_with_json({"id": 17}, status=201)

    result, _ = run(
        HttpRequestTask,
        method="POST",
        url=httpserver.url_for("/orders"),
        json={"item": "book", "qty": 2},
        headers={"X-Token": "secret"},
        params={"dry_run": "true"},
    )

    assert result["status_code"] == 201
    assert result["body"] == {"id": 17}
    httpserver.check_assertions()


def test_http_expected_status_accepts_that_status(httpserver, allow_private) -> None:
    httpserver.expect_request("/gone").respond_with_data("", status=410)
    result, _ = run(HttpRequestTask, url=httpserver.url_for("/gone"), expected_status=410)
    assert result["status_code"] == 410


def test_http_expected_status_refuses_any_other_status(httpserver, allow_private) -> None:
    httpserver.expect_request("/created").respond_with_data("", status=201)
    with pytest.raises(RuntimeError, match="answered 201"):
        run(HttpRequestTask, url=httpserver.url_for("/created"), expected_status=200)


def test_http_expected_status_as_a_list(httpserver, allow_private) -> None:
    httpserver.expect_request("/maybe").respond_with_data("", status=404)
    result, _ = run(HttpRequestTask, url=httpserver.url_for("/maybe"), expected_status=[200, 404])
    assert result["status_code"] == 404

    httpserver.expect_request("/conflict").respond_with_data("", status=409)
    with pytest.raises(PermanentTaskError, match="answered 409"):
        run(HttpRequestTask, url=httpserver.url_for("/conflict"), expected_status=[200, 404])


def test_http_a_404_is_a_permanent_failure(httpserver, allow_private) -> None:
    httpserver.expect_request("/missing").respond_with_data("no such thing", status=404)
    url = httpserver.url_for("/missing")
    with pytest.raises(PermanentTaskError) as caught:
        run(HttpRequestTask, url=url)
    assert str(caught.value) == f"GET {url} answered 404"


def test_http_a_500_fails_but_not_permanently(httpserver, allow_private) -> None:
    httpserver.expect_request("/broken").respond_with_data("oops", status=500)
    with pytest.raises(RuntimeError, match="answered 500") as caught:
        run(HttpRequestTask, url=httpserver.url_for("/broken"))
    assert not isinstance(caught.value, PermanentTaskError)


def test_http_a_429_is_worth_retrying(httpserver, allow_private) -> None:
    httpserver.expect_request("/busy").respond_with_data("slow down", status=429)
    with pytest.raises(RuntimeError, match="answered 429") as caught:
        run(HttpRequestTask, url=httpserver.url_for("/busy"))
    assert not isinstance(caught.value, PermanentTaskError)


def test_http_a_refused_connection_fails_with_a_clear_message(allow_private) -> None:
    url = closed_port_url()
    with pytest.raises(ConnectionError) as caught:
        run(HttpRequestTask, url=url)
    assert str(caught.value).startswith(f"GET {url} failed: ")


def test_http_a_slow_server_times_out(httpserver, allow_private) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.3)
        return Response("late")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    url = httpserver.url_for("/slow")
    with pytest.raises(TimeoutError) as caught:
        run(HttpRequestTask, url=url, timeout=0.05)
    assert str(caught.value) == f"GET {url} timed out after 0.05s"


def test_http_redirects_are_not_followed_unless_asked(httpserver, allow_private) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/new")}
    )
    httpserver.expect_request("/new").respond_with_json({"here": True})

    with pytest.raises(RuntimeError, match="answered 302"):
        run(HttpRequestTask, url=httpserver.url_for("/old"))
    result, _ = run(HttpRequestTask, url=httpserver.url_for("/old"), follow_redirects=True)
    assert result["body"] == {"here": True}


# --- http_request through the engine ---------------------------------------------------------
@pytest.mark.django_db
def test_http_request_runs_through_the_engine(httpserver, allow_private) -> None:
    httpserver.expect_request("/ping").respond_with_json({"pong": True})
    execution = run_flow(
        flow_doc(
            [
                task("call", "http_request", url=httpserver.url_for("/ping")),
                task("report", "print", message="called"),
            ]
        )
    )
    assert execution.status == ExecutionStatus.COMPLETED
    call = execution.steps.get(task_name="call")
    assert call.status == TaskRunStatus.SUCCESS
    assert call.result["status_code"] == 200
    assert call.result["body"] == {"pong": True}
    assert call.events.filter(message__endswith="/ping -> 200").exists()


@pytest.mark.django_db
def test_an_http_404_through_the_engine_fails_the_execution(httpserver, allow_private) -> None:
    httpserver.expect_request("/missing").respond_with_data("", status=404)
    url = httpserver.url_for("/missing")
    execution = run_flow(flow_doc([task("call", "http_request", url=url)]))
    assert execution.status == ExecutionStatus.FAILED
    step = execution.steps.get()
    assert step.error == f"PermanentTaskError: GET {url} answered 404"
    assert execution.error == f"task 'call' failed: PermanentTaskError: GET {url} answered 404"


@pytest.mark.django_db
def test_an_http_timeout_through_the_engine_reports_the_request_timeout(
    httpserver, monkeypatch, allow_private
) -> None:
    # The step would only be abandoned after its own timeout plus this grace: keep both short.
    monkeypatch.setattr(timing, "ABANDON_GRACE_SECONDS", 0.3)

    def slow(request: Request) -> Response:
        time.sleep(0.3)
        return Response("late")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    url = httpserver.url_for("/slow")
    document = flow_doc([task("call", "http_request", url=url, timeout=0.05)])
    document["tasks"][0]["timeout_seconds"] = 1

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.FAILED
    assert execution.steps.get().error == f"TimeoutError: GET {url} timed out after 0.05s"


@pytest.mark.django_db
def test_a_large_http_response_body_is_cut_so_the_step_can_be_stored(
    httpserver, allow_private
) -> None:
    # http_request caps the body it returns; the capped result must still fit the result limit.
    big = "x" * 1_500_000
    httpserver.expect_request("/export").respond_with_data(big, content_type="text/plain")
    execution = run_flow(
        flow_doc([task("call", "http_request", url=httpserver.url_for("/export"))])
    )

    step = execution.steps.get()
    assert step.status == TaskRunStatus.SUCCESS, step.error
    assert big.startswith(step.result["body"])
    assert execution.status == ExecutionStatus.COMPLETED


@pytest.mark.django_db
def test_a_wait_the_flow_accepted_is_not_cut_short_by_the_default_task_timeout(settings) -> None:
    # Scaled down: a 600 s wait (the schema allows up to a day) against the 300 s default.
    settings.FLOW_DEFAULT_TASK_TIMEOUT = 0.05
    execution = run_flow(flow_doc([task("pause", "wait", seconds=0.2)]))
    step = execution.steps.get()
    assert step.status == TaskRunStatus.SUCCESS, step.error
    assert execution.status == ExecutionStatus.COMPLETED
