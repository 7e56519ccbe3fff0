"""Pictures of executions over time, drawn on the server as SVG (no JavaScript): stacked bars
of executions per hour or per day by status, and a flow's duration p50/p95 per day.

The counts come grouped from SQL (``ExecutionQuerySet.counts_by_period``: at most one row
per period and status, however many executions); the durations from a bounded sample
(``durations_sample``), whose percentiles are computed here. This module only lays them out:
rectangles, lines and labels in SVG coordinates that ``templates/flows/_chart_*.html`` draw.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flows.models import Execution, ExecutionStatus

WIDTH, HEIGHT = 720, 190
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 24  # room for the axes' labels
# Bottom to top: how a bar's statuses are stacked (the end states first).
STACK = [
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.RUNNING,
    ExecutionStatus.QUEUED,
    ExecutionStatus.PAUSED,
    ExecutionStatus.CREATED,
]
# A flow's durations: the latest this many finished runs of the window.
DURATION_SAMPLE = 2000
DASHBOARD_DURATION_SAMPLE = 500
DASHBOARD_FLOWS = 4


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    status: str
    count: int
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass
class Chart:
    """What a template draws: its size, bars or lines, and the axes' labels."""

    title: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)  # {name, points, dots}
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    total: int = 0
    legend: list[str] = field(default_factory=list)

    @property
    def plot_bottom(self) -> float:
        return self.height - BOTTOM

    @property
    def plot_left(self) -> float:
        return LEFT


def _periods(unit: str, count: int, now: datetime) -> list[datetime]:
    """The ``count`` periods ending with the current one, oldest first (UTC)."""
    now = now.astimezone(UTC)
    if unit == "hour":
        last = now.replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        last = now.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(days=1)
    return [last - step * (count - 1 - i) for i in range(count)]


def _nice_max(value: float) -> float:
    """A round top for the y axis at or above ``value`` (1, 2 or 5 times a power of 10)."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _y_ticks(top: float, unit: str = "") -> list[Tick]:
    plot = HEIGHT - TOP - BOTTOM
    return [Tick(LEFT - 4, TOP + plot * (1 - f), f"{top * f:g}{unit}") for f in (0, 0.5, 1)]


def _label(period: datetime, unit: str) -> str:
    return period.strftime("%H:00") if unit == "hour" else period.strftime("%m-%d")


def stacked_bars(
    rows: Iterable[tuple[Any, str, int]], *, unit: str, count: int, now: datetime, title: str
) -> Chart:
    """Bars of ``rows`` (``(period start, status, n)``, from ``counts_by_period``) for the
    ``count`` periods ending now, each stacked by status."""
    periods = _periods(unit, count, now)
    counts: dict[datetime, dict[str, int]] = defaultdict(dict)
    for period, status, n in rows:
        if period is None:
            continue
        start = period.astimezone(UTC) if period.tzinfo else period.replace(tzinfo=UTC)
        counts[start][status] = counts[start].get(status, 0) + n
    totals = [sum(counts[p].values()) for p in periods]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / count
    chart = Chart(title=title, total=sum(totals), y_ticks=_y_ticks(top))
    seen: set[str] = set()
    every = max(1, count // 8)  # about eight labels under the bars
    for i, period in enumerate(periods):
        x = LEFT + i * slot + slot * 0.1
        y = TOP + plot_h
        for status in STACK:
            n = counts[period].get(status, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            seen.add(status)
            when = period.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")
            chart.bars.append(
                Bar(
                    round(x, 1),
                    round(y, 1),
                    round(slot * 0.8, 1),
                    round(h, 1),
                    status,
                    n,
                    f"{when} UTC: {n} {status.lower()}",
                )
            )
        if i % every == 0 or i == count - 1:
            chart.x_ticks.append(
                Tick(round(LEFT + (i + 0.5) * slot, 1), HEIGHT - 8, _label(period, unit))
            )
    chart.legend = [s for s in STACK if s in seen]
    return chart


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of sorted values."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def duration_lines(
    sample: Iterable[tuple[datetime, float]], *, days: int, now: datetime, title: str
) -> Chart:
    """p50 and p95 of the sampled durations (``(created_at, seconds)``) per day."""
    periods = _periods("day", days, now)
    by_day: dict[datetime, list[float]] = defaultdict(list)
    for created, seconds in sample:
        day = created.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        by_day[day].append(seconds)
    stats = {}
    for day, values in by_day.items():
        values.sort()
        stats[day] = (percentile(values, 50), percentile(values, 95), len(values))
    top = _nice_max(max((s[1] for s in stats.values()), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / days
    chart = Chart(title=title, total=sum(s[2] for s in stats.values()), y_ticks=_y_ticks(top, "s"))
    for name, index in (("p50", 0), ("p95", 1)):
        dots = []
        for i, day in enumerate(periods):
            if day not in stats:
                continue
            value = stats[day][index]
            x = round(LEFT + (i + 0.5) * slot, 1)
            y = round(TOP + plot_h * (1 - value / top), 1)
            dots.append(
                {
                    "x": x,
                    "y": y,
                    "title": f"{day:%Y-%m-%d}: {name} {value:.3f}s of {stats[day][2]} runs",
                }
            )
        points = " ".join(f"{d['x']},{d['y']}" for d in dots)
        chart.lines.append({"name": name, "points": points, "dots": dots})
    every = max(1, days // 8)
    chart.x_ticks = [
        Tick(round(LEFT + (i + 0.5) * slot, 1), HEIGHT - 8, _label(day, "day"))
        for i, day in enumerate(periods)
        if i % every == 0 or i == days - 1
    ]
    return chart


# --- the pages' charts --------------------------------------------------------------------------
def dashboard_charts(now: datetime) -> dict[str, Any]:
    """The dashboard's: per hour over 24 h, per day over 30 days, and the durations over 30
    days of the flows run most in the last 7 (a few queries, whatever the number of
    executions)."""
    executions = Execution.objects
    month = now - timedelta(days=30)
    hourly = executions.counts_by_period("hour", _periods("hour", 24, now)[0])
    daily = executions.counts_by_period("day", _periods("day", 30, now)[0])
    busiest = executions.busiest_flows(now - timedelta(days=7), DASHBOARD_FLOWS)
    samples = executions.durations_sample(busiest, month, DASHBOARD_DURATION_SAMPLE)
    durations = [
        duration_lines(sample, days=30, now=now, title=f"{flow_id}: duration p50/p95 per day")
        for flow_id, sample in samples.items()
    ]
    return {
        "hourly": stacked_bars(
            hourly, unit="hour", count=24, now=now, title="Executions per hour, last 24 hours"
        ),
        "daily": stacked_bars(
            daily, unit="day", count=30, now=now, title="Executions per day, last 30 days"
        ),
        "durations": durations,
    }


def flow_charts(flow_id: str, now: datetime) -> dict[str, Any]:
    """A flow page's: its executions per day over 30 days and its duration p50/p95."""
    executions = Execution.objects.filter(flow_id=flow_id)
    daily = executions.counts_by_period("day", _periods("day", 30, now)[0])
    samples = Execution.objects.durations_sample(
        [flow_id], now - timedelta(days=30), DURATION_SAMPLE
    )
    return {
        "daily": stacked_bars(
            daily, unit="day", count=30, now=now, title="Executions per day, last 30 days"
        ),
        "durations": duration_lines(
            samples[flow_id], days=30, now=now, title="Duration p50/p95 per day, last 30 days"
        ),
    }
