"""Operator pages other than the builder: dashboard, lists, flow and execution pages."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flows import services
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun
from tests.factories import (
    cond,
    failing,
    flow_doc,
    mapped,
    run_flow,
    sample_flow,
    start_execution,
    task,
)
from tests.web_helpers import field_errors, many_executions, stored

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client, alice):
    client.force_login(alice)
    return client


PAGES = [
    "/",
    "/flows/",
    "/flows/new",
    "/flows/example_flow/",
    "/flows/example_flow/edit",
    "/flows/example_flow/v1/",
    "/flows/example_flow/v1/export",
    "/executions/",
    "/flows/builder/task-fields?prefix=tasks-0&type=noop",
]


@pytest.mark.parametrize("url", PAGES)
def test_every_page_sends_anonymous_visitors_to_the_login_page(client, url):
    stored(sample_flow())
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_execution_pages_and_actions_need_a_login_too(client):
    execution = run_flow(sample_flow())
    for url in (f"/executions/{execution.id}/", f"/executions/{execution.id}/live"):
        assert client.get(url)["Location"].startswith("/accounts/login/")
    response = client.post(f"/executions/{execution.id}/rerun")
    assert response["Location"].startswith("/accounts/login/")
    assert Execution.objects.count() == 1


def test_forms_refuse_a_post_without_csrf_token(alice):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    stored(sample_flow())
    assert strict.post("/flows/example_flow/run").status_code == 403
    assert not Execution.objects.exists()


# -- dashboard ---------------------------------------------------------------------------------
def test_the_dashboard_counts_executions_by_status_and_names_the_failing_flows(operator):
    run_flow(sample_flow())
    failed = run_flow(flow_doc([failing("boom")], flow_id="flaky"))
    old = run_flow(flow_doc([failing("boom")], flow_id="flaky"))
    Execution.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=3))

    html = operator.get("/").content.decode()

    counts = status_table(html)
    assert counts["completed"] == ("1", "1")
    assert counts["failed"] == ("1", "2")  # one of them 3 days old
    assert "Flaky" in failing_section(html)
    assert str(failed.id) in html


def status_table(html: str) -> dict[str, tuple[str, str]]:
    """The dashboard's executions by status: {status: (last 24 h, last 7 days)}."""
    rows = re.findall(
        r'status-(\w+)">\w+</span>\s*</a></td>\s*<td class="num">(\d+)</td>'
        r'<td class="num">(\d+)</td>',
        html,
    )
    return {status: (day, week) for status, day, week in rows}


def failing_section(html: str) -> str:
    return html.split('id="failing"')[1].split("</section>")[0]


def map_of_five(*iterator: dict) -> dict:
    return flow_doc([mapped("each", "${input.items}", list(iterator))], flow_id="fan_out")


def test_the_dashboard_counts_a_map_of_5_items_as_one_execution_not_6(operator):
    run_flow(map_of_five(task("x")), input={"items": [1, 2, 3, 4, 5]})
    assert Execution.objects.count() == 6  # the run and its 5 items, each a child execution

    counts = status_table(operator.get("/").content.decode())

    assert counts["completed"] == ("1", "1")
    assert sum(int(day) for day, _ in counts.values()) == 1


def test_a_map_whose_items_fail_is_one_failed_run_of_its_flow_among_the_failing(operator):
    execution = run_flow(map_of_five(failing("x")), input={"items": [1, 2, 3, 4, 5]})
    assert execution.status == ExecutionStatus.FAILED
    assert Execution.objects.filter(parent_step__isnull=False, status="FAILED").exists()

    html = operator.get("/").content.decode()

    assert status_table(html)["failed"] == ("1", "1")
    failed_of = re.findall(
        r'>Fan Out</a></td>\s*<td class="num">(\d+)</td><td class="num">(\d+)</td>',
        failing_section(html),
    )
    assert failed_of == [("1", "1")]


def test_the_dashboard_says_when_no_worker_is_alive_and_what_to_do(operator):
    html = operator.get("/").content.decode()
    assert "No workers alive" in html
    assert "manage.py qcluster" in html
    assert "Jobs waiting in the queue" in html
    assert "/docs" in html and "/admin/" in html


def test_the_dashboard_shows_the_clusters_django_q_reports(operator, monkeypatch):
    class FakeStat:
        cluster_id, host, status, workers = "c1", "worker-host", "Idle", [1, 2]
        tob = timezone.now()

        def uptime(self):
            return 42.0

    monkeypatch.setattr("flows.web.presenters.Stat.get_all", staticmethod(lambda: [FakeStat()]))
    html = operator.get("/").content.decode()
    assert "1 cluster alive" in html
    assert "worker-host" in html


# -- flows list ----------------------------------------------------------------------------------
def test_the_flows_list_shows_version_last_run_and_searches(operator):
    stored(sample_flow())
    execution = run_flow(flow_doc([failing("boom")], flow_id="flaky"))
    stored(flow_doc([task("a")], flow_id="flaky"))

    html = operator.get("/flows/").content.decode()
    assert "Sample Data Pipeline" in html and "never run" in html
    assert "v2" in html
    assert f"/executions/{execution.id}/" in html and "FAILED" in html

    found = operator.get("/flows/?q=FLAK").content.decode()
    assert "Flaky" in found and "Sample Data Pipeline" not in found
    assert "No flow matches" in operator.get("/flows/?q=zzz").content.decode()


def test_the_flows_list_shows_a_maps_run_as_its_last_run_not_one_of_its_items(operator):
    # The items are executions too, created after their run and ending after it started.
    run = run_flow(flow_doc([mapped("each", "${input.items}", [task("x")])], flow_id="fan"),
                   input={"items": [1, 2, 3]})  # fmt: skip

    html = operator.get("/flows/").content.decode()

    assert f"/executions/{run.id}/" in html
    for child in Execution.objects.filter(root=run):
        assert f"/executions/{child.id}/" not in html


def test_run_starts_the_current_version_and_opens_its_execution(operator, alice):
    stored(sample_flow())
    stored(flow_doc([task("only")], flow_id="example_flow"))

    response = operator.post("/flows/example_flow/run", {"input": '{"n": 1}'})

    execution = Execution.objects.get()
    assert response["Location"] == f"/executions/{execution.id}/"
    assert (execution.flow_version.version, execution.status) == (2, ExecutionStatus.QUEUED)
    assert execution.input == {"n": 1} and execution.created_by == alice


def test_run_refuses_input_that_is_not_an_object(operator):
    stored(sample_flow())
    response = operator.post("/flows/example_flow/run", {"input": "[1, 2]"}, follow=True)
    assert "Must be a JSON object" in response.content.decode()
    assert not Execution.objects.exists()


def test_an_empty_install_tells_the_operator_how_to_start(operator):
    assert "No flows yet" in operator.get("/flows/").content.decode()
    assert "No executions yet" in operator.get("/executions/").content.decode()


def test_a_flow_whose_task_type_disappeared_is_flagged_and_cannot_run(operator, settings, tmp_path):
    stored(flow_doc([task("a", "print", message="x")], flow_id="orphan"))
    settings.FLOW_TASKS_DIR = tmp_path

    html = operator.get("/flows/").content.decode()
    assert "Cannot run: task type print not available" in html
    response = operator.post("/flows/orphan/run", follow=True)
    assert "no longer valid" in response.content.decode()
    assert Execution.objects.count() == 0


def test_deleting_a_flow_asks_first(operator):
    run_flow(sample_flow())
    assert (
        "Delete flow Sample Data Pipeline?"
        in operator.get("/flows/example_flow/delete").content.decode()
    )
    response = operator.post("/flows/example_flow/delete")
    assert response["Location"] == "/flows/"
    assert operator.get("/flows/example_flow/").status_code == 404


def test_deleting_a_flow_counts_its_runs_not_their_map_items(operator):
    run_flow(map_of_five(task("x")), input={"items": [1, 2, 3, 4, 5]})

    html = operator.get("/flows/fan_out/delete").content.decode()

    assert "its 1 execution with their steps and logs" in html


# -- list pages: the number of queries does not grow with rows ---------------------------------
def _queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_the_flows_list_costs_the_same_queries_for_1_or_50_flows(
    operator, django_assert_num_queries
):
    stored(sample_flow())
    run_flow(sample_flow())
    one = _queries(operator, "/flows/")
    for i in range(49):
        version = stored(flow_doc([task("a")], flow_id=f"f{i}"))
        many_executions(version, 2)
    with django_assert_num_queries(one):
        html = operator.get("/flows/").content.decode()
    assert html.count('action="/flows/') >= 50


def test_the_executions_list_costs_the_same_queries_for_1_or_50_rows(
    operator, django_assert_num_queries
):
    version = stored(sample_flow())
    many_executions(version, 1)
    one = _queries(operator, "/executions/")
    other = stored(flow_doc([task("a")], flow_id="other"))
    many_executions(version, 25)
    many_executions(other, 24)
    with django_assert_num_queries(one):
        html = operator.get("/executions/").content.decode()
    assert html.count('name="ids"') == 50


def test_the_dashboard_costs_the_same_queries_for_few_or_many_executions(
    operator, django_assert_num_queries
):
    version = stored(sample_flow())
    many_executions(version, 1)
    one = _queries(operator, "/")
    many_executions(version, 60, status=ExecutionStatus.FAILED)
    run_flow(map_of_five(failing("x")), input={"items": [1, 2, 3, 4, 5]})  # children too
    with django_assert_num_queries(one):
        operator.get("/")


# -- executions list -------------------------------------------------------------------------------
def test_executions_are_filtered_by_status_flow_and_dates(operator):
    done = run_flow(sample_flow())
    broke = run_flow(flow_doc([failing("boom")], flow_id="flaky"))
    Execution.objects.filter(pk=broke.pk).update(created_at=timezone.now() - dt.timedelta(days=10))

    def ids(query):
        html = operator.get(f"/executions/?{query}").content.decode()
        return {e for e in (str(done.id), str(broke.id)) if e in html}

    assert ids("") == {str(done.id), str(broke.id)}
    assert ids("status=FAILED") == {str(broke.id)}
    assert ids("flow=example_flow") == {str(done.id)}
    week_ago = (timezone.localdate() - dt.timedelta(days=7)).isoformat()
    assert ids(f"created_from={week_ago}") == {str(done.id)}
    assert ids(f"created_until={week_ago}") == {str(broke.id)}


def test_a_reversed_date_range_is_reported_at_its_field(operator):
    html = operator.get("/executions/?created_from=2026-01-02&created_until=2026-01-01").content
    assert "Must not be before" in " ".join(field_errors(html.decode(), "id_created_until"))


def test_executions_are_paginated_fifty_to_a_page(operator):
    many_executions(stored(sample_flow()), 55)
    first = operator.get("/executions/").content.decode()
    assert first.count('name="ids"') == 50 and "page 1 of 2" in first
    second = operator.get("/executions/?page=2").content.decode()
    assert second.count('name="ids"') == 5


def test_bulk_delete_asks_for_confirmation_then_deletes(operator):
    a, b, c = (run_flow(sample_flow()) for _ in range(3))
    ids = [str(a.id), str(b.id)]

    confirm = operator.post(
        "/executions/delete", {"ids": ids, "next": "/executions/?status=COMPLETED"}
    )
    assert "Delete 2 executions?" in confirm.content.decode()
    assert Execution.objects.count() == 3

    done = operator.post(
        "/executions/delete",
        {"ids": ids, "confirm": "yes", "next": "/executions/?status=COMPLETED"},
    )
    assert done["Location"] == "/executions/?status=COMPLETED"
    assert list(Execution.objects.values_list("id", flat=True)) == [c.id]


def test_bulk_delete_never_redirects_off_site(operator):
    run = run_flow(sample_flow())
    response = operator.post(
        "/executions/delete",
        {"ids": [str(run.id)], "confirm": "yes", "next": "https://evil.example/"},
    )
    assert response["Location"] == "/executions/"


# -- execution page ------------------------------------------------------------------------------
RECOVERY = flow_doc(
    [failing("fetch"), task("store", "store_data"), task("recover", "print", message="fixed")],
    [cond("fetch", "success", "store", "recover"), cond("recover", "success", "end", "end")],
    flow_id="recovery",
)


def _node_state(html, name):
    match = re.search(rf'<g class="node node-task state-([\w-]+)[^"]*" data-task="{name}">', html)
    return match.group(1) if match else None


def test_the_execution_page_colours_the_graph_and_shows_each_step(operator):
    execution = run_flow(RECOVERY)

    html = operator.get(f"/executions/{execution.id}/").content.decode()

    assert "COMPLETED" in html
    assert _node_state(html, "fetch") == "failure"
    assert _node_state(html, "store") == "not-run"
    assert _node_state(html, "recover") == "success"
    assert 'class="edge edge-failure taken"' in html
    assert "Simulated failure in task fetch" in html  # the error
    assert "Traceback" in html
    assert "&quot;message&quot;: &quot;fixed&quot;" in html  # the output JSON
    assert "fixed</li>" in html  # the task's own log line
    assert "condition &#x27;" in html or "its condition" in html  # the routing decision
    assert 'data-live="false"' in html
    assert "Run again" in html and "Cancel</button>" not in html


def test_a_running_execution_shows_a_running_task_and_keeps_polling(operator):
    execution = start_execution(sample_flow())
    TaskRun.objects.filter(execution=execution).update(status="RUNNING", started_at=timezone.now())
    Execution.objects.filter(pk=execution.pk).update(status="RUNNING", started_at=timezone.now())

    live = operator.get(f"/executions/{execution.id}/live").content.decode()

    assert live.lstrip().startswith('<div id="live" data-live="true"')
    assert "<html" not in live
    assert _node_state(live, "task1") == "running"
    assert _node_state(live, "task2") == "not-run"
    page = operator.get(f"/executions/{execution.id}/").content.decode()
    assert '<meta http-equiv="refresh"' in page  # without JavaScript: a plain reload
    assert "live.js" in page


def test_a_created_execution_is_executed_from_its_page(operator):
    version = stored(sample_flow())
    execution = services.execution_create(flow_version=version)
    page = operator.get(f"/executions/{execution.id}/").content.decode()
    assert "Execute</button>" in page and "press <strong>Execute</strong>" in page

    response = operator.post(f"/executions/{execution.id}/execute")

    assert response["Location"] == f"/executions/{execution.id}/"
    assert Execution.objects.get(pk=execution.id).status == ExecutionStatus.QUEUED
    again = operator.post(f"/executions/{execution.id}/execute", follow=True).content.decode()
    assert "only a CREATED execution can be executed" in again


def test_cancel_and_run_again_from_the_execution_page(operator, alice):
    execution = start_execution(sample_flow())

    operator.post(f"/executions/{execution.id}/cancel")
    assert Execution.objects.get(pk=execution.id).status == ExecutionStatus.CANCELLED

    response = operator.post(f"/executions/{execution.id}/rerun")
    new = Execution.objects.exclude(pk=execution.id).get()
    assert response["Location"] == f"/executions/{new.id}/"
    assert (new.rerun_of_id, new.flow_version_id, new.created_by) == (
        execution.id,
        execution.flow_version_id,
        alice,
    )


def test_an_unknown_execution_is_a_404(operator):
    assert operator.get(f"/executions/{uuid.uuid4()}/").status_code == 404
    assert operator.get("/flows/nope/").status_code == 404


def test_execution_log_lines_without_a_step_are_shown_as_the_execution_log(operator):
    execution = run_flow(sample_flow())
    ExecutionEvent.objects.create(
        execution=execution, created_at=timezone.now(), level="WARNING", message="operator note"
    )
    html = operator.get(f"/executions/{execution.id}/").content.decode()
    assert "Execution log" in html and "operator note" in html


@pytest.mark.parametrize("url", ["/", "/flows/", "/flows/test_flow/", "/executions/"])
def test_each_page_s_title_is_its_name_and_nothing_of_its_content(operator, url):
    # A card once landed inside the flow page's <title> block: the tab read its whole HTML.
    stored(flow_doc([task("a")]))
    html = operator.get(url).content.decode()

    title = re.search(r"<head>.*?<title>(.*?)</title>", html, re.S).group(1)  # not an SVG's
    assert "<" not in title and len(title) < 120, title
    assert title.endswith("Flow Manager")
