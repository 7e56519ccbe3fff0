"""Webhooks: make, rotate and delete a flow's hooks; turn a delivery into an execution.

A delivery (``POST /hooks/<slug>``, flows/api/hooks.py) is checked in this order, and each
refusal is kept as a ``WebhookDelivery`` with its reason, so that none is silent:

1. an unknown slug is 404 (a log line only: there is no hook to keep it under); a disabled
   hook is 404, kept;
2. a body over ``FLOW_WEBHOOK_MAX_BODY_BYTES`` is 413 (the view reads at most that + 1);
3. the signature (or token) is 401: constant-time comparisons against the current and the
   previous secret (flows/signatures.py); Stripe's timestamp outside the tolerance too;
4. a body that is not JSON is 415, unless the hook takes raw text (input ``{"body": text}``);
5. past ``rate_limit_per_minute`` is 429: one conditional UPDATE of the hook's counter of the
   current minute (a fixed one-minute window), atomic across processes and servers;
6. the input mapping (``${body.x}``, ``${headers.X-Name}``, ``${query.x}``) is resolved: an
   unresolvable reference is 422;
7. a delivery id seen within the hook's window is 200 with the first execution, starting
   nothing; else the execution is started through ``execution_submit`` (so the flow's
   ``input_schema`` is checked: a refusal is 422 with its errors), in ONE transaction with the
   dedup row and the delivery row. The dedup row's unique (hook, key) makes concurrent
   repeats race-free: the second insert waits for the first transaction, fails, rolls its
   execution back and answers with the first's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import secrets as random_secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from flows import selectors, vault
from flows.expressions import ResolveError, parse_reference, references_in, resolve
from flows.models import (
    TERMINAL_STATUSES,
    DeliveryOutcome,
    Execution,
    ExecutionTrigger,
    Flow,
    FlowVersion,
    TaskRun,
    Webhook,
    WebhookAlgorithm,
    WebhookAuth,
    WebhookDedup,
    WebhookDelivery,
    WebhookEncoding,
    WebhookPreset,
)
from flows.services.alerts import notify_webhook_refused
from flows.services.errors import InvalidInput, NotFound, ServiceError, check_storable
from flows.services.executions import execution_create, execution_start
from flows.services.flows import recorded_user
from flows.services.secrets import NO_KEYS_MESSAGE, NoSecretKeys
from flows.signatures import SignatureError, check_hmac, check_stripe, check_token

logger = logging.getLogger("flows.services")

MAPPING_ROOTS = ("body", "headers", "query")
WEBHOOK_MAX_WAIT_SECONDS = 30
WAIT_POLL_SECONDS = 0.1
MAX_WINDOW_SECONDS = 30 * 86400
MAX_RATE_PER_MINUTE = 1_000_000
MAX_TOLERANCE_SECONDS = 3600
MAX_MAPPING_BYTES = 16_384
HEADER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,99}")
PREFIX_RE = re.compile(r"[\x21-\x7e]{0,40}")

# What a preset sets (a body may not override them: a preset is the sender's scheme).
PRESETS: dict[str, dict[str, Any]] = {
    WebhookPreset.GITHUB: {
        "header": "X-Hub-Signature-256",
        "algorithm": WebhookAlgorithm.SHA256,
        "prefix": "sha256=",
        "encoding": WebhookEncoding.HEX,
        "dedup_header": "X-GitHub-Delivery",
    },
    WebhookPreset.STRIPE: {
        "header": "Stripe-Signature",
        "algorithm": WebhookAlgorithm.SHA256,
        "prefix": "",
        "encoding": WebhookEncoding.HEX,
        "dedup_path": "id",  # the event's id: Stripe retries an event with the same id
    },
}


# --- Managing hooks ------------------------------------------------------------------------------
def _new_secret() -> str:
    return random_secrets.token_urlsafe(32)


def _encrypted(plain: str) -> str:
    try:
        return vault.encrypt(plain)
    except vault.SecretKeysMissing:
        raise NoSecretKeys(
            NO_KEYS_MESSAGE, errors=[{"field": "secret", "message": NO_KEYS_MESSAGE}]
        ) from None


def _mapping_problems(mapping: Any) -> list[dict[str, str]]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        return [{"field": "input_mapping", "message": "must be a JSON object (the input)"}]
    if problem := _unstorable(mapping, "input_mapping"):
        return [problem]
    if len(json.dumps(mapping)) > MAX_MAPPING_BYTES:
        return [{"field": "input_mapping", "message": f"at most {MAX_MAPPING_BYTES} bytes"}]
    return [
        {"field": f"input_mapping{path}", "message": str(ref)}
        for path, ref in references_in(mapping, MAPPING_ROOTS)
        if isinstance(ref, ResolveError)
    ]


def _unstorable(value: Any, name: str) -> dict[str, str] | None:
    try:
        check_storable(value, name)
    except ServiceError as exc:
        return exc.errors[0]
    return None


def _bounded(value: Any, name: str, low: int, high: int, errors: list[dict[str, str]]) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors.append({"field": name, "message": f"must be a whole number from {low} to {high}"})
    return value


def _header(value: Any, name: str, errors: list[dict[str, str]]) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not HEADER_RE.fullmatch(value):
        errors.append(
            {"field": name, "message": "must be an HTTP header name (letters, digits, -)"}
        )
        return ""
    return value


def _choice(value: Any, name: str, choices: Any, default: str, errors: list) -> str:
    if value in (None, ""):
        return default
    if value not in choices.values:
        errors.append({"field": name, "message": f"must be one of {', '.join(choices.values)}"})
        return default
    return str(value)


def webhook_create(
    *,
    flow_id: str,
    auth: Any,
    preset: Any = None,
    header: Any = None,
    algorithm: Any = None,
    prefix: Any = None,
    encoding: Any = None,
    tolerance_seconds: Any = None,
    input_mapping: Any = None,
    dedup_header: Any = None,
    dedup_path: Any = None,
    dedup_window_seconds: Any = None,
    rate_limit_per_minute: Any = None,
    raw_text: bool = False,
    description: Any = "",
    user: Any = None,
) -> tuple[Webhook, str]:
    """A new hook of ``flow_id``: (the hook, its plain secret, "" when it has none).

    The plain secret is returned here once and stored only encrypted; nothing shows it again.
    Every problem is refused at once (400, each at its field); no secret key configured is a
    409 ``secret_keys_missing``.
    """
    flow = Flow.objects.filter(pk=flow_id).first()
    if flow is None:
        raise NotFound(f"no flow with id {flow_id!r}")
    errors: list[dict[str, str]] = []
    auth = _choice(auth, "auth", WebhookAuth, "", errors) if auth else ""
    if not auth:
        errors.append({"field": "auth", "message": "required: token or hmac"})
    preset = _choice(preset, "preset", WebhookPreset, "", errors)
    signing = {"header": header, "algorithm": algorithm, "prefix": prefix, "encoding": encoding}
    given = {name for name, value in signing.items() if value not in (None, "")}
    fields: dict[str, Any] = {
        "header": _header(header, "header", errors),
        "algorithm": _choice(algorithm, "algorithm", WebhookAlgorithm, "sha256", errors),
        "encoding": _choice(encoding, "encoding", WebhookEncoding, "hex", errors),
        "prefix": "",
        "dedup_header": _header(dedup_header, "dedup_header", errors),
        "dedup_path": "",
    }
    if prefix not in (None, ""):
        if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
            errors.append({"field": "prefix", "message": "at most 40 printable characters"})
        else:
            fields["prefix"] = prefix
    if dedup_path not in (None, ""):
        try:
            if not isinstance(dedup_path, str) or len(dedup_path) > 200:
                raise ResolveError("must be a path into the body such as data.id")
            parse_reference(f"body.{dedup_path}", ("body",))
            fields["dedup_path"] = dedup_path
        except ResolveError:
            errors.append({"field": "dedup_path", "message": "a path into the body: data.id"})
    if preset:
        if auth != WebhookAuth.HMAC:
            errors.append({"field": "preset", "message": "a preset is for auth hmac"})
        errors += [
            {"field": name, "message": f"set by the preset {preset}"} for name in sorted(given)
        ]
        # The preset's scheme; its delivery id only where the body names none of its own.
        fields.update({k: v for k, v in PRESETS[preset].items() if not fields.get(k)})
    elif auth == WebhookAuth.HMAC and "header" not in given:
        errors.append({"field": "header", "message": "required for hmac without a preset"})
    if auth == WebhookAuth.TOKEN:
        errors += [
            {"field": name, "message": "only for auth hmac"} for name in sorted(given - {"header"})
        ]
    tolerance = _bounded(tolerance_seconds, "tolerance_seconds", 1, MAX_TOLERANCE_SECONDS, errors)
    window = _bounded(dedup_window_seconds, "dedup_window_seconds", 1, MAX_WINDOW_SECONDS, errors)
    rate = _bounded(rate_limit_per_minute, "rate_limit_per_minute", 1, MAX_RATE_PER_MINUTE, errors)
    if not isinstance(raw_text, bool):
        errors.append({"field": "raw_text", "message": "must be true or false"})
    description = "" if description is None else description
    if not isinstance(description, str) or len(description) > 200:
        errors.append({"field": "description", "message": "at most 200 characters of text"})
    elif problem := _unstorable(description, "description"):
        errors.append(problem)
    errors += _mapping_problems(input_mapping)
    if errors:
        raise ServiceError(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )
    plain = ""
    if auth == WebhookAuth.HMAC or fields["header"]:
        plain = _new_secret()
    hook = Webhook.objects.create(
        flow=flow,
        slug=random_secrets.token_urlsafe(24),
        description=description,
        auth=auth,
        preset=preset,
        tolerance_seconds=tolerance or 300,
        secret=_encrypted(plain) if plain else "",
        input_mapping=input_mapping,
        dedup_window_seconds=window or 86400,
        rate_limit_per_minute=rate,
        raw_text=raw_text,
        created_by=recorded_user(user),
        **fields,
    )
    logger.info("webhook=%s created for flow=%s (%s)", hook.pk, flow.id, auth)
    return hook, plain


def _hook(flow_id: str, hook_id: Any) -> Webhook:
    return selectors.webhook_get(flow_id=flow_id, hook_id=hook_id)


def webhook_delete(*, flow_id: str, hook_id: Any) -> None:
    """Delete the hook with its deliveries: its URL answers 404 from now on."""
    _hook(flow_id, hook_id).delete()


@transaction.atomic
def webhook_rotate(
    *, flow_id: str, hook_id: Any, drop_previous: bool = False
) -> tuple[Webhook, str]:
    """A new secret for the hook: (the hook, the new plain secret, shown once).

    The current secret becomes the previous one and both sign valid deliveries until the next
    rotation (which drops it) or ``drop_previous`` (which drops it now and makes no new one:
    the returned secret is then ""). A hook without a secret (token, URL alone) has none to
    rotate: a new slug would be its rotation, so delete it and make another.
    """
    hook = _hook(flow_id, hook_id)
    hook = Webhook.objects.select_for_update().get(pk=hook.pk)
    if not hook.secret:
        raise ServiceError(
            "this hook has no secret (its URL alone is the credential); delete it and create "
            "another for a new URL",
            errors=[{"field": "auth", "message": "no secret to rotate"}],
        )
    if drop_previous:
        hook.previous_secret = ""
        hook.save(update_fields=["previous_secret"])
        return hook, ""
    plain = _new_secret()
    hook.previous_secret, hook.secret = hook.secret, _encrypted(plain)
    hook.rotated_at = timezone.now()
    hook.save(update_fields=["secret", "previous_secret", "rotated_at"])
    logger.info("webhook=%s secret rotated", hook.pk)
    return hook, plain


# --- Deliveries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryAnswer:
    """What ``POST /hooks/<slug>`` answers: ``status`` and a JSON ``body`` (the API's error
    shape for a refusal; the execution's id otherwise)."""

    status: int
    body: dict[str, Any]
    execution_id: Any = None


def webhook_max_body_bytes() -> int:
    return settings.FLOW_WEBHOOK_MAX_BODY_BYTES


def _refusal(status: int, code: str, detail: str, errors: list | None = None) -> DeliveryAnswer:
    body = {"detail": detail, "code": code, "errors": errors or []}
    return DeliveryAnswer(status, body)


def _record(
    hook: Webhook,
    answer: DeliveryAnswer,
    *,
    now: datetime,
    body: bytes,
    size: int,
    delivery_id: str = "",
    outcome: str = DeliveryOutcome.REFUSED,
) -> None:
    keep = settings.FLOW_WEBHOOK_PAYLOAD_KEEP_BYTES
    with transaction.atomic():
        _record_in(hook, answer, now, body, size, delivery_id, outcome, keep)


def _record_in(
    hook: Webhook,
    answer: DeliveryAnswer,
    now: datetime,
    body: bytes,
    size: int,
    delivery_id: str,
    outcome: str,
    keep: int,
) -> None:
    delivery = WebhookDelivery.objects.create(
        hook=hook,
        received_at=now,
        outcome=outcome,
        http_status=answer.status,
        reason=str(answer.body.get("detail", ""))[:500] if answer.status >= 400 else "",
        delivery_id=delivery_id[:200],
        execution_id=answer.execution_id,
        # Text a database stores: no NUL (PostgreSQL refuses one), undecodable bytes replaced.
        payload=body[:keep].decode("utf-8", "replace").replace("\x00", "\ufffd"),
        payload_size=size,
    )
    if outcome == DeliveryOutcome.REFUSED:
        # A refused delivery is never silent: its webhook_refused alerts, with the record.
        notify_webhook_refused(
            flow_id=hook.flow_id, reason=delivery.reason, delivery_id=delivery.pk
        )


@functools.lru_cache(maxsize=1024)
def _decrypted(token: str, keys: tuple[str, ...]) -> str:
    # Per token and key list: a rotated secret is another token, changed keys another entry.
    return vault.decrypt(token, name="webhook")


def _secrets_of(hook: Webhook) -> list[str]:
    keys = tuple(settings.FLOW_SECRET_KEYS)
    return [_decrypted(token, keys) for token in (hook.secret, hook.previous_secret) if token]


def _check_auth(hook: Webhook, body: bytes, headers: Mapping[str, str], now: datetime) -> None:
    if hook.auth == WebhookAuth.TOKEN:
        if hook.header:
            check_token(headers.get(hook.header), _secrets_of(hook), header=hook.header)
        return
    if hook.preset == WebhookPreset.STRIPE:
        check_stripe(
            headers.get(hook.header),
            body,
            _secrets_of(hook),
            now=now.timestamp(),
            tolerance_seconds=hook.tolerance_seconds,
        )
        return
    check_hmac(
        headers.get(hook.header),
        body,
        _secrets_of(hook),
        header=hook.header,
        algorithm=hook.algorithm,
        prefix=hook.prefix,
        encoding=hook.encoding,
    )


def _refuse_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e999 would parse as infinity, which no JSON column stores: refuse it as not JSON.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large")
    return value


class _Headers(dict):
    """A delivery's headers for the input mapping: names in any letter case
    (``${headers.X-GitHub-Event}``, ``${headers.x-github-event}``), and a plain dict, so that
    ``${headers}`` whole is stored as JSON (keys lower-cased)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__((name.lower(), value) for name, value in headers.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())


def _parsed(hook: Webhook, body: bytes) -> tuple[bool, Any]:
    """(True, the body's JSON) or, for a hook that takes raw text, (True, the text); (False,
    why) for a body that is neither."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False, "the body is not UTF-8 text"
    try:
        return True, json.loads(text, parse_constant=_refuse_constants, parse_float=_finite)
    except (ValueError, RecursionError):
        if hook.raw_text:
            return True, text
        return False, "the body is not JSON; send JSON (this hook does not take raw text)"


def _within_rate(hook: Webhook, now: datetime) -> bool:
    """Count this delivery in the hook's current minute, unless that minute is full.

    One UPDATE whose WHERE holds the limit: two processes cannot both take the last place
    (the row lock orders them; the second sees the first's count). Both SET expressions read
    the row as it was, in PostgreSQL and SQLite alike.
    """
    limit = hook.rate_limit_per_minute
    if not limit:
        return True
    minute = int(now.timestamp() // 60)
    return (
        Webhook.objects.filter(pk=hook.pk)
        .filter(Q(rate_minute__lt=minute) | Q(rate_count__lt=limit))
        .update(
            rate_count=Case(When(rate_minute=minute, then=F("rate_count") + 1), default=Value(1)),
            rate_minute=minute,
        )
        == 1
    )


def _delivery_key(hook: Webhook, headers: Mapping[str, str], parsed: Any) -> str:
    """The delivery id this delivery dedups on ("" when the hook has none or it is absent).
    Longer than the column: its SHA-256, which dedups as well."""
    value: Any = None
    if hook.dedup_header:
        value = headers.get(hook.dedup_header)
    elif hook.dedup_path:
        try:
            value = resolve(f"${{body.{hook.dedup_path}}}", {"body": parsed}, ("body",))
        except ResolveError:
            value = None
    if value is None or isinstance(value, dict | list) or value == "":
        return ""
    key = value if isinstance(value, str) else json.dumps(value)
    if len(key) > 200 or _unstorable(key, "delivery id"):
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    return key


def _input(hook: Webhook, parsed: Any, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
    if hook.input_mapping is None:
        return parsed if isinstance(parsed, dict) else {"body": parsed}
    scope = {"body": parsed, "headers": _Headers(headers), "query": dict(query)}
    return resolve(hook.input_mapping, scope, MAPPING_ROOTS)


def _accepted_body(execution_id: Any, *, duplicate: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"execution_id": str(execution_id)}
    if duplicate:
        body["duplicate"] = True
    return body


def webhook_deliver(
    *,
    slug: str,
    body: bytes,
    size: int,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    now: datetime | None = None,
) -> DeliveryAnswer:
    """Check one delivery and start what it asks for (the module's docstring has the order).

    ``body`` is at most ``webhook_max_body_bytes() + 1`` bytes of it and ``size`` its full size as
    far as known: over the limit is 413. Returns the answer; every answer for a known hook is
    kept as a WebhookDelivery (in the transaction that starts the execution, for an accepted
    one).
    """
    now = now or timezone.now()
    hook = None
    if slug and len(slug) <= 64:  # the column's size; PostgreSQL would compare any length
        hook = Webhook.objects.filter(slug=slug).order_by("pk").first()
    if hook is None:
        logger.info("webhook delivery to an unknown hook refused (404)")
        return _refusal(404, "not_found", "no webhook at this URL")

    def refuse(answer: DeliveryAnswer, delivery_id: str = "") -> DeliveryAnswer:
        _record(hook, answer, now=now, body=body, size=size, delivery_id=delivery_id)
        logger.info(
            "webhook=%s delivery refused %s: %s", hook.pk, answer.status, answer.body["detail"]
        )
        return answer

    if not hook.enabled:
        return refuse(_refusal(404, "not_found", "this webhook is disabled"))
    limit = webhook_max_body_bytes()
    if size > limit or len(body) > limit:
        return refuse(
            _refusal(
                413,
                "too_large",
                f"body too large; send at most {limit} bytes (FLOW_WEBHOOK_MAX_BODY_BYTES)",
            )
        )
    try:
        _check_auth(hook, body, headers, now)
    except SignatureError as exc:
        return refuse(_refusal(401, "bad_signature", str(exc)))
    except vault.UnreadableSecret:
        return refuse(
            _refusal(
                401,
                "bad_signature",
                "the hook's secret cannot be decrypted (FLOW_SECRET_KEYS changed); rotate it",
            )
        )
    ok, parsed = _parsed(hook, body)
    if not ok:
        return refuse(_refusal(415, "unsupported_media_type", parsed))
    delivery_id = _delivery_key(hook, headers, parsed)
    if not _within_rate(hook, now):
        return refuse(
            _refusal(
                429,
                "rate_limited",
                f"more than {hook.rate_limit_per_minute} deliveries "
                "this minute (rate_limit_per_minute); retry in the next minute",
            ),
            delivery_id,
        )
    try:
        input = _input(hook, parsed, headers, query)
    except ResolveError as exc:
        return refuse(
            _refusal(
                422,
                "invalid_input",
                f"input_mapping: {exc}",
                [{"field": "input_mapping", "message": str(exc)}],
            ),
            delivery_id,
        )
    expired = False
    if delivery_id:
        seen = _seen(hook, delivery_id)
        if seen is not None and seen[1] > now:
            return _duplicate(hook, seen[0], now=now, body=body, size=size, delivery_id=delivery_id)
        expired = seen is not None
    return _start(
        hook,
        input,
        now=now,
        body=body,
        size=size,
        delivery_id=delivery_id,
        expired=expired,
        refuse=refuse,
    )


def _seen(hook: Webhook, key: str) -> tuple[Any, datetime] | None:
    """(execution id, expires_at) of the dedup row of ``key``, or None."""
    return (
        WebhookDedup.objects.filter(hook=hook, key=key)
        .values_list("execution_id", "expires_at")
        .first()
    )


def _duplicate(hook: Webhook, first: Any, **record: Any) -> DeliveryAnswer:
    answer = DeliveryAnswer(200, _accepted_body(first, duplicate=True), execution_id=first)
    _record(hook, answer, outcome=DeliveryOutcome.DUPLICATE, **record)
    return answer


def _start(
    hook: Webhook,
    input: Any,
    *,
    now: datetime,
    body: bytes,
    size: int,
    delivery_id: str,
    expired: bool,
    refuse: Any,
) -> DeliveryAnswer:
    """Start the execution, with its dedup row and its delivery row, in one transaction.

    1. The flow's current version is read without its document (the engine's per-process
       cache parses it once).
    2. ``execution_create`` + ``execution_start``: the start path every client takes, which
       checks the input against the flow's ``input_schema`` (InvalidInput: 422, nothing kept
       but the refused delivery).
    3. The dedup row: a concurrent delivery of the same id that committed first makes this
       INSERT fail (PostgreSQL: it waits for that transaction; SQLite: writers take turns),
       and the whole transaction, execution included, rolls back; the answer is then the
       first's execution. An expired row of the id is deleted first (conditionally: a row
       another delivery just renewed stays, and this insert fails as above).
    4. The accepted delivery, so that an execution never exists without its delivery.
    """
    try:
        with transaction.atomic():
            version = (
                FlowVersion.objects.filter(flow_id=hook.flow_id, version=F("flow__version"))
                .only("id", "flow_id", "version")
                .get()
            )
            execution = execution_create(
                flow_version=version, input=input, trigger=ExecutionTrigger.WEBHOOK
            )
            execution = execution_start(execution_id=execution.id)
            if delivery_id:
                if expired:
                    WebhookDedup.objects.filter(
                        hook=hook, key=delivery_id, expires_at__lte=now
                    ).delete()
                WebhookDedup.objects.create(
                    hook=hook,
                    key=delivery_id,
                    execution=execution,
                    expires_at=now + timedelta(seconds=hook.dedup_window_seconds),
                )
            answer = DeliveryAnswer(202, _accepted_body(execution.id), execution_id=execution.id)
            _record(
                hook,
                answer,
                now=now,
                body=body,
                size=size,
                delivery_id=delivery_id,
                outcome=DeliveryOutcome.ACCEPTED,
            )
    except IntegrityError:
        seen = _seen(hook, delivery_id) if delivery_id else None
        if seen is None:
            raise
        logger.info("webhook=%s delivery %r raced a copy that committed first", hook.pk,
                    delivery_id)  # fmt: skip
        return _duplicate(hook, seen[0], now=now, body=body, size=size, delivery_id=delivery_id)
    except InvalidInput as exc:
        return refuse(_refusal(422, exc.code, exc.message, exc.errors), delivery_id)
    except ServiceError as exc:
        return refuse(_refusal(exc.status, exc.code, exc.message, exc.errors), delivery_id)
    logger.info("webhook=%s delivery started execution=%s", hook.pk, execution.id)
    return answer


# --- ?wait ---------------------------------------------------------------------------------------
def _pause(seconds: float) -> None:
    time.sleep(seconds)


def execution_wait(*, execution_id: Any, seconds: float) -> dict[str, Any]:
    """The execution's ``{"execution_id", "status", "result", "error", "ended"}`` once it has
    ended, or as it is after ``seconds`` (at most WEBHOOK_MAX_WAIT_SECONDS) of polling the database.

    ``result`` is what its last step returned (null while it runs)."""
    deadline = time.monotonic() + min(max(seconds, 0.0), WEBHOOK_MAX_WAIT_SECONDS)
    while True:
        row = Execution.objects.filter(pk=execution_id).values("status", "error").first()
        if row is None:
            raise NotFound(f"no execution with id '{execution_id}'")
        ended = row["status"] in TERMINAL_STATUSES
        if ended or time.monotonic() >= deadline:
            break
        _pause(WAIT_POLL_SECONDS)
    result = None
    if ended:
        result = (
            TaskRun.objects.filter(execution_id=execution_id)
            .order_by("-seq")
            .values_list("result", flat=True)
            .first()
        )
    return {
        "execution_id": str(execution_id),
        "status": row["status"],
        "ended": ended,
        "result": result,
        "error": row["error"] or None,
    }
