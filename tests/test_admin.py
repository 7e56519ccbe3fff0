"""The Django admin: lists, inlines, read-only engine fields, and the two actions."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from flows.models import Execution, ExecutionStatus
from tests.factories import run_flow, sample_flow, start_execution

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
