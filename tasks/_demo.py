"""Shared behaviour of the seed's demonstration tasks (fetch/process/store)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

# The seed's demo tasks pause to look like real work; FLOW_DEMO_DELAY_SECONDS shortens the
# pause for tests and benchmarks without changing any flow document.
DEFAULT_DELAY = 0.5


def demo_delay(parameters: dict[str, Any]) -> float:
    if "delay_seconds" in parameters:
        return float(parameters["delay_seconds"])
    return float(os.environ.get("FLOW_DEMO_DELAY_SECONDS", DEFAULT_DELAY))


async def simulate(name: str, parameters: dict[str, Any], what: str) -> None:
    """Sleep like an I/O call, then fail with probability ``failure_rate``."""
    await asyncio.sleep(demo_delay(parameters))
    if random.random() < float(parameters.get("failure_rate", 0)):
        raise RuntimeError(f"Simulated failure in task {name} while trying to {what}")


DEMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "failure_rate": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": "Probability (0-1) that the task fails, to exercise failure branches.",
        },
        "delay_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 3600,
            "description": "Simulated work time (default 0.5 s, or FLOW_DEMO_DELAY_SECONDS).",
        },
    },
    "additionalProperties": True,
}
