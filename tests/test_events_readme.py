"""The README's lines for flow triggers and schedules/backfills, run as written (their JSON
bodies and the backfill command line are read from the README itself)."""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from flows import services
from flows.models import Execution, FlowSchedule
from tests.factories import run_to_end

pytestmark = pytest.mark.django_db

README = (Path(settings.BASE_DIR) / "README.md").read_text()
EXAMPLES = Path(settings.BASE_DIR) / "examples"


def section(title: str) -> str:
    start = README.index(f"### {title}\n")
    return README[start : README.index("\n### ", start + 1)]


def bodies(text: str) -> list[dict]:
    """The JSON bodies of the section's curl lines (``-d '{…}'``), in order."""
    return [json.loads(b) for b in re.findall(r"-d '(\{.*?\})'", text)]


def post_file(api, name: str) -> None:
    response = api.post("/api/flows/", json.loads((EXAMPLES / name).read_text()), format="json")
    assert response.status_code == 201, response.content


def test_the_flow_trigger_lines_start_the_triggered_flow_once(api) -> None:
    post_file(api, "sample_flow.json")
    post_file(api, "triggered_flow.json")
    start = api.post(
        "/api/flows/example_flow/executions/", bodies(section("Flow triggers"))[0], format="json"
    )
    assert start.status_code == 201
    run_to_end(start.json()["id"])
    services.handle_ends()

    listed = api.get("/api/executions/", {"flow": "after_example", "trigger": "flow"}).json()
    assert listed["count"] == 1
    (row,) = listed["results"]
    assert (row["trigger"], row["triggered_by"]) == ("flow", start.json()["id"])
    triggered = run_to_end(row["id"])
    assert triggered.status == "COMPLETED"
    message = triggered.steps.get().result["message"]
    assert message.startswith(f"example_flow {start.json()['id']} ended COMPLETED: Stored ")


def test_the_schedule_and_backfill_lines_work_as_written(api) -> None:
    post_file(api, "sample_flow.json")
    schedule, backfill = bodies(section("Schedules and backfills"))
    assert api.put("/api/flows/example_flow/schedule/", schedule, format="json").status_code == 200
    assert FlowSchedule.objects.get().overlap == "buffer_one"

    dry = api.post("/api/flows/example_flow/backfill/", backfill, format="json")
    assert dry.status_code == 200
    assert dry.json()["counts"] == {"run": 6, "rerun": 0, "skip": 0}
    assert dry.json()["slots"][0] == {
        "slot": "2026-11-01T00:00:00Z",
        "action": "run",
        "reason": "never ran",
        "execution": None,
    }

    [line] = [
        line
        for line in README.splitlines()
        if line.startswith(".venv/bin/python manage.py backfill ")
    ]
    out = StringIO()
    call_command(*shlex.split(line)[2:], stdout=out)
    assert out.getvalue().splitlines()[-1].endswith(": 6 slot(s): 6 run, 0 rerun, 0 skip")
    assert Execution.objects.filter(trigger="backfill", status="QUEUED").count() == 2
    assert Execution.objects.filter(trigger="backfill", status="CREATED").count() == 4
