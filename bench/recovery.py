"""Recovery from faults, in seconds: a killed worker cluster, lost queue messages, and what
the reaper's pass costs (issue 25).

Run: ``.venv/bin/python bench/recovery.py [--backend sqlite|pg-redis|both] [--quick]
[--executions 200] [--finished 100000] [--redis-db N] [--keep]``; ``make bench`` runs it as
its recovery stage. Prints a markdown table on stdout (progress on stderr) and writes the raw
figures to ``bench/results/recovery-<UTC stamp>.json``.

For each backend it builds a stack as ``suite.py`` does (a SQLite file and the ORM broker, or
a fresh PostgreSQL database and a Redis db number of its own, removed after), runs
``manage.py migrate``, and a helper process (this script with ``--child``, Django set up on
the stack's environment) measures, every figure from the timestamps the engine writes:

  reaper pass  before any worker starts, ``--finished`` COMPLETED executions of three steps
               each are written in bulk; then ``flows.engine.recover()`` (the quick pass each
               worker process runs every FLOW_REAP_EVERY_SECONDS) is timed 200 times from the
               helper (median, p95, max), and ``flows.engine.reap()`` (the minute's whole
               pass) 20 times; the plans of the pass's two queries are kept in the JSON.
  per step     the suite's 100-step ``noop`` chain (``engine_overhead.py``'s definition), 5
               runs after 2 warm-ups on a cluster with the reaper's pass every second (the
               default) or every 86,400 s (off, in effect), four clusters one after another
               (off, on, on, off, so a drift of the machine's load weighs on both): the
               medians of the 10 runs of each side by side.
  load         two clusters (``Q_WORKERS=2`` each, ``FLOW_WORKER_CONCURRENCY=50``, so 200
               executions fill the four worker processes) and ``--executions`` executions of
               a two-task flow (``wait`` 8 s, then ``noop``), started one after another from
               the helper; every other setting is the default (FLOW_LEASE_SECONDS 6,
               FLOW_REAP_EVERY_SECONDS 1, FLOW_WAKE_AFTER_SECONDS 3):
    baseline     no fault: total = first execution queued_at -> last ended_at.
    lost queue   both clusters paused (SIGSTOP to each cluster's process group), the
                 executions started (their queue messages written), every queued message
                 deleted (Redis: the cluster's queue key, as a restart or FLUSHDB loses it;
                 ORM: the django_q OrmQ rows), both clusters resumed. Recovery = from the
                 deletion to each execution's first step ``started_at``: the max (every
                 affected step running again) and the median; total as in baseline.
    kill -9      once every execution's ``wait`` step has started, the process group of the
                 cluster holding most of them is SIGKILLed. Affected = the steps its
                 workers held. Recovery = from the kill to the ``started_at`` of each
                 affected step's second attempt (the max, and the median); total as in
                 baseline, against it.

The goals: every affected step running again within 10 s of its fault; the quick pass at
most 5 ms with 100,000 finished executions; no measurable cost on the per-step figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _stack import (
    BASE_DIR,
    RESULTS_DIR,
    descendants,
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

WORKERS = 2
LOG_LEVEL = "WARNING"
CONCURRENCY = 50  # per worker process: 2 clusters x 2 processes x 50 = 200 executions at once
HOLD_SECONDS = 8.0
FULL = {"executions": 200, "finished": 100_000, "overhead_runs": 5, "steps": 100}
QUICK = {"executions": 100, "finished": 20_000, "overhead_runs": 3, "steps": 100}
TARGET_RECOVERY_S = 10.0
TARGET_PASS_MS = 5.0
BACKENDS = ("sqlite", "pg-redis")

HOLD_FLOW = {
    "id": "bench_recovery_hold",
    "name": "Benchmark: an 8 s wait, then a no-op",
    "tasks": [
        {"name": "hold", "task_type": "wait", "parameters": {"seconds": HOLD_SECONDS}},
        {"name": "after", "task_type": "noop"},
    ],
}


def log(message: str) -> None:
    print(f"[recovery {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# The helper process: one backend, Django set up on its environment
# -------------------------------------------------------------------------------------------
def insert_finished(count: int, batch: int = 2000) -> float:
    """``count`` COMPLETED executions of three SUCCESS steps each, in bulk; seconds taken."""
    from django.db import connection, transaction
    from django.utils import timezone

    from flows import services
    from flows.models import Execution, ExecutionStatus, TaskRun, TaskRunStatus

    started = time.perf_counter()
    version = services.flow_create(
        document={"id": "bench_finished", "tasks": [{"name": "a", "task_type": "noop"}]}
    )
    now = timezone.now()
    for first in range(0, count, batch):
        with transaction.atomic():
            rows = Execution.objects.bulk_create(
                Execution(
                    flow_id=version.flow_id,
                    flow_version=version,
                    status=ExecutionStatus.COMPLETED,
                    queued_at=now,
                    started_at=now,
                    ended_at=now,
                    steps_taken=3,
                )
                for _ in range(min(batch, count - first))
            )
            TaskRun.objects.bulk_create(
                TaskRun(
                    execution=row,
                    seq=seq,
                    task_name="a",
                    task_type="noop",
                    status=TaskRunStatus.SUCCESS,
                    started_at=now,
                    ended_at=now,
                    woken_at=now,
                )
                for row in rows
                for seq in (1, 2, 3)
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def time_passes(rounds: int = 200, whole: int = 20) -> dict[str, Any]:
    """The quick pass (``recover``) and the whole one (``reap``), timed from here."""
    from django.utils import timezone

    from flows import engine
    from flows.engine import reaper, wakeup

    engine.recover()  # the connection opened, the statements' first plans made
    quick = []
    for _ in range(rounds):
        started = time.perf_counter()
        engine.recover()
        quick.append(time.perf_counter() - started)
    full = []
    for _ in range(whole):
        started = time.perf_counter()
        engine.reap()
        full.append(time.perf_counter() - started)
    now = timezone.now()
    quick.sort()
    return {
        "recover_ms": {
            "median": statistics.median(quick) * 1000,
            "p95": quick[int(len(quick) * 0.95) - 1] * 1000,
            "max": quick[-1] * 1000,
            "n": rounds,
        },
        "reap_ms": {"median": statistics.median(full) * 1000, "max": max(full) * 1000, "n": whole},
        "plans": {
            "expired leases": reaper.expired_leases(now)[: reaper.TAKE_BATCH].explain(),
            "unclaimed steps": wakeup.pending(reaper.unclaimed(now))
            .order_by("woken_at")[:500]
            .explain(),
        },
    }


def start_cluster(home: Path, name: str, **env: str) -> tuple[subprocess.Popen, Path]:
    qlog = home / f"qcluster-{name}.log"
    proc = start([sys.executable, "manage.py", "qcluster"], {**os.environ, **env}, qlog)
    deadline = time.monotonic() + 60
    # Its sentinel, workers, monitor and pusher forked; then its status in the shared cache.
    while len(descendants(proc.pid)) < WORKERS + 3:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"qcluster {name} did not start:\n{qlog.read_text()[-3000:]}")
        time.sleep(0.1)
    wait_for_cluster(proc, qlog)
    return proc, qlog


def overhead(home: Path, steps: int, runs: int, reap_every: str) -> dict[str, Any]:
    """The 100-step chain's per-step overhead on one cluster (engine_overhead.py's figure)."""
    import engine_overhead as eo

    from flows import services

    chain = services.flow_create(document={**eo.noop_chain(steps), "id": f"chain_{reap_every}"})
    started = time.monotonic()
    proc, qlog = start_cluster(
        home, f"overhead-{reap_every}-{started:.0f}", FLOW_REAP_EVERY_SECONDS=reap_every
    )
    try:
        for _ in range(2):  # warm-ups: each worker process's first execution pays for imports
            eo.wait_until_ended(eo.start_execution(chain), 120)
        measured = []
        for _ in range(runs):
            execution_id = eo.start_execution(chain)
            if eo.wait_until_ended(execution_id, 120) != "COMPLETED":
                sys.exit(f"chain {execution_id} did not complete; see {qlog}")
            measured.append(eo.measure(execution_id))
    finally:
        stop(proc)
    return {
        "reap_every_s": float(reap_every),
        "overhead_ms_per_step": eo.summarize(measured)["overhead_ms_per_step"],
        "runs": measured,
    }


def start_load(version: Any, count: int) -> list[Any]:
    from flows import services

    ids = []
    for _ in range(count):
        execution = services.execution_create(flow_version=version)
        services.execution_start(execution_id=execution.id)
        ids.append(execution.id)
    return ids


def wait_all(ids: list[Any], timeout: float = 180) -> dict[str, int]:
    from flows.models import TERMINAL_STATUSES, Execution

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = Execution.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count()
        if done == len(ids):
            break
        time.sleep(0.1)
    statuses: dict[str, int] = {}
    for status in Execution.objects.filter(pk__in=ids).values_list("status", flat=True):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def total(ids: list[Any]) -> float:
    from django.db.models import Max, Min

    from flows.models import Execution

    span = Execution.objects.filter(pk__in=ids).aggregate(Min("queued_at"), Max("ended_at"))
    return (span["ended_at__max"] - span["queued_at__min"]).total_seconds()


def seconds_after(fault: datetime, times: list[datetime]) -> dict[str, Any]:
    waits = sorted((t - fault).total_seconds() for t in times)
    return {
        "max": waits[-1] if waits else None,
        "median": statistics.median(waits) if waits else None,
        "n": len(waits),
    }


def paused(procs: list[subprocess.Popen], sig: signal.Signals) -> None:
    """Stop (SIGSTOP) or continue (SIGCONT) every process of these clusters; on a stop, wait
    until the kernel shows each one stopped, so none can take a message meanwhile."""
    for proc in procs:
        os.killpg(proc.pid, sig)  # each cluster was started in a session (group) of its own
    if sig != signal.SIGSTOP:
        return
    pids = [pid for proc in procs for pid in (proc.pid, *descendants(proc.pid))]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for pid in pids:
            try:  # the state is the field after the parenthesised command name
                states.append(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                states.append("gone")
        if all(state in ("T", "t", "gone") for state in states):
            return
        time.sleep(0.01)
    sys.exit(f"the clusters did not stop: {dict(zip(pids, states, strict=True))}")


def drop_queue() -> int:
    """Delete every queued message of this stack's broker; how many there were."""
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        count, _ = OrmQ.objects.all().delete()
        return count
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        key = f"django_q:{Conf.CLUSTER_NAME}:q"
        with client.pipeline(transaction=True) as pipe:
            pipe.llen(key)
            pipe.delete(key)
            queued, _ = pipe.execute()
        return int(queued)
    finally:
        client.close()


def stopped_idle(clusters: list[subprocess.Popen], tries: int = 100) -> None:
    """SIGSTOP the clusters at a moment none of them holds SQLite's write lock: stopped inside
    a write transaction, a worker would keep the lock, and the starts here would wait for it
    past the busy timeout ("database is locked"). On PostgreSQL a stop holds at most the rows
    of its own steps, which starting new executions never waits for."""
    from django.db import connection

    for _ in range(tries):
        paused(clusters, signal.SIGSTOP)
        if connection.vendor != "sqlite" or not _write_locked(connection.settings_dict["NAME"]):
            return
        paused(clusters, signal.SIGCONT)
        time.sleep(0.02)
    raise RuntimeError(f"no moment without a writer in {tries} stops")


def _write_locked(path: str) -> bool:
    import sqlite3

    probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def lost_queue(version: Any, clusters: list[subprocess.Popen], count: int) -> dict[str, Any]:
    from django.utils import timezone

    from flows.models import TaskRun

    stopped_idle(clusters)
    try:
        ids = start_load(version, count)
        dropped = drop_queue()
        fault = timezone.now()
    finally:
        paused(clusters, signal.SIGCONT)
    statuses = wait_all(ids)
    firsts = list(
        TaskRun.objects.filter(execution_id__in=ids, seq=1).values_list("started_at", flat=True)
    )
    return {
        "executions": count,
        "messages_deleted": dropped,
        "statuses": statuses,
        "recovery_s": seconds_after(fault, [t for t in firsts if t is not None]),
        "total_s": total(ids),
    }


def killed_cluster(version: Any, clusters: list[subprocess.Popen], count: int) -> dict[str, Any]:
    from django.utils import timezone

    from flows.models import TaskRun

    ids = start_load(version, count)
    deadline = time.monotonic() + 60
    # Once every execution's wait has begun (on a loaded machine the last may begin after
    # the first ended: the table says how many were mid-step).
    holds = TaskRun.objects.filter(execution_id__in=ids, task_name="hold")
    while holds.filter(started_at__isnull=False).count() < count:
        if time.monotonic() > deadline:
            sys.exit("the load's wait steps did not all start within 60 s")
        time.sleep(0.05)
    running = list(holds.filter(status="RUNNING").values_list("pk", "worker"))
    pids = [{proc.pid, *descendants(proc.pid)} for proc in clusters]
    held = [[pk for pk, w in running if int(w.rsplit(":", 1)[1]) in mine] for mine in pids]
    doomed = max(range(len(clusters)), key=lambda k: len(held[k]))
    os.killpg(clusters[doomed].pid, signal.SIGKILL)
    fault = timezone.now()
    clusters[doomed].wait(timeout=30)
    affected = held[doomed]
    statuses = wait_all(ids)
    lost = list(TaskRun.objects.filter(pk__in=affected).values_list("execution_id", "status"))
    again = list(
        TaskRun.objects.filter(
            execution_id__in=[e for e, _ in lost], task_name="hold", attempt=2
        ).values_list("started_at", flat=True)
    )
    return {
        "executions": count,
        "mid_step_at_kill": len(running),
        "affected_steps": len(affected),
        "affected_lost": sum(1 for _, status in lost if status == "LOST"),
        "run_again": len(again),
        "third_attempts": TaskRun.objects.filter(execution_id__in=ids, attempt__gt=2).count(),
        "statuses": statuses,
        "recovery_s": seconds_after(fault, [t for t in again if t is not None]),
        "total_s": total(ids),
        "killed": doomed,
    }


def child(out_path: Path, counts: dict[str, Any]) -> int:
    sys.path.insert(0, str(BASE_DIR))
    os.chdir(BASE_DIR)
    import django

    django.setup()
    from django.conf import settings

    from flows import services

    home = out_path.parent
    result: dict[str, Any] = {
        "settings": {
            name: getattr(settings, name)
            for name in ("FLOW_LEASE_SECONDS", "FLOW_REAP_EVERY_SECONDS", "FLOW_WAKE_AFTER_SECONDS")
        }
    }
    log(f"  writing {counts['finished']:,} finished executions")
    result["finished"] = {
        "executions": counts["finished"],
        "seconds": insert_finished(counts["finished"]),
    }
    result["pass"] = time_passes()
    log(f"  reaper pass: {result['pass']['recover_ms']}, whole {result['pass']['reap_ms']}")
    # Off, on, on, off: a drift of the machine's load over the stage weighs on both alike.
    every = {"reaper_off": "86400", "reaper_on": "1"}
    rounds = [
        (label, overhead(home, counts["steps"], counts["overhead_runs"], every[label]))
        for label in ("reaper_off", "reaper_on", "reaper_on", "reaper_off")
    ]
    result["overhead"] = {}
    for label in ("reaper_off", "reaper_on"):
        runs = [run for name, fig in rounds if name == label for run in fig["runs"]]
        result["overhead"][label] = {
            "reap_every_s": float(every[label]),
            "overhead_ms_per_step": {
                "median": statistics.median(r["overhead_ms_per_step"] for r in runs),
                "min": min(r["overhead_ms_per_step"] for r in runs),
                "max": max(r["overhead_ms_per_step"] for r in runs),
                "n": len(runs),
            },
            "rounds": [fig["overhead_ms_per_step"] for name, fig in rounds if name == label],
        }
    log(
        "  per step: "
        + ", ".join(f"{k} {v['overhead_ms_per_step']}" for k, v in result["overhead"].items())
    )
    version = services.flow_create(document=HOLD_FLOW)
    clusters = [
        start_cluster(home, name, FLOW_WORKER_CONCURRENCY=str(CONCURRENCY))[0]
        for name in ("a", "b")
    ]
    try:
        count = counts["executions"]
        ids = start_load(version, count)
        result["baseline"] = {"executions": count, "statuses": wait_all(ids), "total_s": total(ids)}
        log(f"  baseline: {result['baseline']}")
        result["lost_queue"] = lost_queue(version, clusters, count)
        log(f"  lost queue: {result['lost_queue']}")
        result["kill"] = killed_cluster(version, clusters, count)
        log(f"  kill -9: {result['kill']}")
    finally:
        for proc in clusters:
            stop(proc)
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


# -------------------------------------------------------------------------------------------
# The parent: a stack per backend, the table
# -------------------------------------------------------------------------------------------
def run_backend(
    name: str, counts: dict[str, Any], redis_db: int | None = None, keep: bool = False
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"flow-recovery-{name}-"))
    try:
        stack = sqlite_backend(home) if name == "sqlite" else pg_redis_backend(redis_db)
        with stack as backend:
            env = stack_env(
                backend,
                "recovery",
                Q_WORKERS=str(WORKERS),
                LOG_LEVEL=LOG_LEVEL,
                FLOW_DEMO_DELAY_SECONDS="0",
            )
            # The recovery knobs at their defaults, whatever this shell sets.
            for unset in ("FLOW_LEASE_SECONDS", "FLOW_REAP_EVERY_SECONDS",
                          "FLOW_WAKE_AFTER_SECONDS", "FLOW_WORKER_CONCURRENCY"):  # fmt: skip
                env.pop(unset, None)
            log(f"{backend.label}: migrate ({backend.details})")
            manage(env, "migrate", "--noinput", "--verbosity", "0")
            out = home / "figures.json"
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(out), "--counts", json.dumps(counts)],
                cwd=BASE_DIR,
                env=env,
                timeout=3600,
            )
            if done.returncode != 0:
                logs = "".join(p.read_text()[-2000:] for p in home.glob("qcluster-*.log"))
                sys.exit(f"the {name} recovery run failed (rc {done.returncode})\n{logs}")
            return {
                "label": backend.label,
                "details": backend.details,
                **json.loads(out.read_text()),
            }
    finally:
        if keep:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def rows(name: str, fig: dict[str, Any]) -> list[dict[str, str]]:
    """The table rows of one backend's figures (``suite.py`` adds them to its table)."""
    stack = fig["label"]
    found: list[dict[str, str]] = []

    def add(figure: str, value: str, target: str = "-", verdict: str = "-") -> None:
        found.append(
            {"stack": stack, "figure": figure, "value": value, "target": target, "verdict": verdict}
        )

    base = fig["baseline"]["total_s"]
    kill, lost = fig["kill"], fig["lost_queue"]
    n = kill["executions"]
    lease, every, wake = (fig["settings"][k] for k in (
        "FLOW_LEASE_SECONDS", "FLOW_REAP_EVERY_SECONDS", "FLOW_WAKE_AFTER_SECONDS"))  # fmt: skip
    worst = kill["recovery_s"]["max"]
    add(
        f"recovery: kill -9 of one of two clusters with {kill['mid_step_at_kill']} of {n} "
        f"executions mid-step ({kill['affected_steps']} steps on it; {kill['affected_lost']} "
        f"LOST, {kill['run_again']} run again, {kill['third_attempts']} third attempts): from the "
        f"kill until every affected step runs again, max (median) (FLOW_LEASE_SECONDS={lease:g}, "
        f"FLOW_REAP_EVERY_SECONDS={every:g})",
        "-" if worst is None else f"{worst:.2f} s ({kill['recovery_s']['median']:.2f} s)",
        f"≤ {TARGET_RECOVERY_S:g} s",
        _verdict(
            worst is not None
            and worst <= TARGET_RECOVERY_S
            and kill["run_again"] == kill["affected_steps"]
        ),
    )
    add(
        f"recovery: the {n} executions' total with the kill / without a fault (first queued_at → "
        "last ended_at)",
        f"{kill['total_s']:.2f} s / {base:.2f} s",
    )
    worst = lost["recovery_s"]["max"]
    broker = "Redis queue key deleted" if name == "pg-redis" else "OrmQ rows deleted"
    add(
        f"recovery: {lost['messages_deleted']} queued messages lost ({broker}) while both "
        f"clusters were paused, {n} executions waiting: from the loss until every first step "
        f"runs, max (median) (FLOW_WAKE_AFTER_SECONDS={wake:g})",
        "-" if worst is None else f"{worst:.2f} s ({lost['recovery_s']['median']:.2f} s)",
        f"≤ {TARGET_RECOVERY_S:g} s",
        _verdict(
            worst is not None
            and worst <= TARGET_RECOVERY_S
            and lost["statuses"] == {"COMPLETED": n}
        ),
    )
    add(
        f"recovery: the {n} executions' total with the lost messages / without a fault",
        f"{lost['total_s']:.2f} s / {base:.2f} s",
    )
    quick = fig["pass"]["recover_ms"]
    finished = fig["finished"]["executions"]
    add(
        f"reaper's quick pass (every worker process, every {every:g} s) with {finished:,} "
        f"finished executions in the database: median (p95, max) of {quick['n']}",
        f"{quick['median']:.2f} ms ({quick['p95']:.2f}, {quick['max']:.2f})",
        f"≤ {TARGET_PASS_MS:g} ms",
        _verdict(quick["median"] <= TARGET_PASS_MS),
    )
    add(
        f"reaper's whole pass (the minute's schedule: flow timeouts too) with {finished:,} "
        "finished executions: median",
        f"{fig['pass']['reap_ms']['median']:.2f} ms",
    )
    on = fig["overhead"]["reaper_on"]["overhead_ms_per_step"]
    off = fig["overhead"]["reaper_off"]["overhead_ms_per_step"]
    add(
        f"engine overhead per step, 100-step noop chain, one cluster: reaper's pass every "
        f"second / every day (off), {on['n']} runs each in rounds off, on, on, off (median; min)",
        f"{on['median']:.3f} / {off['median']:.3f} ms ({on['min']:.3f}; {off['min']:.3f})",
        "no measurable cost",
    )
    return found


def render(table: list[dict[str, str]]) -> str:
    lines = ["| stack | figure | measured | target | verdict |", "|---|---|---:|---|---|"]
    lines += [
        f"| {r['stack']} | {r['figure']} | {r['value']} | {r['target']} | {r['verdict']} |"
        for r in table
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="both", choices=[*BACKENDS, "both"])
    parser.add_argument("--quick", action="store_true", help=f"smaller counts: {QUICK}")
    parser.add_argument("--executions", type=int, help="executions in the load (default 200)")
    parser.add_argument("--finished", type=int, help="finished executions (default 100,000)")
    parser.add_argument("--redis-db", type=int, help="Redis db number to use and flush")
    parser.add_argument("--keep", action="store_true", help="keep each stack's directory")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, json.loads(args.counts))
    counts = dict(QUICK if args.quick else FULL)
    if args.executions:
        counts["executions"] = args.executions
    if args.finished is not None:
        counts["finished"] = args.finished
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    started, stamp = time.monotonic(), utc_stamp()
    figures = {name: run_backend(name, counts, args.redis_db, args.keep) for name in names}
    table = [row for name, fig in figures.items() for row in rows(name, fig)]
    print(render(table))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"recovery-{stamp}.json"
    document = {
        "benchmark": "recovery",
        "timestamp": datetime.now(UTC).isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": time.monotonic() - started,
        "machine": machine(),
        "config": counts,
        "backends": figures,
        "table": table,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    log(f"wrote {path.relative_to(BASE_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
