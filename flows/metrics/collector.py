"""A Prometheus collector that reads every figure from the shared database at scrape time.

Web servers and workers are many processes on many machines, so counters kept in process
memory would each see a slice and never add up. Instead each scrape asks the one database
(and the django-q2 broker/cache) with a fixed number of aggregate queries, whatever the row
count:

1. executions per status (and per flow when ``METRICS_FLOW_LABEL`` is on), top-level ones and
   child ones (parallel branches, map items, sub-flows) apart: one GROUP BY;
2. step durations bucketed per task type: one GROUP BY with one conditional COUNT per bucket;
3. open steps (due, delayed by a retry, running, running with an expired lease): one
   conditional aggregate over the PENDING/RUNNING rows;
4. worker clusters alive: ``Stat.get_all()`` (the shared cache: one or two cache reads);
5. jobs waiting in the queue: ``broker.queue_size()`` (one COUNT with the ORM broker, one
   LLEN with Redis).

Figures 1 and 2 count the rows the database holds, so they drop when retention
(``purge_executions``) deletes old executions: they are exposed as gauges (1) and as a
histogram whose buckets restart once per purge (2); see README.md, "Metrics".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.status import Stat
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from flows import services
from flows.models import ConcurrencyLimit, Execution, ExecutionStatus, TaskRun, TaskRunStatus

logger = logging.getLogger("flows.metrics")

# Upper bounds (seconds) of the step duration histogram, fixed so that one query with one
# conditional COUNT per bound computes every bucket. From "instant" no-op steps to the
# longest task timeout FLOW_MAX_TASK_TIMEOUT allows by default (an hour).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)


def _bucket_key(index: int) -> str:
    return f"le_{index}"


class FlowCollector(Collector):
    """Yields the metric families of README.md, "Metrics", from one consistent scrape."""

    def __init__(self, *, flow_label: bool | None = None, now: datetime | None = None) -> None:
        self.flow_label = settings.METRICS_FLOW_LABEL if flow_label is None else flow_label
        self._now = now

    def collect(self) -> Iterable[Metric]:
        now = self._now or timezone.now()
        yield from self._executions()
        yield self._step_durations()
        yield from self._open_steps(now)
        yield from self._limits()
        sources_up: dict[str, bool] = {}
        yield from self._clusters(sources_up)
        yield from self._queue(sources_up)
        up = GaugeMetricFamily(
            "flowmanager_metrics_source_up",
            "1 when this scrape could read the source (clusters: the shared cache; queue: the "
            "broker), 0 when it failed and that source's metrics are missing.",
            labels=["source"],
        )
        for source, ok in sources_up.items():
            up.add_metric([source], 1 if ok else 0)
        yield up

    # Named concurrency limits ---------------------------------------------------------------
    def _limits(self) -> Iterator[Metric]:
        """Steps holding and waiting for each limit's slots: the limits' names, then one GROUP
        BY over their holds (``services.limit_usage``). Labelled by limit only: a key is a
        tenant, a customer..., too many label values for a time series each."""
        in_use = GaugeMetricFamily(
            "flowmanager_limit_in_use",
            "Steps holding a slot of the named concurrency limit (running, or handed the slot).",
            labels=["limit"],
        )
        waiting = GaugeMetricFamily(
            "flowmanager_limit_waiting",
            "Steps waiting in the database for a slot of the named concurrency limit.",
            labels=["limit"],
        )
        names = list(ConcurrencyLimit.objects.values_list("name", flat=True))
        usage = services.limit_usage(names) if names else {}
        for name in names:
            got = usage.get(name, {"in_use": {}, "waiting": {}})
            in_use.add_metric([name], sum(got["in_use"].values()))
            waiting.add_metric([name], sum(got["waiting"].values()))
        yield in_use
        yield waiting

    # 1. Executions -------------------------------------------------------------------------
    def _executions(self) -> Iterator[Metric]:
        """One GROUP BY status (and flow): how many executions, how many of them started, and
        how many child executions.

        "Executions" are top-level ones, as everywhere else: a child (a parallel branch, a map
        item, a sub-flow) is a step of its parent, so a 1,000-item map is one execution. The
        children are counted apart, so that a fan-out's load still shows. Each figure is a
        conditional COUNT inside the same aggregate: all three families come from one query.
        """
        group = ["flow_id", "status"] if self.flow_label else ["status"]
        top = Q(parent_step__isnull=True)
        rows = (
            Execution.objects.order_by()
            .values(*group)
            .annotate(
                n=Count("id", filter=top),
                started=Count("id", filter=top & Q(started_at__isnull=False)),
                children=Count("id", filter=~top),
            )
        )
        labels = ["flow", "status"] if self.flow_label else ["status"]
        by_status = GaugeMetricFamily(
            "flowmanager_executions",
            "Top-level executions held in the database, by status (child executions are "
            "counted in flowmanager_child_executions). CREATED/QUEUED/RUNNING/PAUSED are in "
            "flight now; COMPLETED/FAILED/CANCELLED are finished (until purged).",
            labels=labels,
        )
        started = GaugeMetricFamily(
            "flowmanager_executions_started",
            "Top-level executions held in the database that have started running, by status.",
            labels=labels,
        )
        children = GaugeMetricFamily(
            "flowmanager_child_executions",
            "Child executions (parallel branches, map items, sub-flows) held in the database, "
            "by status: the fan-out load behind the top-level executions.",
            labels=labels,
        )
        seen: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for row in rows:
            key = (row["flow_id"], row["status"]) if self.flow_label else (row["status"],)
            seen[key] = (row["n"], row["started"], row["children"])
        # Every status appears (0 when absent) so that a series does not vanish when its last
        # execution is purged or moves on; per flow only for flows that have executions.
        prefixes = sorted({key[:-1] for key in seen}) if self.flow_label else [()]
        for prefix in prefixes:
            for status in ExecutionStatus.values:
                n, n_started, n_children = seen.get((*prefix, status), (0, 0, 0))
                by_status.add_metric([*prefix, status], n)
                started.add_metric([*prefix, status], n_started)
                children.add_metric([*prefix, status], n_children)
        yield by_status
        yield started
        yield children

    # 2. Step durations ---------------------------------------------------------------------
    def _step_durations(self) -> Metric:
        """One GROUP BY task_type with a conditional COUNT per bucket bound, a COUNT and a SUM.

        Only finished steps have a duration; every attempt counts (a retried task is several
        steps).
        """
        buckets = {
            _bucket_key(i): Count("id", filter=Q(duration__lte=bound))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        rows = (
            TaskRun.objects.filter(duration__isnull=False)
            .order_by()
            .values("task_type")
            .annotate(n=Count("id"), total=Sum("duration"), **buckets)
            .order_by("task_type")
        )
        family = HistogramMetricFamily(
            "flowmanager_step_duration_seconds",
            "How long finished steps ran, by task type (steps held in the database).",
            labels=["task_type"],
        )
        for row in rows:
            points = [
                (_le(bound), float(row[_bucket_key(i)])) for i, bound in enumerate(DURATION_BUCKETS)
            ]
            points.append(("+Inf", float(row["n"])))
            family.add_metric([row["task_type"]], points, sum_value=float(row["total"] or 0))
        return family

    # 3. Open steps -------------------------------------------------------------------------
    def _open_steps(self, now: datetime) -> Iterator[Metric]:
        """One aggregate over PENDING and RUNNING steps, split by conditional COUNTs.

        A PENDING step is *due* when it has no ``not_before`` or that time has passed, and
        *delayed* while a retry delay keeps it waiting in the database.
        """
        pending = Q(status=TaskRunStatus.PENDING)
        running = Q(status=TaskRunStatus.RUNNING)
        figures = TaskRun.objects.filter(
            status__in=[TaskRunStatus.PENDING, TaskRunStatus.RUNNING]
        ).aggregate(
            due=Count("id", filter=pending & (Q(not_before__isnull=True) | Q(not_before__lte=now))),
            delayed=Count("id", filter=pending & Q(not_before__gt=now)),
            running=Count("id", filter=running),
            expired=Count("id", filter=running & Q(lease_expires_at__lt=now)),
        )
        waiting = GaugeMetricFamily(
            "flowmanager_steps_pending",
            "Steps waiting for a worker: state=due (may run now) or state=delayed (a retry "
            "waiting for its not_before time).",
            labels=["state"],
        )
        waiting.add_metric(["due"], figures["due"])
        waiting.add_metric(["delayed"], figures["delayed"])
        yield waiting
        yield GaugeMetricFamily(
            "flowmanager_steps_running", "Steps a worker is running now.", value=figures["running"]
        )
        yield GaugeMetricFamily(
            "flowmanager_steps_lease_expired",
            "Running steps whose worker stopped renewing its lease (dead or stuck worker); "
            "the reaper runs them again.",
            value=figures["expired"],
        )

    # 4 and 5. Clusters and queue (cache / broker, not the database) -------------------------
    def _clusters(self, sources_up: dict[str, bool]) -> Iterator[Metric]:
        try:
            stats = Stat.get_all()
        except Exception as exc:  # a cache outage must not hide the database figures
            logger.warning("metrics: cannot read cluster status: %s", exc)
            sources_up["clusters"] = False
            return
        yield GaugeMetricFamily(
            "flowmanager_worker_clusters",
            "django-q2 clusters (qcluster processes) that reported in the last few seconds.",
            value=len(stats),
        )
        yield GaugeMetricFamily(
            "flowmanager_worker_processes",
            "Worker processes of those clusters (Q_WORKERS each).",
            value=sum(len(getattr(stat, "workers", []) or []) for stat in stats),
        )
        sources_up["clusters"] = True

    def _queue(self, sources_up: dict[str, bool]) -> Iterator[Metric]:
        try:
            size = get_broker().queue_size()
        except Exception as exc:  # a broker outage must not hide the database figures
            logger.warning("metrics: cannot read the queue size: %s", exc)
            sources_up["queue"] = False
            return
        yield GaugeMetricFamily(
            "flowmanager_queue_jobs",
            "django-q2 jobs waiting in the broker's queue (ORM broker: visible now; delayed "
            "wake-ups are not counted).",
            value=size or 0,
        )
        sources_up["queue"] = True


def _le(bound: float) -> str:
    return str(float(bound))
