"""Recovery in seconds, on real processes and the CI pass's backend (tests/live.py), with the
default lease and wake-up settings and no reaper of the test's own: the clusters' own
``ReaperTimer`` threads find dead workers' steps and lost queue messages.

Each test waits at most ``RECOVERY_BOUND_SECONDS`` after its fault for every execution to end:
a liveness bound, generous on a loaded 2-core machine (bench/recovery.py measures how fast),
but below what the old settings took (a 30 s lease, then the reaper's schedule once a minute;
a lost message woken after 60 s), so the tests fail there.
"""

from __future__ import annotations

import collections
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import flow_doc, task
from tests.live import (
    BASE_DIR,
    Backend,
    descendants,
    live_backend,
    log_tails,
    poll,
    record_plugin,
)
from tests.test_worker_faults import (
    TERMINAL,
    WORKERS_PER_CLUSTER,
    Live,
    assert_each_step_ran_once,
    recorded,
)

pytestmark = pytest.mark.worker

RECOVERY_BOUND_SECONDS = 30.0

# A task type that blocks its worker's event loop (time.sleep in ``async def run``, the mistake
# a plugin makes) for ``seconds``, recording its run as ``record`` does.
STALL_PLUGIN = """
import os
import sqlite3
import time

from tasks.base_task import BaseTask

RUNS_DB = {runs_db!r}


class StallTask(BaseTask):
    default_timeout = 60

    async def run(self):
        con = sqlite3.connect(RUNS_DB, timeout=60, isolation_level=None)
        try:
            con.execute(
                "INSERT INTO runs (execution_id, task_name, attempt, pid) VALUES (?, ?, ?, ?)",
                (self.context.execution_id, self.name, self.context.attempt, os.getpid()),
            )
        finally:
            con.close()
        time.sleep(float(self.parameters["seconds"]))  # blocks the loop: no await
        return {{"stalled": self.parameters["seconds"]}}
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Backend, Path]]:
    home = tmp_path_factory.mktemp("worker_recovery")
    plugins = home / "tasks"
    plugins.mkdir()
    shutil.copy(BASE_DIR / "tasks" / "task_noop.py", plugins)
    runs_db = record_plugin(plugins, home)
    (plugins / "task_stall.py").write_text(STALL_PLUGIN.format(runs_db=str(runs_db)))
    with live_backend(home, "recovery") as running:
        yield home, running, plugins


@pytest.fixture
def live(backend: tuple[Path, Backend, Path], tmp_path: Path) -> Iterator[Live]:
    home, running, plugins = backend
    # FLOW_LEASE_SECONDS, FLOW_REAP_EVERY_SECONDS and FLOW_WAKE_AFTER_SECONDS: the defaults.
    env = running.process_env(
        SECRET_KEY="insecure-key-for-the-worker-recovery-tests-only",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        FLOW_TASKS_DIR=str(plugins),
        FLOW_MAX_TASK_TIMEOUT="60",
        Q_WORKERS="2",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    for name in ("FLOW_LEASE_SECONDS", "FLOW_REAP_EVERY_SECONDS", "FLOW_WAKE_AFTER_SECONDS"):
        env.pop(name, None)
    stack = Live(tmp_path, running, env, home / "runs.sqlite3")
    try:
        yield stack
    finally:
        stack.stop_all()


def ended_soon_after_the_fault(live: Live, flow_id: str, count: int) -> dict[str, str]:
    return poll(
        f"all {count} executions of {flow_id} ending within {RECOVERY_BOUND_SECONDS:g} s of "
        "the fault",
        lambda: live.statuses(flow_id),
        lambda st: len(st) == count and all(s in TERMINAL for s in st.values()),
        logs=live.logs,
        seconds=RECOVERY_BOUND_SECONDS,
    )


@pytest.mark.parametrize("survivors", [1, 2], ids=["one survivor", "two survivors racing"])
def test_a_killed_clusters_steps_run_again_on_the_others_once_each(
    live: Live, survivors: int
) -> None:
    doomed = live.start_cluster()
    live.wait_for_workers(doomed)
    flow_id = f"killed_{survivors}"
    tasks = ["a", "hold", "c"]
    ids = live.submit(recorded(("a", 0), ("hold", 3), ("c", 0), flow_id=flow_id), 8)
    others = [live.start_cluster() for _ in range(survivors)]
    live.poll(
        "the doomed cluster in the middle of a hold step",
        lambda: [r for r in live.runs(ids) if r[1] == "hold" and r[3] in live.worker_pids(doomed)],
        bool,
    )

    doomed_pids = live.worker_pids(doomed)
    live.kill_group(doomed)
    held = [
        s for s in live.steps(flow_id) if s.pid in doomed_pids and s.status in ("RUNNING", "LOST")
    ]
    assert held, "the kill interrupted no step"

    ended_soon_after_the_fault(live, flow_id, len(ids))

    statuses = live.statuses(flow_id)
    assert collections.Counter(statuses.values()) == {"COMPLETED": len(ids)}, statuses
    steps = live.steps(flow_id)
    interrupted = {(s.execution_id, s.task_name) for s in held}
    for step in held:
        again = [
            s for s in steps if (s.execution_id, s.task_name) == (step.execution_id, step.task_name)
        ]
        # Lost once, run again once on a live worker, whichever survivor's reaper found it.
        assert [(s.status, s.attempt) for s in again] == [("LOST", 1), ("SUCCESS", 2)], again
        assert step.worker in again[0].error
        assert again[1].pid not in doomed_pids
    runs = collections.Counter((e, t, a) for e, t, a, _ in live.runs(ids))
    assert all(n == 1 for n in runs.values()), {k: n for k, n in runs.items() if n != 1}
    assert {(e, t) for e, t, a in runs if a == 2} == interrupted
    assert {(e, t) for e, t, _ in runs} == {(eid, name) for eid in ids for name in tasks}
    assert [s for s in steps if s.status == "LOST"] == [
        s for s in steps if (s.execution_id, s.seq) in {(h.execution_id, h.seq) for h in held}
    ]
    for cluster in others:
        assert cluster.poll() is None, log_tails(live.logs)


def test_a_task_blocking_its_event_loop_past_the_lease_keeps_its_step(live: Live) -> None:
    # The stall outlasts the lease more than twice over, while the reapers of both worker
    # processes look every second: the lease is renewed from the worker's dispatching thread,
    # which the blocked loop does not hold up.
    cluster = live.start_cluster(FLOW_LEASE_SECONDS="2")
    live.wait_for_workers(cluster)
    document = flow_doc(
        [task("stall", "stall", seconds=5), task("after", "record")], flow_id="stalled"
    )
    [execution_id] = live.submit(document, 1)

    live.wait_until_ended("stalled", 1)

    assert live.statuses("stalled") == {execution_id: "COMPLETED"}
    assert [(s.task_name, s.status, s.attempt) for s in live.steps("stalled")] == [
        ("stall", "SUCCESS", 1),
        ("after", "SUCCESS", 1),
    ]
    assert sorted((t, a) for _, t, a, _ in live.runs([execution_id])) == [
        ("after", 1),
        ("stall", 1),
    ]
    assert "lost with worker" not in live.logs_text("qcluster")
    assert cluster.poll() is None, log_tails(live.logs)


def test_a_task_blocking_its_event_loop_for_good_fails_and_its_worker_is_replaced(
    live: Live,
) -> None:
    # The blocking code never returns (in the test's time): its worker's watchdog fails the
    # step FLOW_STUCK_LOOP_SECONDS after its timeout and grace, and the worker process exits
    # so the cluster starts another in its place, with the same number of workers as before.
    cluster = live.start_cluster(FLOW_STUCK_LOOP_SECONDS="1")
    live.wait_for_workers(cluster)
    document = flow_doc(
        [{**task("stall", "stall", seconds=3600), "timeout_seconds": 1}], flow_id="stuck"
    )
    [stuck] = live.submit(document, 1)

    assert live.wait_until_ended("stuck", 1) == {stuck: "FAILED"}

    [step] = live.steps("stuck")
    assert "blocked its event loop" in (step.error or "")
    [(_, _, _, pid)] = live.runs([stuck])
    assert step.pid == pid
    live.poll(
        "the stuck worker gone and another in its place",
        lambda: descendants(cluster.pid),
        lambda pids: pid not in pids and len(pids) >= WORKERS_PER_CLUSTER + 3,
    )
    live.submit(flow_doc([task("a", "noop")], flow_id="after_stuck"), 4)
    assert set(live.wait_until_ended("after_stuck", 4).values()) == {"COMPLETED"}
    assert "exits for a fresh one" in live.logs_text("qcluster")
    assert cluster.poll() is None, log_tails(live.logs)


def test_queue_messages_lost_before_any_worker_took_them_are_replaced(live: Live) -> None:
    tasks = ["a", "b"]
    ids = live.submit(recorded(("a", 0), ("b", 0), flow_id="lost_messages"), 12)
    # The fault: every queued message gone (a Redis restart or FLUSHDB; rows deleted from the
    # ORM broker's queue table), before any worker was up to take one.
    # (Earlier tests on this database may have left messages of their own: gone too.)
    if live.backend.redis_url:
        assert live.backend.flush_redis() >= len(ids)
    else:
        assert live.backend.execute("DELETE FROM django_q_ormq") >= len(ids)
    cluster = live.start_cluster()

    ended_soon_after_the_fault(live, "lost_messages", len(ids))

    assert_each_step_ran_once(live, "lost_messages", ids, tasks)
    assert "pending steps woken by the reaper" in live.logs_text("qcluster")
    assert cluster.poll() is None, log_tails(live.logs)
