"""Secrets in a run: ``${secrets.NAME}`` resolved only for the task, never written back.

Through the real engine run inline, with the ``leaky`` task type (tests/controls.py), which
gives its token away in every way a careless task might.
"""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from cryptography.fernet import Fernet

from flows import services, vault
from flows.masking import MaskSecrets
from flows.models import Execution, ExecutionStatus, Secret, TaskRunStatus
from tests.controls import retrying
from tests.factories import flow_doc, run_flow, task

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("control_plugins")]

TOKEN = 'tok-"quoted"/+slash\\back-1234567890'


@pytest.fixture
def token(settings) -> str:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]
    Secret.objects.create(name="token", value=vault.encrypt(TOKEN))
    return TOKEN


def traces(value: str) -> list[str]:
    """The forms in which a leak of ``value`` would be found."""
    return [
        value,
        json.dumps(value)[1:-1],
        base64.b64encode(value.encode()).decode().rstrip("="),
        base64.b64encode(f"user:{value}".encode()).decode()[8:-4],
    ]


def everything_written(execution: Execution) -> str:
    """All a run stored, as one text: steps (parameters, result, error, traceback, wait
    state), the execution's error and its events."""
    execution.refresh_from_db()
    rows = [
        json.dumps([s.parameters, s.result, s.error, s.traceback, s.waiting])
        for s in execution.steps.all()
    ]
    rows += [e.message for e in execution.events.all()]
    return "\n".join([execution.error, *rows])


def leaks(text: str, value: str) -> list[str]:
    return [form for form in traces(value) if form in text]


@pytest.fixture
def process_log():
    """What this process writes to its log, through a handler set up as settings.LOGGING sets
    up stderr (with the masking filter), on the task's logger and a library's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets())
    loggers = [logging.getLogger(name) for name in ("tasks", "httpx")]
    for logger in loggers:
        logger.addHandler(handler)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)


def test_the_task_gets_the_value_and_the_run_writes_only_the_reference(token, process_log) -> None:
    execution = run_flow(
        flow_doc(
            [task("call", "leaky", token="${secrets.token}", header="Bearer ${secrets.token}")]
        )
    )

    assert execution.status == ExecutionStatus.COMPLETED
    step = execution.steps.get()
    # What the run stored says which secret was used, never its value.
    assert step.parameters == {"token": "${secrets.token}", "header": "Bearer ${secrets.token}"}
    assert step.result["echo"] == "***"
    assert step.result["header"] == "Bearer ***"
    assert step.result["nested"] == [{"deep": ["***"]}]
    assert step.result["***"] == "as a key"
    assert step.result["as_json"] == json.dumps({"t": "***"})
    assert "***" in step.result["basic"]
    assert leaks(everything_written(execution), token) == []
    assert any("calling with token ***" in e.message for e in execution.events.all())
    # The process's own log: the task's lines and a library's, masked as written.
    written = process_log.getvalue()
    assert "calling with token ***" in written
    assert "GET https://api.example/?key=" in written
    assert leaks(written, token) == []


def test_the_masked_result_is_what_later_steps_see(token) -> None:
    execution = run_flow(
        flow_doc(
            [
                task("call", "leaky", token="${secrets.token}"),
                task("next", "echo", saw="${results.call.data.echo}"),
            ],
        )
    )

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(task_name="next").result == {"got": {"saw": "***"}}


def test_an_error_and_its_traceback_are_masked(token) -> None:
    execution = run_flow(flow_doc([task("call", "leaky", token="${secrets.token}", fail=True)]))

    assert execution.status == ExecutionStatus.FAILED
    step = execution.steps.get()
    assert step.status == TaskRunStatus.FAILURE
    assert "the server refused '***'" in step.error
    assert step.traceback and leaks(everything_written(execution), token) == []


def test_a_secret_that_is_not_set_fails_the_step_saying_what_to_do(settings) -> None:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]
    execution = run_flow(flow_doc([task("call", "leaky", token="${secrets.missing_one}")]))

    assert execution.status == ExecutionStatus.FAILED
    error = execution.steps.get().error
    assert "secret 'missing_one' is not set" in error
    assert "FLOW_SECRET_missing_one" in error


def test_a_secret_from_the_environment_when_the_store_has_none(monkeypatch) -> None:
    monkeypatch.setenv("FLOW_SECRET_DEPLOY_KEY", "from-the-environment-42")
    execution = run_flow(flow_doc([task("call", "leaky", token="${secrets.DEPLOY_KEY}")]))

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get().result["echo"] == "***"
    assert leaks(everything_written(execution), "from-the-environment-42") == []


def test_a_stored_secret_wins_over_the_environment(token, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_SECRET_token", "the-environment-value")
    execution = run_flow(
        flow_doc([task("call", "echo", url="https://x.example/?k=${secrets.token}")])
    )

    # echo returns what it got; masking hides the stored value, so the environment's value
    # would show through if it had been used.
    assert execution.steps.get().result == {"got": {"url": "https://x.example/?k=***"}}


def test_a_value_under_a_key_no_longer_configured_fails_the_step_clearly(token, settings) -> None:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]  # the old key is gone
    execution = run_flow(flow_doc([task("call", "leaky", token="${secrets.token}")]))

    assert execution.status == ExecutionStatus.FAILED
    assert "secret 'token' cannot be decrypted" in execution.steps.get().error


def test_a_reference_that_arrives_as_data_is_never_resolved(token) -> None:
    # Whoever may start a flow must not make it send a secret it never used: "${secrets...}"
    # in the input (or in an earlier result) is text, not a reference, on every attempt.
    execution = run_flow(
        flow_doc(
            [
                retrying(
                    "call",
                    "echo_then_fail",
                    {"max_attempts": 2, "delay_seconds": 0.01},
                    url="https://x.example/?q=${input.q}",
                )
            ]
        ),
        input={"q": "${secrets.token}"},
    )

    steps = list(execution.steps.order_by("seq"))
    assert [s.attempt for s in steps] == [1, 2]
    for step in steps:
        assert "?q=${secrets.token}" in step.error
        assert leaks(step.error, token) == []


def test_a_flow_that_references_an_unknown_secret_is_stored_with_a_warning(settings) -> None:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]
    definition = services.validate_flow(
        flow_doc([task("call", "leaky", token="${secrets.nobody_set_this}")])
    )

    assert [(w.field, w.message) for w in definition.warnings] == [
        (
            "tasks[0].parameters.token",
            "secret 'nobody_set_this' is not set yet: the step will fail until it is "
            "(Secrets page, /api/secrets/, or FLOW_SECRET_nobody_set_this)",
        )
    ]


def test_a_worker_reads_a_secret_again_once_it_changes_or_its_time_is_up(token, settings) -> None:
    assert vault.cached_values_for(["token"]) == ({"token": TOKEN}, [])
    # Changed in another process (no signal here): this one keeps its copy for its time...
    Secret.objects.filter(name="token").update(value=vault.encrypt("elsewhere-1"))
    assert vault.cached_values_for(["token"])[0] == {"token": TOKEN}
    settings.FLOW_SECRET_CACHE_SECONDS = 0  # ... which is up
    assert vault.cached_values_for(["token"])[0] == {"token": "elsewhere-1"}
    settings.FLOW_SECRET_CACHE_SECONDS = 60
    # Changed in this process: read afresh at once.
    secret = Secret.objects.get(name="token")
    secret.value = vault.encrypt("changed-here-2")
    secret.save()
    assert vault.cached_values_for(["token"])[0] == {"token": "changed-here-2"}
    secret.delete()
    assert vault.cached_values_for(["token"]) == ({}, ["token"])
