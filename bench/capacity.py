"""What the engine can do, not what its clients can send (issue 26), for ``suite.py``.

- ``measure_api_starts``: the start endpoints timed through Django's test client in the
  helper process (the whole middleware, authentication and view stack; no HTTP server, no
  network): one start at a time (p50/p99), and ``bulk/`` with 1,000 inputs a call.
- ``measure_capacity``: the throughput stage's executions started in bulk while the workers
  run them, with the CPU each side of the stack used meanwhile (``cpu_snapshot``).

Runs inside the suite's helper process, Django set up on the stack's environment.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = (
    "workers",
    "qcluster, other processes",
    "postgres, this database's backends",
    "postgres, the rest",
    "redis-server",
    "bench helper",
)


# -- CPU from /proc ------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, utime + stime in clock ticks, command name) of a process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state, ppid, ..., utime (14th field of the line), stime (15th).
    return int(fields[1]), int(fields[11]) + int(fields[12]), name


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _worker_pids() -> set[int]:
    from django_q.status import Stat

    return {pid for stat in Stat.get_all() for pid in stat.workers}


def cpu_snapshot(cluster_pid: int, database: str) -> dict[str, Any]:
    """CPU ticks used so far by each process of each group (``GROUPS``), and the machine's
    busy and total ticks (``/proc/stat``): two snapshots make a window's split."""
    procs: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            procs[int(entry.name)] = found
    workers = _worker_pids()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    cluster, todo = set(), [cluster_pid]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in cluster:
            cluster.add(pid)
            todo += children.get(pid, [])
    groups: dict[str, dict[int, int]] = {name: {} for name in GROUPS}
    for pid, (_, ticks, name) in procs.items():
        if pid in workers:
            group = "workers"
        elif pid in cluster:
            group = "qcluster, other processes"
        elif name == "postgres":
            # A backend's title names its database: "postgres: user db 127.0.0.1(port) idle".
            mine = f" {database} " in _cmdline(pid) if database else False
            group = "postgres, this database's backends" if mine else "postgres, the rest"
        elif name == "redis-server":
            group = "redis-server"
        elif pid == os.getpid():
            group = "bench helper"
        else:
            continue
        groups[group][pid] = ticks
    line = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in line]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return {
        "at": time.monotonic(),
        "groups": groups,
        "machine_busy": sum(ticks[:8]) - idle,
        "machine_total": sum(ticks[:8]),
    }


def cpu_split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds and cores (seconds / wall) of each group between two snapshots. A process
    that started in the window counts from zero; one that ended in it is lost (a worker
    recycled by django-q2 after 1,000 jobs, a closed database connection)."""
    wall = after["at"] - before["at"]
    split: dict[str, Any] = {}
    for name in GROUPS:
        old, new = before["groups"][name], after["groups"][name]
        seconds = sum(ticks - old.get(pid, 0) for pid, ticks in new.items()) / CLOCK_TICKS
        split[name] = {"cpu_s": seconds, "cores": seconds / wall if wall > 0 else None}
    busy = (after["machine_busy"] - before["machine_busy"]) / CLOCK_TICKS
    ours = sum(
        v["cpu_s"]
        for k, v in split.items()
        if k not in ("postgres, the rest",)  # other databases' backends are not ours
    )
    return {
        "wall_s": wall,
        "groups": split,
        "machine_busy_cores": busy / wall if wall > 0 else None,
        "cores_online": os.cpu_count(),
        # Everything else the machine ran meanwhile (other users, the kernel's own work).
        "others_cores": (busy - ours) / wall if wall > 0 else None,
    }


# -- the start endpoints through the test client ---------------------------------------------------
def _client() -> Any:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user, _ = get_user_model().objects.get_or_create(username="bench_operator")
    user.groups.add(Group.objects.get(name="operator"))
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def measure_api_starts(
    flow_id: str, singles: int, bulk_calls: int, per_call: int
) -> dict[str, Any]:
    """Time ``POST /api/flows/{id}/executions/`` one at a time and ``.../bulk/`` with
    ``per_call`` inputs a call, before any worker runs; what they start is deleted after
    (with its queue messages) so that no later stage runs it."""
    from django.db import transaction
    from django_q.models import OrmQ

    from flows.models import Execution

    client = _client()
    one, bulk = f"/api/flows/{flow_id}/executions/", f"/api/flows/{flow_id}/executions/bulk/"

    def post(url: str, body: Any) -> float:
        started = time.perf_counter()
        response = client.post(url, body, format="json")
        took = time.perf_counter() - started
        if response.status_code != 201:
            raise SystemExit(f"{url}: {response.status_code} {response.content[:300]!r}")
        return took

    for n in range(10):  # warm-ups: the first request imports and fills caches
        post(one, {"input": {"n": n}})
    single = sorted(post(one, {"input": {"n": n}}) for n in range(singles))
    post(bulk, {"inputs": [{"n": n} for n in range(per_call)]})
    calls = [post(bulk, {"inputs": [{"n": n} for n in range(per_call)]}) for _ in range(bulk_calls)]
    with transaction.atomic():
        Execution.objects.filter(flow_id=flow_id).delete()
        OrmQ.objects.all().delete()  # the ORM broker's messages for them (Redis: none left)
    per_call_s = statistics.median(calls)
    return {
        "via": "Django test client in the bench helper (no HTTP server), token auth",
        "single_n": singles,
        "single_p50_s": _percentile(single, 50),
        "single_p99_s": _percentile(single, 99),
        "single_mean_s": statistics.mean(single),
        "bulk_calls": calls,
        "bulk_per_call": per_call,
        "bulk_call_median_s": per_call_s,
        "bulk_executions_per_s": per_call / per_call_s,
    }


# -- capacity: started in bulk while the workers run ----------------------------------------------
def measure_capacity(
    version_obj: Any, count: int, per_call: int, cluster_pid: int, timeout: float
) -> dict[str, Any]:
    """Start ``count`` executions in bulk (``services.executions_start``, ``per_call`` a call,
    one call after another, as a client of ``bulk/`` would) while the workers run them; the
    engine's flows/s and steps/s, and the CPU split over the same window."""
    from django.db import connection
    from django.utils import timezone

    from flows import services
    from flows.models import TERMINAL_STATUSES, Execution, ExecutionEnd, TaskRun

    flow_id = version_obj.flow_id
    database = connection.settings_dict["NAME"] if connection.vendor == "postgresql" else ""
    before = cpu_snapshot(cluster_pid, database)
    started = time.perf_counter()
    for first in range(0, count, per_call):
        items = [services.BulkItem(f"inputs[{n}]") for n in range(min(per_call, count - first))]
        services.executions_start(flow_version=version_obj, items=items)
    start_s = time.perf_counter() - started
    ended = Execution.objects.filter(flow_id=flow_id, status__in=TERMINAL_STATUSES)
    # What follows each end (flow triggers, alerts: the ends outbox) must keep up with the
    # ends: the most of them waiting at once, and how long after the last end the last of
    # them was handled.
    ends = ExecutionEnd.objects.filter(flow_id=flow_id)
    ends_most = 0
    deadline = time.monotonic() + timeout
    while ended.count() < count and time.monotonic() < deadline:
        ends_most = max(ends_most, ends.count())
        time.sleep(0.1)
    after = cpu_snapshot(cluster_pid, database)
    while ends.exists() and time.monotonic() < deadline:
        ends_most = max(ends_most, ends.count())
        time.sleep(0.1)
    ends_left = ends.count()
    ends_done_at = timezone.now()
    rows = list(
        Execution.objects.filter(flow_id=flow_id).values_list("status", "queued_at", "ended_at")
    )
    done = [(q, e) for s, q, e in rows if s == "COMPLETED"]
    first_queued = min(q for _, q, _ in rows)
    wall = (max(e for _, e in done) - first_queued).total_seconds() if done else None
    steps = TaskRun.objects.filter(execution__flow_id=flow_id, status="SUCCESS").count()
    latencies = sorted((e - q).total_seconds() for q, e in done)
    statuses: dict[str, int] = {}
    for status, _, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "executions": count,
        "started": f"in bulk, {per_call} a call, one call after another",
        "statuses": statuses,
        "completed": len(done),
        "wall_s": wall,
        "flows_per_s": len(done) / wall if wall else None,
        "steps": steps,
        "steps_per_s": steps / wall if wall else None,
        "start_s": start_s,
        "starts_per_s": count / start_s if start_s > 0 else None,
        "latency_p50_s": _percentile(latencies, 50) if len(latencies) > 1 else None,
        "latency_p95_s": _percentile(latencies, 95) if len(latencies) > 1 else None,
        "cpu": cpu_split(before, after),
        "ends_most_waiting": ends_most,
        "ends_left": ends_left,
        # Polled every 0.1 s: within that of when the last end was handled.
        "ends_handled_s_after_last_end": (
            (ends_done_at - max(e for _, e in done)).total_seconds()
            if done and not ends_left
            else None
        ),
    }
