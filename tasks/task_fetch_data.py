from __future__ import annotations

from typing import Any

from tasks._demo import DEMO_SCHEMA, simulate
from tasks.base_task import BaseTask


class FetchDataTask(BaseTask):
    """Fetch sample records from a (simulated) external source."""

    description = "Simulates fetching records from an external source; may fail at random."
    parameters_schema = DEMO_SCHEMA

    async def run(self) -> dict[str, Any]:
        await simulate(self.name, self.parameters, "fetch data")
        records = [
            {"id": 1, "name": "Item 1", "value": 100},
            {"id": 2, "name": "Item 2", "value": 200},
            {"id": 3, "name": "Item 3", "value": 300},
        ]
        self.context.logger.info("fetched %d records", len(records))
        return {"message": f"Fetched {len(records)} records", "records": records}
