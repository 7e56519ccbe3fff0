"""``/api/channels/``, ``/api/alert-rules/``, ``/api/notifications/`` and the Notifications
page: who may do what, a webhook secret shown once and never again, bad bodies refused with
their field, the delivery log filtered and paged in a fixed number of queries."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from flows import services
from flows.models import AlertRule, Channel, Notification
from tests.factories import error_body, failing, flow_doc, run_flow

pytestmark = [pytest.mark.django_db]

HOOK = {"name": "ops", "kind": "webhook", "config": {"url": "https://hooks.example.com/f"}}


def test_a_webhook_channel_shows_its_secret_once_and_stores_it_encrypted(api) -> None:
    created = api.post("/api/channels/", HOOK, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    secret = body.pop("secret")
    assert len(secret) >= 40
    assert body["kind"] == "webhook" and body["config"] == HOOK["config"]
    assert body["created_by"] == "alice"

    stored = Channel.objects.get()
    assert secret not in stored.secret and services.channel_secret(stored) == secret
    again = api.get(f"/api/channels/{body['id']}/").json()
    assert "secret" not in again and secret not in str(api.get("/api/channels/").content)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOOK, "kind": "pager"}, "kind"),
        ({**HOOK, "name": ""}, "name"),
        ({**HOOK, "config": {"url": "ftp://example.com"}}, "config.url"),
        ({**HOOK, "config": {"url": "https://x.example", "secret": "s"}}, "config.secret"),
        ({"name": "m", "kind": "email", "config": {"to": []}}, "config.to"),
        ({"name": "m", "kind": "email", "config": {"to": ["not an address"]}}, "config.to[0]"),
        ({"name": "m", "kind": "email", "config": "ops@example.com"}, "config"),
    ],
)
def test_a_bad_channel_is_refused_at_its_field_and_nothing_is_stored(api, body, field) -> None:
    refused = error_body(api.post("/api/channels/", body, format="json"), 400)
    assert field in [e["field"] for e in refused["errors"]]
    assert not Channel.objects.exists()


def test_a_taken_channel_name_is_a_409(api) -> None:
    api.post("/api/channels/", HOOK, format="json")
    assert error_body(api.post("/api/channels/", HOOK, format="json"), 409)["code"] == "conflict"


def test_a_webhook_channel_without_secret_keys_is_refused_with_what_to_set(api, settings) -> None:
    settings.FLOW_SECRET_KEYS = []
    body = error_body(api.post("/api/channels/", HOOK, format="json"), 409)
    assert body["code"] == "secret_keys_missing"
    assert not Channel.objects.exists()


def test_a_viewer_reads_channels_rules_and_deliveries_but_writes_none(client_as) -> None:
    viewer = client_as("viewer")
    assert viewer.get("/api/channels/").status_code == 200
    assert viewer.get("/api/alert-rules/").status_code == 200
    assert viewer.get("/api/notifications/").status_code == 200
    denied = error_body(viewer.post("/api/channels/", HOOK, format="json"), 403)
    assert "flows.manage_alerts" in denied["detail"]


def test_an_admin_and_an_editor_manage_alerts_an_operator_does_not(make_user) -> None:
    assert make_user("root", "admin").has_perm("flows.manage_alerts")
    assert make_user("ed", "editor").has_perm("flows.manage_alerts")
    operator = get_user_model().objects.get(pk=make_user("op", "operator").pk)
    assert not operator.has_perm("flows.manage_alerts")


def test_a_rule_is_created_changed_and_deleted(api) -> None:
    channel = api.post("/api/channels/", HOOK, format="json").json()
    services.flow_create(document=flow_doc([failing("a")], flow_id="etl"))
    created = api.post(
        "/api/alert-rules/",
        {
            "flow": "etl",
            "event": "failures_in_a_row",
            "threshold": 3,
            "channels": [channel["id"]],
            "cooldown_seconds": 600,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    rule = created.json()
    assert {k: rule[k] for k in ("flow", "event", "threshold", "channels", "enabled")} == {
        "flow": "etl",
        "event": "failures_in_a_row",
        "threshold": 3,
        "channels": [channel["id"]],
        "enabled": True,
    }
    changed = api.patch(f"/api/alert-rules/{rule['id']}/", {"enabled": False}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert api.delete(f"/api/alert-rules/{rule['id']}/").status_code == 204
    assert not AlertRule.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "execution_failed", "channels": []}, "channels"),
        ({"event": "execution_failed", "channels": [999]}, "channels"),
        ({"event": "bored", "channels": ["CH"]}, "event"),
        ({"event": "failures_in_a_row", "channels": ["CH"]}, "threshold"),
        ({"event": "failures_in_a_row", "threshold": "3", "channels": ["CH"]}, "threshold"),
        ({"event": "execution_failed", "threshold": 3, "channels": ["CH"]}, "threshold"),
        ({"event": "execution_failed", "flow": "nope", "channels": ["CH"]}, "flow"),
        (
            {"event": "execution_failed", "cooldown_seconds": -1, "channels": ["CH"]},
            "cooldown_seconds",
        ),
        ({"event": "execution_failed", "channels": ["CH"], "colour": "red"}, "colour"),
    ],
)
def test_a_bad_rule_is_refused_at_its_field(api, body, field) -> None:
    channel = api.post("/api/channels/", HOOK, format="json").json()
    body = {**body, "channels": [channel["id"] if c == "CH" else c for c in body["channels"]]}
    refused = error_body(api.post("/api/alert-rules/", body, format="json"), 400)
    assert field in [e["field"] for e in refused["errors"]]
    assert not AlertRule.objects.exists()


def test_the_delivery_log_filters_by_channel_and_state_in_a_fixed_number_of_queries(
    api, django_assert_num_queries
) -> None:
    a = api.post("/api/channels/", HOOK, format="json").json()
    b = api.post("/api/channels/", {**HOOK, "name": "other"}, format="json").json()
    services.rule_create(event="execution_failed", channels=[a["id"], b["id"]])
    for _ in range(3):
        run_flow(flow_doc([failing("load")], flow_id="etl"))
    services.handle_ends()
    Notification.objects.filter(channel_id=b["id"]).update(state="given_up", last_error="HTTP 410")

    # Token, user permissions, group permissions, count, page: however many rows.
    with django_assert_num_queries(5):
        page = api.get(f"/api/notifications/?channel={b['id']}&state=given_up").json()
    assert page["count"] == 3
    row = page["results"][0]
    assert (row["channel_name"], row["state"], row["last_error"]) == (
        "other",
        "given_up",
        "HTTP 410",
    )
    assert row["payload"]["event"] == "execution_failed"
    assert api.get(f"/api/notifications/?channel={a['id']}&state=sent").json()["count"] == 0
    assert error_body(api.get("/api/notifications/?state=lost"), 400)["errors"][0]["field"] == (
        "state"
    )


def test_the_test_action_answers_what_happened(api, httpserver, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOW_PRIVATE", "1")
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok", status=200)
    channel = api.post(
        "/api/channels/", {**HOOK, "config": {"url": httpserver.url_for("/hook")}}, format="json"
    ).json()

    answer = api.post(f"/api/channels/{channel['id']}/test/")

    assert answer.status_code == 200
    assert answer.json() == {"sent": True, "detail": "HTTP 200"}
    assert not Notification.objects.exists()  # sent at once, not queued


def test_the_notifications_page_shows_channels_rules_and_the_log(client, alice) -> None:
    channel, _ = services.channel_create(
        name="ops-mail", kind="email", config={"to": ["ops@example.com"]}
    )
    services.rule_create(event="execution_failed", channels=[channel.pk], cooldown_seconds=60)
    run_flow(flow_doc([failing("load")], flow_id="etl"))
    services.handle_ends()
    Notification.objects.update(state="retrying", last_error="SMTPServerDisconnected: gone")
    client.force_login(alice)

    page = client.get("/notifications/").content.decode()

    assert "ops-mail" in page and "ops@example.com" in page
    assert "execution_failed" in page
    assert "etl: an execution failed" in page
    assert "SMTPServerDisconnected: gone" in page
    assert "Send test" in page  # alice is an editor


def test_send_test_on_the_page_says_what_happened(client, alice, settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    channel, _ = services.channel_create(
        name="ops-mail", kind="email", config={"to": ["ops@example.com"]}
    )
    client.force_login(alice)

    answer = client.post(f"/channels/{channel.pk}/test", follow=True)

    assert "Test message sent: accepted for 1 recipient(s)" in answer.content.decode()


def test_rotating_the_keys_re_encrypts_the_channels_secrets_too(api, settings) -> None:
    from cryptography.fernet import Fernet

    old = settings.FLOW_SECRET_KEYS[0]
    shown = api.post("/api/channels/", HOOK, format="json").json()["secret"]
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode(), old]

    assert services.secret_keys_rotate() == 1

    settings.FLOW_SECRET_KEYS = settings.FLOW_SECRET_KEYS[:1]  # the old key dropped
    assert services.channel_secret(Channel.objects.get()) == shown


def test_the_notifications_page_costs_the_same_queries_for_few_or_many_deliveries(
    client, alice, django_assert_num_queries
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    channel, _ = services.channel_create(name="m", kind="email", config={"to": ["o@example.com"]})
    services.rule_create(event="execution_failed", channels=[channel.pk])
    run_flow(flow_doc([failing("load")], flow_id="etl"))
    services.handle_ends()
    client.force_login(alice)
    client.get("/notifications/")
    with CaptureQueriesContext(connection) as few:
        client.get("/notifications/")

    other, _ = services.channel_create(name="n", kind="email", config={"to": ["p@example.com"]})
    services.rule_create(event="execution_failed", channels=[channel.pk, other.pk], flow="etl")
    for _ in range(5):
        run_flow(flow_doc([failing("load")], flow_id="etl"))
    services.handle_ends()

    with django_assert_num_queries(len(few)):
        client.get("/notifications/")


def test_the_readme_s_curl_lines_answer_as_written(api, settings) -> None:
    import re
    from pathlib import Path

    settings.FLOW_NOTIFY_TIMEOUT_SECONDS = 2
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Notifications and alerts") :]
    channel_body, rule_body = (
        json.loads(body) for body in re.findall(r"-d '(\{.*\})'", section.split("```")[1])
    )

    created = api.post("/api/channels/", channel_body, format="json")
    assert created.status_code == 201 and created.json()["secret"]
    # The README's id 1 is a fresh database's first channel; a test database's may be another.
    made = created.json()["id"]
    assert rule_body["channels"] == [1]
    rule_body["channels"] = [made]
    assert api.post("/api/alert-rules/", rule_body, format="json").status_code == 201
    tested = api.post(f"/api/channels/{made}/test/")
    assert tested.status_code == 200 and set(tested.json()) == {"sent", "detail"}
