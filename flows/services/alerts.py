"""Channels, alert rules, and the alerts they raise: written as ``Notification`` rows (an
outbox) that the workers send later (``flows.services.notifications``).

Where alerts come from:

1. An execution's end (``@on_end("alerts")``, in the transaction that takes its outbox row,
   ``flows.services.ends``): ``execution_failed``, ``timed_out``, ``failures_in_a_row`` and
   ``recovered``. An end is one per execution and comes after the last retry of the last step,
   so a failure counts once, never per attempt, and a worker killed at any moment neither
   loses it nor counts it twice.
2. A periodic check each worker runs (``alerts_check``): ``running_longer_than`` (once per
   execution) and ``waiting_for_signal`` (once per waiting step), marked with ``AlertMark``.
3. ``notify_webhook_refused``, called where a webhook delivery is refused (services.webhooks).

An alert of a rule about a flow opens an ``Alert`` and one notification per channel; the same
event of the same flow within the rule's ``cooldown_seconds`` is counted on that alert instead
(``count``), not sent again.

The error-handler flow (a flow document's ``on_failure``) is started from here too
(``@on_end("error_handler")``), through ``execution_submit`` with the ``error_handler``
trigger; an error-handler execution that fails starts none (the chain guard).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from flows import notify, vault
from flows.definition import unstorable_problem
from flows.definition.document import unwrap
from flows.models import (
    ACTIVE_STATUSES,
    Alert,
    AlertEvent,
    AlertMark,
    AlertRule,
    Channel,
    ChannelKind,
    Execution,
    ExecutionEnd,
    ExecutionEvent,
    ExecutionStatus,
    ExecutionTrigger,
    Flow,
    FlowVersion,
    Notification,
    TaskRun,
    TaskRunStatus,
)
from flows.services.ends import chunk_memo, on_end
from flows.services.errors import Conflict, NotFound, ServiceError
from flows.services.flows import recorded_user
from flows.services.secrets import NoSecretKeys
from flows.waiting import SIGNAL

logger = logging.getLogger("flows.services")

# The events an execution's end raises; the periodic check's; the one a webhook refusal raises.
END_EVENTS = (
    AlertEvent.EXECUTION_FAILED,
    AlertEvent.TIMED_OUT,
    AlertEvent.FAILURES_IN_A_ROW,
    AlertEvent.RECOVERED,
)
CHECK_EVENTS = (AlertEvent.RUNNING_LONGER_THAN, AlertEvent.WAITING_FOR_SIGNAL)
THRESHOLD_EVENTS = {
    AlertEvent.FAILURES_IN_A_ROW: "how many failures in a row (at least 1)",
    AlertEvent.RUNNING_LONGER_THAN: "seconds (at least 1)",
}
MAX_COOLDOWN_SECONDS = 30 * 86_400
MAX_THRESHOLD = 10_000_000
MAX_RECIPIENTS = 50
# How the engine words a flow's timeout (engine.outcome.flow_timeout, engine.reaper): the
# execution's error starts so. Read here, not imported: services do not import the engine.
FLOW_TIMEOUT_WORDS = "the flow's timeout"
# Bounds of one periodic check: what a pass looks at, per rule.
CHECK_BATCH = 100


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------
def _refuse(errors: list[dict[str, str]]) -> None:
    if errors:
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ServiceError(message, errors=errors)


def _text_problem(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if problem := unstorable_problem(value, field):
        return problem
    if len(value) > limit:
        return f"is {len(value)} characters; the limit is {limit}"
    return ""


def _url_problem(url: Any) -> str:
    if not isinstance(url, str) or not url:
        return "required: an http:// or https:// URL"
    if len(url) > 2000:
        return "is longer than 2000 characters"
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        return f"{url!r} is not an http:// or https:// URL"
    return ""


def _checked_config(kind: str, config: Any) -> tuple[dict[str, Any], str]:
    """``config`` as stored, and what goes encrypted into ``secret`` (a Slack URL) or "";
    ServiceError listing every problem."""
    errors: list[dict[str, str]] = []
    if not isinstance(config, dict):
        _refuse([{"field": "config", "message": "must be an object"}])
    allowed = {ChannelKind.EMAIL: {"to"}, ChannelKind.WEBHOOK: {"url"}, ChannelKind.SLACK: {"url"}}
    for key in sorted(set(config) - allowed[ChannelKind(kind)]):
        errors.append({"field": f"config.{key}", "message": "unknown field"})
    if kind == ChannelKind.EMAIL:
        to = config.get("to")
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not to or len(to) > MAX_RECIPIENTS:
            errors.append(
                {
                    "field": "config.to",
                    "message": f"required: a list of 1 to {MAX_RECIPIENTS} email addresses",
                }
            )
        else:
            for i, address in enumerate(to):
                try:
                    validate_email(address if isinstance(address, str) else "")
                except ValidationError:
                    errors.append(
                        {"field": f"config.to[{i}]", "message": f"{address!r} is no email address"}
                    )
        _refuse(errors)
        return {"to": list(to)}, ""
    url = config.get("url")
    if problem := _url_problem(url):
        errors.append({"field": "config.url", "message": problem})
    _refuse(errors)
    if kind == ChannelKind.SLACK:
        # The URL is Slack's credential: kept encrypted; the API shows its host only.
        return {"url": _shown_url(url)}, url
    return {"url": url}, ""


def _shown_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/…"


def _encrypt(value: str) -> str:
    try:
        return vault.encrypt(value)
    except vault.SecretKeysMissing as exc:
        raise NoSecretKeys(str(exc)) from None


@transaction.atomic
def channel_create(*, name: Any, kind: Any, config: Any, user: Any = None) -> tuple[Channel, str]:
    """A new channel, and the webhook signing secret to show once (else "").

    A webhook channel gets a random signing key and a Slack channel keeps its URL, both
    encrypted under ``FLOW_SECRET_KEYS`` (NoSecretKeys, 409, without one)."""
    errors = []
    if problem := _text_problem(name, "name", 100):
        errors.append({"field": "name", "message": problem})
    if kind not in ChannelKind.values:
        errors.append({"field": "kind", "message": f"must be one of {', '.join(ChannelKind)}"})
    _refuse(errors)
    if Channel.objects.filter(name=name).exists():
        raise Conflict(
            f"a channel named {name!r} exists", errors=[{"field": "name", "message": "taken"}]
        )
    stored, secret = _checked_config(kind, config)
    shown = ""
    if kind == ChannelKind.WEBHOOK:
        shown = secret = notify.new_signing_secret()
    channel = Channel.objects.create(
        name=name,
        kind=kind,
        config=stored,
        secret=_encrypt(secret) if secret else "",
        created_by=recorded_user(user),
    )
    logger.info("channel %s (%s) created", channel.pk, kind)
    return channel, shown


@transaction.atomic
def channel_update(*, channel_id: int, name: Any = None, config: Any = None) -> Channel:
    """Rename a channel or change its config (its kind stays; a webhook keeps its key)."""
    channel = Channel.objects.select_for_update().filter(pk=channel_id).first()
    if channel is None:
        raise NotFound(f"no channel with id {channel_id!r}")
    if name is not None:
        if problem := _text_problem(name, "name", 100):
            _refuse([{"field": "name", "message": problem}])
        if Channel.objects.filter(name=name).exclude(pk=channel.pk).exists():
            raise Conflict(
                f"a channel named {name!r} exists", errors=[{"field": "name", "message": "taken"}]
            )
        channel.name = name
    if config is not None:
        stored, secret = _checked_config(channel.kind, config)
        channel.config = stored
        if channel.kind == ChannelKind.SLACK:
            channel.secret = _encrypt(secret)
    channel.save()
    return channel


@transaction.atomic
def channel_delete(*, channel_id: int) -> None:
    """Delete a channel and its deliveries (sent or not); rules lose it from their list."""
    deleted, _ = Channel.objects.filter(pk=channel_id).delete()
    if not deleted:
        raise NotFound(f"no channel with id {channel_id!r}")


def channel_secret(channel: Channel) -> str:
    """The channel's decrypted secret (a webhook's signing key, a Slack URL), or ""."""
    return vault.decrypt(channel.secret, name=f"channel {channel.name}") if channel.secret else ""


def channel_test(*, channel_id: int) -> dict[str, Any]:
    """Send a test message now, outside the outbox: ``{sent, detail}`` says what happened
    (``detail``: the receiver's answer, or why it failed). Nothing is recorded."""
    channel = Channel.objects.filter(pk=channel_id).first()
    if channel is None:
        raise NotFound(f"no channel with id {channel_id!r}")
    message = notify.Message(
        0,
        {
            "event": "test",
            "title": "Test message from Flow Manager",
            "text": f"Channel {channel.name!r} works: alerts sent to it will arrive like this.",
            "url": absolute(reverse("notification_list")),
            "at": timezone.now().isoformat(),
        },
    )
    try:
        detail = notify.send(channel, message, secret=channel_secret(channel))
    except (notify.SendFailed, vault.UnreadableSecret) as exc:
        return {"sent": False, "detail": str(exc)}
    return {"sent": True, "detail": detail}


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
def _whole(value: Any, field: str, low: int, high: int) -> tuple[int | None, str]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"{field} must be a whole number"
    if not low <= value <= high:
        return None, f"{field} must be between {low} and {high}"
    return value, ""


def _checked_rule(
    *, flow: Any, event: Any, threshold: Any, channels: Any, cooldown_seconds: Any
) -> dict[str, Any]:
    errors: list[dict[str, str]] = []
    if event not in AlertEvent.values:
        errors.append({"field": "event", "message": f"must be one of {', '.join(AlertEvent)}"})
    flow_id = None
    if flow is not None:
        if not isinstance(flow, str) or not Flow.objects.filter(pk=flow).exists():
            errors.append({"field": "flow", "message": f"no flow with id {flow!r}"})
        else:
            flow_id = flow
    if event in THRESHOLD_EVENTS:
        if threshold is None:
            errors.append({"field": "threshold", "message": f"required: {THRESHOLD_EVENTS[event]}"})
        else:
            threshold, problem = _whole(threshold, "threshold", 1, MAX_THRESHOLD)
            if problem:
                errors.append({"field": "threshold", "message": problem})
    elif threshold is not None:
        errors.append(
            {"field": "threshold", "message": f"{event} takes no threshold; leave it out"}
        )
    cooldown, problem = _whole(cooldown_seconds, "cooldown_seconds", 0, MAX_COOLDOWN_SECONDS)
    if problem:
        errors.append({"field": "cooldown_seconds", "message": problem})
    found: list[Channel] = []
    if not isinstance(channels, list) or not channels:
        errors.append({"field": "channels", "message": "required: a list of channel ids"})
    elif not all(isinstance(c, int) and not isinstance(c, bool) for c in channels):
        errors.append({"field": "channels", "message": "channel ids are whole numbers"})
    else:
        found = list(Channel.objects.filter(pk__in=channels))
        missing = sorted(set(channels) - {c.pk for c in found})
        if missing:
            errors.append({"field": "channels", "message": f"no channel with id {missing}"})
    _refuse(errors)
    return {
        "flow_id": flow_id,
        "event": event,
        "threshold": threshold,
        "cooldown_seconds": cooldown,
        "channels": found,
    }


@transaction.atomic
def rule_create(
    *,
    event: Any,
    channels: Any,
    flow: Any = None,
    threshold: Any = None,
    cooldown_seconds: Any = 0,
) -> AlertRule:
    """A rule: ``event`` of ``flow``'s executions (every flow's when None) to ``channels``."""
    data = _checked_rule(
        flow=flow,
        event=event,
        threshold=threshold,
        channels=channels,
        cooldown_seconds=cooldown_seconds,
    )
    found = data.pop("channels")
    rule = AlertRule.objects.create(**data)
    rule.channels.set(found)
    return rule


@transaction.atomic
def rule_update(*, rule_id: int, **changes: Any) -> AlertRule:
    """Change a rule's fields (those given); ``enabled`` turns it off and on."""
    rule = AlertRule.objects.select_for_update().filter(pk=rule_id).first()
    if rule is None:
        raise NotFound(f"no alert rule with id {rule_id!r}")
    enabled = changes.pop("enabled", None)
    if enabled is not None and not isinstance(enabled, bool):
        _refuse([{"field": "enabled", "message": "must be true or false"}])
    current = {
        "flow": rule.flow_id,
        "event": rule.event,
        "threshold": rule.threshold,
        "channels": [c.pk for c in rule.channels.all()],
        "cooldown_seconds": rule.cooldown_seconds,
    }
    if "event" in changes and "threshold" not in changes and changes["event"] != rule.event:
        current["threshold"] = None
    data = _checked_rule(**{**current, **changes})
    found = data.pop("channels")
    for key, value in data.items():
        setattr(rule, key, value)
    if enabled is not None:
        rule.enabled = enabled
    rule.save()
    rule.channels.set(found)
    return rule


@transaction.atomic
def rule_delete(*, rule_id: int) -> None:
    deleted, _ = AlertRule.objects.filter(pk=rule_id).delete()
    if not deleted:
        raise NotFound(f"no alert rule with id {rule_id!r}")


# ---------------------------------------------------------------------------------------------
# Raising alerts
# ---------------------------------------------------------------------------------------------
def absolute(path: str) -> str:
    """``path`` under ``FLOW_BASE_URL`` (a path alone when it is not set)."""
    return f"{settings.FLOW_BASE_URL}{path}"


def execution_url(execution_id: Any) -> str:
    return absolute(reverse("execution_detail", args=[execution_id]))


def _rules(event_filter: Q, flow_id: str | None) -> list[AlertRule]:
    where = Q(flow__isnull=True) | Q(flow_id=flow_id) if flow_id else Q(flow__isnull=True)
    return list(AlertRule.objects.filter(event_filter, where, enabled=True))


def fire(rule: AlertRule, *, flow_id: str, facts: dict[str, Any], now: datetime) -> Alert:
    """Raise ``rule``'s alert about ``flow_id``: count it on the alert open within the rule's
    cooldown, else open one and write a notification per channel (in the caller's
    transaction).

    1. The rule's row is locked first, so two workers raising the same rule at once open
       one alert, the second counting on it (SQLite: one writer anyway).
    2. Within the cooldown nothing is written but the count: no message.
    """
    AlertRule.objects.select_for_update().filter(pk=rule.pk).first()
    execution_id = facts.get("execution_id")
    if rule.cooldown_seconds:
        since = now - timedelta(seconds=rule.cooldown_seconds)
        open_alert = (
            Alert.objects.filter(rule=rule, flow_id=flow_id, first_at__gt=since)
            .order_by("-first_at")
            .first()
        )
        if open_alert is not None:
            open_alert.count += 1
            open_alert.last_at = now
            open_alert.last_execution_id = execution_id
            open_alert.save(update_fields=["count", "last_at", "last_execution_id"])
            return open_alert
    alert = Alert.objects.create(
        rule=rule,
        flow_id=flow_id,
        first_at=now,
        last_at=now,
        last_execution_id=execution_id,
        summary=str(facts.get("title", ""))[:1000],
    )
    payload = {**facts, "rule": rule.pk, "alert": alert.pk}
    Notification.objects.bulk_create(
        [
            Notification(
                channel=channel, alert=alert, payload=payload, created_at=now, next_attempt_at=now
            )
            for channel in rule.channels.all()
        ]
    )
    return alert


def timed_out(error: str) -> bool:
    """The execution ended because its flow's ``timeout_seconds`` ran out."""
    return FLOW_TIMEOUT_WORDS in error and "ran out" in error


def _failed_step(execution: Execution) -> TaskRun | None:
    return (
        TaskRun.objects.filter(execution=execution, status=TaskRunStatus.FAILURE)
        .order_by("-seq")
        .only("id", "seq", "task_name", "error")
        .first()
    )


def _earlier_ends(end: ExecutionEnd, execution: Execution, count: int) -> list[str]:
    """The statuses of the flow's last ``count`` runs that ended COMPLETED or FAILED, up to
    and with this one, newest first (CANCELLED ones neither fail nor recover)."""
    return list(
        Execution.objects.filter(
            flow_id=end.flow_id,
            parent_step__isnull=True,
            status__in=(ExecutionStatus.COMPLETED, ExecutionStatus.FAILED),
            ended_at__lte=execution.ended_at or end.ended_at,
        )
        .order_by("-ended_at", "-created_at")
        .values_list("status", flat=True)[:count]
    )


def _end_facts(end: ExecutionEnd, execution: Execution, event: str) -> dict[str, Any]:
    flow = end.flow_id
    base = {
        "event": event,
        "flow_id": flow,
        "execution_id": str(execution.id),
        "status": end.status,
        "url": execution_url(execution.id),
        "at": end.ended_at.isoformat(),
    }
    if end.status == ExecutionStatus.FAILED:
        step = _failed_step(execution)
        base["failed_task"] = step.task_name if step else execution.current_task or None
        base["error"] = execution.error
    titles = {
        AlertEvent.EXECUTION_FAILED: f"{flow}: an execution failed",
        AlertEvent.TIMED_OUT: f"{flow}: an execution timed out",
        AlertEvent.FAILURES_IN_A_ROW: f"{flow}: failing again and again",
        AlertEvent.RECOVERED: f"{flow}: recovered",
    }
    base["title"] = titles[AlertEvent(event)]
    if end.status == ExecutionStatus.FAILED:
        where = f" at task '{base['failed_task']}'" if base.get("failed_task") else ""
        base["text"] = f"Execution {execution.id} of flow {flow} failed{where}: {execution.error}"
    else:
        base["text"] = f"Execution {execution.id} of flow {flow} completed after a failure."
    return base


@on_end("alerts")
def alert_on_end(end: ExecutionEnd, execution: Execution) -> None:
    """Raise the alerts an execution's end calls for (one query when no rule applies)."""
    if end.status not in (ExecutionStatus.FAILED, ExecutionStatus.COMPLETED):
        return
    rules = chunk_memo(
        ("alert_rules", end.flow_id), lambda: _rules(Q(event__in=END_EVENTS), end.flow_id)
    )
    if not rules:
        return
    now = timezone.now()
    deepest = max((r.threshold or 1 for r in rules), default=1) + 1
    history: list[str] | None = None
    for rule in rules:
        if end.status == ExecutionStatus.FAILED:
            if rule.event == AlertEvent.EXECUTION_FAILED:
                hit = True
            elif rule.event == AlertEvent.TIMED_OUT:
                hit = timed_out(execution.error)
            elif rule.event == AlertEvent.FAILURES_IN_A_ROW:
                history = history if history is not None else _earlier_ends(end, execution, deepest)
                streak = rule.threshold or 1
                hit = len(history) >= streak and all(s == "FAILED" for s in history[:streak])
            else:
                hit = False
        else:
            if rule.event != AlertEvent.RECOVERED:
                continue
            history = history if history is not None else _earlier_ends(end, execution, 2)
            hit = len(history) >= 2 and history[1] == ExecutionStatus.FAILED
        if hit:
            facts = _end_facts(end, execution, rule.event)
            if rule.event == AlertEvent.FAILURES_IN_A_ROW:
                facts["text"] = f"{rule.threshold} failures in a row. " + facts["text"]
            fire(rule, flow_id=end.flow_id, facts=facts, now=now)


def alerts_check(*, now: datetime | None = None, limit: int = CHECK_BATCH) -> int:
    """The periodic check: runs past a rule's ``running_longer_than`` and steps waiting for a
    signal, each alerted once per rule (an ``AlertMark`` in the alert's transaction). How
    many alerts were raised or counted. One query when no such rule exists."""
    rules = list(
        AlertRule.objects.filter(enabled=True, event__in=CHECK_EVENTS).select_related("flow")
    )
    now = now or timezone.now()
    raised = 0
    for rule in rules:
        if rule.event == AlertEvent.RUNNING_LONGER_THAN:
            raised += _check_long_runs(rule, now, limit)
        else:
            raised += _check_waiting(rule, now, limit)
    return raised


def _marked(rule: AlertRule, **target: Any) -> bool:
    """Mark ``target`` for ``rule``; False when it was marked already (by another worker)."""
    try:
        with transaction.atomic():
            AlertMark.objects.create(rule=rule, **target)
    except IntegrityError:
        return False
    return True


def _check_long_runs(rule: AlertRule, now: datetime, limit: int) -> int:
    seconds = rule.threshold or 1
    runs = Execution.objects.filter(
        status__in=ACTIVE_STATUSES,
        parent_step__isnull=True,
        started_at__lt=now - timedelta(seconds=seconds),
    ).exclude(
        pk__in=AlertMark.objects.filter(rule=rule, execution__isnull=False).values("execution_id")
    )
    if rule.flow_id:
        runs = runs.filter(flow_id=rule.flow_id)
    raised = 0
    for execution in runs.order_by("started_at").only("id", "flow_id", "started_at")[:limit]:
        with transaction.atomic():
            if not _marked(rule, execution=execution):
                continue
            facts = {
                "event": rule.event,
                "flow_id": execution.flow_id,
                "execution_id": str(execution.id),
                "url": execution_url(execution.id),
                "at": now.isoformat(),
                "title": f"{execution.flow_id}: running longer than {seconds}s",
                "text": f"Execution {execution.id} of flow {execution.flow_id} has run since "
                f"{execution.started_at:%Y-%m-%d %H:%M:%S} UTC, longer than {seconds}s.",
            }
            fire(rule, flow_id=execution.flow_id, facts=facts, now=now)
            raised += 1
    return raised


def _check_waiting(rule: AlertRule, now: datetime, limit: int) -> int:
    steps = (
        TaskRun.objects.filter(status=TaskRunStatus.PENDING, waiting__kind=SIGNAL)
        .exclude(pk__in=AlertMark.objects.filter(rule=rule, step__isnull=False).values("step_id"))
        .select_related("execution")
        .only("id", "seq", "task_name", "waiting", "execution__id", "execution__flow_id")
    )
    if rule.flow_id:
        steps = steps.filter(execution__flow_id=rule.flow_id)
    raised = 0
    for step in steps.order_by("id")[:limit]:
        with transaction.atomic():
            if not _marked(rule, step=step):
                continue
            waiting = step.waiting if isinstance(step.waiting, dict) else {}
            flow_id = step.execution.flow_id
            prompt = str(waiting.get("prompt") or "")
            url = execution_url(step.execution_id)
            facts = {
                "event": rule.event,
                "flow_id": flow_id,
                "execution_id": str(step.execution_id),
                "task": step.task_name,
                "signal": waiting.get("name"),
                "prompt": prompt,
                "url": url,
                "at": now.isoformat(),
                "title": f"{flow_id}: step '{step.task_name}' waits for approval",
                "text": f"Step '{step.task_name}' of execution {step.execution_id} waits for "
                f"signal '{waiting.get('name')}'"
                + (f": {prompt}" if prompt else "")
                + f". Approve or reject it on {url}",
            }
            fire(rule, flow_id=flow_id, facts=facts, now=now)
            raised += 1
    return raised


def notify_webhook_refused(*, flow_id: str, reason: str, delivery_id: int) -> int:
    """Raise the ``webhook_refused`` alerts of a refused webhook delivery; called by
    ``services.webhooks`` in the transaction that records the refusal (its notifications
    commit with it). Returns how many rules fired."""
    rules = _rules(Q(event=AlertEvent.WEBHOOK_REFUSED), flow_id)
    now = timezone.now()
    for rule in rules:
        facts = {
            "event": AlertEvent.WEBHOOK_REFUSED.value,
            "flow_id": flow_id,
            "delivery_id": str(delivery_id),
            "reason": reason,
            "url": absolute(reverse("flow_detail", args=[flow_id])) if flow_id else "",
            "at": now.isoformat(),
            "title": f"{flow_id or 'webhook'}: a webhook delivery was refused",
            "text": f"A webhook delivery for flow {flow_id} was refused: {reason}",
        }
        fire(rule, flow_id=flow_id or "", facts=facts, now=now)
    return len(rules)


# ---------------------------------------------------------------------------------------------
# Error-handler flows (a flow document's ``on_failure``)
# ---------------------------------------------------------------------------------------------
def handler_input(execution: Execution) -> dict[str, Any]:
    """What an error-handler flow gets: ``{execution_id, flow_id, failed_task, error, input}``.

    The error is the execution's, which the engine built from the failed step's error, masked
    of the secrets that step used; the input is the user's data, passed as it was given."""
    step = _failed_step(execution)
    return {
        "execution_id": str(execution.id),
        "flow_id": execution.flow_id,
        "failed_task": step.task_name if step else (execution.current_task or None),
        "error": execution.error,
        "input": execution.input,
    }


def _note(execution: Execution, level: str, message: str) -> None:
    ExecutionEvent.objects.create(
        execution_id=execution.id, created_at=timezone.now(), level=level, message=message
    )


@on_end("error_handler")
def start_error_handler(end: ExecutionEnd, execution: Execution) -> None:
    """A FAILED execution whose flow names ``on_failure`` starts that flow (a timed-out one
    too: it ends FAILED). Never for an execution that is itself an error handler."""
    if end.status != ExecutionStatus.FAILED or execution.trigger == ExecutionTrigger.ERROR_HANDLER:
        return
    document = (
        FlowVersion.objects.filter(pk=execution.flow_version_id)
        .values_list("definition", flat=True)
        .first()
    )
    flow_document = unwrap(document)
    on_failure = flow_document.get("on_failure") if isinstance(flow_document, dict) else None
    target = on_failure.get("flow_id") if isinstance(on_failure, dict) else None
    if not target:
        return
    from flows.services.executions import execution_submit

    flow = Flow.objects.filter(pk=target).first()
    if flow is None:
        _note(execution, "WARNING", f"error-handler flow {target!r} not started: no such flow")
        return
    version = FlowVersion.objects.get(flow=flow, version=flow.version)
    try:
        started, _ = execution_submit(
            flow_version=version,
            input=handler_input(execution),
            trigger=ExecutionTrigger.ERROR_HANDLER,
        )
    except ServiceError as exc:
        # Refused (its input_schema, a flow no longer valid): the end is still handled.
        _note(execution, "WARNING", f"error-handler flow {target!r} not started: {exc.message}")
        return
    _note(execution, "INFO", f"error-handler flow {target!r} started: execution {started.id}")
