from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.base_task import BaseTask, PermanentTaskError, WaitUntil

# A durable sleep waits in the database, so it may be long; a year bounds what a typo costs.
MAX_SLEEP_SECONDS = 366 * 86_400


class SleepTask(BaseTask):
    """Wait a while holding no worker: the step waits in the database until its time."""

    description = (
        "Waits `seconds` (up to a year) or `until` an ISO 8601 time, in the database: no "
        "worker is held meanwhile, and a worker restart does not shorten or restart it."
    )
    parameters_schema = {
        "type": "object",
        "properties": {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_SLEEP_SECONDS,
                "description": "How long to wait, from when the step first runs.",
            },
            "until": {
                "type": "string",
                "format": "date-time",
                "maxLength": 64,
                "description": "Wait until this time (ISO 8601 with a UTC offset).",
            },
        },
        "oneOf": [{"required": ["seconds"]}, {"required": ["until"]}],
        "additionalProperties": False,
    }

    async def run(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        waiting = self.context.waiting
        if waiting and waiting.get("kind") == "until":
            # Running again: the time was fixed when the step first ran.
            until = datetime.fromisoformat(waiting["until"])
        else:
            until = self._until(now)
        if now < until:
            raise WaitUntil(until)
        return {"message": f"Slept until {until.isoformat()}", "slept_until": until.isoformat()}

    def _until(self, now: datetime) -> datetime:
        if "until" in self.parameters:
            try:
                until = datetime.fromisoformat(str(self.parameters["until"]))
            except ValueError:
                raise PermanentTaskError(
                    f"until: {self.parameters['until']!r} is not an ISO 8601 time"
                ) from None
            if until.tzinfo is None:
                raise PermanentTaskError("until: give a UTC offset, such as 2027-01-01T09:00Z")
            if until - now > timedelta(seconds=MAX_SLEEP_SECONDS):
                raise PermanentTaskError("until: at most a year ahead")
            return until
        return now + timedelta(seconds=float(self.parameters.get("seconds", 0)))
