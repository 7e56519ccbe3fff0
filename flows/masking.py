"""Masking: what a run writes never holds a secret value it resolved.

A step that uses ``${secrets.NAME}`` gets a ``Masker`` built from the values it resolved.
Everything the step writes goes through it before it is stored or logged: its result, its
error and traceback, its log lines, its wait state, its parameters as shown. The task itself
receives the real values; masking happens on the way out.

A value is also masked in the forms it commonly takes on the way out, the leaks other tools'
users report: JSON-escaped (a value with a quote or a backslash, echoed inside a JSON text),
Python's ``repr`` (an exception message),
URL-encoded (a query string), and base64 (an ``Authorization: Basic`` header, a JWT, an
echoed body). Base64 encodes 3 bytes as 4 characters, so a value inside a longer encoded text
takes one of three shapes depending on its offset; each is masked, minus the characters at
its edges that depend on the neighbouring bytes (the technique GitHub Actions uses).

The module also keeps the maskers of the steps running in this process, for the logging
filter: a library a task calls (httpx logs the URL it requests) writes to the process's logs,
not to the step's.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
# Derived forms shorter than this are not masked: a two-character fragment of a base64 text
# would mask unrelated text all over a result. The value itself is always masked.
MIN_DERIVED_LENGTH = 4


def forms(value: str) -> set[str]:
    """``value`` and the forms it takes when encoded on the way out."""
    found = {value}
    found.add(json.dumps(value)[1:-1])  # JSON-escaped, ASCII only
    found.add(json.dumps(value, ensure_ascii=False)[1:-1])
    found.add(repr(value)[1:-1])  # Python's, as in f"{token!r}" in an exception's message
    found.add(quote(value, safe=""))
    found.add(quote_plus(value, safe=""))
    raw = value.encode()
    for offset in range(3):
        # The value starting at byte ``offset`` of a 3-byte group: encode it behind that many
        # filler bytes, then drop the characters the filler (and the unknown next bytes) touch.
        encoded = base64.b64encode(b"\0" * offset + raw).decode().rstrip("=")
        start = (offset * 4 + 2) // 3  # the first character that depends on the value alone
        end = len(encoded) - (1 if (offset + len(raw)) % 3 else 0)
        inner = encoded[start:end]
        found.add(inner)
        found.add(inner.replace("+", "-").replace("/", "_"))  # the URL-safe alphabet
    return {f for f in found if f == value or len(f) >= MIN_DERIVED_LENGTH}


@functools.lru_cache(maxsize=256)
def masker_for(values: frozenset[str]) -> Masker:
    """A ``Masker`` of ``values``, built once per process: a step of a long run uses the same
    secrets as the one before."""
    return Masker(values)


class Masker:
    """Replaces each of ``values`` (and its derived forms) by ``***`` in text and JSON."""

    def __init__(self, values: Iterable[str]) -> None:
        every = {form for value in values if value for form in forms(value)}
        # Longest first, so that a value's base64 is not cut by a shorter one inside it.
        ordered = sorted(every, key=lambda f: (-len(f), f))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """``value`` (JSON: dicts, lists, strings, ...) with every string masked, keys too."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


# --- the steps running in this process, for the logging filter ------------------------------
_lock = threading.Lock()
_running: dict[int, Masker] = {}
_combined: Masker | None = None


def running(masker: Masker) -> int:
    """Mask ``masker``'s values in this process's logs until ``finished`` with the token."""
    global _combined
    with _lock:
        token = id(masker)
        _running[token] = masker
        _combined = _merge(_running.values())
    return token


def finished(token: int) -> None:
    global _combined
    with _lock:
        _running.pop(token, None)
        _combined = _merge(_running.values()) if _running else None


def _merge(maskers: Iterable[Masker]) -> Masker:
    merged = Masker(())
    patterns = [m._pattern.pattern for m in maskers if m._pattern is not None]
    if patterns:
        merged._pattern = re.compile("|".join(patterns))
    return merged


class MaskSecrets(logging.Filter):
    """On a handler: a record logged while a step that uses secrets runs in this process has
    their values masked in its message and its traceback. Costs one check when none runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        masker = _combined
        if masker is None:
            return True
        message = record.getMessage()
        masked = masker.text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masker.text(record.exc_text)
        return True
