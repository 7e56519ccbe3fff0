"""The execution page on steps that wait and on signals: a waited step's duration in the
timeline, the Steps count while a control step runs, the Approve / Reject form's payload
(checked on the server, errors next to the field, no JavaScript needed), and the answer
(who, when, decision, comment) shown on the step and in its log."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.test import Client

from flows import services
from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus
from tests.factories import approval_flow, flow_doc, mapped, run_to_end, start_execution, task
from tests.web_helpers import field_block, field_errors

pytestmark = pytest.mark.django_db

APPROVAL = approval_flow(signal=None, prompt="Ship release 1.2?")


@pytest.fixture
def waiting() -> Execution:
    execution = start_execution(APPROVAL)
    run_to_end(execution.id)
    return execution


def page(client: Any, execution: Execution) -> str:
    response = client.get(f"/executions/{execution.id}/")
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def approver(make_user: Any, waiting: Execution) -> tuple[Client, str]:
    """A browser-like client (CSRF enforced) of an approver, and the page's CSRF token."""
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(make_user("abe", "approver"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page(strict, waiting))
    return strict, token.group(1)


def answer(approver: tuple[Client, str], execution: Execution, **fields: str) -> Any:
    client, token = approver
    body = {"name": "approval", "decision": "approve", "csrfmiddlewaretoken": token, **fields}
    return client.post(f"/executions/{execution.id}/signal", body)


def the_wait(execution: Execution) -> TaskRun:
    return TaskRun.objects.get(execution=execution, task_name="approve")


# --- item 1 ----------------------------------------------------------------------------------
def test_the_timeline_shows_how_long_a_step_waited(make_user, client, waiting):
    client.force_login(make_user("olga", "operator"))
    assert re.search(r">\s*waiting\s*</span>", page(client, waiting))  # open: no duration yet
    TaskRun.objects.filter(pk=the_wait(waiting).pk).update(
        started_at=F("started_at") - timedelta(hours=1)
    )
    services.execution_signal(execution_id=waiting.id, name="approval", payload={"version": "1"})
    run_to_end(waiting.id)

    html = page(client, waiting)

    row = re.search(r'<a href="#step-1">approve</a>.*?</tr>', html, re.S).group(0)
    shown = float(re.search(r"([\d.]+) s</span>", row).group(1))
    assert shown >= 3600


def test_the_steps_header_counts_a_map_that_runs(make_user, client):
    client.force_login(make_user("olga", "operator"))
    hold = task("hold", "wait_for_signal", signal="go")
    execution = start_execution(flow_doc([mapped("each", [1, 2], [hold])]))
    run_to_end(execution.id)
    one = Execution.objects.filter(parent_step__execution=execution).order_by("item_index")[0]
    services.execution_signal(execution_id=one.id, name="go")
    run_to_end(execution.id)  # one item done, the map still running

    html = page(client, execution)

    assert re.search(r"<dt>Steps</dt><dd>1</dd>", html)


# --- item 2: the payload field ---------------------------------------------------------------
def test_the_form_has_an_optional_payload_field(approver, waiting):
    html = page(approver[0], waiting)

    block = field_block(html, "signal-payload-1")
    assert 'name="payload"' in block and "JSON object, optional" in block


def test_a_payload_sent_with_the_form_is_the_steps_result_and_is_shown(approver, waiting):
    response = answer(approver, waiting, payload='{"version": "1.3"}', comment="notes ok")

    assert response.status_code == 302
    done = run_to_end(waiting.id)
    assert done.status == ExecutionStatus.COMPLETED, done.error
    assert done.steps.get(task_name="ship").result["message"] == "shipping 1.3"
    html = page(approver[0], done)
    step = html[html.index('id="step-1"') : html.index('id="step-2"')]
    assert "Approved by <strong>abe</strong>" in step
    assert "notes ok" in step
    assert json.dumps({"version": "1.3"}, indent=2).replace('"', "&quot;") in step


@pytest.mark.parametrize(
    ("typed", "says"),
    [('{"version": ', "Enter a valid JSON"), ("[1, 2]", "Must be a JSON object"), ('"x"', "JSON")],
)
def test_a_bad_payload_is_refused_next_to_its_field_and_uses_nothing_up(
    approver, waiting, typed, says
):
    response = answer(approver, waiting, payload=typed, comment="keep me")

    assert response.status_code == 400
    html = response.content.decode()
    errors = field_errors(html, "signal-payload-1")
    assert errors and says in errors[0], errors
    assert "keep me" in field_block(html, "signal-comment-1")  # what was typed is kept
    assert the_wait(waiting).status == TaskRunStatus.PENDING
    assert "signal" not in the_wait(waiting).waiting
    # Corrected, the same form goes through.
    assert answer(approver, waiting, payload='{"version": "2"}').status_code == 302
    assert run_to_end(waiting.id).status == ExecutionStatus.COMPLETED


# --- item 2: the answer shown ------------------------------------------------------------------
def test_a_rejection_shows_who_rejected_when_and_why_on_the_step_and_in_its_log(approver, waiting):
    answer(approver, waiting, decision="reject", comment="wrong build")
    done = run_to_end(waiting.id)

    html = page(approver[0], done)

    step = html[html.index('id="step-1"') : html.index('id="step-2"')]
    assert "Rejected by <strong>abe</strong>" in step
    assert re.search(r'at <time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>', step)
    assert "wrong build" in step
    log = re.search(r'<ol class="log">(.*?)</ol>', step, re.S).group(1)
    assert "signal &#x27;approval&#x27; (reject) from abe: wrong build" in log
