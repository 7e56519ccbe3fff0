"""The dispatcher's quick look for ready steps (``flows.sql.reads.ready_exists``) answers what
the ORM's ``claim.ready(...).exists()`` answers, case by case: a look that says "nothing"
while a step is ready would leave it to the reaper, one that says "something" in vain costs
a claim's transaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from flows.engine import claim
from flows.models import Execution, TaskRun, TaskRunStatus
from flows.sql import reads
from tests.factories import flow_doc, start_execution, task

pytestmark = pytest.mark.django_db


def both(**looks: object) -> tuple[bool, bool]:
    """(the quick look, the ORM's) for the same question."""
    now = timezone.now()
    exclude = list(looks.get("exclude", []))  # type: ignore[call-overload]
    only = looks.get("only")
    orm = claim.ready(now, exclude=exclude, only=only).exists()  # type: ignore[arg-type]
    return reads.ready_exists(now, exclude, only), orm  # type: ignore[arg-type]


def test_the_quick_look_answers_as_the_orms_query_does() -> None:
    assert both() == (False, False)  # an empty database

    first = start_execution(flow_doc([task("a")], flow_id="first"))
    second = start_execution(flow_doc([task("a")], flow_id="second"))
    assert both() == (True, True)
    assert both(only=first.id) == (True, True)
    assert both(exclude=[first.id]) == (True, True)
    assert both(exclude=[first.id, second.id]) == (False, False)  # what this worker holds

    Execution.objects.filter(pk=second.id).update(pause_requested=True)
    assert both(exclude=[first.id]) == (False, False)  # pausing: not ready

    later = timezone.now() + timedelta(hours=1)
    TaskRun.objects.filter(execution_id=first.id).update(not_before=later)  # a retry's delay
    assert both() == (False, False)
    TaskRun.objects.filter(execution_id=first.id).update(not_before=timezone.now())
    assert both() == (True, True)

    TaskRun.objects.filter(execution_id=first.id).update(status=TaskRunStatus.RUNNING)
    assert both() == (False, False)  # claimed by a worker


def test_the_quick_look_limited_to_one_execution_sees_the_steps_of_its_tree() -> None:
    parent = start_execution(flow_doc([task("a")], flow_id="tree"))
    child = start_execution(flow_doc([task("a")], flow_id="child"))
    TaskRun.objects.filter(execution_id=parent.id).update(status=TaskRunStatus.RUNNING)
    assert both(only=parent.id) == (False, False)
    # A map item, a branch or a sub-flow of it: an execution whose root is the parent.
    Execution.objects.filter(pk=child.id).update(root_id=parent.id)
    assert both(only=parent.id) == (True, True)
    assert both(only=parent.id, exclude=[child.id]) == (False, False)
