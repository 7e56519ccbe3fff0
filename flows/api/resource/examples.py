"""Example answers of the resource API, for the OpenAPI schema (and so for /docs)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample

EXECUTION_ID = "6f0c1a55-5d2e-4a8e-9d7e-0c6b1f0e9a01"
AT = "2026-11-28T08:00:00Z"

FLOW_ROW = {
    "id": "example_flow",
    "name": "Sample Data Pipeline",
    "version": 2,
    "created_at": AT,
    "updated_at": "2026-11-28T09:30:00Z",
}
DOCUMENT = {
    "id": "example_flow",
    "name": "Sample Data Pipeline",
    "tasks": [
        {"name": "task1", "task_type": "fetch_data", "parameters": {}},
        {"name": "task2", "task_type": "process_data", "parameters": {}},
    ],
    "conditions": [
        {
            "source_task": "task1",
            "outcome": "success",
            "target_task_success": "task2",
            "target_task_failure": "end",
        }
    ],
}
FLOW = {**FLOW_ROW, "description": "", "definition": DOCUMENT}
FLOW_WRITTEN = {
    **FLOW,
    "new_version": True,
    "warnings": [
        {"field": "tasks[2]", "message": "task 'cleanup' can never run: no path reaches it"}
    ],
}
BULK_STARTED = {
    "executions": [
        {"id": EXECUTION_ID, "status_url": f"/api/executions/{EXECUTION_ID}/", "created": True},
        {
            "id": "0b7e2f3c-1d4a-4c5b-8e6f-7a8b9c0d1e02",
            "status_url": "/api/executions/0b7e2f3c-1d4a-4c5b-8e6f-7a8b9c0d1e02/",
            "created": True,
        },
    ]
}
VERSION_ROW = {"flow": "example_flow", "version": 2, "created_at": AT, "created_by": "erin"}
VERSION = {**VERSION_ROW, "definition": DOCUMENT}
EXECUTION_ROW = {
    "id": EXECUTION_ID,
    "flow": "example_flow",
    "flow_name": "Sample Data Pipeline",
    "flow_version": 2,
    "status": "COMPLETED",
    "trigger": "manual",
    "current_task": "",
    "error": "",
    "steps_taken": 2,
    "cancel_requested": False,
    "pause_requested": False,
    "redrive_count": 0,
    "deadline_at": None,
    "rerun_of": None,
    "triggered_by": None,
    "scheduled_for": None,
    "backfill": None,
    "created_by": "olga",
    "created_at": AT,
    "queued_at": "2026-11-28T08:00:00.010000Z",
    "started_at": "2026-11-28T08:00:00.060000Z",
    "ended_at": "2026-11-28T08:00:01.080000Z",
    "input_size": 16,
    "input_url": f"/api/executions/{EXECUTION_ID}/input",
    "parent": None,
    "root": None,
    "branch": "",
    "item_index": None,
}
STEP = {
    "seq": 1,
    "task_name": "task1",
    "task_type": "fetch_data",
    "attempt": 1,
    "status": "SUCCESS",
    "parameters": {},
    "result": {"message": "Fetched 3 records", "records": [1, 2, 3]},
    "error": "",
    "traceback": "",
    "route": "task1 SUCCESS; condition on task1 (outcome success) -> task2",
    "created_at": "2026-11-28T08:00:00.010000Z",
    "started_at": "2026-11-28T08:00:00.060000Z",
    "ended_at": "2026-11-28T08:00:00.561000Z",
    "duration": 0.501,
    "id": 101,
    "waiting": None,
    "children": None,
    "truncated": {},
    "signal": None,
}
EXECUTION = {
    **EXECUTION_ROW,
    "input": {"customer": 42},
    "truncated": {},
    "steps": [
        STEP,
        {
            **STEP,
            "seq": 2,
            "id": 102,
            "task_name": "task2",
            "task_type": "process_data",
            "result": {"message": "Processed 3 records"},
            "route": "task2 SUCCESS; no condition, last task -> end",
        },
    ],
}
QUEUED = {
    **EXECUTION_ROW,
    "input": {"customer": 42},
    "truncated": {},
    "status": "QUEUED",
    "current_task": "task1",
    "steps_taken": 0,
    "started_at": None,
    "ended_at": None,
    "steps": [
        {
            **STEP,
            "status": "PENDING",
            "result": None,
            "route": "",
            "started_at": None,
            "ended_at": None,
            "duration": None,
        }
    ],
}
EVENTS = {
    "execution": EXECUTION_ID,
    "status": "RUNNING",
    "finished": False,
    "events": [
        {
            "seq": 1873,
            "created_at": AT,
            "level": "INFO",
            "message": "fetched 3 records",
            "step": 1,
            "task_name": "task1",
        }
    ],
    "next_after": 1873,
    "more": False,
}
TASK_TYPE = {
    "name": "fetch_data",
    "description": "Simulates fetching records from an external source; may fail at random.",
    "parameters_schema": {
        "type": "object",
        "properties": {
            "failure_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0}
        },
    },
    "defaults": {"failure_rate": 0},
    "default_timeout": None,
}


def answer(name: str, value: Any, status: int = 200) -> OpenApiExample:
    """An example answer; for a list give one item (drf-spectacular builds the list or page)."""
    return OpenApiExample(name, value=value, response_only=True, status_codes=[status])


SCHEDULE = {
    "cron": "*/15 * * * *",
    "enabled": True,
    "input": {"region": "eu"},
    "overlap": "skip",
    "catchup": "last",
    "catchup_window_seconds": 3600,
    "next_run": "2026-11-28T08:15:00+00:00",
    "last_slot_at": "2026-11-28T08:00:00+00:00",
    "buffered_slot": None,
    "skipped_slots": 0,
    "last_skipped_at": None,
    "updated_at": AT,
}

BACKFILL = {
    "backfill": 3,
    "dry_run": False,
    "slots": [
        {
            "slot": "2026-11-01T00:00:00Z",
            "action": "skip",
            "reason": "already COMPLETED",
            "execution": EXECUTION_ID,
        },
        {
            "slot": "2026-11-01T01:00:00Z",
            "action": "run",
            "reason": "never ran",
            "execution": "0b1c1d5e-8c7e-4d7a-9a53-2f4f1a9c0d11",
        },
    ],
    "counts": {"run": 1, "rerun": 0, "skip": 1},
}

BACKFILL_DRY_RUN = {
    "backfill": None,
    "dry_run": True,
    "slots": [
        {
            "slot": "2026-11-01T00:00:00Z",
            "action": "rerun",
            "reason": "FAILED; reprocess failed",
            "execution": EXECUTION_ID,
        },
        {"slot": "2026-11-01T01:00:00Z", "action": "run", "reason": "never ran", "execution": None},
    ],
    "counts": {"run": 1, "rerun": 1, "skip": 0},
}

SIGNALLED_STEP = {
    **STEP,
    "task_name": "approve",
    "task_type": "wait_for_signal",
    "status": "PENDING",
    "parameters": {"signal": "deploy", "prompt": "Ship 1.2 to production?"},
    "result": None,
    "route": "waiting for signal 'deploy'",
    "ended_at": None,
    "duration": None,
    "waiting": {
        "kind": "signal",
        "signal": "deploy",
        "prompt": "Ship 1.2 to production?",
        "until": None,
        "received": True,
        "limit": None,
        "place": None,
    },
    "signal": {
        "name": "deploy",
        "decision": "approve",
        "by": "ada",
        "at": AT,
        "comment": "release notes checked",
        "payload": {"version": "1.2"},
    },
}
