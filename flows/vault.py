"""The secret store's cipher and its one reader: what the engine, the services and every face
share about secrets.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under the
keys of ``FLOW_SECRET_KEYS``: the first key encrypts, every key decrypts (MultiFernet), so a new
key is put first, ``manage.py rotate_secret_keys`` re-encrypts every value under it, and the
old key can then be dropped. The keys are never derived from ``SECRET_KEY``: rotating one must
not make the other unreadable, and a leaked session key must not open the store.

A secret may also come from the environment (``FLOW_SECRET_<NAME>``) for twelve-factor
deployments; a stored secret of the same name wins.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from flows.models import Secret

# Letters, digits and underscores, starting with a letter: a name the reference parser reads
# in ``${secrets.NAME}`` and that an environment variable ``FLOW_SECRET_<NAME>`` can carry.
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
NAME_HELP = (
    "letters, digits and underscores, starting with a letter, at most 100 characters "
    "(referenced as ${secrets.NAME})"
)
ENV_PREFIX = "FLOW_SECRET_"
# The variable that holds the keys is no secret's fallback: ${secrets.KEYS} must not read them.
KEYS_VARIABLE = "FLOW_SECRET_KEYS"

HOW_TO_SET_KEYS = (
    "set FLOW_SECRET_KEYS to a Fernet key (for a checkout: `make dotenv`, or "
    "python3 -m flowmanager.localenv, adds one to .env; elsewhere generate one with "
    "python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())') "
    "and restart the web server and the workers"
)


class SecretKeysMissing(Exception):
    """A value cannot be encrypted: ``FLOW_SECRET_KEYS`` holds no key."""

    def __init__(self) -> None:
        super().__init__(f"secrets cannot be stored: no encryption key; {HOW_TO_SET_KEYS}")


class UnreadableSecret(Exception):
    """A stored value that no configured key decrypts (or no key is configured at all)."""

    def __init__(self, name: str) -> None:
        self.name = name
        what = f"secret {name!r}" if name else "a stored secret"
        if not settings.FLOW_SECRET_KEYS:
            reason = f"FLOW_SECRET_KEYS is not set; {HOW_TO_SET_KEYS}"
        else:
            reason = (
                "the key that encrypted it is not in FLOW_SECRET_KEYS; add that key back "
                "(after the current first key) or store the value again"
            )
        super().__init__(f"{what} cannot be decrypted: {reason}")


@functools.lru_cache(maxsize=4)
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def cipher() -> MultiFernet:
    """The MultiFernet of ``FLOW_SECRET_KEYS`` (first encrypts); SecretKeysMissing without."""
    keys = tuple(settings.FLOW_SECRET_KEYS)
    if not keys:
        raise SecretKeysMissing
    return _cipher(keys)


def keys_configured() -> bool:
    return bool(settings.FLOW_SECRET_KEYS)


def encrypt(value: str) -> str:
    """``value`` encrypted under the first key, as ASCII text for a text column."""
    return cipher().encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str, *, name: str = "") -> str:
    """The plain value of ``token``; UnreadableSecret (naming ``name``) if no key opens it."""
    if not settings.FLOW_SECRET_KEYS:
        raise UnreadableSecret(name)
    try:
        return cipher().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise UnreadableSecret(name) from None


def rotate(token: str, *, name: str = "") -> str:
    """``token`` re-encrypted under the first key; UnreadableSecret if no key opens it."""
    if not settings.FLOW_SECRET_KEYS:
        raise UnreadableSecret(name)
    try:
        return cipher().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise UnreadableSecret(name) from None


def _env_variables(name: str) -> list[str]:
    """Where the environment may hold ``name``: as written, then upper-cased."""
    found = [f"{ENV_PREFIX}{name}", f"{ENV_PREFIX}{name.upper()}"]
    return [variable for variable in dict.fromkeys(found) if variable != KEYS_VARIABLE]


def _from_env(name: str) -> str | None:
    for variable in _env_variables(name):
        value = os.environ.get(variable)
        if value:  # an empty variable is no secret: it could not be masked
            return value
    return None


def values_for(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The plain values of ``names``: (found name -> value, missing names sorted).

    One query for all names. A stored secret wins over ``FLOW_SECRET_<NAME>`` (or
    ``FLOW_SECRET_<NAME upper-cased>``) in the environment. Values are never empty (the store
    refuses one; an empty variable counts as missing). Raises UnreadableSecret for a stored
    value no configured key decrypts.
    """
    wanted = set(names)
    found: dict[str, str] = {}
    if wanted:
        stored = Secret.objects.filter(name__in=wanted).values_list("name", "value")
        for name, token in stored:
            found[name] = decrypt(token, name=name)
    missing = []
    for name in sorted(wanted - set(found)):
        value = _from_env(name)
        if value is None:
            missing.append(name)
        else:
            found[name] = value
    return found, missing


def env_names() -> set[str]:
    """Secret names the environment provides (``FLOW_SECRET_<NAME>``, not the keys)."""
    return {
        variable[len(ENV_PREFIX) :]
        for variable, value in os.environ.items()
        if variable.startswith(ENV_PREFIX)
        and variable != KEYS_VARIABLE
        and value
        and NAME_RE.fullmatch(variable[len(ENV_PREFIX) :])
    }


def known_names() -> set[str]:
    """Every name a ``${secrets.NAME}`` reference resolves: the store's and the environment's."""
    return set(Secret.objects.values_list("name", flat=True)) | env_names()


# --- The workers' cache ------------------------------------------------------------------------
# name -> (when read, the keys it was read under, value). A step that uses a secret would
# otherwise pay a query and a decryption on top of its own work (bench: the secrets stage).
_cache: dict[str, tuple[float, tuple[str, ...], str]] = {}
_cache_lock = threading.Lock()


def cached_values_for(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``values_for``, with each value found kept ``FLOW_SECRET_CACHE_SECONDS`` in this
    process. A missing name is never cached: a step that needs it fails, and is retried once
    it is set. A change made in this process (a test, ``runflow``) clears the cache at once;
    other processes see it within the cache's time."""
    seconds = settings.FLOW_SECRET_CACHE_SECONDS
    if seconds <= 0:
        return values_for(names)
    keys, now = tuple(settings.FLOW_SECRET_KEYS), time.monotonic()
    wanted, found = set(names), {}
    with _cache_lock:
        for name in wanted:
            hit = _cache.get(name)
            if hit is not None and now - hit[0] < seconds and hit[1] == keys:
                found[name] = hit[2]
    if len(found) == len(wanted):
        return found, []
    read, missing = values_for(wanted - set(found))
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        for name, value in read.items():
            _cache[name] = (now, keys, value)
    return {**found, **read}, missing


def forget_cached() -> None:
    with _cache_lock:
        _cache.clear()
