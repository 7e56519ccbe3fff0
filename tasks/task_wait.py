from __future__ import annotations

import asyncio
from typing import Any

from tasks._demo import FAILURE_RATE, fail_at_random
from tasks.base_task import BaseTask


class WaitTask(BaseTask):
    """Pause the flow for a number of seconds without holding a CPU."""

    description = (
        "Waits `seconds` (default 1, at most 3000) and succeeds; fails with probability "
        "`failure_rate` (the seed's parameters)."
    )
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
            "failure_rate": FAILURE_RATE,
        },
        # As the seed's wait: parameters it does not use are ignored, not refused.
        "additionalProperties": True,
    }
    # Long enough for the longest wait the schema allows (FLOW_MAX_TASK_TIMEOUT caps it too).
    default_timeout = 3060.0

    async def run(self) -> dict[str, Any]:
        # The seed decides its simulated failure before waiting.
        fail_at_random(self.name, self.parameters)
        seconds = self.parameters.get("seconds", 1)
        await asyncio.sleep(float(seconds))
        # `waited_seconds` is the seed's result key: the number exactly as the flow gave it.
        return {"message": f"Waited {float(seconds):g} seconds", "waited_seconds": seconds}
