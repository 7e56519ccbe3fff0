"""The Django admin: lists, inlines, read-only engine fields, actions and schedules."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_q.models import Schedule

from flows import services
from flows.models import Execution, ExecutionStatus, FlowSchedule
from tests.factories import (
    failing,
    flow_doc,
    run_flow,
    run_to_end,
    sample_flow,
    start_execution,
    task,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    admin = get_user_model().objects.create_superuser("root", password="root-pass-123")
    client.force_login(admin)
    return client


def test_admin_lists_and_pages_render(staff):
    execution = run_flow(sample_flow())
    for url in (
        "/admin/flows/flow/",
        "/admin/flows/flow/example_flow/change/",
        "/admin/flows/execution/",
        "/admin/flows/execution/?status__exact=COMPLETED",
        f"/admin/flows/execution/{execution.id}/change/",
        "/admin/flows/executionevent/",
        "/admin/flows/execution/?q=example",
    ):
        assert staff.get(url).status_code == 200, url
    page = staff.get(f"/admin/flows/execution/{execution.id}/change/").content.decode()
    assert "task3" in page  # the steps inline
    assert 'name="status"' not in page  # engine-owned: read-only


def test_the_execution_changelist_query_count_does_not_grow(staff, django_assert_max_num_queries):
    for _ in range(3):
        run_flow(sample_flow())
    with django_assert_max_num_queries(12):
        staff.get("/admin/flows/execution/")


def test_admin_actions_cancel_and_run_again(staff):
    running = start_execution(sample_flow())
    done = run_flow(sample_flow())

    staff.post(
        "/admin/flows/execution/",
        {"action": "cancel_executions", "_selected_action": [str(running.id), str(done.id)]},
    )
    assert Execution.objects.get(pk=running.id).status == ExecutionStatus.CANCELLED
    assert Execution.objects.get(pk=done.id).status == ExecutionStatus.COMPLETED

    staff.post(
        "/admin/flows/execution/", {"action": "run_again", "_selected_action": [str(done.id)]}
    )
    assert Execution.objects.filter(rerun_of=done).count() == 1


def test_admin_actions_pause_resume_and_redrive(staff):
    queued = start_execution(sample_flow())
    failed = run_flow(flow_doc([failing("a")]))

    staff.post("/admin/flows/execution/", {"action": "pause", "_selected_action": [str(queued.id)]})
    assert Execution.objects.get(pk=queued.id).status == ExecutionStatus.PAUSED

    staff.post(
        "/admin/flows/execution/", {"action": "resume", "_selected_action": [str(queued.id)]}
    )
    assert Execution.objects.get(pk=queued.id).status == ExecutionStatus.QUEUED

    response = staff.post(
        "/admin/flows/execution/",
        {"action": "redrive", "_selected_action": [str(failed.id), str(queued.id)]},
        follow=True,
    )
    assert Execution.objects.get(pk=failed.id).status == ExecutionStatus.QUEUED
    # The queued one cannot be redriven: the admin says why instead of failing.
    assert "only a FAILED or CANCELLED execution can be redriven" in response.content.decode()


def test_a_schedule_saved_in_the_admin_is_kept_in_step_with_django_q(staff):
    flow_id = services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id

    response = staff.post(
        "/admin/flows/flowschedule/add/",
        {"flow": flow_id, "cron": "0 3 * * *", "enabled": "on", "input": "{}"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    schedule = FlowSchedule.objects.get()
    assert schedule.q_schedule.cron == "0 3 * * *"
    assert schedule.q_schedule.repeats == -1

    staff.post(f"/admin/flows/flowschedule/{schedule.pk}/delete/", {"post": "yes"})
    assert not FlowSchedule.objects.exists()
    assert not Schedule.objects.filter(name=f"flow:{flow_id}").exists()


def test_the_admin_refuses_a_bad_cron_expression_at_its_field(staff):
    flow_id = services.flow_create(document=flow_doc([task("a")], flow_id="nightly")).flow_id

    response = staff.post(
        "/admin/flows/flowschedule/add/",
        {"flow": flow_id, "cron": "whenever", "enabled": "on", "input": "{}"},
    )

    assert response.status_code == 200
    assert "must be a cron expression" in response.content.decode()
    assert not FlowSchedule.objects.exists()


# --- child executions ----------------------------------------------------------------------
def fanned_out() -> Execution:
    from tests.factories import mapped, parallel

    document = flow_doc(
        [
            parallel("both", {"left": [task("l1")], "right": [task("r1")]}),
            mapped("each", "${input.items}", [task("x")]),
        ]
    )
    execution = start_execution(document, input={"items": [10, 20, 30]})
    return run_to_end(execution.id)


def test_the_execution_list_shows_top_level_executions_unless_children_are_asked_for(staff):
    parent = fanned_out()

    top = staff.get("/admin/flows/execution/").content.decode()
    kids = staff.get("/admin/flows/execution/?children=yes").content.decode()
    every = staff.get("/admin/flows/execution/?children=all").content.decode()

    assert "1 execution" in top and str(parent.id) in top
    assert "5 executions" in kids and str(parent.id) not in kids.split("result_list")[1]
    assert "6 executions" in every


def test_an_executions_page_lists_its_children_under_their_step_and_links_each(staff):
    parent = fanned_out()
    left = Execution.objects.get(root=parent, branch="left")
    item = Execution.objects.get(root=parent, item_index=2, parent_step__task_name="each")

    page = staff.get(f"/admin/flows/execution/{parent.id}/change/").content.decode()

    assert "step #1 <strong>both</strong> (parallel)" in page
    assert "step #2 <strong>each</strong> (map)" in page
    assert f'<a href="/admin/flows/execution/{left.id}/change/">left</a> COMPLETED' in page
    assert f'<a href="/admin/flows/execution/{item.id}/change/">item 2</a> COMPLETED' in page
    assert 'name="parent_step"' not in page and 'name="branch"' not in page  # read-only


def test_a_childs_page_links_to_its_parent_and_step(staff):
    parent = fanned_out()
    left = Execution.objects.get(root=parent, branch="left")

    page = staff.get(f"/admin/flows/execution/{left.id}/change/").content.decode()

    assert (
        f'<a href="/admin/flows/execution/{parent.id}/change/">{parent.id}</a>, step #1 both'
        in page
    )


# --- roles: the admin's actions need the permissions the API needs -------------------------
CHANGING_ACTIONS = ("cancel_executions", "pause", "resume", "redrive", "run_again")


def staff_in(client, make_user, role):
    user = make_user(f"{role}_staff", role)
    user.is_staff = True
    user.save()
    client.force_login(user)
    return client


def test_a_viewer_on_the_staff_is_offered_no_action_that_changes_an_execution(client, make_user):
    start_execution(sample_flow())
    viewer = staff_in(client, make_user, "viewer")

    page = viewer.get("/admin/flows/execution/").content.decode()

    assert page.count("<tr") > 1  # the viewer still reads the list
    for action in (*CHANGING_ACTIONS, "delete_selected"):
        assert f'value="{action}"' not in page, action
    flows = viewer.get("/admin/flows/flow/").content.decode()
    assert "example_flow" in flows and 'value="delete_selected"' not in flows


@pytest.mark.parametrize("action", CHANGING_ACTIONS)
def test_a_viewer_on_the_staff_cannot_post_an_action_that_changes_an_execution(
    client, make_user, action
):
    queued = start_execution(sample_flow())
    failed = run_flow(flow_doc([failing("a")]))
    paused = start_execution(sample_flow())
    services.execution_pause(execution_id=paused.id)
    before = {e.id: e.status for e in Execution.objects.all()}
    viewer = staff_in(client, make_user, "viewer")

    viewer.post(
        "/admin/flows/execution/",
        {"action": action, "_selected_action": [str(i) for i in before]},
    )

    assert {e.id: e.status for e in Execution.objects.all()} == before
    assert not Execution.objects.filter(rerun_of__isnull=False).exists()
    assert failed.id in before and queued.id in before


def test_an_operator_on_the_staff_is_offered_and_may_use_the_actions(client, make_user):
    queued = start_execution(sample_flow())
    done = run_flow(sample_flow())
    operator = staff_in(client, make_user, "operator")

    page = operator.get("/admin/flows/execution/").content.decode()
    for action in CHANGING_ACTIONS:
        assert f'value="{action}"' in page, action

    operator.post(
        "/admin/flows/execution/", {"action": "pause", "_selected_action": [str(queued.id)]}
    )
    assert Execution.objects.get(pk=queued.id).status == ExecutionStatus.PAUSED
    operator.post(
        "/admin/flows/execution/", {"action": "run_again", "_selected_action": [str(done.id)]}
    )
    assert Execution.objects.get(rerun_of=done).created_by.username == "operator_staff"


def test_an_approver_on_the_staff_may_neither_cancel_nor_run_again(client, make_user):
    queued = start_execution(sample_flow())
    approver = staff_in(client, make_user, "approver")

    for action in ("cancel_executions", "run_again"):
        approver.post(
            "/admin/flows/execution/", {"action": action, "_selected_action": [str(queued.id)]}
        )

    assert Execution.objects.get(pk=queued.id).status == ExecutionStatus.QUEUED
    assert not Execution.objects.filter(rerun_of=queued).exists()
