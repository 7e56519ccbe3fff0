"""Sending the notifications outbox: run by every worker process's notification timer
(``flows.jobs.NotifyTimer``), never on the engine's path, so a channel that is slow or down
delays its own messages and nothing else.

Order and retries, per channel:

1. Only a channel's oldest open message (its *head*) is ever sent: messages to one channel go
   out in the order they were written (the order of the failures), and while the head waits
   for a retry the channel's later messages wait behind it. Other channels go on.
2. The head is claimed in a short transaction: locked with ``select_for_update(skip_locked)``
   (another worker holding it is skipped, not waited for), then moved to ``sending`` by a
   conditional UPDATE that must change exactly one row (SQLite, which has no row locks, gets
   its exclusion from that). The claim holds ``claimed_until``; the send happens outside any
   transaction.
3. A send that fails is retried after ``FLOW_NOTIFY_RETRY_SECONDS``, doubling up to
   ``FLOW_NOTIFY_MAX_BACKOFF_SECONDS``; after ``FLOW_NOTIFY_MAX_ATTEMPTS`` attempts, or once
   ``FLOW_NOTIFY_GIVE_UP_SECONDS`` have passed since it was written, it is ``given_up`` (kept,
   with its last error, in the delivery log) and the channel's next message goes.
4. A worker killed while sending leaves its claim to expire; the message is sent again with
   the same delivery id (``X-Flow-Delivery``), so a receiver can tell the repeat. Each
   notification row is written exactly once (in the transaction of what it reports); its
   delivery is at least once, and once unless a worker dies between the receiver's answer
   and the row's update.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Min
from django.utils import timezone

from flows import notify, vault
from flows.models import (
    OPEN_NOTIFICATION_STATES,
    Channel,
    Notification,
    NotificationState,
)

logger = logging.getLogger("flows.services")

# How many messages one channel may send in one pass, so that a busy channel does not keep
# the others of this worker waiting for long.
PER_CHANNEL = 50


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones."""
    base = settings.FLOW_NOTIFY_RETRY_SECONDS
    return min(base * 2 ** max(attempts - 1, 0), settings.FLOW_NOTIFY_MAX_BACKOFF_SECONDS)


def _claim_seconds() -> float:
    # Longer than any send may take, so that a live worker's claim never runs out under it.
    return 2 * max(settings.FLOW_NOTIFY_TIMEOUT_SECONDS, settings.EMAIL_TIMEOUT) + 10


def notifications_send(*, now: datetime | None = None) -> int:
    """Send what is due, channel by channel, heads only (see the module); how many were
    sent. One query when nothing is open."""
    heads = (
        Notification.objects.filter(state__in=OPEN_NOTIFICATION_STATES)
        .values("channel_id")
        .annotate(head=Min("id"))
        .order_by("head")
    )
    sent = 0
    for row in list(heads):
        for _ in range(PER_CHANNEL):
            claimed = _claim_head(row["channel_id"], now)
            if claimed is None:
                break
            if not _deliver(claimed):
                break  # the channel waits for its head's retry
            sent += 1
    return sent


def _claim_head(channel_id: int, now: datetime | None) -> Notification | None:
    """Claim ``channel_id``'s oldest open message if it is due and nobody sends it; give up
    heads past their limits on the way (the next one becomes the head)."""
    while True:
        at = now or timezone.now()
        head_id = (
            Notification.objects.filter(channel_id=channel_id, state__in=OPEN_NOTIFICATION_STATES)
            .order_by("id")
            .values_list("id", flat=True)
            .first()
        )
        if head_id is None:
            return None
        with transaction.atomic():
            # The head by id, not "the first unlocked open row": skipping a locked head would
            # send the next message before it.
            head = (
                Notification.objects.select_for_update(skip_locked=True)
                .select_related("channel")
                .filter(pk=head_id, state__in=OPEN_NOTIFICATION_STATES)
                .first()
            )
            if head is None:
                return None  # another worker has it (or just finished it)
            if head.state == NotificationState.SENDING and (head.claimed_until or at) > at:
                return None
            if head.next_attempt_at > at:
                return None
            limit = settings.FLOW_NOTIFY_MAX_ATTEMPTS
            too_old = head.created_at < at - timedelta(seconds=settings.FLOW_NOTIFY_GIVE_UP_SECONDS)
            if head.attempts >= limit or too_old:
                why = f"{head.attempts} attempts" if head.attempts >= limit else "too old"
                Notification.objects.filter(pk=head.pk, state=head.state).update(
                    state=NotificationState.GIVEN_UP,
                    claimed_until=None,
                    last_error=f"given up ({why}); last error: {head.last_error}"[:4000],
                )
                logger.warning("notification %s given up (%s)", head.pk, why)
                continue
            moved = Notification.objects.filter(
                pk=head.pk, state=head.state, attempts=head.attempts
            ).update(
                state=NotificationState.SENDING,
                attempts=F("attempts") + 1,
                claimed_until=at + timedelta(seconds=_claim_seconds()),
            )
            if moved != 1:
                return None
            head.attempts += 1
            head.state = NotificationState.SENDING
            return head


def _deliver(notification: Notification) -> bool:
    """Send a claimed notification and record what happened; whether it was sent."""
    channel: Channel = notification.channel
    message = notify.Message(notification.pk, notification.payload)
    try:
        secret = vault.decrypt(channel.secret, name=channel.name) if channel.secret else ""
        notify.send(channel, message, secret=secret)
    except Exception as exc:  # SendFailed, an unreadable secret, a backend's own error
        error = str(exc) if isinstance(exc, notify.SendFailed) else f"{type(exc).__name__}: {exc}"
        delay = backoff(notification.attempts)
        Notification.objects.filter(
            pk=notification.pk,
            state=NotificationState.SENDING,
            attempts=notification.attempts,
        ).update(
            state=NotificationState.RETRYING,
            claimed_until=None,
            last_error=error[:4000],
            next_attempt_at=timezone.now() + timedelta(seconds=delay),
        )
        logger.info(
            "notification %s to channel %s failed (attempt %d), again in %.1fs: %s",
            notification.pk,
            channel.pk,
            notification.attempts,
            delay,
            error,
        )
        return False
    Notification.objects.filter(
        pk=notification.pk, state=NotificationState.SENDING, attempts=notification.attempts
    ).update(state=NotificationState.SENT, claimed_until=None, sent_at=timezone.now())
    return True
