from __future__ import annotations

from typing import Any

from tasks.base_task import BaseTask


class PrintTask(BaseTask):
    """Write a message to the execution's log."""

    description = "Writes `message` to the execution's log and returns it."
    parameters_schema = {
        "type": "object",
        "properties": {
            "message": {"type": "string", "maxLength": 10000, "description": "Text to log."},
        },
        "additionalProperties": False,
    }

    async def run(self) -> dict[str, Any]:
        message = str(self.parameters.get("message", ""))
        self.context.logger.info("%s", message)
        return {"message": message}
