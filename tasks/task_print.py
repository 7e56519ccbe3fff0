from __future__ import annotations

import json
from typing import Any

from tasks._demo import FAILURE_RATE, fail_at_random
from tasks.base_task import BaseTask


class PrintTask(BaseTask):
    """Write a message to the execution's log."""

    description = (
        "Writes `message` to the execution's log and returns it; fails with probability "
        "`failure_rate` (the seed's parameters)."
    )
    parameters_schema = {
        "type": "object",
        "properties": {
            # The seed prints whatever it is given; a number or a boolean is logged as JSON.
            "message": {
                "type": ["string", "number", "boolean"],
                "maxLength": 10000,
                "description": "Text to log.",
            },
            "failure_rate": FAILURE_RATE,
        },
        # As the seed's print: parameters it does not use are ignored, not refused.
        "additionalProperties": True,
    }

    async def run(self) -> dict[str, Any]:
        # The seed decides its simulated failure before printing anything.
        fail_at_random(self.name, self.parameters)
        value = self.parameters.get("message", "")
        message = value if isinstance(value, str) else json.dumps(value)
        self.context.logger.info("%s", message)
        # `message_printed` is the seed's result key, kept for flows and clients that read it.
        return {"message": message, "message_printed": value}
