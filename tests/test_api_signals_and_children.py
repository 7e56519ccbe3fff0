"""The resource API around waits and child executions: signalling a waiting step, an
execution's place in its tree, each step's wait and children, and listing children."""

from __future__ import annotations

from typing import Any

import pytest

from flows import engine
from flows.models import Execution, ExecutionStatus, TaskRun
from tests.factories import (
    approval_flow,
    children_of,
    error_body,
    flow_doc,
    mapped,
    parallel,
    run_to_end,
    start_execution,
    task,
)

pytestmark = pytest.mark.django_db

APPROVAL = approval_flow()


@pytest.fixture
def operator(client_as: Any) -> Any:
    return client_as("operator")


@pytest.fixture
def waiting() -> Execution:
    """An execution whose step ``approve`` waits for the signal ``deploy``."""
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    return execution


def signal(client: Any, execution: Execution, body: dict[str, Any]) -> Any:
    return client.post(f"/api/executions/{execution.id}/signal/", body, format="json")


# --- signal ----------------------------------------------------------------------------------
def test_approving_answers_with_the_step_and_the_execution_goes_on_with_the_payload(
    operator, waiting
):
    response = signal(operator, waiting, {"name": "deploy", "payload": {"version": "1.2"}})

    assert response.status_code == 200, response.content
    step = response.json()
    assert (step["task_name"], step["status"]) == ("approve", "PENDING")
    assert step["waiting"]["received"] is True
    done = run_to_end(waiting.id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.steps.get(task_name="ship").result["message"] == "shipping 1.2"


def test_rejecting_with_a_comment_fails_the_step_onto_its_failure_route(operator, waiting):
    body = {"name": "deploy", "decision": "reject", "comment": "not on a Friday"}

    assert signal(operator, waiting, body).status_code == 200

    done = run_to_end(waiting.id)
    assert list(done.steps.order_by("seq").values_list("task_name", "status")) == [
        ("approve", "FAILURE"),
        ("rejected", "SUCCESS"),
    ]
    assert "not on a Friday" in done.steps.get(task_name="approve").error


def test_a_signal_of_another_name_is_409_and_changes_nothing(operator, waiting):
    body = error_body(signal(operator, waiting, {"name": "other"}), 409)

    assert body["code"] == "conflict"
    assert "waits for signal 'deploy', not 'other'" in body["detail"]
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_signalling_an_execution_that_waits_for_no_signal_is_409(operator):
    execution = start_execution(flow_doc([task("a")]))
    run_to_end(execution.id)

    body = error_body(signal(operator, execution, {"name": "deploy"}), 409)

    assert "waits for no signal" in body["detail"]


def test_a_second_signal_is_409(operator, waiting):
    assert signal(operator, waiting, {"name": "deploy"}).status_code == 200

    again = signal(operator, waiting, {"name": "deploy"})
    assert "already came" in error_body(again, 409)["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "name"), ({"name": "deploy", "decision": "maybe"}, "decision"), ({"name": ""}, "name")],
)
def test_a_bad_signal_is_400_naming_the_field(operator, waiting, body, field):
    errors = error_body(signal(operator, waiting, body), 400)["errors"]

    assert field in [e["field"] for e in errors]


def test_a_viewer_may_not_signal_and_is_told_the_permission_it_needs(client_as, waiting):
    body = error_body(signal(client_as("viewer"), waiting, {"name": "deploy"}), 403)

    assert body["code"] == "permission_denied"
    assert "needs permission 'flows.signal_execution'" in body["detail"]
    assert TaskRun.objects.get(execution=waiting).waiting.get("signal") is None


def test_an_approver_approves_and_the_execution_goes_on(client_as, waiting):
    response = signal(
        client_as("approver"), waiting, {"name": "deploy", "payload": {"version": "2"}}
    )

    assert response.status_code == 200, response.content
    assert response.json()["waiting"]["received"] is True
    done = run_to_end(waiting.id)
    assert done.steps.get(task_name="ship").result["message"] == "shipping 2"


def test_an_approver_may_not_start_or_cancel(client_as, waiting):
    approver = client_as("approver")

    started = approver.post("/api/flows/approval/executions/", {}, format="json")
    cancelled = approver.post(f"/api/executions/{waiting.id}/cancel/")

    assert "flows.start_execution" in error_body(started, 403)["detail"]
    assert "flows.cancel_execution" in error_body(cancelled, 403)["detail"]
    assert Execution.objects.count() == 1
    waiting.refresh_from_db()
    assert waiting.status == ExecutionStatus.RUNNING


def test_an_operator_whose_role_lost_the_permission_may_not_signal_but_still_starts(
    client_as, waiting
):
    from django.contrib.auth.models import Group, Permission

    Group.objects.get(name="operator").permissions.remove(
        Permission.objects.get(codename="signal_execution")
    )
    operator = client_as("operator")

    refused = signal(operator, waiting, {"name": "deploy"})
    started = operator.post("/api/flows/approval/executions/", {}, format="json")

    assert "flows.signal_execution" in error_body(refused, 403)["detail"]
    assert started.status_code == 201


def test_signalling_without_credentials_is_401(anon_client, waiting):
    error_body(signal(anon_client, waiting, {"name": "deploy"}), 401)


def test_signalling_an_unknown_execution_is_404(operator, db):
    response = operator.post(
        "/api/executions/6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01/signal/", {"name": "x"}, format="json"
    )
    error_body(response, 404)


# --- detail: waits, children and the tree ------------------------------------------------------
def test_a_waiting_step_says_what_it_waits_for(operator, waiting):
    step = operator.get(f"/api/executions/{waiting.id}/").json()["steps"][0]

    assert step["waiting"] == {
        "kind": "signal",
        "signal": "deploy",
        "prompt": "Ship it?",
        "until": None,
        "received": False,
        "limit": None,
        "place": None,
    }
    assert step["children"] is None


def test_a_sleeping_step_says_until_when(operator):
    execution = start_execution(flow_doc([task("nap", "sleep", seconds=600)]))
    while engine.Dispatcher(concurrency=1).run():  # run_to_end would wait the 600 s out
        pass

    step = operator.get(f"/api/executions/{execution.id}/").json()["steps"][0]

    assert step["waiting"]["kind"] == "until"
    assert step["waiting"]["until"] is not None


def test_a_map_step_counts_its_children_and_links_to_them(operator):
    document = flow_doc(
        [mapped("each", "${input.items}", [task("hold", "wait_for_signal")], max_concurrency=2)]
    )
    execution = start_execution(document, input={"items": [1, 2, 3]})
    run_to_end(execution.id)

    body = operator.get(f"/api/executions/{execution.id}/").json()

    step = body["steps"][0]
    assert step["waiting"]["kind"] == "children"
    children = step["children"]
    assert (children["kind"], children["total"], children["started"]) == ("map", 3, 2)
    assert (children["done"], children["failed"]) == (0, 0)
    listed = operator.get(children["url"]).json()["results"]
    assert [c["id"] for c in listed] == [str(c.id) for c in children_of(execution, "each")]
    assert body["parent"] is None and body["root"] is None


def test_a_child_names_its_parent_step_root_branch_and_place(operator):
    execution = start_execution(
        flow_doc([parallel("both", {"left": [task("a")], "right": [task("b")]})])
    )
    done = run_to_end(execution.id)
    _, right = children_of(done, "both")

    body = operator.get(f"/api/executions/{right.id}/").json()

    assert body["parent"] == {"execution": str(execution.id), "seq": 1, "task_name": "both"}
    assert (body["root"], body["branch"], body["item_index"]) == (str(execution.id), "right", 1)
    assert body["trigger"] == "parent"


def test_the_detail_costs_the_same_queries_however_many_control_steps_it_has(
    operator, django_assert_num_queries
):
    def one_with(n: int) -> Execution:
        tasks = [parallel(f"p{i}", {"a": [task(f"x{i}")]}) for i in range(n)]
        return run_to_end(start_execution(flow_doc(tasks, flow_id=f"f{n}")).id)

    few, many = one_with(1), one_with(6)
    for execution in (few, many):
        # token, two permission reads, the execution with its parent step, its steps with
        # their fan-outs: none per step.
        with django_assert_num_queries(5):
            assert operator.get(f"/api/executions/{execution.id}/").status_code == 200


# --- list: top-level by default, children on demand ---------------------------------------------
@pytest.fixture
def tree() -> Execution:
    """A finished execution whose map step ran three items."""
    say = task("say", "print", message="${item}")
    document = flow_doc([mapped("each", "${input.items}", [say])])
    execution = start_execution(document, input={"items": ["c", "a", "b"]})
    return run_to_end(execution.id)


def test_the_list_holds_top_level_executions_only(operator, tree):
    ids = [row["id"] for row in operator.get("/api/executions/").json()["results"]]

    assert ids == [str(tree.id)]


def test_parent_lists_an_executions_children_in_item_order(operator, tree):
    rows = operator.get(f"/api/executions/?parent={tree.id}").json()["results"]

    assert [r["id"] for r in rows] == [str(c.id) for c in children_of(tree, "each")]
    assert [(r["item_index"], r["status"]) for r in rows] == [
        (0, "COMPLETED"),
        (1, "COMPLETED"),
        (2, "COMPLETED"),
    ]
    assert rows[0]["parent"] == {"execution": str(tree.id), "seq": 1, "task_name": "each"}
    assert rows[0]["root"] == str(tree.id)


def test_step_lists_one_control_steps_children(operator, tree):
    step = tree.steps.get(task_name="each")

    rows = operator.get(f"/api/executions/?step={step.id}&status=COMPLETED").json()["results"]

    assert len(rows) == 3
    assert operator.get(f"/api/executions/?step={step.id + 1000}").json()["results"] == []


def test_after_a_redrive_step_lists_the_children_under_the_attempt_that_took_them_over(
    operator,
):
    maybe = task("maybe", "fetch_data", failure_rate="${item}")
    document = flow_doc([mapped("each", "${input.items}", [maybe], max_concurrency=1)])
    failed = run_to_end(start_execution(document, input={"items": [0, 1, 0]}).id)
    first = failed.steps.get(task_name="each")
    items = children_of(failed, "each")
    assert operator.post(f"/api/executions/{failed.id}/redrive/").status_code == 200
    queued = operator.get(f"/api/executions/{failed.id}/").json()["steps"][-1]
    assert (queued["status"], queued["waiting"], queued["children"]) == ("PENDING", None, None)

    done = run_to_end(failed.id)  # item 1 fails again
    again = done.steps.order_by("seq").last()

    rows = operator.get(f"/api/executions/?step={again.id}").json()["results"]
    assert [r["id"] for r in rows] == [str(c.id) for c in items]
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "CANCELLED"]
    assert rows[0]["parent"] == {"execution": str(failed.id), "seq": 2, "task_name": "each"}
    assert operator.get(f"/api/executions/?step={first.id}").json()["results"] == []
    steps = operator.get(f"/api/executions/{failed.id}/").json()["steps"]
    # Item 0 was kept; item 1 ran again and failed again, which cancelled item 2 before
    # its turn came (one at a time).
    assert {k: steps[1]["children"][k] for k in ("total", "started", "done", "failed")} == {
        "total": 3, "started": 2, "done": 2, "failed": 1,
    }  # fmt: skip
    # The first attempt's block says which step holds its children now, and lists them there.
    assert steps[0]["children"]["taken_over_by"] == again.seq
    assert steps[0]["children"]["url"].endswith(f"?step={again.id}")
    assert steps[1]["children"]["taken_over_by"] is None


def test_after_two_redrives_every_attempt_links_to_the_step_that_holds_the_children_now(
    operator, make_user, client
):
    maybe = task("maybe", "fetch_data", failure_rate="${item}")
    document = flow_doc([mapped("each", "${input.items}", [maybe], max_concurrency=1)])
    execution = run_to_end(start_execution(document, input={"items": [0, 1, 0]}).id)
    items = children_of(execution, "each")
    for _ in range(2):  # item 1 fails every time
        assert operator.post(f"/api/executions/{execution.id}/redrive/").status_code == 200
        execution = run_to_end(execution.id)
    first, _, third = execution.steps.order_by("seq")

    steps = operator.get(f"/api/executions/{execution.id}/").json()["steps"]

    # Both earlier attempts point past the second one, to the step that holds them now.
    for view in steps[:2]:
        assert view["children"]["taken_over_by"] == third.seq
        assert view["children"]["url"].endswith(f"?step={third.id}")
        listed = operator.get(view["children"]["url"]).json()["results"]
        assert [r["id"] for r in listed] == [str(c.id) for c in items]
    assert steps[2]["children"]["taken_over_by"] is None
    # The page of the first attempt's children says where they are now.
    client.force_login(make_user("page_operator", "operator"))
    page = client.get(f"/executions/{execution.id}/steps/{first.seq}/children")
    assert page.status_code == 200
    assert page.context["taken_over_at"] == third.seq


@pytest.mark.parametrize(("query", "field"), [("parent=nope", "parent"), ("step=x", "step")])
def test_a_bad_parent_or_step_is_400_naming_it(operator, tree, query, field):
    errors = error_body(operator.get(f"/api/executions/?{query}"), 400)["errors"]

    assert [e["field"] for e in errors] == [field]


@pytest.mark.parametrize("items", [2, 40])
def test_listing_children_costs_the_same_queries_however_many_there_are(
    operator, items, django_assert_num_queries
):
    document = flow_doc([mapped("each", "${input.items}", [task("x")])], flow_id=f"m{items}")
    execution = run_to_end(start_execution(document, input={"items": list(range(items))}).id)

    # auth, perms, count, page, (paginator) rows, the page's input sizes (issue 20)
    with django_assert_num_queries(6):
        response = operator.get(f"/api/executions/?parent={execution.id}")

    assert response.json()["count"] == items
