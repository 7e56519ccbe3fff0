from __future__ import annotations

from typing import Any

from tasks._demo import DEMO_SCHEMA, simulate
from tasks.base_task import BaseTask


class ProcessDataTask(BaseTask):
    """Transform the records fetched earlier in the execution."""

    description = (
        "Simulates processing: doubles each record's value from the most recent task that "
        "returned records; may fail at random."
    )
    parameters_schema = DEMO_SCHEMA

    async def run(self) -> dict[str, Any]:
        await simulate(self.name, self.parameters, "process data")
        records: list[dict[str, Any]] = []
        for result in reversed(list(self.context.results.values())):
            if isinstance(result, dict) and isinstance(result.get("records"), list):
                records = result["records"]
                break
        processed = [
            {**r, "value": r.get("value", 0) * 2, "processed": True}
            for r in records
            if isinstance(r, dict)
        ]
        self.context.logger.info("processed %d records", len(processed))
        return {"message": f"Processed {len(processed)} records", "records": processed}
