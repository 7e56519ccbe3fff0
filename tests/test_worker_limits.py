"""A named concurrency limit on real processes (tests/live.py): one cluster of 4 worker
processes on the CI pass's backend (PostgreSQL + Redis there), thousands of steps through a
limit of 10, and one worker process killed with kill -9 while it holds slots.

What a user would notice, read from the recorded step times: never more than 10 steps of
the limit in flight (exactly 10 at the peak), the dead worker's slots back in use once the
reaper takes its steps (within the lease), and every step completed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import flow_doc, task
from tests.live import (
    BASE_DIR,
    Backend,
    descendants,
    live_backend,
    manage,
    poll,
    record_plugin,
    suite_uses_postgresql,
    timestamp,
)
from tests.test_worker_faults import TERMINAL, Live

pytestmark = pytest.mark.worker

# 2,000 on PostgreSQL; SQLite serialises every write, so fewer there (the same assertions).
STEPS = 2000 if suite_uses_postgresql() else 300
LIMIT = 10
WORKERS = 4


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Backend, Path]]:
    home = tmp_path_factory.mktemp("worker_limits")
    plugins = home / "tasks"
    plugins.mkdir()
    for name in ("task_noop.py", "task_wait.py"):
        shutil.copy(BASE_DIR / "tasks" / name, plugins)
    record_plugin(plugins, home)
    with live_backend(home, "limits") as running:
        yield home, running, plugins


@pytest.fixture
def live(backend: tuple[Path, Backend, Path], tmp_path: Path) -> Iterator[Live]:
    home, running, plugins = backend
    env = running.process_env(
        SECRET_KEY="insecure-key-for-the-worker-limits-tests-only",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        FLOW_TASKS_DIR=str(plugins),
        Q_WORKERS=str(WORKERS),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    for name in ("FLOW_LEASE_SECONDS", "FLOW_REAP_EVERY_SECONDS", "FLOW_WAKE_AFTER_SECONDS"):
        env.pop(name, None)  # the defaults: a 6 s lease, a reaper pass each second
    stack = Live(tmp_path, running, env, home / "runs.sqlite3")
    try:
        yield stack
    finally:
        stack.stop_all()


def peak(intervals: list[tuple[object, object]]) -> int:
    """The most intervals open at once (an end before a start at the same instant)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    top = now = 0
    for _, change in edges:
        now += change
        top = max(top, now)
    return top


def test_a_limit_of_10_holds_under_4_workers_and_a_kill_9_frees_its_slots(live: Live) -> None:
    out = manage(live.env, "limit", "api", "--max-in-flight", str(LIMIT))
    assert "limit api defined" in out
    document = flow_doc(
        [{**task("call", "wait", seconds=0.05), "limits": ["api"]}], flow_id="limited_calls"
    )
    cluster = live.start_cluster()
    live.poll("the cluster forking its workers", lambda: len(descendants(cluster.pid)),
              lambda n: n >= WORKERS + 3)  # fmt: skip
    live.submit(document, STEPS)

    # Mid-way, kill -9 a worker process that holds slots of the limit.
    holders = poll(
        "a third of the steps done and a worker holding slots",
        lambda: (
            live.backend.query("SELECT count(*) FROM flows_taskrun WHERE status = 'SUCCESS'")[0][0],
            live.backend.query(
                "SELECT worker FROM flows_taskrun WHERE status = 'RUNNING' AND task_name = 'call'"
            ),
        ),
        lambda got: got[0] >= STEPS // 3 and got[1],
        logs=live.logs,
        seconds=120,
    )[1]
    pid = int(holders[0][0].rsplit(":", 1)[1])
    assert pid in descendants(cluster.pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    statuses = poll(
        f"all {STEPS} executions ending",
        lambda: live.statuses("limited_calls"),
        lambda st: len(st) == STEPS and all(s in TERMINAL for s in st.values()),
        logs=live.logs,
        seconds=180,
    )

    assert set(statuses.values()) == {"COMPLETED"}
    rows = live.backend.query(
        "SELECT status, started_at, ended_at FROM flows_taskrun WHERE task_name = 'call'"
    )
    lost = [r for r in rows if r[0] == "LOST"]
    assert lost, "the kill interrupted no step"  # its steps ran again: each LOST, then anew
    assert sum(1 for r in rows if r[0] == "SUCCESS") == STEPS
    # A LOST step held its slot until the reaper took it: its end is when the slot freed.
    intervals = [(timestamp(s), timestamp(e)) for _, s, e in rows]
    assert peak(intervals) == LIMIT
    # The reaper freed the dead worker's slots within the lease and its pass.
    freed = max(timestamp(r[2]) for r in lost)
    assert freed.timestamp() - killed_at < 6 + 2 + 5  # lease, pass, a loaded machine
    assert not live.backend.query("SELECT 1 FROM flows_limithold")
    assert cluster.poll() is None


def test_a_rate_of_20_a_second_holds_across_4_workers(live: Live) -> None:
    manage(live.env, "limit", "rated", "--max-in-flight", "100", "--rate", "20/1")
    document = flow_doc(
        [{**task("call", "wait", seconds=0.5), "limits": ["rated"]}], flow_id="rated_calls"
    )
    cluster = live.start_cluster()
    live.submit(document, 100)
    live.wait_until_ended("rated_calls", 100)

    rows = live.backend.query(
        "SELECT s.started_at, s.ended_at FROM flows_taskrun s JOIN flows_execution e "
        "ON e.id = s.execution_id WHERE e.flow_id = 'rated_calls'"
    )
    starts = sorted(timestamp(s) for s, _ in rows)
    assert len(starts) == 100
    most = max(
        sum(1 for t in starts[i:] if (t - at).total_seconds() < 1.0) for i, at in enumerate(starts)
    )
    assert most <= 20
    assert (max(timestamp(e) for _, e in rows) - starts[0]).total_seconds() >= 4.5
    assert cluster.poll() is None
