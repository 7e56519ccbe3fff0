"""What the seed's built-in task types share: a simulated failure rate and demo pause.

The original seed's ``print``, ``wait``, ``fetch_data``, ``process_data`` and ``store_data``
all take ``failure_rate`` (the probability that the task raises a simulated failure; ``1``
always fails) and ignore parameters they do not know. Flows written for the seed rely on
both, so these types accept the same (see DESIGN.md, "Seed built-in task types").
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

# The seed's demo tasks pause to look like real work; FLOW_DEMO_DELAY_SECONDS shortens the
# pause for tests and benchmarks without changing any flow document.
DEFAULT_DELAY = 0.5

FAILURE_RATE: dict[str, Any] = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "default": 0,
    "description": "Probability (0-1) that the task fails, to exercise failure branches.",
}


def demo_delay(parameters: dict[str, Any]) -> float:
    if "delay_seconds" in parameters:
        return float(parameters["delay_seconds"])
    return float(os.environ.get("FLOW_DEMO_DELAY_SECONDS", DEFAULT_DELAY))


def fail_at_random(name: str, parameters: dict[str, Any], what: str = "") -> None:
    """Raise the seed's simulated failure with probability ``failure_rate``."""
    if random.random() < float(parameters.get("failure_rate", 0)):
        doing = f" while trying to {what}" if what else ""
        raise RuntimeError(f"Simulated failure in task {name}{doing}")


async def simulate(name: str, parameters: dict[str, Any], what: str) -> None:
    """Sleep like an I/O call, then fail with probability ``failure_rate``."""
    await asyncio.sleep(demo_delay(parameters))
    fail_at_random(name, parameters, what)


DEMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "failure_rate": FAILURE_RATE,
        "delay_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 3600,
            "description": "Simulated work time (default 0.5 s, or FLOW_DEMO_DELAY_SECONDS).",
        },
    },
    # The seed's tasks ignore parameters they do not use (its README passes `data_source`,
    # `timeout`, `retry_count`, ...), so seed flows carrying them must still be accepted.
    "additionalProperties": True,
}
