"""How a message goes out on a channel: an email through Django's email backend, a signed JSON
POST to a webhook, a Slack incoming-webhook message. No database writes here: the sender
(``flows.services.notifications``) decides when to send and records what happened.

Webhook and Slack requests follow the same address policy as the ``http_request`` task
(``tasks/_netpolicy.py``: ``FLOW_HTTP_ALLOW_PRIVATE``, ``FLOW_HTTP_ALLOWED_HOSTS``): a channel
cannot be pointed at the cloud metadata address or at a service on the workers' network
unless the operator allows it.

The webhook signature (README, "Notifications and alerts"): ``X-Flow-Timestamp`` is the Unix
time of the send, ``X-Flow-Signature`` is ``sha256=`` and the hex HMAC-SHA256, under the
channel's secret, of ``<timestamp>.<body>`` (the body's exact bytes). ``X-Flow-Delivery`` is
the notification's id: a message sent again (a worker killed after the receiver answered,
before the answer was recorded) carries the same one, so a receiver can drop the repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import EmailMessage

from flows.models import Channel, ChannelKind
from tasks import _netpolicy

SIGNATURE_HEADER = "X-Flow-Signature"
TIMESTAMP_HEADER = "X-Flow-Timestamp"
DELIVERY_HEADER = "X-Flow-Delivery"
USER_AGENT = "flow-manager-notifications"
# What of a refusing receiver's answer is kept in the delivery log.
ANSWER_CHARS = 300


class SendFailed(Exception):
    """The channel did not take the message; the text says why (kept as ``last_error``)."""


@dataclass(frozen=True)
class Message:
    """What is sent: the notification's id (``X-Flow-Delivery``; 0 for a test message) and its
    payload (``event``, ``title``, ``text``, ``url`` and the event's facts)."""

    delivery: int
    payload: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.payload.get("title") or "Flow Manager")

    @property
    def text(self) -> str:
        return str(self.payload.get("text") or "")

    @property
    def url(self) -> str:
        return str(self.payload.get("url") or "")


def new_signing_secret() -> str:
    """A webhook channel's signing key: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 under ``secret`` of ``<timestamp>.<body>``."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def send(channel: Channel, message: Message, *, secret: str = "") -> str:
    """Send ``message`` on ``channel`` (``secret``: its decrypted secret, for a webhook or
    Slack); what the channel answered ("HTTP 200", "accepted by the mail server"), or
    SendFailed saying why not."""
    if channel.kind == ChannelKind.EMAIL:
        return _email(channel, message)
    if channel.kind == ChannelKind.WEBHOOK:
        return _webhook(channel, message, secret)
    if channel.kind == ChannelKind.SLACK:
        return _slack(message, secret)
    raise SendFailed(f"unknown channel kind {channel.kind!r}")


def _email(channel: Channel, message: Message) -> str:
    recipients = [str(to) for to in channel.config.get("to", [])]
    body = message.text + (f"\n\n{message.url}" if message.url else "") + "\n"
    email = EmailMessage(
        subject=message.title,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={DELIVERY_HEADER: str(message.delivery)},
    )
    try:
        email.send(fail_silently=False)
    except Exception as exc:  # smtplib and socket errors, and whatever another backend raises
        raise SendFailed(f"email: {type(exc).__name__}: {exc}") from None
    return f"accepted for {len(recipients)} recipient(s)"


def webhook_body(message: Message) -> bytes:
    """The JSON a webhook receives: the payload and the delivery id, compact, keys sorted."""
    document = {"delivery": message.delivery, **message.payload}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _webhook(channel: Channel, message: Message, secret: str) -> str:
    body = webhook_body(message)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        DELIVERY_HEADER: str(message.delivery),
    }
    return _post(str(channel.config.get("url", "")), body, headers)


def slack_body(message: Message) -> bytes:
    """Slack's incoming-webhook format: ``text`` (the notification's fallback) and ``blocks``."""
    link = f"\n<{message.url}|Open in Flow Manager>" if message.url.startswith("http") else ""
    document = {
        "text": f"{message.title}: {message.text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": (message.text + link)[:3000] or " "},
            },
        ],
    }
    return json.dumps(document).encode()


def _slack(message: Message, url: str) -> str:
    return _post(url, slack_body(message), {"Content-Type": "application/json"})


def _post(url: str, body: bytes, headers: dict[str, str]) -> str:
    if not url:
        raise SendFailed("the channel has no URL")
    try:
        policy = _netpolicy.policy_from_env()
    except ValueError as exc:
        raise SendFailed(str(exc)) from None
    try:
        answer = asyncio.run(_request(url, body, headers, policy))
    except _netpolicy.AddressRefused as exc:
        raise SendFailed(f"refused: {exc}; {exc.hint()}") from None
    except httpx.HTTPError as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}") from None
    if not answer.is_success:
        text = answer.text[:ANSWER_CHARS].strip()
        raise SendFailed(f"HTTP {answer.status_code}" + (f": {text}" if text else ""))
    return f"HTTP {answer.status_code}"


async def _request(
    url: str, body: bytes, headers: dict[str, str], policy: _netpolicy.NetPolicy
) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=_netpolicy.transport_for(policy),
        timeout=settings.FLOW_NOTIFY_TIMEOUT_SECONDS,
        follow_redirects=False,  # a receiver that moved is a configuration to fix, said once
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    ) as client:
        return await client.post(url, content=body, headers=headers)
