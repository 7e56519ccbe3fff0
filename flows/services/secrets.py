"""Secrets: store one (encrypted, flows/vault.py), replace its value, change its description,
delete it, and re-encrypt every value under the first key.

Nothing here returns a plain value: the only reader of values is ``vault.values_for``, which
the worker calls just before a task runs.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction

from flows import vault
from flows.definition import unstorable_problem
from flows.models import Channel, Secret
from flows.services.errors import Conflict, NotFound, ServiceError
from flows.services.flows import recorded_user

logger = logging.getLogger("flows.services")

# A value is a key, a token or a certificate, not a document: enough for a PEM bundle.
VALUE_MAX_BYTES = 65_536
DESCRIPTION_MAX_CHARS = 500


class NoSecretKeys(ServiceError):
    """Storing a value needs ``FLOW_SECRET_KEYS``; the message says what to set."""

    status = 409
    code = "secret_keys_missing"


class UnreadableSecrets(ServiceError):
    """Stored values no configured key decrypts (a rotation refuses to go on)."""

    status = 409
    code = "unreadable_secret"


# The message of the one refusal that is about the deployment, not the input.
NO_KEYS_MESSAGE = str(vault.SecretKeysMissing())


def _taken_message(taken: str) -> str:
    return f"a secret named {taken!r} exists; replace its value or delete it"


def _refuse_all(errors: list[dict[str, str]]) -> None:
    """Raise the errors as one refusal: NoSecretKeys (409, saying what to set) when the only
    problem is the missing key, Conflict (409) when it is a name taken, a 400 otherwise."""
    if not errors:
        return
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    if len(errors) == 1 and errors[0]["message"] == NO_KEYS_MESSAGE:
        raise NoSecretKeys(NO_KEYS_MESSAGE, errors=errors)
    if len(errors) == 1 and errors[0].get("code") == "taken":
        raise Conflict(message, errors=[{"field": "name", "message": errors[0]["message"]}])
    raise ServiceError(
        message, errors=[{"field": e["field"], "message": e["message"]} for e in errors]
    )


def _name_problem(name: Any) -> str:
    if not isinstance(name, str) or not vault.NAME_RE.fullmatch(name):
        return f"must be {vault.NAME_HELP}"
    return ""


def _value_problem(value: Any) -> str:
    if not isinstance(value, str) or value == "":
        return "must be a non-empty string"
    if problem := unstorable_problem(value, "value"):
        return problem
    size = len(value.encode("utf-8"))
    if size > VALUE_MAX_BYTES:
        return f"is {size} bytes; the limit is {VALUE_MAX_BYTES}"
    return ""


def _description_problem(description: Any) -> str:
    if not isinstance(description, str):
        return "must be a string"
    if problem := unstorable_problem(description, "description"):
        return problem
    if len(description) > DESCRIPTION_MAX_CHARS:
        return f"is {len(description)} characters; the limit is {DESCRIPTION_MAX_CHARS}"
    return ""


def _encrypt(value: str) -> str:
    try:
        return vault.encrypt(value)
    except vault.SecretKeysMissing as exc:
        raise NoSecretKeys(str(exc)) from None


def _locked(name: Any) -> Secret:
    secret = Secret.objects.select_for_update().filter(pk=name).first() if name else None
    if secret is None:
        raise NotFound(f"no secret named {str(name)!r}")
    return secret


def secret_problems(
    *, name: Any = None, value: Any = None, description: Any = None
) -> list[dict[str, str]]:
    """What storing these fields would refuse, as ``{field, message}`` (the forms show them
    before they call a service; the services raise them). Only the given fields are checked;
    a ``name`` is checked as a new one (free, in any letter case), a ``value`` needs a key."""
    errors = []
    if name is not None:
        if problem := _name_problem(name):
            errors.append({"field": "name", "message": problem})
        elif taken := Secret.objects.filter(name__iexact=name).values_list("name", flat=True)[:1]:
            errors.append({"field": "name", "message": _taken_message(taken[0]), "code": "taken"})
    if value is not None:
        problem = _value_problem(value)
        if not problem and not vault.keys_configured():
            problem = NO_KEYS_MESSAGE
        if problem:
            errors.append({"field": "value", "message": problem})
    if description is not None and (problem := _description_problem(description)):
        errors.append({"field": "description", "message": problem})
    return errors


@transaction.atomic
def secret_create(*, name: Any, value: Any, description: Any = "", user: Any = None) -> Secret:
    """Store a new secret, its value encrypted under the first key of ``FLOW_SECRET_KEYS``.

    Refused (nothing stored): a bad name, an empty or oversized value, no key configured
    (NoSecretKeys, saying what to set), a name taken, even in another letter case (a
    reference ``${secrets.Token}`` next to ``${secrets.TOKEN}`` would be a trap).
    """
    _refuse_all(secret_problems(name=name, value=value, description=description))
    token = _encrypt(value)
    author = recorded_user(user)
    try:
        with transaction.atomic():
            secret = Secret.objects.create(
                name=name,
                value=token,
                description=description,
                created_by=author,
                updated_by=author,
            )
    except IntegrityError:  # stored by a concurrent request a moment ago
        message = _taken_message(name)
        raise Conflict(message, errors=[{"field": "name", "message": message}]) from None
    logger.info("secret=%s stored", name)
    return secret


@transaction.atomic
def secret_replace(*, name: Any, value: Any, description: Any = None, user: Any = None) -> Secret:
    """Replace a secret's value (and its description, when given); executions that resolve it
    from now on get the new value."""
    secret = _locked(name)
    _refuse_all(secret_problems(value=value, description=description))
    secret.value = _encrypt(value)
    if description is not None:
        secret.description = description
    secret.updated_by = recorded_user(user)
    secret.save()
    logger.info("secret=%s value replaced", secret.name)
    return secret


@transaction.atomic
def secret_describe(*, name: Any, description: Any, user: Any = None) -> Secret:
    """Change a secret's description; the value stays as it is (no key is needed)."""
    secret = _locked(name)
    if problem := _description_problem(description):
        _refuse_all([{"field": "description", "message": problem}])
    secret.description = description
    secret.updated_by = recorded_user(user)
    secret.save(update_fields=["description", "updated_by", "updated_at"])
    return secret


@transaction.atomic
def secret_delete(*, name: Any) -> None:
    """Delete a secret; steps that reference it fail from now on with a clear error (unless
    the environment provides ``FLOW_SECRET_<NAME>``)."""
    secret = _locked(name)
    secret.delete()
    logger.info("secret=%s deleted", name)


@transaction.atomic
def secret_keys_rotate() -> int:
    """Re-encrypt every stored value under the first key of ``FLOW_SECRET_KEYS`` (the secret
    store's and the notification channels' secrets: a webhook's signing key, a Slack URL);
    returns how many. All or nothing: a value no configured key decrypts stops the rotation
    before any row changes, naming every such secret. Dates and authors stay: no value
    changed."""
    if not vault.keys_configured():
        raise NoSecretKeys(NO_KEYS_MESSAGE)
    secrets = list(Secret.objects.select_for_update().only("name", "value").order_by("name"))
    unreadable = []
    for secret in secrets:
        try:
            secret.value = vault.rotate(secret.value, name=secret.name)
        except vault.UnreadableSecret:
            unreadable.append(secret.name)
    channels = list(
        Channel.objects.select_for_update().exclude(secret="").only("id", "name", "secret")
    )
    for channel in channels:
        try:
            channel.secret = vault.rotate(channel.secret, name=f"channel {channel.name}")
        except vault.UnreadableSecret:
            unreadable.append(f"channel {channel.name}")
    if unreadable:
        names = ", ".join(repr(n) for n in unreadable)
        raise UnreadableSecrets(
            f"nothing was re-encrypted: no key in FLOW_SECRET_KEYS decrypts the secret(s) "
            f"{names}; add the key that encrypted them back to FLOW_SECRET_KEYS (after the "
            "first), or store their values again, then rotate",
            errors=[{"field": n, "message": "no configured key decrypts it"} for n in unreadable],
        )
    Secret.objects.bulk_update(secrets, ["value"], batch_size=500)
    Channel.objects.bulk_update(channels, ["secret"], batch_size=500)
    logger.info(
        "secrets re-encrypted under the first key: %d, and %d channel secret(s)",
        len(secrets),
        len(channels),
    )
    return len(secrets) + len(channels)
