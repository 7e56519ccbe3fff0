from __future__ import annotations

import asyncio
from typing import Any

from tasks.base_task import BaseTask


class WaitTask(BaseTask):
    """Pause the flow for a number of seconds without holding a CPU."""

    description = "Waits `seconds` (default 1, at most 3000) and succeeds."
    parameters_schema = {
        "type": "object",
        "properties": {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": 3000,
                "default": 1,
                "description": "How long to wait.",
            },
        },
        "additionalProperties": False,
    }
    # Long enough for the longest wait the schema allows (FLOW_MAX_TASK_TIMEOUT caps it too).
    default_timeout = 3060.0

    async def run(self) -> dict[str, Any]:
        seconds = float(self.parameters.get("seconds", 1))
        await asyncio.sleep(seconds)
        return {"message": f"Waited {seconds:g} seconds", "waited_seconds": seconds}
