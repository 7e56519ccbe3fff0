"""Large inputs and results stay out of lists (issue 20, item 6): list rows carry a size and a
link instead of the input; the execution API and page cut values past FLOW_SHOW_MAX_BYTES,
with their size and a link that downloads the whole JSON (for whoever may see the execution)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from flows import services
from flows.models import Execution, FlowVersion, TaskRun
from tests.factories import flow_doc, task

pytestmark = pytest.mark.django_db

BIG_INPUT = {"items": ["x" * 100] * 10_000}  # about 1 MB of JSON
BIG_RESULT = {"rows": list(range(30_000))}  # about 170 KB of JSON, past the 64 KB limit


@pytest.fixture
def version(db: Any) -> FlowVersion:
    return services.flow_create(document=flow_doc([task("a")]))


@pytest.fixture
def big(version: FlowVersion) -> Execution:
    """A finished execution with a 1 MB input, whose step left a 170 KB result."""
    now = timezone.now()
    execution = Execution.objects.create(
        flow_id=version.flow_id,
        flow_version=version,
        status="COMPLETED",
        input=BIG_INPUT,
        started_at=now,
        ended_at=now,
        steps_taken=1,
    )
    TaskRun.objects.create(
        execution=execution,
        seq=1,
        task_name="a",
        task_type="noop",
        status="SUCCESS",
        parameters={"note": "small"},
        result=BIG_RESULT,
        started_at=now,
        ended_at=now,
        duration=0.01,
    )
    return execution


@pytest.fixture
def viewer(client_as: Any) -> Any:
    return client_as("viewer")


def compact_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


# --- API lists -------------------------------------------------------------------------------
def test_a_list_row_with_a_1_mb_input_carries_its_size_and_link_not_the_input(viewer, big):
    response = viewer.get("/api/executions/")

    assert response.status_code == 200
    assert len(response.content) < 10_000
    (row,) = response.json()["results"]
    assert "input" not in row
    assert row["input_size"] >= compact_size(BIG_INPUT)
    assert row["input_url"] == f"/api/executions/{big.id}/input"


def test_listing_executions_with_big_inputs_costs_one_query_per_page(
    viewer, version, big, django_assert_num_queries
):
    for _ in range(5):
        Execution.objects.create(flow_id=version.flow_id, flow_version=version, input=BIG_INPUT)
    viewer.get("/api/executions/")

    # token + user, user permissions, group permissions, count, one page with its joins, the
    # page's input sizes by primary key (not computed for every row a sort reads)
    with django_assert_num_queries(6):
        response = viewer.get("/api/executions/")

    assert len(response.json()["results"]) == 6
    assert len(response.content) < 20_000


# --- API detail and downloads ------------------------------------------------------------------
def test_the_execution_cuts_its_input_and_result_past_the_limit_with_size_and_link(viewer, big):
    response = viewer.get(f"/api/executions/{big.id}/")

    assert response.status_code == 200
    assert len(response.content) < 200_000
    body = response.json()
    assert body["input"] is None
    cut = body["truncated"]["input"]
    assert cut["size"] == body["input_size"] >= compact_size(BIG_INPUT)
    assert cut["url"] == f"/api/executions/{big.id}/input"
    assert cut["preview"].startswith('{"items":["xxx')
    assert 60_000 < len(cut["preview"].encode()) <= 65_536
    (step,) = body["steps"]
    assert step["result"] is None
    assert step["truncated"]["result"]["size"] == compact_size(BIG_RESULT)
    assert step["truncated"]["result"]["url"] == f"/api/executions/{big.id}/steps/1/result"
    assert step["parameters"] == {"note": "small"}  # under the limit: whole, as before
    assert "parameters" not in step["truncated"]


def test_small_values_are_shown_whole_as_before(viewer, version):
    execution = Execution.objects.create(
        flow_id=version.flow_id, flow_version=version, input={"customer": 42}
    )

    body = viewer.get(f"/api/executions/{execution.id}/").json()

    assert body["input"] == {"customer": 42}
    assert body["truncated"] == {}
    assert body["input_size"] == len('{"customer": 42}')  # the stored JSON text's bytes


def test_the_downloads_answer_the_whole_json(viewer, big):
    whole_input = viewer.get(f"/api/executions/{big.id}/input/")
    whole_result = viewer.get(f"/api/executions/{big.id}/steps/1/result/")
    parameters = viewer.get(f"/api/executions/{big.id}/steps/1/parameters/")

    assert (whole_input.status_code, whole_input.json()) == (200, BIG_INPUT)
    assert (whole_result.status_code, whole_result.json()) == (200, BIG_RESULT)
    assert (parameters.status_code, parameters.json()) == (200, {"note": "small"})


def test_a_download_of_a_step_that_does_not_exist_is_404(viewer, big):
    response = viewer.get(f"/api/executions/{big.id}/steps/7/result/")

    assert response.status_code == 404
    assert "step 7" in response.json()["detail"]


@pytest.mark.parametrize(
    "path", ["input/", "steps/1/result/", "steps/1/parameters/"], ids=["input", "result", "params"]
)
def test_downloads_need_the_right_to_see_the_execution(client_as, anon_client, big, path):
    url = f"/api/executions/{big.id}/{path}"

    assert anon_client.get(url).status_code == 401
    assert client_as(None).get(url).status_code == 403


# --- pages -----------------------------------------------------------------------------------
@pytest.fixture
def page_viewer(client: Any, make_user: Any) -> Any:
    client.force_login(make_user("vera", "viewer"))
    return client


def test_the_execution_page_shows_a_big_result_cut_with_its_size_and_a_download(page_viewer, big):
    response = page_viewer.get(f"/executions/{big.id}/")

    assert response.status_code == 200
    assert len(response.content) < 250_000  # was 1.2 MB: the whole result and input inlined
    html = response.content.decode()
    result_url = f"/executions/{big.id}/steps/1/result.json"
    input_url = f"/executions/{big.id}/input.json"
    assert f'href="{result_url}"' in html
    assert f'href="{input_url}"' in html
    assert "first 64 KB" in html
    download = page_viewer.get(result_url)
    assert download.status_code == 200
    assert json.loads(download.content) == BIG_RESULT
    assert "attachment" in download["Content-Disposition"]
    assert json.loads(page_viewer.get(input_url).content) == BIG_INPUT


def test_the_page_downloads_need_the_right_to_see_the_execution(client, make_user, big):
    client.force_login(make_user("nobody", None))

    assert client.get(f"/executions/{big.id}/input.json").status_code == 403
    assert client.get(f"/executions/{big.id}/steps/1/result.json").status_code == 403


# --- many large values in one answer -----------------------------------------------------------
@pytest.fixture
def many(version: FlowVersion) -> Execution:
    """40 steps, each with a 60 KB result: each under the limit, 2.4 MB together."""
    now = timezone.now()
    execution = Execution.objects.create(
        flow_id=version.flow_id, flow_version=version, status="COMPLETED", ended_at=now
    )
    TaskRun.objects.bulk_create(
        TaskRun(
            execution=execution,
            seq=i,
            task_name="a",
            task_type="noop",
            status="SUCCESS",
            result={"text": "y" * 60_000},
            started_at=now,
            ended_at=now,
        )
        for i in range(1, 41)
    )
    return execution


def test_one_answer_shows_at_most_the_total_then_sizes_and_links(viewer, many):
    body = viewer.get(f"/api/executions/{many.id}/").json()

    whole = [s for s in body["steps"] if s["result"] is not None]
    cut = [s for s in body["steps"] if s["result"] is None]
    assert 15 <= len(whole) <= 17  # 1 MiB of 60 KB results
    assert cut and all(s["truncated"]["result"]["url"].endswith("/result") for s in cut)
    assert cut[-1]["truncated"]["result"]["preview"] == ""


def test_the_execution_page_shows_at_most_the_total_then_sizes_and_links(page_viewer, many):
    response = page_viewer.get(f"/executions/{many.id}/")

    assert len(response.content) < 1_300_000  # was 2.4 MB and more
    html = response.content.decode()
    assert "too much to show on this page" in html
    assert f'href="/executions/{many.id}/steps/40/result.json"' in html
