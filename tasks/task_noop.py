from __future__ import annotations

from typing import Any

from tasks.base_task import BaseTask


class NoopTask(BaseTask):
    """Do nothing and succeed: a placeholder, and the unit of the engine benchmark."""

    description = "Does nothing and succeeds at once; a placeholder step."
    parameters_schema = {"type": "object", "properties": {}, "additionalProperties": False}

    async def run(self) -> dict[str, Any]:
        return {}
