"""Big flows stay cheap to show (issue 18, finding 9): the builder and flow pages of a
500-task flow answer with less than 1 MB, and the flow can still be edited and saved."""

from __future__ import annotations

import json

import pytest

from flows.models import Execution, Flow, FlowVersion
from tests.factories import cond, flow_doc, task
from tests.web_helpers import builder_post, stored

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


def big_document(count: int = 500, flow_id: str = "big") -> dict:
    """A chain of ``count`` print tasks, each with a condition: success to the next, failure
    to the end (the shape whose layout and target selects grew with the square)."""
    names = [f"task_{i:04d}" for i in range(count)]
    tasks = [task(n, "print", message=f"step {i}") for i, n in enumerate(names)]
    conditions = [
        cond(n, "success", names[i + 1] if i + 1 < count else "end", "end")
        for i, n in enumerate(names)
    ]
    return flow_doc(tasks, conditions, flow_id=flow_id)


@pytest.fixture
def operator(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def big(settings):
    settings.FLOW_MAX_DOCUMENT_BYTES = 4 * MB
    return stored(big_document())


def test_the_builder_of_a_500_task_flow_opens_in_the_json_tab_under_1_mb(operator, big):
    response = operator.get("/flows/big/edit")

    assert response.status_code == 200
    assert len(response.content) < MB
    html = response.content.decode()
    assert 'id="document"' in html  # the JSON tab, holding the whole document
    assert "task_0499" in html
    assert "500 tasks" in html and "up to 50 tasks" in html
    assert 'name="tasks-0-name"' not in html  # no form rows


def test_the_flow_and_version_pages_of_a_500_task_flow_answer_under_1_mb(operator, big):
    for url in ("/flows/big/", "/flows/big/v1/"):
        response = operator.get(url)
        assert response.status_code == 200, url
        assert len(response.content) < MB, url
        html = response.content.decode()
        assert "too many to draw" in html, url
        assert "<svg" not in html.split("too many to draw")[0].rsplit("<figure", 1)[-1]


def test_the_execution_page_of_a_500_task_flow_answers_under_1_mb(operator, big):
    execution = Execution.objects.create(flow_id="big", flow_version=big)

    response = operator.get(f"/executions/{execution.id}/")

    assert response.status_code == 200
    assert len(response.content) < MB
    assert "too many to draw" in response.content.decode()


def test_a_500_task_flow_is_saved_from_the_json_tab_as_a_new_version(operator, big):
    document = big_document()
    document["tasks"][-1]["parameters"]["message"] = "the last step, edited"

    response = operator.post(
        "/flows/big/edit", {"mode": "json", "action": "save", "document": json.dumps(document)}
    )

    assert response.status_code == 302
    assert Flow.objects.get(pk="big").version == 2
    saved = FlowVersion.objects.get(flow_id="big", version=2).definition
    assert saved["tasks"][-1]["parameters"]["message"] == "the last step, edited"


def test_switching_a_500_task_flow_to_the_builder_tab_keeps_the_json_tab(operator, big):
    response = operator.post(
        "/flows/big/edit",
        {"mode": "json", "action": "builder", "document": json.dumps(big_document())},
    )

    assert response.status_code == 200
    assert len(response.content) < MB
    html = response.content.decode()
    assert 'id="document"' in html and "up to 50 tasks" in html
    assert 'name="tasks-0-name"' not in html


def test_a_flow_at_the_limit_still_opens_in_the_form_with_its_graph(operator, settings):
    settings.FLOW_BUILDER_MAX_TASKS = 5
    stored(big_document(5, flow_id="five"))

    html = operator.get("/flows/five/edit").content.decode()

    assert 'name="tasks-4-name"' in html
    assert "<svg" in html


def test_a_big_flow_is_saved_from_the_form_when_the_limit_allows_it(operator, settings):
    """The form posts every row; a limit raised past the flow's size keeps the form view."""
    settings.FLOW_BUILDER_MAX_TASKS = 60
    stored(big_document(60, flow_id="sixty"))
    rows = [{"name": f"task_{i:04d}", "task_type": "noop"} for i in range(60)]

    response = operator.post("/flows/sixty/edit", builder_post({"id": "sixty"}, rows))

    assert response.status_code == 302
    assert Flow.objects.get(pk="sixty").version == 2
