"""Webhook deliveries: how many a stack accepts per second, and how long one takes.

Run: ``.venv/bin/python bench/webhooks.py --backend sqlite|pg-redis [--deliveries N]
[--clients C]`` (also a stage of bench/suite.py, ``--skip-webhooks`` to leave it out).

It starts a real stack without workers: a fresh database (bench/_stack.py: a SQLite file, or
a PostgreSQL database of its own and a Redis db number of its own), ``migrate``, gunicorn
(``--workers 2 --threads 4``, DEBUG=0, LOG_LEVEL=WARNING). Through the API it stores a one-task
``noop`` flow and a GitHub-preset hook. Then, each delivery a JSON body of ~100 bytes signed
with ``X-Hub-Signature-256`` and a new ``X-GitHub-Delivery`` (so each is checked, deduped and
starts an execution: the whole path, the execution's first step and its wake-up included):

  one at a time  ``--sequential`` (default 300) deliveries, one after another from one
                 client: per-delivery latency p50 / p99 (request sent -> answer read);
  concurrent     ``--deliveries`` (default 2,000) from ``--clients`` (default 16) threads:
                 accepted/s = 202 answers / wall time, with the latency p50 / p99 under load.

No worker runs meanwhile (the executions wait QUEUED): this measures what a sender sees, not
the flows' run; with workers running on the same cores, figures are lower.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _stack import (
    BASE_DIR,
    RESULTS_DIR,
    descendants,
    free_port,
    gunicorn_args,
    machine,
    manage,
    pg_redis_backend,
    sqlite_backend,
    stack_env,
    start,
    stop,
    utc_stamp,
)
from cryptography.fernet import Fernet

SETUP_USER = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_superuser('bench', password='bench-pass-123')
print(Token.objects.create(user=user).key)
"""
FLOW = {"id": "hooked", "tasks": [{"name": "one", "task_type": "noop", "parameters": {}}]}
DEFAULTS = {"sequential": 300, "deliveries": 2000, "clients": 16}
QUICK = {"sequential": 100, "deliveries": 500, "clients": 16}
GUNICORN = {"workers": 2, "threads": 4}


def log(message: str) -> None:
    print(f"[webhooks] {message}", file=sys.stderr, flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


class Sender:
    """Signs and posts deliveries to one hook; thread-safe (httpx.Client is)."""

    def __init__(self, client: httpx.Client, url: str, secret: str) -> None:
        self.client, self.url, self.secret = client, url, secret.encode()

    def send(self, n: int) -> tuple[int, float]:
        body = json.dumps({"n": n, "ref": "refs/heads/main", "pusher": {"name": "bench"}})
        raw = body.encode()
        signature = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature,
            "X-GitHub-Delivery": f"bench-{n}",
        }
        began = time.perf_counter()
        answer = self.client.post(self.url, content=raw, headers=headers)
        return answer.status_code, time.perf_counter() - began


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (/proc/<pid>/stat), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def measure(
    base_url: str, token: str, counts: dict[str, int], server_pids: list[int] | None = None
) -> dict[str, Any]:
    """Store the flow and the hook, then send the deliveries; the figures. With the web
    server's pids, also the CPU time it and this client spent per concurrent delivery: a
    figure the machine's other load does not change, unlike the rate."""
    limits = httpx.Limits(max_connections=counts["clients"] * 2)
    with httpx.Client(base_url=base_url, timeout=60, limits=limits) as client:
        auth = {"Authorization": f"Token {token}"}
        assert client.post("/api/flows/", json=FLOW, headers=auth).status_code == 201
        made = client.post(
            "/api/flows/hooked/webhooks/", json={"auth": "hmac", "preset": "github"}, headers=auth
        )
        if made.status_code != 201:
            sys.exit(f"the hook was not made: {made.status_code} {made.text}")
        sender = Sender(client, made.json()["url"], made.json()["secret"])
        for n in range(20):  # warm-up: each gunicorn process's first requests import and connect
            sender.send(-1 - n)

        log(f"{counts['sequential']} deliveries one at a time")
        one = [sender.send(n) for n in range(counts["sequential"])]
        log(f"{counts['deliveries']} deliveries from {counts['clients']} clients")
        offset = counts["sequential"]
        server_cpu, client_cpu = cpu_seconds(server_pids or []), time.process_time()
        began = time.perf_counter()
        with ThreadPoolExecutor(counts["clients"]) as pool:
            many = list(pool.map(sender.send, range(offset, offset + counts["deliveries"])))
        wall = time.perf_counter() - began
        server_cpu = cpu_seconds(server_pids or []) - server_cpu
        client_cpu = time.process_time() - client_cpu
    refused = [code for code, _ in one + many if code != 202]
    accepted = sum(1 for code, _ in many if code == 202)
    return {
        "one_at_a_time": _summary([seconds for _, seconds in one]),
        "concurrent": {
            **_summary([seconds for _, seconds in many]),
            "clients": counts["clients"],
            "deliveries": counts["deliveries"],
            "accepted": accepted,
            "wall_s": wall,
            "accepted_per_s": accepted / wall,
            "server_cpu_ms_per_delivery": server_cpu * 1000 / len(many) if server_pids else None,
            "client_cpu_ms_per_delivery": client_cpu * 1000 / len(many),
        },
        "not_accepted": len(refused),
        "gunicorn": GUNICORN,
    }


def run(name: str, counts: dict[str, int], redis_db: int | None = None) -> dict[str, Any]:
    """One stack on backend ``name`` ("sqlite" or "pg-redis"), measured, stopped, removed."""
    home = Path(tempfile.mkdtemp(prefix=f"flow-webhooks-{name}-"))
    try:
        with ExitStack() as stack:
            backend = stack.enter_context(
                sqlite_backend(home) if name == "sqlite" else pg_redis_backend(redis_db)
            )
            env = stack_env(
                backend,
                "webhooks",
                ALLOWED_HOSTS="127.0.0.1",
                LOG_LEVEL="WARNING",
                # A key of the run's own for the hooks' secrets: none in the repository.
                FLOW_SECRET_KEYS=Fernet.generate_key().decode(),
            )
            log(f"{backend.label}: migrate")
            manage(env, "migrate", "--noinput", "--verbosity", "0")
            token = manage(env, "shell", "--verbosity", "0", "-c", SETUP_USER).split()[-1]
            port = free_port()
            web = start(gunicorn_args(port, **GUNICORN), env, home / "gunicorn.log")
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or web.poll() is not None:
                        sys.exit((home / "gunicorn.log").read_text()[-3000:])
                    time.sleep(0.1)
                figures = measure(url, token, counts, [web.pid, *descendants(web.pid)])
            finally:
                stop(web, grace=10)
            return {"label": backend.label, "details": backend.details, **figures}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def rows(name: str, figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, measured, target) for the suite's table and this script's."""
    one, many = figures["one_at_a_time"], figures["concurrent"]
    latency_target = "p50 < 20 ms" if name == "sqlite" else "-"
    return [
        (
            f"webhook delivery latency, one at a time ({one['n']} signed GitHub-style "
            "deliveries: check, dedup, start), p50 / p99",
            f"{one['p50_ms']:.1f} / {one['p99_ms']:.1f} ms",
            latency_target,
        ),
        (
            f"webhook deliveries accepted/s, {many['deliveries']:,} from {many['clients']} "
            f"clients (p50 / p99 {many['p50_ms']:.0f} / {many['p99_ms']:.0f} ms)",
            f"{many['accepted_per_s']:.0f}/s",
            "≥ 300/s",
        ),
        (
            "CPU per concurrent delivery: web server (all gunicorn processes) / this client "
            "(signing, HTTP); what the machine's other load does not change",
            f"{many['server_cpu_ms_per_delivery'] or 0:.1f} / "
            f"{many['client_cpu_ms_per_delivery']:.1f} ms",
            "-",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "pg-redis"], default="sqlite")
    parser.add_argument("--quick", action="store_true", help=f"smaller counts: {QUICK}")
    parser.add_argument("--sequential", type=int, help="deliveries one at a time (300)")
    parser.add_argument("--deliveries", type=int, help="concurrent deliveries (2000)")
    parser.add_argument("--clients", type=int, help="concurrent client threads (16)")
    parser.add_argument("--redis-db", type=int, help="Redis db number to use and flush")
    args = parser.parse_args(argv)
    counts = dict(QUICK if args.quick else DEFAULTS)
    for key in ("sequential", "deliveries", "clients"):
        if getattr(args, key):
            counts[key] = max(1, getattr(args, key))
    load_before = os.getloadavg()
    figures = run(args.backend, counts, args.redis_db)
    figures["loadavg_before_after"] = [load_before[0], os.getloadavg()[0]]
    print("| stack | figure | measured | target |\n|---|---|---:|---|")
    for figure, value, target in rows(args.backend, figures):
        print(f"| {figures['label']} | {figure} | {value} | {target} |")
    before, after = figures["loadavg_before_after"]
    print(f"\n{machine()['nproc']} CPUs; load average {before:.2f} before, {after:.2f} after")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"webhooks-{args.backend}-{utc_stamp()}.json"
    document = {"benchmark": "webhooks", "machine": machine(), "counts": counts, **figures}
    path.write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {path.relative_to(BASE_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
