"""An Idempotency-Key under real concurrency: 20 starts with one key, sent at once to gunicorn
(2 worker processes, 10 threads each), make exactly one execution.

The in-process tests cannot show this: Django's test client runs one request at a time. Here
the requests race in separate processes and threads, as retries from a flaky client would.
The server gets a fresh database of the CI pass's backend (tests/live.py): a SQLite file, or
a PostgreSQL database of its own, with the suite's Redis in the third pass. No worker runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.live import live_backend, manage, running_stack

pytestmark = pytest.mark.live

PARALLEL = 20

SETUP = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
from flows import services
for name in ("alice", "bob"):
    user = get_user_model().objects.create_user(name, password=name + "-pass-123")
    user.groups.add(Group.objects.get(name="operator"))
    print(name, Token.objects.create(user=user).key)
services.flow_create(document={"id": "race", "tasks": [{"name": "a", "task_type": "noop"}]})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, {user: token}) of a gunicorn serving a fresh database."""
    home = tmp_path_factory.mktemp("live")
    with live_backend(home, "idempotency") as backend:
        env = backend.process_env(
            SECRET_KEY="insecure-key-for-the-live-api-test-only",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1",
            LOG_LEVEL="WARNING",
        )
        setup = manage(env, "shell", "--verbosity", "0", "-c", SETUP)
        tokens = dict(line.split() for line in setup.splitlines())
        stack = running_stack(home, env, cluster=False, workers=2, threads=PARALLEL // 2)
        with stack as (url, _):
            yield url, tokens


def start_at_once(url: str, token: str, key: str, count: int = PARALLEL) -> list[httpx.Response]:
    """``count`` starts of flow "race" with one Idempotency-Key, released together."""
    barrier = threading.Barrier(count)
    headers = {"Authorization": f"Token {token}", "Idempotency-Key": key}

    def one(_: Any) -> httpx.Response:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            barrier.wait()
            return client.post("/api/flows/race/executions/", json={"input": {"order": 17}})

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def executions(url: str, token: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{url}/api/executions/?flow=race&page_size=200",
        headers={"Authorization": f"Token {token}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_twenty_parallel_starts_with_one_key_make_one_execution(server):
    url, tokens = server

    responses = start_at_once(url, tokens["alice"], key="order-17")

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (PARALLEL - 1) + [201], [r.text[:200] for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    made = [e for e in executions(url, tokens["alice"]) if e["created_by"] == "alice"]
    assert [e["id"] for e in made] == [responses[0].json()["id"]]


def test_the_same_key_racing_from_two_users_makes_one_execution_each(server):
    url, tokens = server
    before = len(executions(url, tokens["bob"]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        alice, bob = pool.map(
            lambda user: start_at_once(url, tokens[user], key="shared", count=PARALLEL // 2),
            ["alice", "bob"],
        )

    assert len({r.json()["id"] for r in alice}) == 1
    assert len({r.json()["id"] for r in bob}) == 1
    assert alice[0].json()["id"] != bob[0].json()["id"]
    assert len(executions(url, tokens["bob"])) == before + 2
