"""The roles the migrations make: who holds ``flows.signal_execution`` after ``migrate`` (0010),
and that 0010 runs backwards and forwards again on a database with custom grants."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.loader import MigrationLoader

pytestmark = pytest.mark.django_db

MIGRATION = "0010_role_signal_execution"
VIEW = {"view_flow", "view_flowversion", "view_execution", "view_taskrun", "view_executionevent"}


def codenames(group_name: str) -> set[str]:
    return set(Group.objects.get(name=group_name).permissions.values_list("codename", flat=True))


def test_after_migrate_operators_editors_and_approvers_hold_the_signal_permission_viewers_not():
    assert "signal_execution" in codenames("operator")
    assert "signal_execution" in codenames("editor")
    assert "signal_execution" not in codenames("viewer")


def test_the_approver_role_reads_like_a_viewer_and_may_only_signal_besides():
    assert codenames("viewer") == VIEW
    assert codenames("approver") == VIEW | {"signal_execution"}


def test_the_permission_says_what_it_allows():
    permission = Permission.objects.get(
        content_type__app_label="flows", codename="signal_execution"
    )

    assert permission.name == "Can approve, reject or signal waiting steps"


def _run(direction: str) -> None:
    """Run 0010's data step as ``migrate`` does, with the models as they stand at 0010."""
    module = importlib.import_module(f"flows.migrations.{MIGRATION}")
    apps = MigrationLoader(connection).project_state(("flows", MIGRATION)).apps
    getattr(module, direction)(apps, None)


def test_backwards_removes_the_role_and_the_permission_and_forwards_grants_it_to_whoever_starts():
    start = Permission.objects.get(content_type__app_label="flows", codename="start_execution")
    release = Group.objects.create(name="release-managers")
    release.permissions.add(start)
    dora = get_user_model().objects.create_user("dora")
    dora.user_permissions.add(start)
    eve = get_user_model().objects.create_user("eve")  # holds nothing: gets nothing

    _run("backwards")

    assert not Group.objects.filter(name="approver").exists()
    assert not Permission.objects.filter(codename="signal_execution").exists()
    assert "start_execution" in codenames("operator")  # 0005's grants are left alone

    _run("forwards")

    # Whoever could answer a signal before (start_execution) still can, custom grants too.
    for name in ("operator", "editor", "release-managers"):
        assert "signal_execution" in codenames(name), name
    assert fresh(dora).has_perm("flows.signal_execution")
    assert not fresh(eve).has_perm("flows.signal_execution")
    assert "signal_execution" not in codenames("viewer")
    assert codenames("approver") == VIEW | {"signal_execution"}


def fresh(user: Any) -> Any:
    """The user read again: has_perm caches the permissions it read."""
    return get_user_model().objects.get(pk=user.pk)
