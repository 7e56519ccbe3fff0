"""Alert rules: which execution ends and which periodic checks raise an alert, once, counted
within a cooldown; the error-handler flow a failed execution starts (and its chain guard)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from flows import engine, services
from flows.models import (
    Alert,
    Execution,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionTrigger,
    Notification,
    WebhookDelivery,
)
from tests.factories import approval_flow, failing, flow_doc, run_flow, start_execution, task

pytestmark = [pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _keys(settings) -> None:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]


@pytest.fixture
def channel():
    made, _ = services.channel_create(
        name="ops", kind="webhook", config={"url": "https://hooks.example.com/flows"}
    )
    return made


def rule(channel, event: str, **fields):
    return services.rule_create(event=event, channels=[channel.pk], **fields)


def messages() -> list[dict]:
    """The payloads written to the outbox, oldest first."""
    return [n.payload for n in Notification.objects.order_by("id")]


def fail(flow_id: str = "etl", **extra) -> Execution:
    return run_flow(flow_doc([failing("load")], flow_id=flow_id, **extra))


def succeed(flow_id: str = "etl") -> Execution:
    return run_flow(flow_doc([task("load")], flow_id=flow_id))


def test_a_failed_execution_writes_one_notification_per_channel_when_its_end_is_handled(
    channel,
) -> None:
    other, _ = services.channel_create(
        name="mail", kind="email", config={"to": ["ops@example.com"]}
    )
    services.rule_create(event="execution_failed", channels=[channel.pk, other.pk])
    execution = fail()
    assert not Notification.objects.exists()  # written with the end's handling, not before

    services.handle_ends()

    rows = list(
        Notification.objects.order_by("channel__name").values_list("channel__name", "state")
    )
    assert rows == [("mail", "pending"), ("ops", "pending")]
    payload = messages()[0]
    assert payload["event"] == "execution_failed"
    assert payload["execution_id"] == str(execution.id)
    assert payload["failed_task"] == "load"
    assert payload["url"] == f"/executions/{execution.id}/"
    assert "failed at task 'load'" in payload["text"]


def test_a_failure_after_three_retries_is_one_notification_not_four(channel) -> None:
    rule(channel, "execution_failed")
    retried = failing("load") | {"retry": {"max_attempts": 4}}
    execution = run_flow(flow_doc([retried], flow_id="etl"))
    assert execution.steps.count() == 4  # three retries, each failed

    services.handle_ends()

    assert len(messages()) == 1


def test_a_rule_of_another_flow_or_a_completed_run_raises_nothing(channel) -> None:
    services.flow_create(document=flow_doc([task("a")], flow_id="other"))
    rule(channel, "execution_failed", flow="other")
    fail("etl")
    succeed("other")

    services.handle_ends()

    assert messages() == []


def test_repeats_within_the_cooldown_are_counted_on_one_alert_not_sent_again(channel) -> None:
    rule(channel, "execution_failed", cooldown_seconds=600)
    for _ in range(3):
        fail()
    services.handle_ends()

    assert len(messages()) == 1
    alert = Alert.objects.get()
    assert alert.count == 3

    # Past the cooldown, the next failure is a new alert with a message of its own.
    Alert.objects.update(first_at=timezone.now() - timedelta(seconds=601))
    fail()
    services.handle_ends()
    assert len(messages()) == 2
    assert sorted(Alert.objects.values_list("count", flat=True)) == [1, 3]


def test_the_cooldown_is_per_flow_for_a_rule_of_every_flow(channel) -> None:
    rule(channel, "execution_failed", cooldown_seconds=600)
    fail("etl")
    fail("billing")
    services.handle_ends()

    assert [m["flow_id"] for m in messages()] == ["etl", "billing"]


def test_failures_in_a_row_alerts_when_the_streak_reaches_its_threshold(channel) -> None:
    rule(channel, "failures_in_a_row", threshold=3)
    fail()
    fail()
    services.handle_ends()
    assert messages() == []

    succeed()
    fail()
    fail()
    services.handle_ends()
    assert messages() == []  # the success broke the streak

    fail()
    services.handle_ends()
    assert [m["event"] for m in messages()] == ["failures_in_a_row"]
    assert messages()[0]["text"].startswith("3 failures in a row.")


def test_recovered_is_a_success_right_after_a_failure(channel) -> None:
    rule(channel, "recovered")
    succeed()
    fail()
    services.handle_ends()
    assert messages() == []

    recovered = succeed()
    succeed()
    services.handle_ends()

    assert [(m["event"], m["execution_id"]) for m in messages()] == [
        ("recovered", str(recovered.id))
    ]


def test_timed_out_is_raised_by_the_flow_s_timeout_not_by_another_failure(channel) -> None:
    rule(channel, "timed_out")
    fail()
    execution = start_execution(flow_doc([task("a")], flow_id="slow", timeout_seconds=60))
    Execution.objects.filter(pk=execution.id).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert engine.reap()["timed_out"] == 1
    services.handle_ends()

    assert [(m["event"], m["flow_id"]) for m in messages()] == [("timed_out", "slow")]
    assert "timeout" in messages()[0]["error"]


def test_running_longer_than_alerts_once_per_execution(channel) -> None:
    rule(channel, "running_longer_than", threshold=60)
    long_run = start_execution(flow_doc([task("a")], flow_id="slow"))
    Execution.objects.filter(pk=long_run.id).update(
        status=ExecutionStatus.RUNNING, started_at=timezone.now() - timedelta(seconds=61)
    )
    fresh = start_execution(flow_doc([task("a")], flow_id="fresh"))
    Execution.objects.filter(pk=fresh.id).update(
        status=ExecutionStatus.RUNNING, started_at=timezone.now()
    )

    assert services.alerts_check() == 1
    assert services.alerts_check() == 0  # once per execution

    assert [(m["event"], m["execution_id"]) for m in messages()] == [
        ("running_longer_than", str(long_run.id))
    ]


def test_a_step_waiting_for_a_signal_is_announced_once_with_the_page_where_it_is_approved(
    channel, settings
) -> None:
    settings.FLOW_BASE_URL = "https://flows.example.com"
    rule(channel, "waiting_for_signal")
    execution = run_flow(approval_flow())
    assert execution.status == ExecutionStatus.RUNNING  # waiting at `approve`

    assert services.alerts_check() == 1
    assert services.alerts_check() == 0

    (payload,) = messages()
    assert payload["url"] == f"https://flows.example.com/executions/{execution.id}/"
    assert payload["task"] == "approve"
    assert payload["signal"] == "deploy"
    assert "Ship it?" in payload["text"]


def test_a_refused_webhook_delivery_raises_the_webhook_refused_rule(channel, client) -> None:
    services.flow_create(document=flow_doc([task("a")], flow_id="etl"))
    rule(channel, "webhook_refused")
    rule(channel, "execution_failed")
    hook, _ = services.webhook_create(flow_id="etl", auth="hmac", preset="github")

    refused = client.post(
        f"/hooks/{hook.slug}",
        data=b'{"ref": "main"}',
        content_type="application/json",
        headers={"X-Hub-Signature-256": "sha256=" + "0" * 64},
    )

    assert refused.status_code == 401
    delivery = WebhookDelivery.objects.get(hook=hook)
    (payload,) = messages()
    assert payload["event"] == "webhook_refused"
    assert payload["flow_id"] == "etl"
    assert payload["reason"] == delivery.reason and "signature" in delivery.reason
    assert payload["delivery_id"] == str(delivery.pk)


def test_a_disabled_rule_raises_nothing(channel) -> None:
    made = rule(channel, "execution_failed")
    services.rule_update(rule_id=made.pk, enabled=False)
    fail()
    services.handle_ends()
    assert messages() == []


# --- error-handler flows ----------------------------------------------------------------------
def handler_flow(flow_id: str = "on_call") -> dict:
    return flow_doc([task("page", "print", message="paged")], flow_id=flow_id)


def test_a_failed_execution_starts_its_flow_s_error_handler_with_what_failed() -> None:
    services.flow_create(document=handler_flow())
    failed = run_flow(
        flow_doc([failing("load")], flow_id="etl", on_failure={"flow_id": "on_call"}),
        input={"day": "2026-12-01"},
    )

    services.handle_ends()

    handler = Execution.objects.get(flow_id="on_call")
    assert handler.trigger == ExecutionTrigger.ERROR_HANDLER
    assert handler.status == ExecutionStatus.QUEUED
    assert handler.input == {
        "execution_id": str(failed.id),
        "flow_id": "etl",
        "failed_task": "load",
        "error": failed.error,
        "input": {"day": "2026-12-01"},
    }
    note = ExecutionEvent.objects.filter(execution_id=failed.id).last()
    assert note.message == f"error-handler flow 'on_call' started: execution {handler.id}"


def test_a_completed_execution_starts_no_error_handler() -> None:
    services.flow_create(document=handler_flow())
    run_flow(flow_doc([task("load")], flow_id="etl", on_failure={"flow_id": "on_call"}))
    services.handle_ends()
    assert not Execution.objects.filter(flow_id="on_call").exists()


def test_an_error_handler_that_fails_starts_no_error_handler_again() -> None:
    # Two flows that name each other: only the first failure starts a handler.
    services.flow_create(
        document=flow_doc([failing("page")], flow_id="on_call", on_failure={"flow_id": "etl"})
    )
    run_flow(flow_doc([failing("load")], flow_id="etl", on_failure={"flow_id": "on_call"}))
    services.handle_ends()
    handler = Execution.objects.get(flow_id="on_call")
    engine.run_inline(handler.id)
    assert Execution.objects.get(pk=handler.id).status == ExecutionStatus.FAILED

    services.handle_ends()

    assert Execution.objects.filter(flow_id="etl").count() == 1
    assert Execution.objects.filter(flow_id="on_call").count() == 1


def test_a_flow_cannot_name_itself_as_its_error_handler() -> None:
    doc = flow_doc([task("a")], flow_id="etl", on_failure={"flow_id": "etl"})
    with pytest.raises(services.InvalidFlow) as refused:
        services.flow_create(document=doc)
    assert refused.value.errors == [
        {
            "field": "on_failure.flow_id",
            "message": "a flow cannot be its own error handler (its failure would start "
            "itself again)",
        }
    ]


def test_an_error_handler_not_stored_yet_is_a_warning_and_a_note_on_the_failed_run() -> None:
    doc = flow_doc([failing("load")], flow_id="etl", on_failure={"flow_id": "later"})
    warnings = services.validate_flow(doc).warnings
    assert [w.field for w in warnings] == ["on_failure.flow_id"]
    failed = run_flow(doc)

    services.handle_ends()

    note = ExecutionEvent.objects.filter(execution_id=failed.id).last()
    assert note.message == "error-handler flow 'later' not started: no such flow"


def test_an_error_handler_whose_input_schema_refuses_the_input_is_a_note_not_a_stuck_end() -> None:
    strict = handler_flow() | {
        "input_schema": {"type": "object", "required": ["ticket"]},
    }
    services.flow_create(document=strict)
    failed = fail(on_failure={"flow_id": "on_call"})

    assert services.handle_ends() == 1

    assert not Execution.objects.filter(flow_id="on_call").exists()
    note = ExecutionEvent.objects.filter(execution_id=failed.id).last()
    assert note.message.startswith("error-handler flow 'on_call' not started:")


@pytest.mark.parametrize(
    ("on_failure", "field"),
    [
        ("on_call", "on_failure"),
        ({"flow": "on_call"}, "on_failure.flow"),
        ({"flow_id": ""}, "on_failure.flow_id"),
        ({"flow_id": 7}, "on_failure.flow_id"),
    ],
)
def test_a_bad_on_failure_is_refused_at_its_field(on_failure, field) -> None:
    doc = flow_doc([task("a")], flow_id="etl", on_failure=on_failure)
    with pytest.raises(services.InvalidFlow) as refused:
        services.validate_flow(doc)
    assert field in [e["field"] for e in refused.value.errors]
