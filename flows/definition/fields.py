"""Checks of single values that every part of a flow document shares, and the words its
error messages use for what was found instead."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import jsonschema

from flows.definition.errors import Report
from flows.definition.limits import MAX_DURATION, MAX_NAME
from flows.expressions import has_reference


def optional_text(
    doc: Mapping, key: str, path: str, err: Report, limit: int, *, single_line: bool = False
) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        err(path, f"must be text, not {kind_of(value)}")
        return ""
    if len(value) > limit:
        err(path, f"at most {limit} characters")
        return ""
    allowed = "\x00" if single_line else "\x00\n\r\t"  # NUL has its own error
    if any(_is_control(ch) and ch not in allowed for ch in value):
        what = "a single line of printable text" if single_line else "printable text"
        err(path, f"must be {what} (no control characters)")
        return ""
    return value


def optional_seconds(doc: Mapping, key: str, path: str, err: Report) -> tuple[float | None, bool]:
    """An optional duration (a timeout): (seconds or None, whether it was valid). Bounded, so
    that no number (a 401-digit integer, 1e308) overflows the deadline computed from it."""
    value = doc.get(key)
    if value is None:
        return None, True
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_DURATION
    ):
        err(path, f"must be a positive number of seconds, at most {MAX_DURATION:,} (a year)")
        return None, False
    return float(value), True


def is_name(value: Any) -> bool:
    """Whether ``value`` can name a task."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME
        and value.strip() == value
        and not any(_is_control(ch) for ch in value)
    )


def check_schema(schema: Mapping[str, Any], value: Mapping, path: str, err: Report) -> bool:
    """Report where ``value`` breaks the JSON Schema ``schema``; whether it kept to it."""
    ok = True
    validator = jsonschema.Draft202012Validator(schema)
    for e in sorted(validator.iter_errors(dict(value)), key=lambda e: list(e.path)):
        if has_reference(e.instance):
            continue  # checked at run time, once resolved
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        err(f"{path}{sub}", e.message)
        ok = False
    return ok


def deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


# A lone UTF-16 surrogate: JSON's "\ud800" escape parses to one, but no UTF-8 text (so no
# database, log line or page) can hold it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(text: str) -> str:
    """What in ``text`` no database can store, in words ("" when nothing): a NUL character,
    or a lone surrogate."""
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    if text.isascii():  # the common case, without a scan
        return ""
    found = LONE_SURROGATE.search(text)
    return f"a lone surrogate (\\u{ord(found.group()):04x})" if found else ""


def readable_key(key: Any) -> str:
    """``key`` for a field path in a message: a lone surrogate written as its escape, so that
    the message itself can be sent and logged."""
    return str(key).encode("utf-8", "backslashreplace").decode()


def unstorable_paths(value: Any, path: str) -> list[tuple[str, str]]:
    """(path, what) of every string (or key) holding text no database stores (``unstorable``),
    and of every number JSON cannot hold (1e400 parses to infinity in Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path or "(document)", "a number out of range (it reads as infinity)")]
    if isinstance(value, str):
        what = unstorable(value)
        return [(path or "(document)", what)] if what else []
    if isinstance(value, Mapping):
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            sub = f"{path}.{readable_key(key)}" if path else readable_key(key)
            what = unstorable(key) if isinstance(key, str) else ""
            if what:
                out.append((sub, what))
            out += unstorable_paths(item, sub)
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unstorable_paths(item, f"{path}[{i}]")]
    return []


def unstorable_problem(value: Any, field: str) -> str:
    """Why ``value`` (an input, a payload) cannot be stored, naming where; "" when it can."""
    found = unstorable_paths(value, field)
    if not found:
        return ""
    path, what = found[0]
    return f"contains {what} at {path}, which cannot be stored; remove it"


def listing(names: list[str]) -> str:
    """The first names of a list, for a message that says what it could have been."""
    return ", ".join(names[:20]) + (" …" if len(names) > 20 else "") if names else "none"


def kind_of(value: Any) -> str:
    """What a JSON value is, in words: ``must be a list, not {kind_of(value)}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"
