"""The dashboard's and the flow page's pictures: server-drawn SVG bars of executions per hour
and per day by status, and a flow's duration p50/p95 per day, from counts grouped in SQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from flows import services
from flows.models import Execution, ExecutionStatus
from flows.web import charts
from tests.factories import flow_doc, task

pytestmark = [pytest.mark.django_db]

NOW = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


def make(flow_id: str, when: datetime, status: str, count: int = 1, seconds: float = 1.0):
    """``count`` top-level executions of ``flow_id`` created at ``when`` in ``status``,
    that ran ``seconds``."""
    version = services.flow_create(document=flow_doc([task("a")], flow_id=flow_id))
    rows = Execution.objects.bulk_create(
        [
            Execution(
                flow_id=flow_id,
                flow_version=version,
                status=status,
                started_at=when,
                ended_at=when + timedelta(seconds=seconds),
            )
            for _ in range(count)
        ]
    )
    # created_at is auto_now_add: set it afterwards.
    Execution.objects.filter(pk__in=[r.pk for r in rows]).update(created_at=when)


def bars(html: str, chart_id: str) -> list[tuple[str, str, int]]:
    """(bar title's period, status, count) of every bar in the figure titled ``chart_id``."""
    figure = html[html.index(f'id="{chart_id}-title"') :]
    figure = figure[: figure.index("</svg>")]
    return [
        (title.split(" UTC")[0], status, int(count))
        for status, count, title in re.findall(
            r'data-status="(\w+)" data-count="(\d+)"><title>([^<]*)</title>', figure
        )
    ]


def test_the_dashboard_draws_a_bar_per_hour_and_status_for_the_executions_created(
    client, alice
) -> None:
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    make("etl", hour - timedelta(hours=2) + timedelta(minutes=5), ExecutionStatus.COMPLETED, 3)
    make("etl", hour - timedelta(hours=2) + timedelta(minutes=50), ExecutionStatus.FAILED, 2)
    make("etl", hour + timedelta(seconds=1), ExecutionStatus.FAILED, 1)
    make("etl", now - timedelta(days=3), ExecutionStatus.COMPLETED, 4)  # not in the 24 h
    client.force_login(alice)

    html = client.get("/").content.decode()

    two_hours_ago = (hour - timedelta(hours=2)).astimezone(UTC).strftime("%Y-%m-%d %H:00")
    this_hour = hour.astimezone(UTC).strftime("%Y-%m-%d %H:00")
    assert bars(html, "chart-hourly") == [
        (two_hours_ago, "COMPLETED", 3),
        (two_hours_ago, "FAILED", 2),
        (this_hour, "FAILED", 1),
    ]
    day = bars(html, "chart-daily")
    assert (
        (now - timedelta(days=3)).astimezone(UTC).strftime("%Y-%m-%d"),
        "COMPLETED",
        4,
    ) in day
    assert sum(count for _, _, count in day) == 10
    assert "etl: duration p50/p95 per day" in html


def test_bars_stack_by_status_and_scale_to_the_busiest_period() -> None:
    rows = [
        (NOW.replace(hour=9, minute=0), "COMPLETED", 6),
        (NOW.replace(hour=9, minute=0), "FAILED", 4),
        (NOW.replace(hour=10, minute=0), "COMPLETED", 5),
    ]

    chart = charts.stacked_bars(rows, unit="hour", count=24, now=NOW, title="t")

    completed9, failed9, completed10 = chart.bars
    plot = charts.HEIGHT - charts.TOP - charts.BOTTOM
    assert chart.total == 15
    assert (completed9.h, failed9.h) == (round(plot * 0.6, 1), round(plot * 0.4, 1))
    assert failed9.y + failed9.h == pytest.approx(completed9.y, abs=0.11)  # stacked on top
    assert completed10.h == round(plot * 0.5, 1)
    assert completed10.x > completed9.x
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]


def test_the_percentiles_are_nearest_rank() -> None:
    values = sorted(float(n) for n in range(1, 101))
    assert charts.percentile(values, 50) == 50.0
    assert charts.percentile(values, 95) == 95.0
    assert charts.percentile([7.0], 95) == 7.0


def test_the_flow_page_draws_its_p50_and_p95_per_day(client, alice) -> None:
    day = timezone.now() - timedelta(days=1)
    for seconds in range(1, 21):  # 1 s .. 20 s
        make("etl", day, ExecutionStatus.COMPLETED, seconds=float(seconds))
    client.force_login(alice)

    html = client.get("/flows/etl/").content.decode()

    label = day.astimezone(UTC).strftime("%Y-%m-%d")
    assert f"{label}: p50 10.000s of 20 runs" in html
    assert f"{label}: p95 19.000s of 20 runs" in html
    assert (label, "COMPLETED", 20) in bars(html, "chart-daily")


def test_the_grouped_counts_are_one_row_per_period_and_status(django_assert_num_queries) -> None:
    start = timezone.now() - timedelta(hours=3)
    make("etl", start, ExecutionStatus.COMPLETED, 150)
    make("etl", start, ExecutionStatus.FAILED, 50)
    make("etl", start + timedelta(hours=1), ExecutionStatus.COMPLETED, 100)

    with django_assert_num_queries(1):
        rows = Execution.objects.counts_by_period("hour", start - timedelta(hours=1))

    assert sorted((status, n) for _, status, n in rows) == [
        ("COMPLETED", 100),
        ("COMPLETED", 150),
        ("FAILED", 50),
    ]


def test_the_duration_sample_is_bounded_per_flow() -> None:
    when = timezone.now() - timedelta(hours=1)
    make("etl", when, ExecutionStatus.COMPLETED, 30)
    make("billing", when, ExecutionStatus.FAILED, 5)

    sample = Execution.objects.durations_sample(["etl", "billing"], when - timedelta(days=1), 10)

    assert {flow: len(rows) for flow, rows in sample.items()} == {"etl": 10, "billing": 5}
