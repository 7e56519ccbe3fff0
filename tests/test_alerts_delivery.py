"""Sending the notifications outbox: each channel's messages in order, retried with backoff
while the channel is down (its later messages wait, other channels go on), given up at the
limits; the webhook's signature (checked with the README's recipe), Slack's format, email
through Django's backend, and the address policy of ``http_request``."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone
from werkzeug import Request, Response

from flows import services
from flows.models import Notification
from tests.factories import failing, flow_doc, run_flow

pytestmark = [pytest.mark.django_db]

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def allow_local(monkeypatch):
    # The receivers here listen on 127.0.0.1, which the address policy refuses by default.
    monkeypatch.setenv("FLOW_HTTP_ALLOW_PRIVATE", "1")


class Receiver:
    """A webhook receiver on pytest_httpserver: down (503) while ``down``; keeps what came."""

    def __init__(self, httpserver, path: str = "/hook") -> None:
        self.down = False
        self.got: list[tuple[dict, dict, bytes]] = []  # (json, headers, raw body)
        self.url = httpserver.url_for(path)
        httpserver.expect_request(path, method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        if self.down:
            return Response("Service Unavailable", status=503)
        body = request.get_data()
        self.got.append((json.loads(body), dict(request.headers), body))
        return Response("ok", status=200)

    def deliveries(self) -> list[int]:
        return [payload["delivery"] for payload, _, _ in self.got]


def webhook(url: str, name: str = "hook") -> tuple:
    return services.channel_create(name=name, kind="webhook", config={"url": url})


def fail_times(n: int, flow_id: str = "etl") -> list[str]:
    ids = [str(run_flow(flow_doc([failing("load")], flow_id=flow_id)).id) for _ in range(n)]
    services.handle_ends()
    return ids


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_a_channel_that_is_down_delays_its_messages_and_then_sends_each_once_in_order(
    httpserver, allow_local, settings
) -> None:
    settings.FLOW_NOTIFY_RETRY_SECONDS = 1
    receiver = Receiver(httpserver)
    channel, _ = webhook(receiver.url)
    services.rule_create(event="execution_failed", channels=[channel.pk])
    receiver.down = True
    failed = fail_times(10)

    assert services.notifications_send() == 0
    head = Notification.objects.order_by("id").first()
    assert (head.state, head.attempts, head.last_error) == (
        "retrying",
        1,
        "HTTP 503: Service Unavailable",
    )
    # Only the head was tried: the later messages wait behind it, untouched.
    assert set(Notification.objects.exclude(pk=head.pk).values_list("state", "attempts")) == {
        ("pending", 0)
    }
    assert services.notifications_send() == 0  # not due yet: nothing is tried
    assert Notification.objects.get(pk=head.pk).attempts == 1
    assert services.notifications_send(now=later(1.5)) == 0  # due, still down: backoff doubles
    head.refresh_from_db()
    assert head.attempts == 2
    assert 1.5 < (head.next_attempt_at - timezone.now()).total_seconds() <= 2

    receiver.down = False
    assert services.notifications_send(now=later(3)) == 10

    assert [p["execution_id"] for p, _, _ in receiver.got] == failed  # in order of failure
    assert receiver.deliveries() == sorted(receiver.deliveries())
    assert set(Notification.objects.values_list("state", flat=True)) == {"sent"}
    assert services.notifications_send(now=later(3)) == 0  # each once


def test_one_channel_down_does_not_hold_another(httpserver, allow_local) -> None:
    down = Receiver(httpserver, "/down")
    up = Receiver(httpserver, "/up")
    down.down = True
    a, _ = webhook(down.url, "a")
    b, _ = webhook(up.url, "b")
    services.rule_create(event="execution_failed", channels=[a.pk, b.pk])
    fail_times(3)

    assert services.notifications_send() == 3
    assert len(up.got) == 3 and down.got == []


def test_a_message_past_its_attempts_is_given_up_and_the_channel_moves_on(
    httpserver, allow_local, settings
) -> None:
    settings.FLOW_NOTIFY_MAX_ATTEMPTS = 2
    receiver = Receiver(httpserver)
    channel, _ = webhook(receiver.url)
    services.rule_create(event="execution_failed", channels=[channel.pk])
    receiver.down = True
    fail_times(2)
    services.notifications_send()
    services.notifications_send(now=later(3600))
    receiver.down = False

    assert services.notifications_send(now=later(7200)) == 1

    states = list(Notification.objects.order_by("id").values_list("state", "last_error"))
    assert states[0] == (
        "given_up",
        "given up (2 attempts); last error: HTTP 503: Service Unavailable",
    )
    assert states[1] == ("sent", "")


def test_a_message_older_than_the_give_up_time_is_given_up(httpserver, allow_local) -> None:
    receiver = Receiver(httpserver)
    channel, _ = webhook(receiver.url)
    services.rule_create(event="execution_failed", channels=[channel.pk])
    fail_times(1)
    Notification.objects.update(created_at=timezone.now() - timedelta(hours=25))

    assert services.notifications_send() == 0
    assert Notification.objects.get().state == "given_up"
    assert receiver.got == []


def test_a_claimed_message_is_not_sent_by_another_worker_until_its_claim_runs_out(
    httpserver, allow_local
) -> None:
    receiver = Receiver(httpserver)
    channel, _ = webhook(receiver.url)
    services.rule_create(event="execution_failed", channels=[channel.pk])
    fail_times(1)
    # A worker claimed it and was killed before it could record the outcome.
    Notification.objects.update(state="sending", attempts=1, claimed_until=later(60))

    assert services.notifications_send() == 0
    assert services.notifications_send(now=later(61)) == 1
    sent = Notification.objects.get()
    assert (sent.state, sent.attempts) == ("sent", 2)
    assert receiver.got[0][1]["X-Flow-Delivery"] == str(sent.pk)  # the same id as before


def _readme_block(after: str, language: str) -> str:
    text = README.read_text()
    start = text.index(after)
    found = re.search(rf"```{language}\n(.*?)```", text[start:], re.S)
    assert found, f"no {language} block after {after!r} in README.md"
    return found.group(1)


def test_the_webhook_signature_verifies_with_the_readme_recipe(
    httpserver, allow_local, tmp_path
) -> None:
    receiver = Receiver(httpserver)
    channel, secret = webhook(receiver.url)
    assert secret and secret not in channel.secret  # stored encrypted
    services.rule_create(event="execution_failed", channels=[channel.pk])
    fail_times(1)
    services.notifications_send()
    ((_, headers, body),) = receiver.got

    recipe = tmp_path / "recipe.py"
    recipe.write_text(_readme_block("#### Verifying a webhook's signature", "python"))
    spec = importlib.util.spec_from_file_location("recipe", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    timestamp, signature = headers["X-Flow-Timestamp"], headers["X-Flow-Signature"]
    assert module.verify(secret, timestamp, signature, body) is True
    assert module.verify(secret, timestamp, signature, body + b" ") is False
    assert module.verify("another secret", timestamp, signature, body) is False
    assert module.verify(secret, str(int(timestamp) - 301), signature, body) is False

    shell = _readme_block("The same in a shell", "sh")
    env = {"SECRET": secret, "TIMESTAMP": timestamp, "BODY": body.decode(), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["bash", "-c", shell], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == signature


def test_slack_gets_its_incoming_webhook_format_and_its_url_stays_encrypted(
    httpserver, allow_local
) -> None:
    receiver = Receiver(httpserver, "/services/T000/B000/XXXX")
    channel, shown = services.channel_create(
        name="slack", kind="slack", config={"url": receiver.url}
    )
    assert shown == ""
    assert "/services/" not in json.dumps(channel.config) and "XXXX" not in channel.secret
    services.rule_create(event="execution_failed", channels=[channel.pk])
    fail_times(1)

    assert services.notifications_send() == 1

    ((document, _, _),) = receiver.got
    assert document["text"].startswith("etl: an execution failed: Execution ")
    assert [block["type"] for block in document["blocks"]] == ["header", "section"]


def test_email_goes_through_django_s_backend(settings) -> None:
    channel, _ = services.channel_create(
        name="mail", kind="email", config={"to": ["ops@example.com", "dev@example.com"]}
    )
    services.rule_create(event="execution_failed", channels=[channel.pk])
    (failed,) = fail_times(1)

    assert services.notifications_send() == 1

    (sent,) = mail.outbox
    assert sent.subject == "etl: an execution failed"
    assert sent.to == ["ops@example.com", "dev@example.com"]
    assert f"/executions/{failed}/" in sent.body


def test_a_private_address_is_refused_as_http_request_refuses_it(monkeypatch) -> None:
    monkeypatch.delenv("FLOW_HTTP_ALLOW_PRIVATE", raising=False)
    monkeypatch.delenv("FLOW_HTTP_ALLOWED_HOSTS", raising=False)
    channel, _ = webhook("http://127.0.0.1:9/hook")
    services.rule_create(event="execution_failed", channels=[channel.pk])
    fail_times(1)

    assert services.notifications_send() == 0

    error = Notification.objects.get().last_error
    assert error.startswith("refused: 127.0.0.1 is a loopback address; set FLOW_HTTP_ALLOWED_HOSTS")
    assert services.channel_test(channel_id=channel.pk) == {"sent": False, "detail": error}


def test_sending_nothing_costs_one_query(django_assert_num_queries) -> None:
    with django_assert_num_queries(1):
        assert services.notifications_send() == 0
    with django_assert_num_queries(1):
        assert services.alerts_check() == 0
