"""Webhook deliveries under concurrency, on a real web server: 1,000 signed deliveries to one
hook, 100 of them repeats of another's delivery id, sent at once from 32 client threads to
gunicorn (2 processes of 8 threads) on the suite's backend (PostgreSQL and Redis in their
passes: tests/live.py). Exactly 900 executions must exist afterwards, one per delivery id:
none doubled by a repeat racing its original, none lost.

No worker runs: what is counted is what the deliveries started, not what ran. The repeats do
race their originals: with LOG_LEVEL=INFO the web log showed 68 of the 100 (PostgreSQL) and
35 (SQLite) answered through the dedup row's unique conflict ("raced a copy that committed
first"), the rest by the look-up before the start.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.factories import flow_doc, task
from tests.live import live_backend, manage, running_stack
from tests.seed_api import SETUP_USER

pytestmark = pytest.mark.live

UNIQUE = 900
REPEATS = 100
CLIENT_THREADS = 32


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_1000_concurrent_deliveries_with_100_repeats_start_exactly_900_executions(
    tmp_path: Path,
) -> None:
    with live_backend(tmp_path, "hooks") as backend:
        env = backend.process_env(
            SECRET_KEY="insecure-key-for-the-hooks-live-test-only",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1",
            FLOW_SECRET_KEYS="kS8S9QKt5CGMLNCg2rl6rWvhqWsBWw_dkoreWyQbqpU=",
            LOG_LEVEL="WARNING",
        )
        token = manage(env, "shell", "--verbosity", "0", "-c", SETUP_USER).split()[-1]
        with (
            running_stack(tmp_path, env, cluster=False, workers=2, threads=8) as (url, _logs),
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            auth = {"Authorization": f"Token {token}"}
            document = flow_doc([task("hello", "noop")], flow_id="hooked")
            assert client.post("/api/flows/", json=document, headers=auth).status_code == 201
            made = client.post(
                "/api/flows/hooked/webhooks/",
                json={"auth": "hmac", "preset": "github"},
                headers=auth,
            )
            assert made.status_code == 201, made.text
            hook_url, secret = made.json()["url"], made.json()["secret"]

            ids = [f"delivery-{n}" for n in range(UNIQUE)]
            repeated = random.Random(7).sample(ids, REPEATS)
            # Each repeat goes right after its original, so the two race through the pool.
            order: list[str] = []
            for delivery in ids:
                order += [delivery, delivery] if delivery in repeated else [delivery]

            def deliver(delivery: str) -> tuple[str, int, str]:
                body = json.dumps({"delivery": delivery}).encode()
                headers = {
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": _sign(secret, body),
                    "X-GitHub-Delivery": delivery,
                }
                answer = client.post(hook_url, content=body, headers=headers)
                return delivery, answer.status_code, answer.json().get("execution_id", "")

            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                answers = list(pool.map(deliver, order))

        codes = Counter(code for _, code, _ in answers)
        assert codes == {202: UNIQUE, 200: REPEATS}, codes
        by_delivery: dict[str, set[str]] = {}
        for delivery, _, execution in answers:
            by_delivery.setdefault(delivery, set()).add(execution)
        assert all(len(found) == 1 for found in by_delivery.values())
        assert len({next(iter(found)) for found in by_delivery.values()}) == UNIQUE

        stored = backend.query(
            "SELECT COUNT(*), COUNT(DISTINCT input) FROM flows_execution WHERE trigger = %s",
            "webhook",
        )
        assert stored == [(UNIQUE, UNIQUE)]
        outcomes = dict(
            backend.query("SELECT outcome, COUNT(*) FROM flows_webhookdelivery GROUP BY outcome")
        )
        assert outcomes == {"accepted": UNIQUE, "duplicate": REPEATS}
        started = backend.query("SELECT COUNT(*) FROM flows_taskrun")
        assert started == [(UNIQUE,)]  # each started: its first step is there
