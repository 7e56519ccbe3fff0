"""Large JSON values (inputs, parameters, results), shown cut: the API and the pages show at
most FLOW_SHOW_MAX_BYTES of one, with its size and a link to download it whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class Shown:
    """A value's JSON text as shown: whole, or its first ``limit`` bytes."""

    text: str
    size: int  # bytes of the whole text
    cut: bool


def shown(value: Any, *, indent: int | None = None, limit: int | None = None) -> Shown:
    """``value`` as JSON text (compact, or indented for people), cut past ``limit`` bytes
    (FLOW_SHOW_MAX_BYTES by default) at a character boundary."""
    limit = settings.FLOW_SHOW_MAX_BYTES if limit is None else limit
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    data = text.encode()
    if len(data) <= limit:
        return Shown(text, len(data), False)
    return Shown(data[:limit].decode(errors="ignore"), len(data), True)


def human_size(size: int) -> str:
    """1536 -> "1.5 KB"; for the pages' notes."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB".replace(".0 KB", " KB")
    return f"{size / 1024 / 1024:.1f} MB".replace(".0 MB", " MB")
