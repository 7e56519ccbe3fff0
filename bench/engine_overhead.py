"""Engine overhead per step, on a real qcluster over a fresh SQLite file.

Run: ``.venv/bin/python bench/engine_overhead.py [--runs 5] [--steps 100] [--workers 2]``
(or ``make bench``). Add ``--profile`` to also run the same flow inline in this process
under cProfile and print where the time of a step goes.

What it does
    1. Creates a temporary directory with a SQLite file, runs ``manage.py migrate`` on it.
    2. Starts ``manage.py qcluster`` (ORM broker, ``--workers`` processes, the project's
       settings otherwise: WAL, IMMEDIATE transactions, poll 0.05 s, LOG_LEVEL as given).
    3. Stores one linear flow of ``--steps`` ``noop`` tasks (no conditions: list order).
    4. Starts ``--warmup`` + ``--runs`` executions one after another through
       ``flows.services`` (the same writes ``POST /flow/execute`` makes), waiting for each
       to end before starting the next. Warm-up runs are not counted: they pay for worker
       start, task module loading and cold caches.
    5. Stops the cluster (SIGTERM to its main pid only) and computes, from the database:

Definitions (all from timestamps the engine itself writes)
    engine overhead per step
        (last step ended_at - first step started_at - sum of step durations) / steps.
        The engine stamps step k+1's ``started_at`` with the same instant as step k's
        ``ended_at`` (both are the ``now`` of the transaction that routes from k to k+1), so
        the span from the first start to the last end is exactly ``steps`` engine cycles:
        each one is the commit of the previous routing transaction, building the task
        (registry lookup, deep copies of parameters/results/input, logging), handing the
        coroutine to the task loop and running it there (on the same thread), checking the result,
        and the start of the next routing transaction. ``duration`` is what the engine
        times around the coroutine itself (``perf_counter`` around the future), so the
        difference is everything the engine adds. Dividing by ``steps`` (not steps - 1)
        because there are ``steps`` such cycles in the span; the first also includes the
        claim and loading the flow definition.
    task time per step
        sum of step durations / steps: the noop coroutine plus the wait for the task loop that the
        engine's own timer includes (future submit -> result).
    queue latency
        execution ``queued_at`` (``execution_start``, before its commit) -> first step
        ``started_at`` (the worker's claim): broker poll, dequeue, unpickle, job start.
    execution wall time
        execution ``queued_at`` -> execution ``ended_at``.

Results go to stdout as a markdown table and to
``bench/results/engine_overhead-<UTC stamp>.json``. The target is <= 1 ms per step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import functools
import io
import json
import logging
import os
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _stack import BASE_DIR, RESULTS_DIR, machine, manage, start, stop, wait_for_cluster

TARGET_MS_PER_STEP = 1.0
FLOW_ID = "bench_noop_chain"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured executions (default 5)")
    parser.add_argument("--steps", type=int, default=100, help="noop steps per flow (default 100)")
    parser.add_argument("--workers", type=int, default=2, help="qcluster workers (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted first runs (default 1)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        help="LOG_LEVEL of the worker (default INFO, as in production; its log goes to a file)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run the flow inline in this process under cProfile and report per step",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="give up on an execution after this long"
    )
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------------------
# Environment and processes
# -------------------------------------------------------------------------------------------
def configure_environment(home: Path, args: argparse.Namespace) -> dict[str, str]:
    """Point this process and its children at the temporary database, before Django loads."""
    env = {
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        # Signs nothing that outlives the run.
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "flowmanager.settings",
        "Q_WORKERS": str(args.workers),
        "Q_CLUSTER_NAME": f"bench-{os.getpid()}",
        "LOG_LEVEL": args.log_level,
        "FLOW_DEMO_DELAY_SECONDS": "0",
    }
    os.environ.update(env)
    for name in ("REDIS_URL", "Q_SYNC"):  # the ORM broker on SQLite is what is measured
        os.environ.pop(name, None)
    return dict(os.environ)


# -------------------------------------------------------------------------------------------
# Flows and measurements
# -------------------------------------------------------------------------------------------
def noop_chain(steps: int) -> dict[str, Any]:
    width = len(str(steps))
    return {
        "id": FLOW_ID,
        "name": f"Benchmark: {steps} noop steps",
        "tasks": [
            {"name": f"s{i:0{width}d}", "task_type": "noop", "parameters": {}}
            for i in range(1, steps + 1)
        ],
    }


def print_chain(steps: int, message: str, flow_id: str) -> dict[str, Any]:
    """``steps`` print steps logging ``message``: the secrets stage runs it with a literal and
    with a ``${secrets...}`` reference (resolved, then masked in the result and the log)."""
    width = len(str(steps))
    return {
        "id": flow_id,
        "name": f"Benchmark: {steps} print steps",
        "tasks": [
            {"name": f"p{i:0{width}d}", "task_type": "print", "parameters": {"message": message}}
            for i in range(1, steps + 1)
        ],
    }


def start_execution(version_obj: Any) -> str:
    from flows import services

    execution = services.execution_create(flow_version=version_obj)
    services.execution_start(execution_id=execution.id)
    return str(execution.id)


def wait_until_ended(execution_id: str, timeout: float) -> str:
    from flows.models import TERMINAL_STATUSES, Execution

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Execution.objects.filter(pk=execution_id).values_list("status", flat=True).get()
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(0.02)
    sys.exit(f"execution {execution_id} did not end within {timeout:g}s")


def measure(execution_id: str) -> dict[str, Any]:
    from flows.models import Execution, TaskRun

    execution = Execution.objects.get(pk=execution_id)
    steps = list(
        TaskRun.objects.filter(execution_id=execution_id)
        .order_by("seq")
        .values("started_at", "ended_at", "duration", "worker", "status")
    )
    n = len(steps)
    span = (steps[-1]["ended_at"] - steps[0]["started_at"]).total_seconds()
    task_total = sum(s["duration"] or 0.0 for s in steps)
    return {
        "execution_id": execution_id,
        "status": execution.status,
        "steps": n,
        "workers": sorted({s["worker"] for s in steps}),
        "overhead_ms_per_step": (span - task_total) / n * 1000,
        "task_ms_per_step": task_total / n * 1000,
        # What a step costs with its task, as a peer's chain step is measured: span / steps.
        "per_step_ms": span / n * 1000,
        "queue_latency_ms": (steps[0]["started_at"] - execution.queued_at).total_seconds() * 1000,
        "wall_ms": (execution.ended_at - execution.queued_at).total_seconds() * 1000,
        "steps_per_second": n / span if span > 0 else None,
    }


METRICS = [
    ("overhead_ms_per_step", "engine overhead per step (ms)"),
    ("task_ms_per_step", "task time per step, incl. the wait for the loop (ms)"),
    ("per_step_ms", "per step with the task included: span / steps (ms)"),
    ("queue_latency_ms", "queue latency: queued -> first step claimed (ms)"),
    ("wall_ms", "execution wall time: queued -> ended (ms)"),
    ("steps_per_second", "steps per second within the execution"),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for key, _ in METRICS:
        values = [r[key] for r in runs if r[key] is not None]
        summary[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return summary


def table(title: str, summary: dict[str, dict[str, float]], n: int) -> str:
    lines = [
        f"### {title} ({n} runs)",
        "",
        "| metric | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for key, label in METRICS:
        s = summary[key]
        digits = 0 if key in ("wall_ms", "steps_per_second") else 3
        cells = " | ".join(f"{s[k]:.{digits}f}" for k in ("median", "min", "max"))
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# The inline profile
# -------------------------------------------------------------------------------------------
class QueryTimer:
    """A connection.execute_wrapper that counts and times SQL by its leading words."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[float]] = {}

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            words = sql.split()
            kind = " ".join(words[:3]) if words[:1] != ["SELECT"] else "SELECT " + _table(sql)
            self.by_kind.setdefault(kind, []).append(time.perf_counter() - started)


def _table(sql: str) -> str:
    after = sql.split(" FROM ", 1)
    return after[1].split()[0] if len(after) == 2 else "?"


class Stopwatch:
    """Accumulated seconds and calls per label, from wrappers patched around engine parts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed


# What the breakdown times; the parts overlap (SQL and logging happen inside the record).
BREAKDOWN = [
    ("record", "Dispatcher._write_batch: store results + routes, one transaction"),
    ("sql", "  SQLite execute, all statements"),
    ("commit", "  SQLite commit"),
    ("orm", "  rest of the record: statement building, model init, 2 log lines"),
    ("start", "step.start: build the task, submit it to the loop"),
    ("task", "  task duration as recorded (coroutine + wait for the loop)"),
    ("logging", "logging calls (engine and task lines, format + write)"),
    ("deepcopy", "copy.deepcopy of parameters/results/input"),
    ("parse", "parse_flow (once per job; validates every task)"),
    ("registry", "task folder rescans (TaskRegistry.refresh)"),
]


def _run_inline(version_obj: Any, runs: int) -> list[dict[str, Any]]:
    from flows import engine

    results = []
    for _ in range(runs):
        execution_id = start_execution(version_obj)
        engine.run_inline(execution_id)
        results.append(measure(execution_id))
    return results


def profile_inline(version_obj: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run the flow through ``flows.engine.run_inline`` in this process, twice over.

    1. With cheap timers patched around the engine's parts and an execute_wrapper on the
       connection (a few microseconds per call): the figures, a breakdown and the SQL.
    2. Under cProfile, for the function-level picture (cProfile inflates call-heavy code
       such as the ORM, so its totals are larger than the real ones).
    Timers time the execution only, not ``execution_start`` (which runs in this process too).
    """
    from unittest import mock

    from django.db import connection

    from flows import engine, registry
    from flows.engine import dispatcher, inputs, step

    engine.run_inline(start_execution(version_obj))  # warm-up: modules, registry, connection

    watch, queries = Stopwatch(), QueryTimer()
    deepcopy = mock.Mock(deepcopy=watch.wrap("deepcopy", copy.deepcopy))
    patches = [
        mock.patch.object(
            engine.Dispatcher,
            "_write_batch",
            watch.wrap("record", engine.Dispatcher._write_batch),
        ),
        mock.patch.object(dispatcher, "start", watch.wrap("start", dispatcher.start)),
        mock.patch.object(inputs, "parse_flow", watch.wrap("parse", inputs.parse_flow)),
        mock.patch.object(
            registry.TaskRegistry,
            "refresh",
            watch.wrap("registry", registry.TaskRegistry.refresh),
        ),
        mock.patch.object(inputs, "copy", deepcopy),
        mock.patch.object(step, "copy", deepcopy),
        mock.patch.object(logging.Logger, "_log", watch.wrap("logging", logging.Logger._log)),
        mock.patch.object(connection, "_commit", watch.wrap("commit", connection._commit)),
    ]
    inline: list[dict[str, Any]] = []
    for _ in range(args.runs):
        execution_id = start_execution(version_obj)
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            stack.enter_context(connection.execute_wrapper(queries))
            engine.run_inline(execution_id)
        inline.append(measure(execution_id))
    steps = sum(r["steps"] for r in inline)
    seconds = dict(watch.seconds)
    seconds["sql"] = sum(sum(t) for t in queries.by_kind.values())
    seconds["task"] = sum(r["task_ms_per_step"] * r["steps"] for r in inline) / 1000
    seconds["orm"] = seconds.get("record", 0.0) - seconds["sql"] - seconds.get("commit", 0.0)
    calls = dict(watch.calls)
    calls["sql"] = sum(len(t) for t in queries.by_kind.values())
    breakdown = {
        key: {
            "label": label.strip(),
            "ms_per_step": seconds.get(key, 0.0) / steps * 1000,
            "calls_per_step": calls[key] / steps if key in calls else None,
        }
        for key, label in BREAKDOWN
    }
    sql = {
        kind: {"per_step": len(times) / steps, "ms_per_step": sum(times) / steps * 1000}
        for kind, times in sorted(queries.by_kind.items(), key=lambda item: -sum(item[1]))
    }

    profiler = cProfile.Profile()
    profiler.enable()
    _run_inline(version_obj, args.runs)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(r"flows/|tasks/|django/db/|logging/", 25)
    return {
        "runs": inline,
        "summary": summarize(inline),
        "breakdown": breakdown,
        "sql": sql,
        "pstats": out.getvalue(),
    }


def print_profile(profile: dict[str, Any], runs: int) -> None:
    print("\n" + table("inline in this process, with timers", profile["summary"], runs))
    print("\n### Where a step's time goes (inline run)\n")
    print("| part | ms per step | calls per step |\n|---|---:|---:|")
    for key, label in BREAKDOWN:
        part = profile["breakdown"][key]
        per = part["calls_per_step"]
        name = label.replace("  ", "&nbsp;&nbsp;&nbsp;") if label.startswith(" ") else label
        print(f"| {name} | {part['ms_per_step']:.3f} | {'' if per is None else f'{per:.2f}'} |")
    print("\n### SQL per step (inline run)\n\n| statement | per step | ms per step |")
    print("|---|---:|---:|")
    for kind, q in profile["sql"].items():
        print(f"| `{kind}` | {q['per_step']:.2f} | {q['ms_per_step']:.3f} |")
    print("\n### cProfile (inline run; inflates ORM-heavy code)\n\n```\n" + profile["pstats"])
    print("```")


# -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="flow-bench-"))
    env = configure_environment(home, args)
    sys.path.insert(0, str(BASE_DIR))
    os.chdir(BASE_DIR)
    cluster: subprocess.Popen | None = None
    try:
        manage(env, "migrate", "--noinput", "--verbosity", "0")
        import django

        django.setup()
        # This process logs as a worker does (the inline profile runs the engine here), into
        # a file rather than over the results.
        log_file = (home / "bench.log").open("a")
        for name in ("flows", "tasks"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setStream(log_file)
        from flows import services

        version_obj = services.flow_create(document=noop_chain(args.steps))

        log = home / "qcluster.log"
        cluster = start([sys.executable, "manage.py", "qcluster"], env, log)
        wait_for_cluster(cluster, log)

        runs = []
        for i in range(args.warmup + args.runs):
            execution_id = start_execution(version_obj)
            status = wait_until_ended(execution_id, args.timeout)
            if status != "COMPLETED":
                sys.exit(f"execution {execution_id} ended {status}; see {log}")
            if i >= args.warmup:
                runs.append(measure(execution_id))
        stop(cluster)

        summary = summarize(runs)
        info = machine()
        print(
            f"## Engine overhead: {args.steps}-step noop flow, qcluster with {args.workers} "
            f"workers, SQLite file (WAL), LOG_LEVEL={args.log_level}\n"
        )
        print(
            f"Machine: {info['nproc']} CPUs, {info['platform']}, Python {info['python']}, "
            f"Django {info['django']}, django-q2 {info['django_q2']}, SQLite {info['sqlite']}\n"
        )
        print(table("qcluster worker", summary, len(runs)))
        median = summary["overhead_ms_per_step"]["median"]
        verdict = "meets" if median <= TARGET_MS_PER_STEP else "MISSES"
        target = f"{TARGET_MS_PER_STEP:g} ms"
        print(f"\nMedian overhead {median:.3f} ms/step {verdict} the target of {target}.")

        profile = None
        if args.profile:
            profile = profile_inline(version_obj, args)
            print_profile(profile, args.runs)

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"engine_overhead-{stamp}.json"
        document = {
            "benchmark": "engine_overhead",
            "timestamp": datetime.now(UTC).isoformat(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "config": {
                "runs": args.runs,
                "warmup": args.warmup,
                "steps": args.steps,
                "workers": args.workers,
                "log_level": args.log_level,
                "broker": "orm",
                "database": "sqlite file",
            },
            "target_ms_per_step": TARGET_MS_PER_STEP,
            "meets_target": median <= TARGET_MS_PER_STEP,
            "summary": summary,
            "runs": runs,
        }
        if profile is not None:
            document["inline_profile"] = {k: v for k, v in profile.items() if k != "pstats"}
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nWrote {path.relative_to(BASE_DIR)}")
        return 0
    finally:
        if cluster is not None:
            stop(cluster)
        if args.keep:
            print(f"Kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
