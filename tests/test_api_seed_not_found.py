"""The seed's endpoints answer an unknown execution id in the seed's own words,
``"Flow execution <id> not found"``, in the API's one error shape."""

from __future__ import annotations

import uuid

import pytest

from tests.factories import error_body

pytestmark = pytest.mark.django_db

IDS = [str(uuid.uuid4()), "not-a-uuid"]


@pytest.mark.parametrize("execution_id", IDS)
def test_status_of_an_unknown_execution_says_flow_execution_not_found(api, execution_id):
    body = error_body(api.get(f"/flow/{execution_id}/status"), 404)

    assert body == {
        "detail": f"Flow execution {execution_id} not found",
        "code": "not_found",
        "errors": [],
    }


@pytest.mark.parametrize("execution_id", IDS)
def test_deleting_an_unknown_execution_says_flow_execution_not_found(api, execution_id):
    body = error_body(api.delete(f"/flow/{execution_id}"), 404)

    assert body["detail"] == f"Flow execution {execution_id} not found"
    assert body["code"] == "not_found"


def test_executing_an_unknown_execution_says_flow_execution_not_found(api):
    execution_id = str(uuid.uuid4())

    body = error_body(api.post("/flow/execute", {"execution_id": execution_id}, format="json"), 404)

    assert body["detail"] == f"Flow execution {execution_id} not found"
    assert body["code"] == "not_found"
