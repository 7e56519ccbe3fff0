"""The operator pages around waits and child executions: the Approve / Reject form of a
waiting step, a sleep's end, a control step's children and their pages, a child's
breadcrumb, and the graph of parallel, map and sub-flow tasks."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.template.loader import render_to_string
from django.utils import timezone

from flows import engine, services
from flows.models import Execution, ExecutionStatus, TaskRun
from flows.web.presenters import graph_view
from tests.factories import (
    approval_flow,
    children_of,
    flow_doc,
    mapped,
    parallel,
    run_to_end,
    start_execution,
    task,
)

pytestmark = pytest.mark.django_db

APPROVAL = approval_flow(signal=None, prompt="Ship release 1.2?", ship="shipped")


@pytest.fixture
def operator(client: Any, make_user: Any) -> Any:
    client.force_login(make_user("olga", "operator"))
    return client


@pytest.fixture
def waiting() -> Execution:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    return execution


def page(client: Any, execution: Execution) -> str:
    response = client.get(f"/executions/{execution.id}/")
    assert response.status_code == 200
    return response.content.decode()


# --- signals ---------------------------------------------------------------------------------
def test_a_step_waiting_for_approval_shows_its_prompt_and_an_approve_reject_form(operator, waiting):
    html = page(operator, waiting)

    assert "Waiting for approval" in html and "Ship release 1.2?" in html
    form = re.search(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', html[html.index(
        "waiting-box"):], re.S)  # fmt: skip
    assert form.group(1) == f"/executions/{waiting.id}/signal"
    assert 'name="csrfmiddlewaretoken"' in form.group(2)
    assert 'name="comment"' in form.group(2)
    assert 'value="approve"' in form.group(2) and 'value="reject"' in form.group(2)


def test_approving_on_the_page_says_so_and_the_execution_goes_on(operator, waiting):
    response = operator.post(
        f"/executions/{waiting.id}/signal", {"name": "approval", "decision": "approve"}, follow=True
    )

    assert "Approved: the execution goes on." in response.content.decode()
    done = run_to_end(waiting.id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert (
        done.steps.get(task_name="approve").result["message"]
        == "signal 'approval' approved by olga"
    )
    assert "Waiting for approval" not in page(operator, done)


def test_rejecting_with_a_comment_takes_the_failure_route(operator, waiting):
    operator.post(
        f"/executions/{waiting.id}/signal",
        {"name": "approval", "decision": "reject", "comment": "wrong build"},
    )

    done = run_to_end(waiting.id)
    assert list(done.steps.order_by("seq").values_list("task_name", "status")) == [
        ("approve", "FAILURE"),
        ("rejected", "SUCCESS"),
    ]
    assert "wrong build" in done.steps.get(task_name="approve").error


def test_a_signal_the_execution_does_not_wait_for_is_reported_and_changes_nothing(
    operator, waiting
):
    response = operator.post(
        f"/executions/{waiting.id}/signal", {"name": "other", "decision": "approve"}, follow=True
    )

    assert (
        "waits for signal &#x27;approval&#x27;, not &#x27;other&#x27;" in response.content.decode()
    )
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_a_viewer_sees_the_prompt_and_who_may_answer_but_no_form_and_may_not_post(
    client, make_user, waiting
):
    client.force_login(make_user("vera", "viewer"))

    html = page(client, waiting)

    assert "Ship release 1.2?" in html and 'value="approve"' not in html
    assert "Approvers, operators, editors and admins" in html
    assert "flows.signal_execution" in html
    response = client.post(f"/executions/{waiting.id}/signal", {"name": "approval"})
    assert response.status_code == 403
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def csrf_client(user: Any, execution: Execution) -> tuple[Any, str]:
    """A client that enforces CSRF as a browser meets it, logged in as ``user``, and the token
    the execution page gave it."""
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    html = page(strict, execution)
    return strict, re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def test_an_approver_sees_the_form_and_approves_with_the_pages_csrf_token(make_user, waiting):
    approver, token = csrf_client(make_user("abe", "approver"), waiting)

    assert 'value="approve"' in page(approver, waiting)
    response = approver.post(
        f"/executions/{waiting.id}/signal",
        {"name": "approval", "decision": "approve", "csrfmiddlewaretoken": token},
    )

    assert response.status_code == 302
    done = run_to_end(waiting.id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    approved = done.steps.get(task_name="approve").result["message"]
    assert approved == "signal 'approval' approved by abe"


def test_a_post_with_its_csrf_token_but_without_the_permission_is_refused(make_user, waiting):
    # The page of a viewer carries a CSRF token (the logout form): a valid POST, wrong role.
    viewer, token = csrf_client(make_user("vera", "viewer"), waiting)

    response = viewer.post(
        f"/executions/{waiting.id}/signal",
        {"name": "approval", "decision": "approve", "csrfmiddlewaretoken": token},
    )

    assert response.status_code == 403
    assert b"CSRF verification failed" not in response.content  # refused for the role
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_an_operator_whose_role_lost_the_permission_sees_no_form_and_may_not_post(
    make_user, waiting
):
    from django.contrib.auth.models import Group, Permission

    Group.objects.get(name="operator").permissions.remove(
        Permission.objects.get(codename="signal_execution")
    )
    operator, token = csrf_client(make_user("olga", "operator"), waiting)

    assert 'value="approve"' not in page(operator, waiting)
    response = operator.post(
        f"/executions/{waiting.id}/signal",
        {"name": "approval", "decision": "approve", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 403
    assert b"CSRF verification failed" not in response.content  # refused for the role
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_the_signal_form_refuses_a_post_without_csrf_token(make_user, waiting):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(make_user("olga", "operator"))

    response = strict.post(f"/executions/{waiting.id}/signal", {"name": "approval"})

    assert response.status_code == 403
    assert b"CSRF verification failed" in response.content


def test_the_signal_form_needs_a_login(client, waiting):
    response = client.post(f"/executions/{waiting.id}/signal", {"name": "approval"})

    assert response["Location"].startswith("/accounts/login/")
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_a_sleeping_step_says_until_when(operator):
    until = (timezone.now() + timedelta(days=200)).replace(microsecond=0)
    execution = start_execution(flow_doc([task("nap", "sleep", until=until.isoformat())]))
    while engine.Dispatcher(concurrency=1).run():
        pass

    html = page(operator, execution)

    assert "Sleeping at" in html
    assert timezone.localtime(until).strftime("%Y-%m-%d %H:%M:%S") in html


# --- children --------------------------------------------------------------------------------
@pytest.fixture
def fanned() -> Execution:
    """A finished execution with a parallel step (two branches) and a map over five items,
    two of which fail (tolerated)."""
    document = flow_doc(
        [
            parallel("both", {"left": [task("l1"), task("l2")], "right": [task("r1")]}),
            mapped(
                "each",
                "${input.items}",
                [task("maybe", "fetch_data", failure_rate="${item.rate}")],
                tolerated_failures=2,
            ),
        ]
    )
    items = [{"rate": 1 if i in (1, 3) else 0} for i in range(5)]
    return run_to_end(start_execution(document, input={"items": items}).id)


def counts(completed: int, running: int, failed: int) -> str:
    return (
        f"<strong>{completed}</strong> completed · <strong>{running}</strong> running · "
        f'<strong>{failed}</strong> failed <span class="muted">'
    )


def test_a_parallel_step_shows_its_counts_and_links_each_branch(operator, fanned):
    html = page(operator, fanned)

    left, right = children_of(fanned, "both")
    assert f'<a href="/executions/{left.id}/">branch left</a>' in html
    assert f'<a href="/executions/{right.id}/">branch right</a>' in html
    assert counts(2, 0, 0) + "of 2 branches" in html


def test_a_map_step_shows_its_counts_and_links_to_its_items_page(operator, fanned):
    html = page(operator, fanned)

    seq = fanned.steps.get(task_name="each").seq
    assert f'href="/executions/{fanned.id}/steps/{seq}/children">See the 5 items' in html
    assert counts(3, 0, 2) + "of 5 items" in html


def test_the_items_page_lists_items_in_order_and_filters_by_status(operator, fanned):
    url = f"/executions/{fanned.id}/steps/{fanned.steps.get(task_name='each').seq}/children"

    html = operator.get(url).content.decode()
    failed = operator.get(f"{url}?status=FAILED").content.decode()

    items = children_of(fanned, "each")
    assert "<code>{&quot;rate&quot;: 1}</code>" in html  # each item, as JSON
    assert [m for m in re.findall(r'href="/executions/([0-9a-f-]+)/"><code>', html)] == [
        str(c.id) for c in items
    ]
    assert re.findall(r'href="/executions/([0-9a-f-]+)/"><code>', failed) == [
        str(items[1].id),
        str(items[3].id),
    ]


def test_the_items_page_shows_fifty_a_page_for_the_same_queries(
    operator, django_assert_num_queries
):
    def items_page(count: int) -> str:
        document = flow_doc([mapped("each", "${input.items}", [task("x")])], flow_id=f"m{count}")
        execution = run_to_end(start_execution(document, input={"items": list(range(count))}).id)
        return f"/executions/{execution.id}/steps/1/children"

    few, many = items_page(3), items_page(120)
    for url in (few, many):
        # session, user, execution, step with fan-out, count, rows, their waits, permissions
        with django_assert_num_queries(9):
            html = operator.get(url).content.decode()
    assert html.count('"><code>') == 50
    assert "page 1 of 3 (120 in all)" in html


def test_a_child_page_has_a_breadcrumb_to_its_parent_step(operator, fanned):
    _, right = children_of(fanned, "both")

    html = page(operator, right)

    crumbs = html[html.index('class="crumbs"') : html.index("</p>", html.index('class="crumbs"'))]
    assert f'href="/executions/{fanned.id}/" rel="up"' in crumbs
    assert f'href="/executions/{fanned.id}/#step-1">both</a>' in crumbs
    assert "branch right" in crumbs


def test_the_executions_list_shows_top_level_executions_only(operator, fanned):
    html = operator.get("/executions/").content.decode()

    assert html.count('name="ids"') == 1 and str(fanned.id) in html


def test_the_dashboard_and_the_flow_page_show_top_level_executions_only(operator, fanned):
    children = [str(c.id) for c in children_of(fanned, "both")]

    for url in ("/", f"/flows/{fanned.flow_id}/"):
        html = operator.get(url).content.decode()
        assert str(fanned.id)[:8] in html
        assert not any(child[:8] in html for child in children), url


# --- graph -----------------------------------------------------------------------------------
def svg_of(view: Any) -> str:
    return render_to_string("flows/_graph.html", {"graph": view})


def test_the_graph_draws_a_parallel_task_with_one_lane_per_branch_listing_its_tasks():
    document = flow_doc(
        [parallel("both", {"left": [task("l1"), task("l2")], "right": [task("r1")]}), task("z")]
    )

    svg = svg_of(graph_view(document))

    lanes = re.findall(r'<g class="lane" data-branch="(\w+)">(.*?)</g>', svg, re.S)
    assert [name for name, _ in lanes] == ["left", "right"]
    assert re.findall(r'class="lane-task">(\w+)<', lanes[0][1]) == ["l1", "l2"]
    assert re.findall(r'class="lane-task">(\w+)<', lanes[1][1]) == ["r1"]
    xs = [float(re.search(r'<rect x="([\d.]+)"', body).group(1)) for _, body in lanes]
    assert xs[0] < xs[1]  # side by side


def test_the_graph_draws_a_map_as_one_node_and_a_sub_flow_naming_its_flow():
    services.flow_create(document=flow_doc([task("x")], flow_id="billing"))
    document = flow_doc(
        [
            mapped("each", "${input.orders}", [task("x"), task("y")]),
            {"name": "call", "task_type": "subflow", "parameters": {"flow_id": "billing"}},
        ]
    )

    svg = svg_of(graph_view(document))

    assert svg.count('class="node node-task') == 2  # the iterator's tasks are not nodes
    assert "map over ${input.orders}" in svg
    assert "calls flow &#x27;billing&#x27;" in svg


def test_an_executions_graph_labels_its_map_with_item_counts(operator, fanned):
    html = page(operator, fanned)

    node = html[html.index('data-task="each"') :]
    assert "map over 5 items" in node[:600]
    assert "3 done · 0 running · 2 failed of 5" in node[:900]


def test_a_childs_graph_draws_the_branch_it_runs(operator, fanned):
    left, _ = children_of(fanned, "both")

    html = page(operator, left)

    assert re.findall(r'data-task="(\w+)"', html) == ["l1", "l2"]


def test_a_parents_page_points_at_the_branch_waiting_for_a_signal(operator):
    document = flow_doc(
        [parallel("both", {"gate": [task("ok", "wait_for_signal", signal="go")], "b": [task("x")]})]
    )
    execution = run_to_end(start_execution(document).id)
    # By name: the branches' order is the stored document's (PostgreSQL's jsonb orders keys).
    [gate] = [c for c in children_of(execution, "both") if c.branch == "gate"]

    html = page(operator, execution)

    assert f'<a href="/executions/{gate.id}/#live" class="waits">waits for signal <code>go' in html


def test_the_execution_page_costs_the_same_queries_for_one_or_five_control_steps(
    operator, django_assert_num_queries
):
    def one_with(n: int) -> Execution:
        tasks = [parallel(f"p{i}", {"a": [task(f"x{i}")], "b": [task(f"y{i}")]}) for i in range(n)]
        return run_to_end(start_execution(flow_doc(tasks, flow_id=f"f{n}")).id)

    few, many = one_with(1), one_with(5)
    for execution in (few, many):
        # session, user, execution, step count, steps with fan-outs, log lines, branches,
        # their waits, permission checks
        with django_assert_num_queries(10):
            page(operator, execution)


def test_a_redriven_map_step_lists_its_children_under_the_attempt_that_took_them_over(
    operator,
):
    document = flow_doc(
        [mapped("each", "${input.items}", [task("maybe", "fetch_data", failure_rate="${item}")],
                max_concurrency=1)],
        flow_id="redriven_map",
    )  # fmt: skip
    execution = run_to_end(start_execution(document, input={"items": [0, 1, 0]}).id)
    first = children_of(execution, "each")
    services.execution_redrive(execution_id=execution.id)
    execution = run_to_end(execution.id)  # item 1 fails again
    assert [s.seq for s in execution.steps.order_by("seq")] == [1, 2]

    html = page(operator, execution)
    earlier = operator.get(f"/executions/{execution.id}/steps/1/children").content.decode()
    later = operator.get(f"/executions/{execution.id}/steps/2/children").content.decode()

    assert "Redriven: step 2 took these children over" in html
    assert f'href="/executions/{execution.id}/steps/2/children">See them there' in html
    assert "Redriven: step 2 took these children over" in earlier
    assert re.findall(r'href="/executions/([0-9a-f-]+)/"><code>', later) == [
        str(c.id) for c in first
    ]
