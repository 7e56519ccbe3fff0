"""Expected client errors (a 404, a 409 for a signal that already came, a 400) are logged at
INFO, not as WARNINGs an operator would chase; a server error stays an ERROR."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from flows.api.seed import views as seed_views
from tests.factories import flow_doc, run_to_end, start_execution, task

pytestmark = pytest.mark.django_db


def request_records(caplog: Any) -> list[tuple[str, int]]:
    return [
        (r.levelname, getattr(r, "status_code", 0))
        for r in caplog.records
        if r.name == "django.request"
    ]


@pytest.fixture
def operator(client_as: Any) -> Any:
    return client_as("operator")


def test_a_404_for_an_unknown_execution_logs_at_info(caplog, operator):
    caplog.set_level(logging.DEBUG)

    assert operator.get(f"/flow/{uuid.uuid4()}/status").status_code == 404
    assert operator.get("/no/such/page/").status_code == 404

    assert request_records(caplog) == [("INFO", 404), ("INFO", 404)]


def test_a_409_for_a_signal_that_already_came_logs_at_info(caplog, operator):
    execution = start_execution(
        flow_doc([task("approve", "wait_for_signal", signal="go"), task("done")])
    )
    run_to_end(execution.id)
    path = f"/api/executions/{execution.id}/signal/"
    assert operator.post(path, {"name": "go"}, format="json").status_code == 200
    caplog.set_level(logging.DEBUG)

    assert operator.post(path, {"name": "go"}, format="json").status_code == 409
    assert operator.post(path, {"name": 7, "decision": "maybe"}, format="json").status_code == 400

    assert request_records(caplog) == [("INFO", 409), ("INFO", 400)]


def test_expected_client_errors_are_not_logged_when_the_logger_shows_only_warnings(
    caplog, operator
):
    caplog.set_level(logging.WARNING, logger="django")

    assert operator.get(f"/flow/{uuid.uuid4()}/status").status_code == 404

    assert request_records(caplog) == []


def test_a_server_error_still_logs_as_an_error(caplog, operator, monkeypatch):
    def broken(execution_id: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(seed_views.selectors, "execution_for_status", broken)
    operator.raise_request_exception = False
    caplog.set_level(logging.DEBUG)

    assert operator.get(f"/flow/{uuid.uuid4()}/status").status_code == 500

    assert request_records(caplog) == [("ERROR", 500)]
