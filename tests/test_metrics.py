"""GET /metrics: Prometheus text computed from the database, protected like the API."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from flows.models import Execution, TaskRun, TaskRunStatus
from tests.factories import failing, flow_doc, mapped, run_flow, start_execution, task

pytestmark = pytest.mark.django_db


def scrape(client: Any) -> dict[str, Any]:
    """GET /metrics and parse it: {family name: {(labels...): value}} per sample name."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def metrics_client(client: Any, alice: Any) -> Any:
    client.force_login(alice)
    return client


def test_execution_counts_match_what_the_database_holds(metrics_client: Any) -> None:
    run_flow(flow_doc([task("a"), task("b")], flow_id="ok_flow"))
    run_flow(flow_doc([task("a")], flow_id="ok_flow"))
    run_flow(flow_doc([failing("x")], flow_id="bad_flow"))
    start_execution(flow_doc([task("a")], flow_id="waiting_flow"))  # QUEUED, not run

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_executions", status="COMPLETED") == 2
    assert value(samples, "flowmanager_executions", status="FAILED") == 1
    assert value(samples, "flowmanager_executions", status="QUEUED") == 1
    # Every status is present, so a series does not vanish when its count drops to zero.
    assert value(samples, "flowmanager_executions", status="CANCELLED") == 0
    assert value(samples, "flowmanager_executions_started", status="COMPLETED") == 2
    assert value(samples, "flowmanager_executions_started", status="QUEUED") == 0
    total = sum(samples["flowmanager_executions"].values())
    assert total == Execution.objects.count() == 4


def test_flow_label_splits_executions_per_flow_when_enabled(
    metrics_client: Any, settings: Any
) -> None:
    settings.METRICS_FLOW_LABEL = True
    run_flow(flow_doc([task("a")], flow_id="ok_flow"))
    run_flow(flow_doc([failing("x")], flow_id="bad_flow"))

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_executions", flow="ok_flow", status="COMPLETED") == 1
    assert value(samples, "flowmanager_executions", flow="ok_flow", status="FAILED") == 0
    assert value(samples, "flowmanager_executions", flow="bad_flow", status="FAILED") == 1


MAP_OF_FIVE = flow_doc([mapped("each", "${input.items}", [task("x")])], flow_id="fan_out")


def test_a_map_of_5_items_is_one_execution_and_5_child_executions(metrics_client: Any) -> None:
    run_flow(MAP_OF_FIVE, input={"items": [1, 2, 3, 4, 5]})
    assert Execution.objects.count() == 6

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_executions", status="COMPLETED") == 1
    assert sum(samples["flowmanager_executions"].values()) == 1
    assert value(samples, "flowmanager_executions_started", status="COMPLETED") == 1
    assert value(samples, "flowmanager_child_executions", status="COMPLETED") == 5
    assert sum(samples["flowmanager_child_executions"].values()) == 5
    # Every status is present here too, so a fan-out's series never vanishes.
    assert value(samples, "flowmanager_child_executions", status="RUNNING") == 0


def test_the_flow_label_splits_child_executions_per_flow_too(
    metrics_client: Any, settings: Any
) -> None:
    settings.METRICS_FLOW_LABEL = True
    run_flow(MAP_OF_FIVE, input={"items": [1, 2, 3, 4, 5]})
    run_flow(flow_doc([task("a")], flow_id="plain"))

    samples = scrape(metrics_client)

    labels = {"flow": "fan_out", "status": "COMPLETED"}
    assert value(samples, "flowmanager_executions", **labels) == 1
    assert value(samples, "flowmanager_child_executions", **labels) == 5
    assert value(samples, "flowmanager_child_executions", flow="plain", status="COMPLETED") == 0


def test_without_the_flow_label_no_series_names_a_flow(metrics_client: Any) -> None:
    run_flow(flow_doc([task("a")], flow_id="ok_flow"))
    samples = scrape(metrics_client)
    assert all("flow" not in dict(key) for key in samples["flowmanager_executions"])


def test_step_duration_histogram_buckets_each_task_type(metrics_client: Any) -> None:
    execution = run_flow(
        flow_doc([task("a"), task("b"), task("c"), task("p", "print", message="hi")])
    )
    steps = {s.task_name: s for s in execution.steps.all()}
    # Known durations, so that the bucket each step falls in is certain.
    for name, seconds in {"a": 0.3, "b": 7.0, "c": 700.0, "p": 0.02}.items():
        TaskRun.objects.filter(pk=steps[name].pk).update(duration=seconds)

    samples = scrape(metrics_client)

    def bucket(le: str, task_type: str = "noop") -> float:
        name = "flowmanager_step_duration_seconds_bucket"
        return value(samples, name, le=le, task_type=task_type)

    assert bucket("0.25") == 0
    assert bucket("0.5") == 1
    assert bucket("5.0") == 1
    assert bucket("10.0") == 2
    assert bucket("600.0") == 2
    assert bucket("1800.0") == 3
    assert bucket("+Inf") == 3
    assert value(samples, "flowmanager_step_duration_seconds_count", task_type="noop") == 3
    assert value(samples, "flowmanager_step_duration_seconds_sum", task_type="noop") == (
        pytest.approx(707.3)
    )
    assert bucket("0.025", "print") == 1
    assert value(samples, "flowmanager_step_duration_seconds_count", task_type="print") == 1


def test_histogram_counts_every_finished_step_the_database_holds(metrics_client: Any) -> None:
    run_flow(flow_doc([task("a"), failing("x")], flow_id="one"))
    run_flow(flow_doc([task("a")], flow_id="two"))

    samples = scrape(metrics_client)

    for task_type in ("noop", "fetch_data"):
        stored = TaskRun.objects.filter(task_type=task_type, duration__isnull=False)
        assert (
            value(samples, "flowmanager_step_duration_seconds_count", task_type=task_type)
            == stored.count()
        )
        assert value(
            samples, "flowmanager_step_duration_seconds_sum", task_type=task_type
        ) == pytest.approx(stored.aggregate(s=Sum("duration"))["s"])


def test_open_steps_split_into_due_delayed_running_and_expired(metrics_client: Any) -> None:
    now = timezone.now()
    executions = [start_execution(flow_doc([task("a")], flow_id=f"f{i}")) for i in range(5)]
    steps = [TaskRun.objects.get(execution=e) for e in executions]
    # 0: due (no delay); 1: a retry whose delay has passed (due); 2: delayed retry;
    # 3: running under a live lease; 4: running with an expired lease (dead worker).
    TaskRun.objects.filter(pk=steps[1].pk).update(not_before=now - timedelta(seconds=5))
    TaskRun.objects.filter(pk=steps[2].pk).update(not_before=now + timedelta(minutes=5))
    TaskRun.objects.filter(pk=steps[3].pk).update(
        status=TaskRunStatus.RUNNING, lease_expires_at=now + timedelta(seconds=30)
    )
    TaskRun.objects.filter(pk=steps[4].pk).update(
        status=TaskRunStatus.RUNNING, lease_expires_at=now - timedelta(seconds=30)
    )

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_steps_pending", state="due") == 2
    assert value(samples, "flowmanager_steps_pending", state="delayed") == 1
    assert value(samples, "flowmanager_steps_running") == 2
    assert value(samples, "flowmanager_steps_lease_expired") == 1


def test_worker_clusters_come_from_the_cluster_status(
    metrics_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clusters = [SimpleNamespace(workers=[11, 12]), SimpleNamespace(workers=[21, 22, 23])]
    monkeypatch.setattr("flows.metrics.collector.Stat.get_all", lambda *a, **k: clusters)

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_worker_clusters") == 2
    assert value(samples, "flowmanager_worker_processes") == 5
    assert value(samples, "flowmanager_metrics_source_up", source="clusters") == 1


def test_no_cluster_running_reports_zero(metrics_client: Any) -> None:
    samples = scrape(metrics_client)
    assert value(samples, "flowmanager_worker_clusters") == 0


def test_an_unreadable_cache_hides_only_the_cluster_figures(
    metrics_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[Any]:
        raise ConnectionError("cache down")

    monkeypatch.setattr("flows.metrics.collector.Stat.get_all", broken)
    run_flow(flow_doc([task("a")]))

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_metrics_source_up", source="clusters") == 0
    assert "flowmanager_worker_clusters" not in samples
    assert value(samples, "flowmanager_executions", status="COMPLETED") == 1


def test_queued_jobs_are_the_broker_queue_size(metrics_client: Any, settings: Any) -> None:
    from django_q.brokers import get_broker

    start_execution(flow_doc([task("a")], flow_id="one"))
    start_execution(flow_doc([task("a")], flow_id="two"))

    samples = scrape(metrics_client)

    assert value(samples, "flowmanager_queue_jobs") == get_broker().queue_size()
    if not settings.REDIS_URL:
        # The ORM broker's queue row commits with the execution: both jobs are waiting.
        assert value(samples, "flowmanager_queue_jobs") == 2
    assert value(samples, "flowmanager_metrics_source_up", source="queue") == 1


def test_query_count_stays_the_same_as_rows_grow(
    metrics_client: Any, django_assert_max_num_queries: Any
) -> None:
    run_flow(flow_doc([task("a")], flow_id="first"))
    with CaptureQueriesContext(connection) as small:
        scrape(metrics_client)

    for i in range(6):
        tasks = [task("a"), task("p", "print", message="x"), failing("z")]
        run_flow(flow_doc(tasks, flow_id=f"f{i}"))
        start_execution(flow_doc([task("a", "wait", seconds=1)], flow_id=f"w{i}"))
    run_flow(MAP_OF_FIVE, input={"items": [1, 2, 3, 4, 5]})  # child executions too

    with django_assert_max_num_queries(len(small.captured_queries)):
        scrape(metrics_client)
    # Session, user, three aggregates, cluster status and queue size: a small fixed number.
    assert len(small.captured_queries) <= 8


def test_anonymous_requests_get_401(client: Any) -> None:
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"]


def test_an_api_token_is_accepted(api: Any) -> None:
    assert api.get("/metrics").status_code == 200


def test_a_wrong_api_token_gets_401(anon_client: Any) -> None:
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anon_client.get("/metrics").status_code == 401


def test_the_metrics_token_opens_it_to_a_scraper(client: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = "scraper-secret-0123456789"
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scraper-secret-0123456789")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scraper-secret-guess")
    assert ok.status_code == 200
    assert wrong.status_code == 401
    assert client.get("/metrics").status_code == 401
    assert 'Bearer realm="metrics"' in wrong["WWW-Authenticate"]


def test_a_bearer_token_means_nothing_without_metrics_token(client: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_metrics_public_opens_it_to_anyone(client: Any, settings: Any) -> None:
    settings.METRICS_PUBLIC = True
    samples = scrape(client)
    assert "flowmanager_executions" in samples


def test_only_get_is_allowed(metrics_client: Any) -> None:
    assert metrics_client.post("/metrics").status_code == 405
