"""API throughput and latency under load: gunicorn (2 workers) on SQLite, wrk on loopback.

Run: ``.venv/bin/python bench/api_load.py [--duration 10] [--connections 8] [--executions 1000]``
(or ``make bench-api``). Needs ``wrk`` (Debian: ``apt-get install -y wrk``).

What it does
    1. Creates a temporary directory with a SQLite file and runs ``manage.py migrate``.
    2. Seeds it (``manage.py shell``, django-q2 in sync mode so nothing is left queued): a
       three-task ``noop`` flow, ``--executions`` executions of it run to COMPLETED (three
       steps each), and a user in the ``operator`` role with an API token.
    3. Starts ``gunicorn flowmanager.wsgi --workers 2 --no-control-socket`` (the Procfile's
       web command, ``--worker-class`` as given) and ``manage.py qcluster`` (ORM broker), with
       DEBUG off and LOG_LEVEL=WARNING, as in production.
    4. Runs wrk on 127.0.0.1 against each endpoint for ``--duration`` seconds after a short
       warm-up (not counted), one endpoint at a time:

       status        GET /flow/{id}/status of a completed execution (the seed's poll)
       executions    GET /api/executions/ (50 per page, the default)
       start         POST /api/flows/bench/executions/: create + start (queue) an execution;
                     the qcluster runs them meanwhile, writing to the same SQLite file, and
                     the script then waits (``--drain``) and reports how they all ended

    5. Stops both (SIGTERM to their own pids) and prints a markdown table: requests/s, p50
       and p99 latency (wrk's --latency, corrected for coordinated omission by wrk's
       design), and errors (socket errors plus non-2xx answers). JSON with the machine, the
       configuration and wrk's raw output goes to ``bench/results/api_load-<UTC stamp>.json``.

Targets: status >= 1,000 req/s with p99 < 50 ms, and zero errors everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _stack import BASE_DIR, free_port, gunicorn_args, manage, start, stop
from _stack import RESULTS_DIR as RESULTS

SEED = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
from flows import engine, services

version = services.flow_create(document={"id": "bench", "tasks": [
    {"name": "a", "task_type": "noop"}, {"name": "b", "task_type": "noop"},
    {"name": "c", "task_type": "noop"}]})
user = get_user_model().objects.create_user("bench", password="bench-pass-123")
user.groups.add(Group.objects.get(name="operator"))
last = None
for i in range(EXECUTIONS):
    last, _ = services.execution_submit(flow_version=version, user=user, input={"n": i})
    engine.run_inline(last.id)
print("TOKEN", Token.objects.create(user=user).key)
print("EXECUTION", last.id)
"""

# wrk scripts: count non-2xx answers as errors (wrk only counts socket errors by itself).
COUNT_ERRORS = """
local bad = 0
response = function(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end
"""
POST_START = """
wrk.method = "POST"
wrk.body = '{"input": {"source": "wrk"}}'
wrk.headers["Content-Type"] = "application/json"
"""


def _wait_for(url: str, deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    sys.exit(f"the web server at {url} never answered /health")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 (ms) and errors from wrk's --latency report."""
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(percentiles["50"]),
        "p99_ms": _ms(percentiles["99"]),
        "errors": (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0)
        + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def run_wrk(
    url: str, token: str, script: str, *, duration: float, connections: int, home: Path
) -> tuple[dict[str, Any], str]:
    path = home / f"script-{abs(hash(script))}.lua"
    path.write_text(script)
    args = [
        "wrk",
        f"--threads={min(2, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        "--timeout=10s",
        "--latency",
        f"--header=Authorization: Token {token}",
        f"--script={path}",
        url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        sys.exit(f"wrk failed:\n{done.stderr}")
    return parse_wrk(done.stdout), done.stdout


def _drain(db_path: Path, *, deadline: float) -> dict[str, int]:
    """Wait (until ``deadline``) for the qcluster to finish the executions wrk started."""
    while True:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            counts = dict(
                con.execute(
                    "SELECT status, COUNT(*) FROM flows_execution "
                    "WHERE input LIKE '%wrk%' GROUP BY status"
                ).fetchall()
            )
        finally:
            con.close()
        if set(counts) <= {"COMPLETED", "FAILED", "CANCELLED"} or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not counted")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--executions", type=int, default=1000, help="seeded, completed")
    parser.add_argument("--worker-class", default="sync", help="gunicorn --worker-class")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn --threads (gthread)")
    parser.add_argument(
        "--only", nargs="*", choices=["status", "executions", "start"], help="endpoints to run"
    )
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for started runs to end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args()

    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), then run again")

    home = Path(tempfile.mkdtemp(prefix="flow-api-load-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "SECRET_KEY": "insecure-key-for-the-benchmark-only",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "FLOW_DEMO_DELAY_SECONDS": "0",
        "Q_CLUSTER_NAME": f"bench-{port}",
    }
    env.pop("REDIS_URL", None)
    procs: list[subprocess.Popen] = []
    rows: list[dict[str, Any]] = []
    drained: dict[str, int] = {}
    try:
        print(f"seeding {options.executions} executions in {home} ...", file=sys.stderr)
        manage(env, "migrate", "--noinput", "--verbosity", "0")
        seeded = manage(
            {**env, "Q_SYNC": "1"},
            "shell",
            "--verbosity",
            "0",
            "-c",
            f"EXECUTIONS = {options.executions}\n{SEED}",
            timeout=1800,
        )
        found = dict(line.split(" ", 1) for line in seeded.splitlines() if " " in line)
        token, execution = found["TOKEN"], found["EXECUTION"]

        web_args = [
            *gunicorn_args(port, workers=2, threads=options.threads),
            "--worker-class",
            options.worker_class,
        ]
        procs.append(start(web_args, env, home / "gunicorn.log"))
        procs.append(start([sys.executable, "manage.py", "qcluster"], env, home / "qcluster.log"))
        _wait_for(url, time.monotonic() + 60)

        endpoints = {
            "status": ("GET /flow/{id}/status", f"{url}/flow/{execution}/status", ""),
            "executions": ("GET /api/executions/ (50 per page)", f"{url}/api/executions/", ""),
            "start": (
                "POST /api/flows/{id}/executions/ (create + execute)",
                f"{url}/api/flows/bench/executions/",
                POST_START,
            ),
        }
        for name, (label, target, extra) in endpoints.items():
            if options.only and name not in options.only:
                continue
            script = extra + COUNT_ERRORS
            if options.warmup > 0:
                run_wrk(
                    target,
                    token,
                    script,
                    duration=options.warmup,
                    connections=options.connections,
                    home=home,
                )
            figures, raw = run_wrk(
                target,
                token,
                script,
                duration=options.duration,
                connections=options.connections,
                home=home,
            )
            rows.append({"endpoint": name, "label": label, **figures, "wrk": raw})
            print(f"{label}: {figures}", file=sys.stderr)
        if any(row["endpoint"] == "start" for row in rows):
            drained = _drain(home / "db.sqlite3", deadline=time.monotonic() + options.drain)
            print(f"executions started under load, by status: {drained}", file=sys.stderr)
    finally:
        for proc in reversed(procs):
            stop(proc, grace=20)
        if not options.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}", file=sys.stderr)

    print("| endpoint | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['label']} | {row['rps']:,.0f} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['errors']} |"
        )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"api_load-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "nproc": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "sqlite": sqlite3.sqlite_version,
                    "wrk": subprocess.run(
                        ["wrk", "--version"], capture_output=True, text=True
                    ).stdout.splitlines()[:1],
                },
                "config": vars(options),
                "results": rows,
                "started_executions_by_status": drained,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(BASE_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
