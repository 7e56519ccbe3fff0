from __future__ import annotations

from typing import Any

from tasks._demo import DEMO_SCHEMA, simulate
from tasks.base_task import BaseTask


class StoreDataTask(BaseTask):
    """Store the processed records in a (simulated) destination."""

    description = "Simulates storing the most recent records; may fail at random."
    parameters_schema = DEMO_SCHEMA

    async def run(self) -> dict[str, Any]:
        await simulate(self.name, self.parameters, "store data")
        count = 0
        for result in reversed(list(self.context.results.values())):
            if isinstance(result, dict) and isinstance(result.get("records"), list):
                count = len(result["records"])
                break
        return {"message": f"Stored {count} records", "stored": count}
