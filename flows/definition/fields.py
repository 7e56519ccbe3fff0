"""Checks of single values that every part of a flow document shares, and the words its
error messages use for what was found instead."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

import jsonschema

from flows.definition.errors import Report
from flows.definition.limits import MAX_NAME
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


def nul_paths(value: Any, path: str) -> list[str]:
    """Paths of every string (or key) holding a NUL character, which databases refuse."""
    if isinstance(value, str):
        return [path or "(document)"] if "\x00" in value else []
    if isinstance(value, Mapping):
        out: list[str] = []
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                out.append(sub)
            out += nul_paths(item, sub)
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in nul_paths(item, f"{path}[{i}]")]
    return []


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
