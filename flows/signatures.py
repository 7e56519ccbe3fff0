"""Webhook signatures: computed and checked over the raw body, without Django.

Every comparison is ``hmac.compare_digest`` (constant time), and a signature is checked
against each valid secret (the current one and, during a rotation, the previous one).

- Generic: ``<prefix><digest of the body>`` in one header, hex or base64, sha256 or sha1.
- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (docs.github.com,
  "Validating webhook deliveries").
- Stripe: ``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with
  possibly several ``v1`` entries (docs.stripe.com/webhooks, "Verify webhook signatures
  manually"); a timestamp older (or newer) than the tolerance is refused as a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

ALGORITHMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}


class SignatureError(ValueError):
    """Why a delivery's signature is refused (shown to the sender and on the flow's page)."""


def digest(secret: str, message: bytes, *, algorithm: str = "sha256", encoding: str = "hex") -> str:
    """HMAC of ``message`` under ``secret``, as text in ``encoding`` (hex or base64)."""
    mac = hmac.new(secret.encode("utf-8"), message, ALGORITHMS[algorithm])
    if encoding == "base64":
        return base64.b64encode(mac.digest()).decode("ascii")
    return mac.hexdigest()


def _matches(given: str, expected: Iterable[str]) -> bool:
    # Every candidate is compared, so the time does not say which secret matched.
    found = False
    for value in expected:
        found |= hmac.compare_digest(given.encode("utf-8"), value.encode("utf-8"))
    return found


def check_hmac(
    header_value: str | None,
    body: bytes,
    secrets: Iterable[str],
    *,
    header: str,
    algorithm: str,
    prefix: str,
    encoding: str,
) -> None:
    """A generic (and GitHub's) signature: ``header_value`` is ``prefix`` + the body's HMAC
    under one of ``secrets``. SignatureError saying what is wrong otherwise."""
    if not header_value:
        raise SignatureError(f"no {header} header: the delivery is not signed")
    value = header_value.strip()
    if prefix and not value.startswith(prefix):
        raise SignatureError(f"the {header} header does not start with {prefix!r}")
    given = value[len(prefix) :]
    expected = [digest(s, body, algorithm=algorithm, encoding=encoding) for s in secrets]
    if encoding == "hex":
        given = given.lower()
    if not _matches(given, expected):
        raise SignatureError(f"the {header} signature does not match the body")


def stripe_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``body`` at ``timestamp``."""
    return f"t={timestamp},v1={digest(secret, str(timestamp).encode() + b'.' + body)}"


def check_stripe(
    header_value: str | None,
    body: bytes,
    secrets: Iterable[str],
    *,
    now: float,
    tolerance_seconds: int,
) -> None:
    """Stripe's scheme: ``t=<ts>,v1=<sig>[,v1=<sig>...]``; the signed message is
    ``f"{t}.{body}"``; a ``t`` further than ``tolerance_seconds`` from ``now`` is a replay."""
    if not header_value:
        raise SignatureError("no Stripe-Signature header: the delivery is not signed")
    timestamps, signatures = [], []
    for part in header_value.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value.strip().lower())
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        raise SignatureError("the Stripe-Signature header needs one t=<timestamp> and a v1=")
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError(
            f"the Stripe-Signature timestamp is {int(now - timestamp)} s away from now, "
            f"outside the tolerance of {tolerance_seconds} s: refused as a replay"
        )
    message = timestamps[0].encode("ascii") + b"." + body
    expected = [digest(s, message) for s in secrets]
    if not any(_matches(given, expected) for given in signatures):
        raise SignatureError("no v1 signature in Stripe-Signature matches the body")


def check_token(header_value: str | None, secrets: Iterable[str], *, header: str) -> None:
    """A shared secret sent as is in ``header``."""
    if not header_value:
        raise SignatureError(f"no {header} header: the delivery carries no token")
    if not _matches(header_value.strip(), list(secrets)):
        raise SignatureError(f"the {header} token is not this hook's")
