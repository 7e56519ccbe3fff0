"""Helpers for the operator-page tests: find a field's block and its error in rendered HTML."""

from __future__ import annotations

import re
from typing import Any

from flows import services
from flows.models import Execution, FlowVersion


def field_block(html: str, field_id: str) -> str:
    """The ``<div class="field ...">`` that holds the input with id ``field_id``."""
    for block in re.findall(r'<div class="field[^"]*">.*?</div>', html, flags=re.S):
        if f'id="{field_id}"' in block:
            return block
    raise AssertionError(f"no field block for #{field_id}")


def field_errors(html: str, field_id: str) -> list[str]:
    return re.findall(r'<p class="field-error"[^>]*>(.*?)</p>', field_block(html, field_id), re.S)


def builder_post(
    flow: dict[str, Any], rows: list[dict[str, Any]], action: str = "save", initial: int = 0
) -> dict[str, Any]:
    """POST data of the builder form: flow fields plus one formset row per dict."""
    data: dict[str, Any] = {
        "mode": "builder",
        "action": action,
        "tasks-TOTAL_FORMS": str(len(rows)),
        "tasks-INITIAL_FORMS": str(initial),
        "tasks-MIN_NUM_FORMS": "0",
        "tasks-MAX_NUM_FORMS": "1000",
        **flow,
    }
    for i, row in enumerate(rows):
        data[f"tasks-{i}-ORDER"] = str(i + 1)
        for key, value in row.items():
            data[f"tasks-{i}-{key}"] = value
    return data


def many_executions(version: FlowVersion, count: int, **fields: Any) -> list[Execution]:
    """``count`` executions of ``version`` stored in one statement."""
    return Execution.objects.bulk_create(
        Execution(flow_id=version.flow_id, flow_version=version, **fields) for _ in range(count)
    )


def stored(document: dict[str, Any]) -> FlowVersion:
    return services.flow_create(document=document)
