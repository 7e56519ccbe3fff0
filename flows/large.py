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
    shown_size: int  # bytes of ``text``: ``size``, or less when cut


def shown(value: Any, *, indent: int | None = None, limit: int | None = None) -> Shown:
    """``value`` as JSON text (compact, or indented for people), cut past ``limit`` bytes
    (FLOW_SHOW_MAX_BYTES by default) at a character boundary."""
    limit = settings.FLOW_SHOW_MAX_BYTES if limit is None else limit
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    data = text.encode()
    if len(data) <= limit:
        return Shown(text, len(data), False, len(data))
    # Cut at a character boundary: back off the continuation bytes of a character split
    # at the limit (the byte at ``end`` starts a character, so data[:end] decodes whole).
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return Shown(data[:end].decode(), len(data), True, end)


class Budget:
    """What one answer (an execution's page, its API detail) may still show of its values:
    each at most FLOW_SHOW_MAX_BYTES, all together at most FLOW_SHOW_TOTAL_BYTES, so 500
    steps of 60 KB results do not make a 30 MB page. Past it, values show only their size
    and their link."""

    def __init__(self) -> None:
        self.left = settings.FLOW_SHOW_TOTAL_BYTES

    def show(self, value: Any, *, indent: int | None = None) -> Shown:
        view = shown(value, indent=indent, limit=min(settings.FLOW_SHOW_MAX_BYTES, self.left))
        self.left = max(self.left - view.shown_size, 0)
        return view


def human_size(size: int) -> str:
    """1536 -> "1.5 KB"; for the pages' notes."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB".replace(".0 KB", " KB")
    return f"{size / 1024 / 1024:.1f} MB".replace(".0 MB", " MB")
