from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.base_task import BaseTask, PermanentTaskError, WaitForSignal

MAX_TIMEOUT_SECONDS = 366 * 86_400


class WaitForSignalTask(BaseTask):
    """Wait, holding no worker, for a signal or a person's approval."""

    description = (
        "Waits until signal `signal` arrives for the execution (POST "
        "/api/executions/{id}/signal/, or Approve/Reject on the execution page). Approve: the "
        "signal's payload is the step's result. Reject: the step fails (its failure route "
        "applies). No signal within `timeout_seconds`: the step fails too."
    )
    parameters_schema = {
        "type": "object",
        "properties": {
            "signal": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "default": "approval",
                "description": "The name a signal must carry to end this wait.",
            },
            "prompt": {
                "type": "string",
                "maxLength": 2000,
                "description": "What the approver is asked (shown on the execution page).",
            },
            "timeout_seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_TIMEOUT_SECONDS,
                "description": "Fail the step if no signal came within this many seconds.",
            },
        },
        "additionalProperties": False,
    }

    async def run(self) -> dict[str, Any]:
        name = str(self.parameters.get("signal") or "approval")
        waiting = self.context.waiting
        if waiting and waiting.get("kind") == "signal":
            came = waiting.get("signal")
            if came:
                return self._answer(name, came)
            timeout_at = waiting.get("timeout_at")
            deadline = datetime.fromisoformat(timeout_at) if timeout_at else None
        else:
            seconds = self.parameters.get("timeout_seconds")
            deadline = datetime.now(UTC) + timedelta(seconds=float(seconds)) if seconds else None
        if deadline is not None and datetime.now(UTC) >= deadline:
            raise PermanentTaskError(f"no signal '{name}' came before {deadline.isoformat()}")
        prompt = str(self.parameters.get("prompt", ""))
        raise WaitForSignal(name, timeout_at=deadline, prompt=prompt)

    @staticmethod
    def _answer(name: str, came: dict[str, Any]) -> dict[str, Any]:
        by = came.get("by") or "someone"
        if came.get("decision") == "reject":
            comment = f": {came['comment']}" if came.get("comment") else ""
            raise PermanentTaskError(f"signal '{name}' rejected by {by}{comment}")
        payload = came.get("payload")
        result = dict(payload) if isinstance(payload, dict) else {"payload": payload}
        result.setdefault("message", f"signal '{name}' approved by {by}")
        return result
