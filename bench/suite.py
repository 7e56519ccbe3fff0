"""The benchmark suite: Flow Manager on SQLite and PostgreSQL + Redis, against Celery and Prefect.

Run: ``make bench`` (or ``.venv/bin/python bench/suite.py [--quick] [--skip-peers]
[--skip-map] [--skip-webhooks] [--skip-recovery] [--skip-limits] [--only-limits]
[--backends sqlite,pg-redis]``). Prints ONE markdown table on stdout (progress goes to
stderr), writes it to ``BENCHMARKS.md`` (complete runs only: not ``--quick``, every backend,
peers, map, webhook, limits and recovery stages included) and the raw figures to
``bench/results/bench-<UTC stamp>.json``.

For each backend it starts a real stack: a fresh database (a SQLite file in a temporary
directory, or a PostgreSQL database of its own plus a Redis db number of its own, flushed
before and after), ``manage.py migrate``, then a helper process (this script with
``--child``) that starts ``manage.py qcluster`` with ``Q_WORKERS=2``, ``LOG_LEVEL=WARNING``
and ``FLOW_DEMO_DELAY_SECONDS=0``, starts executions through ``flows.services`` and reads
the figures from the timestamps the engine writes:

  overhead    a 100-step ``noop`` flow, warm-ups until each worker process has run one (a
              worker's first execution pays for its imports and cold caches), then N
              executions one after another:
              (last step ended_at - first step started_at - sum of step durations) / steps
              (bench/engine_overhead.py's definition and code)
              and per step with the task included: (last ended_at - first started_at) / steps
  api starts  before the cluster starts: POST /api/flows/{id}/executions/ one at a time
              (p50/p99) and .../bulk/ with 1,000 inputs a call (executions/s), through
              Django's test client (bench/capacity.py); what they start is deleted after
  throughput  M executions of the 3-task sample flow (examples/sample_flow.json, with its
              conditions, every task ``noop``) started in bulk (services.executions_start,
              1,000 a call) while the workers run them: flows/s and steps/s over (last
              execution ended_at - first queued_at), the start rate against it, latency
              p50/p95, and the CPU split (workers, qcluster, PostgreSQL, Redis, the helper)
              from /proc/<pid>/stat over that window
  floor       before the cluster starts, with no engine at all: from this process, on the
              driver's own connection, (a) one single-row UPDATE committed on its own and
              (b) BEGIN + three single-row UPDATEs + COMMIT, the shape of the transaction
              that records a step (count it, close it, open the next), 2,000 times each,
              median of 3 rounds. An engine that commits every step before the next starts
              cannot take less than (a) a step, nor, writing what ours writes, less than
              (b): Celery's per step divided by them is the most any such engine could show
              against Celery here.
  waits       K executions of a one-task flow (``wait``, 1 s), created first (not timed),
              then started by ``--clients`` (default 2) processes forked from the helper,
              each starting its share one after another (as that many API clients would):
              wall = last ended_at - first queued_at. If they are not all done
              ``--wait-deadline`` s after the first queued_at, the figure is "> deadline",
              with how many were done by then and the wall time that rate extrapolates to.
  map         (unless ``--skip-map``) a one-step flow mapping a no-op over ``input.items``,
              max_concurrency 100: a warm-up map, then 3 maps of 1,000 items (quick: 200)
              one after another; wall = the map execution's queued_at -> ended_at. On
              PostgreSQL + Redis, one map of 10,000 items (quick: 2,000): items/s = items /
              wall, and the worker processes' VmRSS/VmHWM (/proc/<pid>/status, pids from the
              cluster's status) before, sampled during, and after it.
  sleepers    a burst of 200 (quick: 100) 3-task noop flows alone; then 1,000 executions
              (quick: 100) of a one-task ``sleep`` 60 s flow, waited for until every step is
              PENDING with ``waiting`` set and no worker; then the same burst beside them
              (flows/s and p50 as in throughput). The stack is stopped after: the sleepers
              never wake.

  webhooks    (unless ``--skip-webhooks``) a stack of its own per backend, without workers:
              gunicorn and signed GitHub-style deliveries to one hook, one at a time (latency
              p50 / p99) and from 16 client threads (accepted/s): bench/webhooks.py.
  limits      (unless ``--skip-limits``) a map of 10,000 no-op items (quick: 2,000) whose
              item task takes a named limit of 10 slots (every item may start; the limit lets
              10 run), against the same map capped by its own max_concurrency 10 (no limit):
              a warm-up of 200 items each, then one of each, capped first; items/s = items /
              the map's wall. ``--only-limits`` runs the per-step overhead and this stage
              alone, the overhead beside the figure BENCHMARKS.md recorded before limits
              existed (a flow with no limit in it pays nothing for them).

  recovery    (unless ``--skip-recovery``) ``bench/recovery.py`` on each backend, a stack of
              its own: kill -9 of one of two clusters with 200 executions mid-step, 200
              queued messages lost, seconds until every affected step runs again and the
              total against the same load without a fault; the reaper's pass with 100,000
              finished executions; the per-step figure with the pass on and off.

Then, unless ``--skip-peers``, it runs ``../shared/bench/peers/run_celery.sh`` and
``run_prefect.sh 1 2 1`` (one measured process, 2 reps, 1 concurrent rep), and (unless
``--skip-map``) the map peers ``bench/peers/run_celery_map.sh 3 10000 120`` and
``run_prefect_map.sh 2 1000``, reads the result JSON each wrote under
``/tmp/peerbench/results`` and prints the ratios. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import recovery
from _stack import (
    BASE_DIR,
    RESULTS_DIR,
    machine,
    manage,
    pg_redis_backend,
    sqlite_backend,
    stack_env,
    start,
    stop,
    utc_stamp,
    wait_for_cluster,
)
from webhooks import DEFAULTS as WEBHOOK_DEFAULTS
from webhooks import QUICK as WEBHOOK_QUICK
from webhooks import rows as webhook_rows
from webhooks import run as run_webhooks

PEERS_DIR = Path(os.environ.get("PEERS_DIR", BASE_DIR.parent / "shared" / "bench" / "peers"))
PEER_RESULTS = Path(os.environ.get("PEERBENCH_ROOT", "/tmp/peerbench")) / "results"
PREFECT_ARGS = ["1", "2", "1"]  # PROCESSES REPS CONC_REPS (positional, see run_prefect.sh)
# The map peers (bench/peers/, see bench/README.md): a chord of 1,000 (3 runs, then one of
# 10,000 bounded at 120 s) and Prefect's .map over 1,000 items (2 steady runs).
CELERY_MAP_ARGS = ["3", "10000", "120"]  # RUNS BIG_ITEMS BIG_TIMEOUT
PREFECT_MAP_ARGS = ["2", "1000"]  # RUNS ITEMS
BENCHMARKS_MD = BASE_DIR / "BENCHMARKS.md"
WORKERS = 2
LOG_LEVEL = "WARNING"

FULL = {
    "overhead_runs": 5,
    "steps": 100,
    "executions": 1000,
    "waits": 1000,
    "wait_deadline": 30.0,
    "clients": 2,
    "map": True,
    "map_items": 1000,
    "map_runs": 3,
    "big_map_items": 10000,
    "sleepers": 1000,
    "burst": 200,
    "capacity": 5000,
    "api_singles": 200,
    "bulk_calls": 5,
    "limits": True,
    "limit_items": 10000,
    "only_limits": False,
}
BULK_PER_CALL = 1000  # inputs a bulk start call (FLOW_BULK_MAX's default)
QUICK = {
    **FULL,
    "capacity": 1000,
    "api_singles": 50,
    "bulk_calls": 2,
    "overhead_runs": 3,
    "executions": 200,
    "waits": 100,
    "wait_deadline": 10.0,
    "map_items": 200,
    "map_runs": 3,
    "big_map_items": 2000,
    "sleepers": 100,
    "burst": 100,
    "limit_items": 2000,
}
# The 10,000-item map (items/s, worker memory) runs on this backend only, as issue 14 asks.
BIG_MAP_BACKENDS = ("pg-redis",)

BACKENDS = ("sqlite", "pg-redis")
TARGET_OVERHEAD_MS = {"sqlite": 1.0, "pg-redis": 2.0}
# The secrets stage: a literal message and a secret's value of the same length.
SECRET_VALUE = "bench-secret-value-0123456789abcdef"
PLAIN_VALUE = "bench-plain-value-00123456789abcdef"
# Issue 21: a step that uses a secret (resolved, masked) within 5 % of one that does not.
TARGET_SECRET_COST = 0.05
# Issue 23: a global alert rule (execution_failed, a webhook channel) costs a step nothing
# measurable: the engine's figure with the rule within 5 % of the figure without.
TARGET_ALERTS_COST = 0.05
TARGET_FLOWS_PER_S = {"pg-redis": 300.0}
TARGET_STARTS_VS_FLOWS = 2.0  # the start rate at least twice the flow rate it measures
TARGET_BULK_STARTS_PER_S = {"pg-redis": 5000.0}
TARGET_TASKS_VS_CELERY = {"pg-redis": 2.0}  # 3-task flows' tasks/s / Celery's tasks/s
# Per step with the no-op task included (a step's span), against Celery's chain per step.
TARGET_STEP_VS_CELERY = {"sqlite": 6.0, "pg-redis": 2.5}
# PostgreSQL: a step's overhead against BEGIN + 3 UPDATEs + COMMIT sent plainly (issue 26).
TARGET_OVERHEAD_VS_FLOOR = {"pg-redis": 1.2}
TARGET_WAIT_WALL_S = 5.0
TARGET_VS_PREFECT = 10.0
TARGET_MAP_VS_CELERY = 3.0
TARGET_MAP_VS_PREFECT = 10.0
TARGET_BIG_MAP_ITEMS_PER_S = 1000.0
# "About equal": the burst beside the sleepers at no less than this share of its rate alone.
TARGET_SLEEPERS_RATIO = 0.8
# Issue 22: webhook deliveries, p50 one at a time on SQLite, accepted per second.
TARGET_WEBHOOK_P50_MS = 20.0
TARGET_WEBHOOKS_PER_S = 300.0


def engine_revision() -> str:
    """The commit the engine code comes from, and whether flows/ or tasks/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "flows", "tasks"],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in flows/ or tasks/' if dirty else ''}"


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# The helper process: one backend, Django set up on its environment
# -------------------------------------------------------------------------------------------
def sample_flow_noop() -> dict[str, Any]:
    document = json.loads((BASE_DIR / "examples" / "sample_flow.json").read_text())["flow"]
    document["id"] = "bench_sample_noop"
    document["name"] = "Benchmark: the 3-task sample flow, noop tasks"
    for task in document["tasks"]:
        task["task_type"] = "noop"
    return document


WAIT_FLOW = {
    "id": "bench_wait_1s",
    "name": "Benchmark: one task waiting 1 s",
    "tasks": [{"name": "wait", "task_type": "wait", "parameters": {"seconds": 1}}],
}


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _start_each(ids: list[Any]) -> None:
    """One client process: start these executions one after another."""
    from django.db import connections

    from flows import services

    for execution_id in ids:
        services.execution_start(execution_id=execution_id)
    connections.close_all()


def _start_many(version_obj: Any, count: int, clients: int) -> list[Any]:
    """Create ``count`` executions (CREATED, not timed), then start them from ``clients``
    processes at once, each one after another (as that many API clients would)."""
    import multiprocessing

    from django.db import connections

    from flows import services

    ids = [services.execution_create(flow_version=version_obj).id for _ in range(count)]
    connections.close_all()  # a forked client must open its own connection
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_start_each, args=(ids[k::clients],)) for k in range(clients)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        sys.exit(f"a start client failed: exit codes {[proc.exitcode for proc in procs]}")
    return ids


def _ended(flow_id: str) -> int:
    from flows.models import TERMINAL_STATUSES, Execution

    return Execution.objects.filter(flow_id=flow_id, status__in=TERMINAL_STATUSES).count()


def measure_throughput(
    version_obj: Any, count: int, clients: int, timeout: float
) -> dict[str, Any]:
    from flows.models import Execution

    flow_id = version_obj.flow_id
    _start_many(version_obj, count, clients)
    deadline = time.monotonic() + timeout
    while _ended(flow_id) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = list(
        Execution.objects.filter(flow_id=flow_id).values_list("status", "queued_at", "ended_at")
    )
    statuses: dict[str, int] = {}
    for status, _, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    done = [(q, e) for s, q, e in rows if s == "COMPLETED"]
    first_queued = min(q for _, q, _ in rows)
    last_queued = max(q for _, q, _ in rows)
    latencies = sorted((e - q).total_seconds() for q, e in done)
    wall = (max(e for _, e in done) - first_queued).total_seconds() if done else None
    start_span = (last_queued - first_queued).total_seconds()
    return {
        "executions": count,
        "statuses": statuses,
        "completed": len(done),
        "wall_s": wall,
        "flows_per_s": len(done) / wall if wall else None,
        "start_span_s": start_span,
        "starts_per_s": (count - 1) / start_span if start_span > 0 else None,
        "latency_p50_s": _percentile(latencies, 50) if latencies else None,
        "latency_p95_s": _percentile(latencies, 95) if latencies else None,
        "latency_max_s": latencies[-1] if latencies else None,
    }


def measure_waits(version_obj: Any, count: int, clients: int, deadline_s: float) -> dict[str, Any]:
    from django.utils import timezone

    from flows.models import Execution

    flow_id = version_obj.flow_id
    _start_many(version_obj, count, clients)
    executions = Execution.objects.filter(flow_id=flow_id)
    first_queued = min(executions.values_list("queued_at", flat=True))
    cutoff = first_queued + timedelta(seconds=deadline_s)
    while _ended(flow_id) < count and timezone.now() < cutoff:
        time.sleep(0.2)
    last_queued = max(executions.values_list("queued_at", flat=True))
    done = executions.filter(status="COMPLETED", ended_at__lte=cutoff)
    done_count = done.count()
    all_done = done_count == count
    start_span = (last_queued - first_queued).total_seconds()
    last_end = max(done.values_list("ended_at", flat=True), default=None)
    return {
        "executions": count,
        "wait_seconds": 1.0,
        "deadline_s": deadline_s,
        "start_span_s": start_span,
        "done_by_deadline": done_count,
        "all_done": all_done,
        "wall_s": (last_end - first_queued).total_seconds() if all_done else None,
        # At the rate seen until the deadline, all of them would have taken this long.
        "estimated_wall_s": None if all_done or not done_count else count * deadline_s / done_count,
        "starts_per_s": (count - 1) / start_span if start_span > 0 else None,
    }


MAP_FLOW = {
    "id": "bench_map",
    "name": "Benchmark: a map of no-op items",
    "tasks": [
        {
            "name": "each",
            "task_type": "map",
            "items": "${input.items}",
            "max_concurrency": 100,
            "iterator": {"tasks": [{"name": "n", "task_type": "noop"}]},
        }
    ],
}
MAP_CONCURRENCY = 100
# The limits stage: the same no-op map through a named limit of 10 slots (every item may start,
# the limit lets 10 run), and capped by the map's own max_concurrency 10 (no limit).
LIMIT_SLOTS = 10
LIMIT_NAME = "bench_limit"
LIMITED_MAP_FLOW = {
    "id": "bench_map_limited",
    "name": "Benchmark: a map of no-op items through a 10-slot limit",
    "tasks": [
        {
            "name": "each",
            "task_type": "map",
            "items": "${input.items}",
            "max_concurrency": 10_000,
            "iterator": {"tasks": [{"name": "n", "task_type": "noop", "limits": [LIMIT_NAME]}]},
        }
    ],
}
CAPPED_MAP_FLOW = {
    "id": "bench_map_capped",
    "name": "Benchmark: a map of no-op items, max_concurrency 10",
    "tasks": [
        {
            "name": "each",
            "task_type": "map",
            "items": "${input.items}",
            "max_concurrency": LIMIT_SLOTS,
            "iterator": {"tasks": [{"name": "n", "task_type": "noop"}]},
        }
    ],
}
SLEEP_SECONDS = 60
BURSTS = 3  # bursts alone, and again beside the sleepers: the medians are compared
SLEEP_FLOW = {
    "id": "bench_sleep",
    "name": "Benchmark: one task sleeping 60 s",
    "tasks": [{"name": "nap", "task_type": "sleep", "parameters": {"seconds": SLEEP_SECONDS}}],
}


def worker_memory() -> dict[str, Any]:
    """Each qcluster worker process's VmHWM (peak resident set) and VmRSS, in KiB, from
    /proc/<pid>/status; the pids come from the cluster's own status (django-q2's Stat)."""
    from django_q.status import Stat

    pids = sorted({pid for stat in Stat.get_all() for pid in stat.workers})
    found: dict[str, Any] = {}
    for pid in pids:
        fields: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    fields[key] = int(rest.split()[0])
        except OSError:
            continue
        found[str(pid)] = fields
    return found


def _map_children(execution_id: Any) -> dict[str, int]:
    from flows.models import Execution

    statuses: dict[str, int] = {}
    for status in Execution.objects.filter(parent_step__execution_id=execution_id).values_list(
        "status", flat=True
    ):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def run_map(version_obj: Any, items: int, timeout: float, sample: Any = None) -> dict[str, Any]:
    """One map execution over ``items`` no-op items, started and waited for; its figures from
    the database: wall = the map execution's queued_at -> ended_at. ``sample`` is called
    every 0.5 s while it runs (the RSS sampler)."""
    from flows import services
    from flows.models import TERMINAL_STATUSES, Execution, FanOut

    execution = services.execution_create(
        flow_version=version_obj, input={"items": list(range(items))}
    )
    services.execution_start(execution_id=execution.id)
    deadline = time.monotonic() + timeout
    while True:
        status = Execution.objects.filter(id=execution.id).values_list("status", flat=True)[0]
        if status in TERMINAL_STATUSES or time.monotonic() > deadline:
            break
        if sample:
            sample()
        time.sleep(0.5 if sample else 0.1)
    row = Execution.objects.get(id=execution.id)
    fan = FanOut.objects.filter(step__execution_id=execution.id).values("total", "done", "failed")
    fan_row = fan[0] if fan else {}
    wall = (row.ended_at - row.queued_at).total_seconds() if row.ended_at else None
    return {
        "items": items,
        "status": row.status,
        "done": row.status == "COMPLETED",
        "wall_s": wall,
        "items_per_s": items / wall if wall else None,
        "timeout_s": timeout,
        "fanout": fan_row,
        "children": _map_children(execution.id),
    }


def measure_map(version_obj: Any, items: int, runs: int, timeout: float) -> dict[str, Any]:
    """A warm-up map, then ``runs`` maps one after another; the median wall."""
    warmup = run_map(version_obj, items, timeout)
    measured = [run_map(version_obj, items, timeout) for _ in range(runs)]
    walls = [r["wall_s"] for r in measured if r["done"]]
    return {
        "items": items,
        "max_concurrency": MAP_CONCURRENCY,
        "warmup": warmup,
        "runs": measured,
        "all_done": len(walls) == runs,
        "wall_s": {
            "median": statistics.median(walls) if walls else None,
            "min": min(walls, default=None),
            "max": max(walls, default=None),
            "n": len(walls),
        },
    }


def measure_limits(items: int, timeout: float) -> dict[str, Any]:
    """The limits stage: a map of ``items`` no-op items through a 10-slot named limit, and the
    same map capped by its own max_concurrency 10; a warm-up of each (200 items), then each
    once, capped first. items/s = items / the map execution's wall."""
    from flows import services

    services.limit_create(data={"name": LIMIT_NAME, "max_in_flight": LIMIT_SLOTS})
    limited = services.flow_create(document=LIMITED_MAP_FLOW)
    capped = services.flow_create(document=CAPPED_MAP_FLOW)
    for version_obj in (capped, limited):
        run_map(version_obj, 200, timeout)
    return {
        "items": items,
        "slots": LIMIT_SLOTS,
        "capped": run_map(capped, items, timeout),
        "limited": run_map(limited, items, timeout),
    }


def measure_big_map(version_obj: Any, items: int, timeout: float) -> dict[str, Any]:
    """One map of ``items`` with the workers' memory read before, sampled during, and after."""
    before = worker_memory()
    peak_rss: dict[str, int] = {}

    def sample() -> None:
        for pid, fields in worker_memory().items():
            if "VmRSS" in fields:
                peak_rss[pid] = max(peak_rss.get(pid, 0), fields["VmRSS"])

    result = run_map(version_obj, items, timeout, sample)
    after = worker_memory()

    def top(memory: dict[str, Any], key: str) -> int | None:
        return max((f[key] for f in memory.values() if key in f), default=None)

    result["memory_kib"] = {
        "before": before,
        "after": after,
        "peak_rss_during": peak_rss,
        "same_workers": sorted(before) == sorted(after),
        "max_hwm_before": top(before, "VmHWM"),
        "max_hwm_after": top(after, "VmHWM"),
        "max_rss_before": top(before, "VmRSS"),
        "max_rss_after": top(after, "VmRSS"),
    }
    return result


def _sleeping(flow_id: str) -> int:
    """Steps of ``flow_id`` waiting in the database: PENDING, ``waiting`` set, no worker."""
    from flows.models import TaskRun

    return TaskRun.objects.filter(
        execution__flow_id=flow_id, status="PENDING", waiting__isnull=False, worker=""
    ).count()


def _bursts(versions: list[Any], count: int, clients: int) -> dict[str, Any]:
    """One burst of ``count`` executions per flow version, one after another; the medians."""
    runs = [measure_throughput(v, count, clients, timeout=300) for v in versions]

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    return {
        "executions": count,
        "bursts": len(runs),
        "completed": min(r["completed"] for r in runs),
        "flows_per_s": median("flows_per_s"),
        "latency_p50_s": median("latency_p50_s"),
        "starts_per_s": median("starts_per_s"),
        "runs": runs,
    }


def measure_sleepers(
    sleep_version: Any, alone: list[Any], beside: list[Any], counts: dict[str, Any]
) -> dict[str, Any]:
    """Noop bursts alone; then ``sleepers`` executions of the 60 s sleep flow, waited for
    until every one sleeps in the database; then the same bursts beside them."""
    burst, clients = counts["burst"], counts["clients"]
    result: dict[str, Any] = {"sleepers": counts["sleepers"], "sleep_seconds": SLEEP_SECONDS}
    result["burst_alone"] = _bursts(alone, burst, clients)
    log(f"  bursts alone: { ({k: v for k, v in result['burst_alone'].items() if k != 'runs'}) }")
    started = time.monotonic()
    _start_many(sleep_version, counts["sleepers"], clients)
    deadline = started + 120
    while _sleeping(sleep_version.flow_id) < counts["sleepers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    result["all_sleeping"] = _sleeping(sleep_version.flow_id)
    result["seconds_until_all_sleeping"] = time.monotonic() - started
    result["burst_beside_sleepers"] = _bursts(beside, burst, clients)
    result["still_sleeping_after_burst"] = _sleeping(sleep_version.flow_id)
    beside_summary = {k: v for k, v in result["burst_beside_sleepers"].items() if k != "runs"}
    log(f"  bursts beside sleepers: {beside_summary}")
    return result


def measure_commit_floor(rounds: int = 2000) -> dict[str, float]:
    """Seconds per commit of this database from Python with no engine (see the module doc)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_floor (id integer PRIMARY KEY, n integer NOT NULL)")
        cursor.execute("INSERT INTO bench_floor (id, n) VALUES (1, 0), (2, 0), (3, 0)")
    raw = connection.connection  # the driver's own, in autocommit mode as Django keeps it
    begin = "BEGIN IMMEDIATE" if connection.vendor == "sqlite" else "BEGIN"

    def one() -> None:
        raw.execute("UPDATE bench_floor SET n = n + 1 WHERE id = 1")

    def step_shaped() -> None:
        raw.execute(begin)
        for row in (1, 2, 3):
            raw.execute(f"UPDATE bench_floor SET n = n + 1 WHERE id = {row}")
        raw.execute("COMMIT")

    def per_call(work: Any) -> float:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(rounds):
                work()
            timings.append((time.perf_counter() - started) / rounds)
        return statistics.median(timings)

    try:
        return {"single_update_s": per_call(one), "step_transaction_s": per_call(step_shaped)}
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE bench_floor")


def _run_chain(eo: Any, chain: Any, qlog: Path) -> str:
    """Start one execution of the noop chain and wait for it to complete; its id."""
    execution_id = eo.start_execution(chain)
    status = eo.wait_until_ended(execution_id, 120)
    if status != "COMPLETED":
        sys.exit(f"execution {execution_id} ended {status}; see {qlog}")
    return execution_id


def measure_alerts(eo: Any, chain: Any, qlog: Path, runs: int) -> dict[str, Any]:
    """Runs of ``chain`` alternating: without any alert rule, then with a global
    ``execution_failed`` rule to a webhook channel (created for the run, deleted after)."""
    from flows import services

    channel, _ = services.channel_create(
        name="bench_hook", kind="webhook", config={"url": "https://hooks.example.com/bench"}
    )

    def with_rule() -> dict[str, Any]:
        rule = services.rule_create(event="execution_failed", channels=[channel.pk])
        try:
            return eo.measure(_run_chain(eo, chain, qlog))
        finally:
            services.rule_delete(rule_id=rule.pk)

    with_rule()  # a warm-up of the rule's path in the workers
    pairs = [(eo.measure(_run_chain(eo, chain, qlog)), with_rule()) for _ in range(runs)]
    services.channel_delete(channel_id=channel.pk)
    return {
        kind: {"summary": eo.summarize(measured), "runs": measured}
        for kind, measured in (("none", [n for n, _ in pairs]), ("rule", [r for _, r in pairs]))
    }


class _Done(Exception):
    """``--only-limits``: the stages after the limits stage are skipped."""


def _limit_summary(fig: dict[str, Any]) -> str:
    return ", ".join(
        f"{kind} {fig[kind]['items_per_s']:.0f} items/s" if fig[kind]["items_per_s"] else kind
        for kind in ("capped", "limited")
    )


def limit_rows(name: str, fig: dict[str, Any], add: Any) -> None:
    """The limits stage's rows: the map through the limit, the same map capped by its own
    max_concurrency, and what the limit costs against it."""
    stack, lim = fig["label"], fig.get("limits")
    if not lim:
        return
    items, capped, limited = lim["items"], lim["capped"], lim["limited"]
    add(stack, f"map of {items:,} no-op items, max_concurrency {lim['slots']} (no limit)",
        f"{capped['items_per_s']:.0f} items/s" if capped["done"] else capped["status"])  # fmt: skip
    if limited["done"] and capped["done"]:
        cost = capped["items_per_s"] / limited["items_per_s"] - 1
        add(
            stack,
            f"the same map, every item through a named limit of {lim['slots']} slots "
            "(slot taken with the claim, freed with the record, handed to the next waiter)",
            f"{limited['items_per_s']:.0f} items/s ({cost:+.0%} time against the capped map)",
        )
    else:
        add(stack, "the same map through a named limit", limited["status"])


def child(out_path: Path, counts: dict[str, Any]) -> int:
    """Run inside the backend's environment (set by the parent); write the figures as JSON."""
    sys.path.insert(0, str(BASE_DIR))
    os.chdir(BASE_DIR)
    # A key of the run's own for the secret store (the secrets stage); the workers inherit it.
    from cryptography.fernet import Fernet

    os.environ.setdefault("FLOW_SECRET_KEYS", Fernet.generate_key().decode())
    import django

    django.setup()
    import capacity as cap
    import engine_overhead as eo
    from django.conf import settings

    from flows import services

    home = out_path.parent
    env = dict(os.environ)
    result: dict[str, Any] = {
        "settings": {
            name: getattr(settings, name, None)
            for name in (
                "Q_WORKERS",
                "FLOW_WORKER_CONCURRENCY",
                "FLOW_STEP_BUDGET_SECONDS",
                "FLOW_STEP_BUDGET_STEPS",
                "LOG_LEVEL",
            )
        }
    }
    chain = services.flow_create(document=eo.noop_chain(counts["steps"]))
    from flows import vault
    from flows.models import Secret

    Secret.objects.update_or_create(
        name="bench_token", defaults={"value": vault.encrypt(SECRET_VALUE)}
    )
    plain_print, secret_print = (
        services.flow_create(document=eo.print_chain(counts["steps"], message, flow_id))
        for message, flow_id in (
            (PLAIN_VALUE, "bench_print_plain"),
            ("${secrets.bench_token}", "bench_print_secret"),
        )
    )
    sample = services.flow_create(document=sample_flow_noop())
    waits = services.flow_create(document=WAIT_FLOW)
    if counts["map"]:
        mapped = services.flow_create(document=MAP_FLOW)
        sleep = services.flow_create(document=SLEEP_FLOW)
        alone, beside = (
            [
                services.flow_create(document={**sample_flow_noop(), "id": f"bench_burst_{k}_{n}"})
                for n in range(1, BURSTS + 1)
            ]
            for k in ("alone", "beside_sleepers")
        )

    result["floor"] = measure_commit_floor()  # before any worker polls the database
    log(f"  commit floor: {result['floor']}")
    # Before the cluster too: the start endpoints alone, nothing else running here.
    api_flow = services.flow_create(document={**sample_flow_noop(), "id": "bench_api_start"})
    result["api_starts"] = cap.measure_api_starts(
        api_flow.flow_id, counts["api_singles"], counts["bulk_calls"], BULK_PER_CALL
    )
    log(f"  api starts: {result['api_starts']}")

    qlog = home / "qcluster.log"
    cluster = start([sys.executable, "manage.py", "qcluster"], env, qlog)
    try:
        wait_for_cluster(cluster, qlog)
        # Warm-ups until every worker process has run one (at most 4 each): whichever worker
        # takes an execution, its first pays for loading the task modules and filling caches.
        warm: set[str] = set()
        warmups = 0
        while len(warm) < WORKERS and warmups < 4 * WORKERS:
            warm.update(eo.measure(_run_chain(eo, chain, qlog))["workers"])
            warmups += 1
        result["overhead_warmups"] = warmups
        runs = [eo.measure(_run_chain(eo, chain, qlog)) for _ in range(counts["overhead_runs"])]
        result["overhead"] = {"summary": eo.summarize(runs), "runs": runs}
        log(f"  overhead: {result['overhead']['summary']['overhead_ms_per_step']}")

        if counts.get("limits"):
            result["limits"] = measure_limits(counts["limit_items"], timeout=1800)
            log(f"  limits: {_limit_summary(result['limits'])}")
        if counts.get("only_limits"):
            raise _Done

        # The same print chain, its message a literal or a secret reference (resolved for the
        # task, then masked in its result and its log line); runs alternate, after a warm-up
        # of each.
        for version_obj in (plain_print, secret_print):
            _run_chain(eo, version_obj, qlog)
        pairs = [
            (
                eo.measure(_run_chain(eo, plain_print, qlog)),
                eo.measure(_run_chain(eo, secret_print, qlog)),
            )
            for _ in range(counts["overhead_runs"])
        ]
        result["secrets"] = {
            kind: {"summary": eo.summarize(runs), "runs": runs}
            for kind, runs in (("plain", [p for p, _ in pairs]), ("secret", [s for _, s in pairs]))
        }
        log(
            "  secrets: "
            + ", ".join(
                f"{kind} {result['secrets'][kind]['summary']['wall_ms']['median']:.1f} ms"
                for kind in ("plain", "secret")
            )
        )

        # The alerts stage: the same noop chain with a global execution_failed rule and a
        # webhook channel defined, against no rule; the rule is created before and deleted
        # after each of its runs, so runs alternate. What a rule costs happens off the step
        # path (the ends outbox, the notifications timer): this shows it stays there.
        result["alerts"] = measure_alerts(eo, chain, qlog, counts["overhead_runs"])
        log(
            "  alerts: "
            + ", ".join(
                f"{kind} {result['alerts'][kind]['summary']['overhead_ms_per_step']['median']:.3f}"
                " ms/step"
                for kind in ("none", "rule")
            )
        )

        result["throughput"] = cap.measure_capacity(
            sample, counts["capacity"], BULK_PER_CALL, cluster.pid, timeout=300
        )
        log(f"  throughput: {result['throughput']}")

        result["waits"] = measure_waits(
            waits, counts["waits"], counts["clients"], counts["wait_deadline"]
        )
        log(f"  waits: {result['waits']}")

        if counts["map"]:
            result["map"] = measure_map(
                mapped, counts["map_items"], counts["map_runs"], timeout=300
            )
            log(f"  map of {counts['map_items']}: {result['map']['wall_s']}")
            if counts["backend"] in BIG_MAP_BACKENDS:
                result["big_map"] = measure_big_map(mapped, counts["big_map_items"], timeout=900)
                log(f"  map of {counts['big_map_items']}: {result['big_map']}")
            # Last: the sleepers are left sleeping when the stack stops.
            result["sleepers"] = measure_sleepers(sleep, alone, beside, counts)
    except _Done:
        pass
    finally:
        stop(cluster)
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


# -------------------------------------------------------------------------------------------
# The parent: backends one after another, then the peers
# -------------------------------------------------------------------------------------------
def run_backend(
    name: str, counts: dict[str, Any], redis_db: int | None, keep: bool = False
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"flow-suite-{name}-"))
    try:
        stack = sqlite_backend(home) if name == "sqlite" else pg_redis_backend(redis_db)
        with stack as backend:
            env = stack_env(
                backend,
                "suite",
                Q_WORKERS=str(WORKERS),
                LOG_LEVEL=LOG_LEVEL,
                FLOW_DEMO_DELAY_SECONDS="0",
                # The start endpoints are timed through the test client (bench/capacity.py).
                ALLOWED_HOSTS="testserver",
            )
            log(f"{backend.label}: migrate ({backend.details})")
            manage(env, "migrate", "--noinput", "--verbosity", "0")
            out = home / "figures.json"
            log(f"{backend.label}: qcluster with {WORKERS} workers, measuring")
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(out),
                    "--counts",
                    json.dumps({**counts, "backend": name}),
                ],
                cwd=BASE_DIR,
                env=env,
                timeout=3600,
            )
            if done.returncode != 0:
                qlog = home / "qcluster.log"
                tail = qlog.read_text()[-3000:] if qlog.exists() else ""
                sys.exit(f"the {name} run failed (rc {done.returncode})\n{tail}")
            figures = json.loads(out.read_text())
            return {"label": backend.label, "details": backend.details, **figures}
    finally:
        if keep:
            log(f"kept {home} (qcluster.log; a SQLite stack's database)")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run_peer(engine: str, script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run a peer script (its own output to a log file) and load the result JSON it wrote."""
    PEER_RESULTS.mkdir(parents=True, exist_ok=True)
    before = set(PEER_RESULTS.glob(f"{engine}-*.json"))
    peer_log = PEER_RESULTS.parent / f"suite-{engine}.log"
    log(f"peer {engine}: bash {PEERS_DIR / script} {' '.join(args)} (log: {peer_log})")
    started = time.monotonic()
    with peer_log.open("wb") as out:
        done = subprocess.run(
            ["bash", str(PEERS_DIR / script), *args],
            cwd=BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    if done.returncode != 0:
        sys.exit(f"peer {engine} failed (rc {done.returncode}):\n{peer_log.read_text()[-3000:]}")
    new = sorted(set(PEER_RESULTS.glob(f"{engine}-*.json")) - before)
    if not new:
        sys.exit(f"peer {engine} wrote no new result under {PEER_RESULTS}")
    path = new[-1]
    log(f"peer {engine}: {time.monotonic() - started:.0f} s, {path}")
    return {
        "file": str(path),
        "seconds": time.monotonic() - started,
        **json.loads(path.read_text()),
    }


# -------------------------------------------------------------------------------------------
# The table
# -------------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    """A duration: in ms below a second, in s from there."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else _s(seconds)


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:,.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def _ratio(x: float) -> str:
    return f"{x:,.1f}x" if x >= 1 else f"{x:,.2f}x"


def build_rows(
    backends: dict[str, Any], peers: dict[str, Any], counts: dict[str, Any]
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(stack: str, figure: str, value: str, target: str = "-", verdict: str = "-") -> None:
        rows.append(
            {"stack": stack, "figure": figure, "value": value, "target": target, "verdict": verdict}
        )

    n_over, steps = counts["overhead_runs"], counts["steps"]
    # The targets are for 1,000 executions; at --quick counts say so beside the verdict.
    quick = " at quick counts" if counts["executions"] < FULL["executions"] else ""
    n_wait, deadline = counts["waits"], counts["wait_deadline"]
    clients = counts.get("clients", 1)
    for name, fig in backends.items():
        stack = fig["label"]
        over = fig["overhead"]["summary"]
        median_ms = over["overhead_ms_per_step"]["median"]
        target_ms = TARGET_OVERHEAD_MS[name]
        add(
            stack,
            f"engine overhead per step, {steps}-step noop flow (median of {n_over}; "
            f"min {over['overhead_ms_per_step']['min']:.3f})",
            f"{median_ms:.3f} ms",
            f"≤ {target_ms:g} ms",
            _verdict(median_ms <= target_ms),
        )
        with_task = over["per_step_ms"]
        add(
            stack,
            f"per step with the no-op task included, the same flow: span / steps (median of "
            f"{n_over}; min {with_task['min']:.3f}; the task's share, its duration incl. the "
            f"wait for the task loop, {over['task_ms_per_step']['median']:.3f} ms)",
            f"{with_task['median']:.3f} ms",
        )
        if fig.get("secrets"):
            per_step = {
                kind: statistics.median(
                    r["overhead_ms_per_step"] + r["task_ms_per_step"]
                    for r in fig["secrets"][kind]["runs"]
                )
                for kind in ("plain", "secret")
            }
            cost = per_step["secret"] / per_step["plain"] - 1
            add(
                stack,
                f"per step, {steps}-step print flow, task included: message a literal "
                f"(median of {n_over}, runs alternating with the next row)",
                f"{per_step['plain']:.3f} ms",
            )
            add(
                stack,
                "per step, the same flow with the message ${secrets.bench_token} (read from "
                "the store, decrypted, masked in the result and the log line)",
                f"{per_step['secret']:.3f} ms ({cost:+.1%})",
                f"within {TARGET_SECRET_COST:.0%}",
                _verdict(abs(cost) <= TARGET_SECRET_COST),
            )
        if fig.get("alerts"):
            per_step = {
                kind: statistics.median(
                    r["overhead_ms_per_step"] for r in fig["alerts"][kind]["runs"]
                )
                for kind in ("none", "rule")
            }
            cost = per_step["rule"] / per_step["none"] - 1
            add(
                stack,
                f"engine overhead per step, {steps}-step noop flow, no alert rule (median of "
                f"{n_over}, runs alternating with the next row)",
                f"{per_step['none']:.3f} ms",
            )
            add(
                stack,
                "engine overhead per step, the same flow with a global execution_failed rule "
                "to a webhook channel defined",
                f"{per_step['rule']:.3f} ms ({cost:+.1%})",
                f"within {TARGET_ALERTS_COST:.0%}",
                _verdict(abs(cost) <= TARGET_ALERTS_COST),
            )
        floor = fig.get("floor")
        if floor:
            add(
                stack,
                "floor, no engine: one single-row UPDATE committed on its own, from Python",
                f"{floor['single_update_s'] * 1000:.3f} ms",
            )
            add(
                stack,
                "floor, no engine: BEGIN + 3 single-row UPDATEs + COMMIT, each sent on its own "
                "(a recorded step's transaction written plainly: count it, close it, open the "
                "next)",
                f"{floor['step_transaction_s'] * 1000:.3f} ms",
            )
            over_floor = fig["overhead"]["summary"]["overhead_ms_per_step"]["median"] / (
                floor["step_transaction_s"] * 1000
            )
            target = TARGET_OVERHEAD_VS_FLOOR.get(name)
            add(
                stack,
                "engine overhead per step / that plain step transaction, both in this run",
                f"{over_floor:.2f}x",
                f"≤ {target:g}x" if target else "-",
                _verdict(over_floor <= target) if target else "-",
            )
        add_capacity_rows(add, name, stack, fig, counts)
        w = fig["waits"]
        if w["all_done"]:
            value = _s(w["wall_s"])
            ok = w["wall_s"] < TARGET_WAIT_WALL_S
        else:
            est = w["estimated_wall_s"]
            value = (
                f"> {deadline:g} s ({w['done_by_deadline']:,} of {n_wait:,} done by then; "
                f"≈ {_s(est)} at that rate)"
            )
            ok = False
        concurrency = fig.get("settings", {}).get("FLOW_WORKER_CONCURRENCY")
        add(
            stack,
            f"{n_wait:,} concurrent executions, one task awaiting 1 s: wall ("
            + "; ".join(
                part
                for part in (
                    f"FLOW_WORKER_CONCURRENCY={concurrency}" if concurrency else "",
                    f"starts alone {w['starts_per_s']:,.0f}/s from {clients} clients"
                    if w.get("starts_per_s")
                    else "",
                )
                if part
            )
            + ")",
            value,
            f"< {TARGET_WAIT_WALL_S:g} s",
            _verdict(ok) + quick,
        )

        if fig.get("map"):
            add_map_rows(add, name, stack, fig, counts)

    celery, prefect = peers.get("celery"), peers.get("prefect")
    if celery:
        cs = celery["chain_per_step_s"]["median"]
        ct = celery["independent_throughput_per_s"]["median"]
        stack = f"Celery {celery['versions'].get('celery', '')} + Redis (prefork, concurrency 2)"
        add(
            stack,
            f"chain of 100 no-op tasks: per step (median of {celery['chain_per_step_s']['n']})",
            _ms(cs),
        )
        add(stack, "1,000 independent no-op tasks: throughput", f"{ct:,.0f} tasks/s")
    if prefect:
        pt = prefect["per_task_inner_s"]["median"]
        pw = prefect.get("concurrent50_async_wall_s", {}).get("median")
        pf = prefect.get("concurrent50_async_failed_runs", {}).get("median")
        stack = f"Prefect {prefect['versions'].get('prefect', '')}, ephemeral (SQLite)"
        add(
            stack,
            f"100-task flow: per task, inside the flow "
            f"(median of {prefect['per_task_inner_s']['n']})",
            _ms(pt),
        )
        if pw is not None:
            add(
                stack,
                "50 concurrent 3-task flows (asyncio.gather): wall",
                f"{_s(pw)} ({pf:g} failed)",
            )

    for fig in backends.values():
        stack = f"ratio, {fig['label']}"
        ours_ms = fig["overhead"]["summary"]["overhead_ms_per_step"]["median"]
        # Like against like: a peer's step includes its task body, so ours does too.
        step_ms = fig["overhead"]["summary"]["per_step_ms"]["median"]
        name = next(k for k, v in backends.items() if v is fig)
        if celery:
            ratio = cs * 1000 / step_ms
            target = TARGET_STEP_VS_CELERY[name]
            add(
                stack,
                "per-step speed vs Celery, task included on both sides: Celery chain per step / "
                "our per step with the no-op task",
                _ratio(ratio),
                f"≥ {target:g}x",
                _verdict(ratio >= target),
            )
            add(
                stack,
                "the same against our overhead alone (the task's time left out on our side "
                "only: not like against like, kept for comparison with earlier runs)",
                _ratio(cs * 1000 / ours_ms),
            )
            floor = fig.get("floor")
            if floor:
                add(
                    stack,
                    "the most an engine committing each step could show vs Celery here: Celery "
                    "chain per step / floor (one statement a step; the plain step transaction)",
                    f"{_ratio(cs / floor['single_update_s'])}; "
                    f"{_ratio(cs / floor['step_transaction_s'])}",
                )
            thr = fig["throughput"]
            if thr.get("steps_per_s"):
                ratio = thr["steps_per_s"] / ct
                target = TARGET_TASKS_VS_CELERY.get(name)
                add(
                    stack,
                    f"throughput vs Celery: our tasks/s ({thr['executions']:,} 3-task flows "
                    "started in bulk) / Celery's 1,000 independent tasks/s",
                    _ratio(ratio),
                    f"≥ {target:g}x" if target else "-",
                    _verdict(ratio >= target) if target else "-",
                )
        if prefect:
            ratio = pt * 1000 / step_ms
            add(
                stack,
                "per-step speed vs Prefect, task included on both sides: Prefect per task / our "
                "per step with the no-op task",
                _ratio(ratio),
                f"≥ {TARGET_VS_PREFECT:g}x",
                _verdict(ratio >= TARGET_VS_PREFECT),
            )
            w = fig["waits"]
            ours = w["wall_s"] if w["all_done"] else w["estimated_wall_s"]
            if pw is not None and ours:
                approx = "" if w["all_done"] else "≈ "
                add(
                    stack,
                    f"concurrency vs Prefect: Prefect's 50 x 3-task wall / our {n_wait:,} x 1 s "
                    "wall (different shapes)",
                    approx + _ratio(pw / ours),
                )
    for name, fig in backends.items():
        hooks = fig.get("webhooks")
        if not hooks:
            continue
        (latency, latency_ms, latency_target), (rate, rate_value, rate_target), *more = (
            webhook_rows(name, hooks)
        )
        p50 = hooks["one_at_a_time"]["p50_ms"]
        add(fig["label"], latency, latency_ms, latency_target,
            _verdict(p50 < TARGET_WEBHOOK_P50_MS) if name == "sqlite" else "-")  # fmt: skip
        per_s = hooks["concurrent"]["accepted_per_s"]
        add(fig["label"], rate, rate_value, rate_target,
            _verdict(per_s >= TARGET_WEBHOOKS_PER_S))  # fmt: skip
        for figure, value, target in more:
            add(fig["label"], figure, value, target)
    add_map_peer_rows(add, backends, peers, counts)
    return rows


def add_capacity_rows(add: Any, name: str, stack: str, fig: dict[str, Any], counts: dict) -> None:
    """The start endpoints (timed before the cluster starts) and the engine's capacity with
    its executions started in bulk, with the CPU split over that window."""
    quick = " at quick counts" if counts["capacity"] < FULL["capacity"] else ""
    api = fig.get("api_starts")
    if api:
        add(
            stack,
            f"one start through the API, POST /api/flows/{{id}}/executions/ ({api['single_n']} "
            "one after another, Django test client, no worker running): p50 / p99",
            f"{_ms(api['single_p50_s'])} / {_ms(api['single_p99_s'])}",
        )
        target = TARGET_BULK_STARTS_PER_S.get(name)
        rate = api["bulk_executions_per_s"]
        add(
            stack,
            f"bulk start through the API, POST .../executions/bulk/ with {api['bulk_per_call']:,} "
            f"inputs a call (median of {len(api['bulk_calls'])} calls, "
            f"{_ms(api['bulk_call_median_s'])} a call)",
            f"{rate:,.0f} executions/s",
            f"≥ {target:,.0f}/s" if target else "-",
            _verdict(rate >= target) if target else "-",
        )
    thr = fig["throughput"]
    rate, starts = thr["flows_per_s"], thr.get("starts_per_s")
    target_rate = TARGET_FLOWS_PER_S.get(name)
    bad = thr["executions"] - thr["completed"]
    add(
        stack,
        f"{thr['executions']:,} x 3-task noop sample flow started {thr.get('started', '')}: "
        "the engine's flows/s (first queued → last ended)"
        + (f" ({bad} not COMPLETED)" if bad else ""),
        "-" if rate is None else f"{rate:,.0f} flows/s",
        f"≥ {target_rate:g} flows/s" if target_rate else "-",
        _verdict(rate is not None and rate >= target_rate) + quick if target_rate else "-",
    )
    if thr.get("steps_per_s"):
        steps = f"{thr['steps_per_s']:,.0f} steps/s"
        add(stack, "the same: steps (tasks) recorded per second", steps)
    if starts and rate:
        add(
            stack,
            "the same: start rate (executions / time the bulk calls took, while the workers "
            "ran) against the flow rate: the clients must not be the bound",
            f"{starts:,.0f}/s = {_ratio(starts / rate)} the flows/s",
            f"≥ {TARGET_STARTS_VS_FLOWS:g}x",
            _verdict(starts / rate >= TARGET_STARTS_VS_FLOWS),
        )
    add(
        stack,
        "the same: queued → COMPLETED p50 / p95 (a bulk-started execution waits behind its batch)",
        f"{_ms(thr['latency_p50_s'])} / {_ms(thr['latency_p95_s'])}",
    )
    if "ends_most_waiting" in thr:
        lag = thr["ends_handled_s_after_last_end"]
        if lag is not None:
            value = f"{thr['ends_most_waiting']:,} waiting at most; all handled {lag:.1f} s after"
        else:
            value = f"{thr['ends_left']:,} still waiting when the stage gave up"
        add(
            stack,
            "the same: the ends outbox (what follows each end: flow triggers, alerts) keeps up: "
            "the most ends waiting at once while the flows ran; the last one handled after the "
            "last execution ended (polled every 0.1 s; a worker's pass runs each second)",
            value,
            "≤ 2 s after the last end",
            "meets" if lag is not None and lag <= 2 else "**misses**",
        )
    cpu = thr.get("cpu")
    if cpu:
        parts = [
            f"{group} {v['cores']:.2f}"
            for group, v in cpu["groups"].items()
            if v["cores"] is not None and v["cpu_s"] > 0
        ]
        add(
            stack,
            f"the same: CPU used over the window ({cpu['wall_s']:.1f} s; from /proc/<pid>/stat), "
            f"in cores of the {cpu['cores_online']}; the machine was busy "
            f"{cpu['machine_busy_cores']:.2f} cores, {cpu['others_cores']:.2f} of them not ours",
            "; ".join(parts),
        )


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f} MiB"


def add_map_rows(add: Any, name: str, stack: str, fig: dict[str, Any], counts: dict[str, Any]):
    """The map and sleep rows of one backend (issue 14)."""
    m = fig["map"]
    n_items, walls = m["items"], m["wall_s"]
    value = "-" if walls["median"] is None else _s(walls["median"])
    if walls["median"]:
        value += f" ({n_items / walls['median']:,.0f} items/s)"
    if not m["all_done"]:
        bad = [r["status"] for r in m["runs"] if not r["done"]]
        value += f"; {len(bad)} of {len(m['runs'])} runs not COMPLETED in {_s(300)}: {bad}"
    add(
        stack,
        f"map of {n_items:,} no-op items, max_concurrency {m['max_concurrency']}: wall, the map "
        f"execution's queued_at → ended_at (median of {walls['n']} after a warm-up map; "
        f"{_s(walls['min'])} to {_s(walls['max'])})",
        value,
    )
    big = fig.get("big_map")
    if big:
        quick = " at quick counts" if big["items"] < FULL["big_map_items"] else ""
        rate = big["items_per_s"]
        if big["done"]:
            value = f"{rate:,.0f} items/s ({_s(big['wall_s'])})"
        else:
            fan = big.get("fanout") or {}
            value = (
                f"not COMPLETED after {_s(big['timeout_s'])} ({big['status']}; "
                f"{fan.get('done', 0):,} of {big['items']:,} items done)"
            )
        add(
            stack,
            f"map of {big['items']:,} no-op items, max_concurrency {MAP_CONCURRENCY}: "
            f"items/s = {big['items']:,} / wall (queued_at → ended_at)",
            value,
            f"≥ {TARGET_BIG_MAP_ITEMS_PER_S:,.0f} items/s",
            _verdict(bool(rate) and rate >= TARGET_BIG_MAP_ITEMS_PER_S) + quick,
        )
        mem = big["memory_kib"]
        seen = sorted(set(mem["before"]) | set(mem["peak_rss_during"]) | set(mem["after"]))
        peak = max(mem["peak_rss_during"].values(), default=None)
        recycled = len(seen) - WORKERS
        add(
            stack,
            f"the {WORKERS} worker processes' memory over that map (/proc/<pid>/status, "
            "sampled every 0.5 s): before the map, max VmRSS / VmHWM; during it, max VmRSS; "
            "after it, max VmRSS / VmHWM"
            + (
                f" ({recycled} worker process(es) replaced during it: django-q2 recycles a "
                "worker after 1,000 jobs)"
                if recycled > 0
                else ""
            ),
            f"{_mib(mem['max_rss_before'])} / {_mib(mem['max_hwm_before'])} → "
            f"{_mib(peak)} → {_mib(mem['max_rss_after'])} / {_mib(mem['max_hwm_after'])}",
        )
    s = fig.get("sleepers")
    if s:
        alone, beside = s["burst_alone"], s["burst_beside_sleepers"]
        n_burst = alone["executions"]

        def burst(thr: dict[str, Any]) -> str:
            rate = "-" if thr["flows_per_s"] is None else f"{thr['flows_per_s']:,.0f} flows/s"
            bad = thr["executions"] - thr["completed"]
            return (
                f"{rate}, p50 {_ms(thr['latency_p50_s'])}"
                + (f" ({bad} not COMPLETED)" if bad else "")
                + (
                    f"; starts alone {thr['starts_per_s']:,.0f}/s"
                    if thr.get("starts_per_s")
                    else ""
                )
            )

        n_bursts = alone.get("bursts", 1)
        add(
            stack,
            f"{n_burst} x 3-task noop flow burst, no sleepers: flows/s, p50 "
            f"(medians of {n_bursts} bursts)",
            burst(alone),
        )
        n_sleep = s["sleepers"]
        add(
            stack,
            f"the same bursts beside {n_sleep:,} executions sleeping {s['sleep_seconds']} s "
            f"({s['all_sleeping']:,} of {n_sleep:,} steps PENDING with `waiting` set and no "
            f"worker before the bursts, {s['seconds_until_all_sleeping']:.1f} s after their "
            f"starts began; {s['still_sleeping_after_burst']:,} after them)",
            burst(beside),
        )
        ok_rate = alone["flows_per_s"] and beside["flows_per_s"]
        ratio = beside["flows_per_s"] / alone["flows_per_s"] if ok_rate else None
        quick = " at quick counts" if n_sleep < FULL["sleepers"] else ""
        add(
            stack,
            "sleepers hold no worker slot: median burst flows/s beside the sleepers / alone "
            "(all sleepers asleep first)",
            "-" if ratio is None else _ratio(ratio),
            f"≥ {TARGET_SLEEPERS_RATIO:g}x (about equal)",
            _verdict(
                bool(ratio) and ratio >= TARGET_SLEEPERS_RATIO and s["all_sleeping"] == n_sleep
            )
            + quick,
        )


def add_map_peer_rows(
    add: Any, backends: dict[str, Any], peers: dict[str, Any], counts: dict[str, Any]
) -> None:
    """The map peers' figures and our map's ratios against them."""
    cm, pm = peers.get("celery_map"), peers.get("prefect_map")
    if cm:
        stack = f"Celery {cm['versions'].get('celery', '')} + Redis chord (prefork, concurrency 2)"
        c1 = cm["chord1000_wall_s"]
        add(
            stack,
            f"chord of 1,000 no-op tasks + callback: wall, apply_async() → callback result "
            f"(median of {c1['n']}; {_s(c1['min'])} to {_s(c1['max'])}; apply_async alone "
            f"{_s(cm['chord1000_enqueue_s']['median'])})",
            _s(c1["median"]),
        )
        if cm.get("chord10000_done"):
            w = cm["chord10000_wall_s"]["median"]
            add(stack, "chord of 10,000: wall (once)", f"{_s(w)} ({10000 / w:,.0f} items/s)")
        elif "chord10000_exceeded_s" in cm:
            add(
                stack,
                "chord of 10,000: wall (once)",
                f"> {_s(cm['chord10000_exceeded_s'])} "
                f"({cm.get('chord10000_header_done_by_deadline')} of 10,000 done by then)",
            )
    if pm:
        stack = f"Prefect {pm['versions'].get('prefect', '')} .map (default runner, SQLite)"
        pw, pr = pm["map1000_wall_s"], pm["map1000_recorded_s"]
        add(
            stack,
            f".map over 1,000 items: wall, flow call → return (median of {pw['n']}; "
            f"peak {pm['map1000_peak_threads']['median']:,.0f} threads)",
            _s(pw["median"]),
        )
        add(
            stack,
            ".map over 1,000 items: all 1,000 task runs recorded COMPLETED by the API server "
            f"(median of {pr['n']}; the figure our ratio uses: we commit each result)",
            _s(pr["median"]),
        )
    for fig in backends.values():
        m = fig.get("map")
        ours = m and m["wall_s"]["median"]
        if not ours:
            continue
        quick = f" (ours at {m['items']:,} items)" if m["items"] != 1000 else ""
        stack = f"ratio, {fig['label']}"
        if cm:
            ratio = cm["chord1000_wall_s"]["median"] / ours
            add(
                stack,
                "1,000-item map vs Celery: chord of 1,000 wall / our 1,000-item map wall" + quick,
                _ratio(ratio),
                f"≥ {TARGET_MAP_VS_CELERY:g}x",
                "- (not comparable at quick counts)"
                if quick
                else _verdict(ratio >= TARGET_MAP_VS_CELERY),
            )
        if pm:
            ratio = pm["map1000_recorded_s"]["median"] / ours
            add(
                stack,
                "1,000-item map vs Prefect: .map all task runs recorded / our 1,000-item map "
                "wall" + quick,
                _ratio(ratio),
                f"≥ {TARGET_MAP_VS_PREFECT:g}x",
                "- (not comparable at quick counts)"
                if quick
                else _verdict(ratio >= TARGET_MAP_VS_PREFECT),
            )
            add(
                stack,
                "the same against Prefect's wall (flow call → return; its task runs not yet "
                "stored): not the ratio the target uses",
                _ratio(pm["map1000_wall_s"]["median"] / ours),
            )
        big = fig.get("big_map")
        if cm and big and big["done"] and big["items"] == 10000 and cm.get("chord10000_done"):
            add(
                stack,
                f"{big['items']:,}-item map vs Celery's chord of 10,000: their wall / ours",
                _ratio(cm["chord10000_wall_s"]["median"] / big["wall_s"]),
            )


ROW_KEYS = ("stack", "figure", "value", "target", "verdict")


def _row(*cells: str) -> dict[str, str]:
    """A table row from its first cells, the rest "-"."""
    return dict(zip(ROW_KEYS, [*cells, "-", "-", "-"][: len(ROW_KEYS)], strict=True))


def only_limit_rows(backends: dict[str, Any], counts: dict[str, Any]) -> list[dict[str, str]]:
    """``--only-limits``: the per-step overhead (no limit defined, as every other flow runs)
    against BENCHMARKS.md's recorded figure, and the limits stage."""
    rows: list[dict[str, str]] = []

    def add(*cells: str) -> None:
        rows.append(_row(*cells))

    for name, fig in backends.items():
        over = fig["overhead"]["summary"]["overhead_ms_per_step"]
        add(
            fig["label"],
            f"engine overhead per step, {counts['steps']}-step noop flow, no limit in it "
            f"(median of {counts['overhead_runs']}; min {over['min']:.3f})",
            f"{over['median']:.3f} ms",
            f"BENCHMARKS.md: {RECORDED_OVERHEAD_MS[name]:g} ms",
        )
        per_step = fig["overhead"]["summary"]["per_step_ms"]["median"]
        add(fig["label"], "per step with the no-op task included: span / steps (median)",
            f"{per_step:.3f} ms", "-")  # fmt: skip
        floor = fig["floor"]["step_transaction_s"] * 1000
        add(fig["label"], "floor: BEGIN + 3 single-row UPDATEs + COMMIT, from Python",
            f"{floor:.3f} ms (overhead / floor {over['median'] / floor:.2f}x)", "-")  # fmt: skip
        limit_rows(name, fig, add)
    return rows


# The per-step figure BENCHMARKS.md recorded before limits existed (its full run), for
# ``--only-limits`` to set beside this run's.
RECORDED_OVERHEAD_MS = {"sqlite": 0.409, "pg-redis": 1.545}


def render(rows: list[dict[str, str]]) -> str:
    lines = [
        f"| stack (Q_WORKERS={WORKERS}, LOG_LEVEL={LOG_LEVEL}) "
        "| figure | measured | target | verdict |",
        "|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stack']} | {r['figure']} | {r['value']} | {r['target']} | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller counts: {QUICK}")
    parser.add_argument("--skip-peers", action="store_true", help="no Celery / Prefect runs")
    parser.add_argument(
        "--skip-map",
        action="store_true",
        help="no map / sleep stages (the 1,000- and 10,000-item maps, the sleepers) and no "
        "map peers",
    )
    parser.add_argument(
        "--skip-webhooks", action="store_true", help="no webhook stage (bench/webhooks.py)"
    )
    parser.add_argument(
        "--skip-recovery",
        action="store_true",
        help="no recovery stage (bench/recovery.py: a killed cluster, lost messages, the "
        "reaper's pass)",
    )
    parser.add_argument(
        "--skip-limits",
        action="store_true",
        help="no limits stage (a map through a 10-slot named limit, and capped at 10)",
    )
    parser.add_argument(
        "--only-limits",
        action="store_true",
        help="only the per-step overhead and the limits stage (no throughput, waits, maps, "
        "recovery or peers); with --skip-limits, the per-step figures alone",
    )
    parser.add_argument("--backends", default="sqlite,pg-redis", help="comma-separated")
    parser.add_argument("--redis-db", type=int, help="Redis db number to use and flush "
                        "(default: the highest empty one)")  # fmt: skip
    parser.add_argument("--wait-deadline", type=float, help="seconds (default 30, quick 10)")
    parser.add_argument("--clients", type=int, help="processes starting executions (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep each stack's temporary directory")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, json.loads(args.counts))

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(names) - set(BACKENDS)
    if unknown or not names:
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    counts = dict(QUICK if args.quick else FULL)
    if args.wait_deadline:
        counts["wait_deadline"] = args.wait_deadline
    if args.clients:
        counts["clients"] = max(1, args.clients)
    if args.skip_map:
        counts["map"] = False
    if args.skip_limits:
        counts["limits"] = False
    if args.only_limits:
        # With --skip-limits: the per-step figures alone (overhead, with the task, the floor).
        counts.update(only_limits=True, limits=not args.skip_limits, map=False)
        args.skip_recovery = args.skip_peers = args.skip_webhooks = True
    started, stamp = time.monotonic(), utc_stamp()
    revision = engine_revision()
    load_before = os.getloadavg()

    backends = {}
    for name in names:
        backends[name] = run_backend(name, counts, args.redis_db, args.keep)
        if not args.skip_webhooks:
            log(f"{name}: webhook deliveries (bench/webhooks.py)")
            hook_counts = WEBHOOK_QUICK if args.quick else WEBHOOK_DEFAULTS
            backends[name]["webhooks"] = run_webhooks(name, dict(hook_counts), args.redis_db)
    recovered: dict[str, Any] = {}
    if not args.skip_recovery:
        for name in names:
            log(f"{name}: recovery stage (bench/recovery.py)")
            recovered[name] = recovery.run_backend(
                name, dict(recovery.QUICK if args.quick else recovery.FULL), args.redis_db,
                args.keep,
            )  # fmt: skip
    peers: dict[str, Any] = {}
    if not args.skip_peers:
        peers["celery"] = run_peer("celery", "run_celery.sh", [], timeout=900)
        peers["prefect"] = run_peer("prefect", "run_prefect.sh", PREFECT_ARGS, timeout=1500)
        if counts["map"]:
            peers["celery_map"] = run_peer(
                "celery_map", str(BASE_DIR / "bench/peers/run_celery_map.sh"), CELERY_MAP_ARGS,
                timeout=900,
            )  # fmt: skip
            peers["prefect_map"] = run_peer(
                "prefect_map", str(BASE_DIR / "bench/peers/run_prefect_map.sh"), PREFECT_MAP_ARGS,
                timeout=1800,
            )  # fmt: skip

    if engine_revision() != revision:
        log(f"WARNING: the engine changed during the run ({revision} -> {engine_revision()})")
        revision = f"{revision}, changed to {engine_revision()} during the run"
    if counts.get("only_limits"):
        rows = only_limit_rows(backends, counts)
    else:
        rows = build_rows(backends, peers, counts)
        for name, fig in backends.items():
            limit_rows(name, fig, lambda *cells: rows.append(_row(*cells)))
    rows += [row for name, fig in recovered.items() for row in recovery.rows(name, fig)]
    table = render(rows)
    seconds = time.monotonic() - started
    info = machine()
    load_after = os.getloadavg()
    print(table)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"bench-{stamp}.json"
    document = {
        "benchmark": "suite",
        "timestamp": datetime.now(UTC).isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": seconds,
        "engine_revision": revision,
        "machine": info,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "config": {
            **counts,
            "quick": args.quick,
            "workers": WORKERS,
            "log_level": LOG_LEVEL,
            "backends": names,
            "peers": sorted(peers),
        },
        "backends": backends,
        "recovery": recovered,
        "peers": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("samples",)} for k, v in peers.items()
        },
        "table": rows,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    complete = (
        not args.quick
        and set(names) == set(BACKENDS)
        and not args.skip_peers
        and counts["map"]
        and not args.skip_webhooks
        and not args.skip_recovery
        and counts["limits"]
    )
    if complete:
        notes = {
            "waits_missed": any(not b["waits"]["all_done"] for b in backends.values()),
            "maps": counts["map"],
        }
        BENCHMARKS_MD.write_text(
            markdown(table, info, stamp, seconds, (load_before, load_after), revision, notes)
        )
        log(f"wrote {BENCHMARKS_MD.relative_to(BASE_DIR)}")
    else:
        log(
            "partial run (--quick, --skip-peers, --skip-map, --skip-webhooks, --skip-recovery, "
            "--skip-limits, --only-limits or a subset of "
            "backends): "
            "BENCHMARKS.md unchanged"
        )
    log(f"wrote {path.relative_to(BASE_DIR)} in {seconds / 60:.1f} min")
    return 0


def markdown(
    table: str,
    info: dict[str, Any],
    stamp: str,
    seconds: float,
    load: Any,
    revision: str,
    notes: dict[str, bool],
) -> str:
    before, after = load
    waits = (
        " Where the 1 s waits end after the deadline, the figure says how many had ended by then "
        "and what that rate extrapolates to."
        if notes["waits_missed"]
        else ""
    )
    maps = (
        "\n\nThe map rows (issue 14): a map's wall is the map execution's `queued_at` → `ended_at`"
        " in the database; its items are child executions, each committed as it ends. Celery's "
        "chord keeps its state in Redis and commits nothing; Prefect's ratio uses its \"all task "
        'runs recorded" figure (its flow call returns before its task runs are stored; the '
        "ratio against that wall is shown too, without a verdict). The worker memory row reads "
        "/proc/<pid>/status of the qcluster worker processes. The sleepers row compares the "
        "same burst of 3-task flows with and without the sleeping executions, in the same stack."
        if notes.get("maps")
        else ""
    )
    return f"""# Benchmarks

Generated by `make bench` (`bench/suite.py`); do not edit by hand. Rerun with `make bench`
(about {seconds / 60:.0f} minutes here, peers included; the Celery and Prefect venvs are built
under `/tmp/peerbench` the first time, which adds a few minutes). `make bench
BENCH_ARGS=--quick` runs smaller counts without touching this file. What each figure means:
[`bench/README.md`](bench/README.md); raw figures: `bench/results/bench-{stamp}.json`.

Run {stamp}, engine at commit {revision}:
{info["nproc"]} CPUs, Python {info["python"]}, Django {info["django"]},
django-q2 {info["django_q2"]}, SQLite {info["sqlite"]}; load average
{before[0]:.2f} before, {after[0]:.2f} after (a shared machine: compare ratios, not absolutes).

{table}

Reading it: "per step with the no-op task included" is what a step costs end to end, as the
peers' per-step figures (their trivial task body included) are measured, and the ratios
against them are judged on it; "engine overhead per step" leaves out the task's own time (the
no-op coroutine and its wait for the task loop) and is kept beside it. The 3-task
throughput is started in bulk (1,000 a call) so that the start rate is not the bound (its row
says how many times the flow rate the starts ran); the CPU row says where the cores went
meanwhile. "starts alone" (waits, bursts) is how fast the client processes started those
executions one after another, as API clients would: where it is close to a flow rate, the
clients bound that figure (the 1 s waits' wall includes starting them, too).{waits}
Prefect's concurrent run is a different shape (50 three-task flows), so that ratio is only a
rough comparison.{maps}
"""


if __name__ == "__main__":
    sys.exit(main())
