"""Faults and concurrency on real processes, on the CI pass's backend (tests/live.py).

Each test starts real ``manage.py qcluster`` processes (and gunicorn where HTTP is the point)
against a fresh database of the suite's backend: a SQLite file in the first CI pass, a
PostgreSQL database of its own in the others, with the suite's Redis as the broker in the
third. The flows use ``record``, a plugin written here that inserts a row (execution, task,
attempt, pid) into a SQLite file of its own each time it runs, so "every step ran exactly
once" is read from what the task itself did, not from the engine's bookkeeping.

The lease is short (``LEASE_SECONDS``) and the reaper runs in a loop next to the clusters
(``REAPER_SCRIPT``: ``flows.engine.reap()``, the function ``manage.py reap`` and the
schedule call), so recovery happens within a test's deadline. Deadlines only bound "it never
happened"; nothing asserts how fast anything was.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.factories import flow_doc, task
from tests.live import (
    BASE_DIR,
    REAPER_SCRIPT,
    Backend,
    descendants,
    free_port,
    gunicorn_args,
    live_backend,
    log_tails,
    manage,
    poll,
    record_plugin,
    recorded_runs,
    start,
    suite_uses_postgresql,
    suite_uses_redis,
)

pytestmark = pytest.mark.worker

LEASE_SECONDS = 3
# Where no worker is killed the lease bounds no recovery, so it is the default's order of
# magnitude: 3 s is shorter than a worker claiming 100 executions at once can take on a busy
# 2-core machine, and the reaper would rightly take back steps whose lease ran out.
CONCURRENCY_LEASE_SECONDS = 10
WAKE_AFTER_SECONDS = 2
WORKERS_PER_CLUSTER = 2
DEADLINE_SECONDS = 90.0
STOP_GRACE_SECONDS = 60.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


# Runs in `manage.py shell`: store a flow, submit it `count` times, print the execution ids.
SUBMIT_SCRIPT = """
import json, os
from flows import services
args = json.loads(os.environ["SUBMIT_ARGS"])
version = services.flow_create(document=args["document"])
for _ in range(args["count"]):
    execution, _ = services.execution_submit(flow_version=version)
    print(execution.id)
"""


# A task type that crashes the worker process running it, every time (kill -9 of itself).
KILL_WORKER_PLUGIN = """
import os
import signal

from tasks.base_task import BaseTask


class KillWorkerTask(BaseTask):
    async def run(self):
        os.kill(os.getpid(), signal.SIGKILL)
        return {}
"""


SETUP_USER_SCRIPT = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("racer", password="racer-pass-123")
user.groups.add(Group.objects.get(name="editor"))
print(Token.objects.create(user=user).key)
"""


def norm(execution_id: Any) -> str:
    """An execution id as one spelling, whether it came from SQLite (hex) or PostgreSQL."""
    return str(uuid.UUID(str(execution_id)))


@dataclass
class Step:
    execution_id: str
    seq: int
    task_name: str
    status: str
    attempt: int
    worker: str
    error: str
    leased: bool

    @property
    def pid(self) -> int:
        return int(self.worker.rsplit(":", 1)[1]) if self.worker else 0


@dataclass
class Live:
    """A migrated database, a plugin folder, and the processes one test starts on them."""

    home: Path
    backend: Backend
    env: dict[str, str]
    runs_db: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    # -- processes -------------------------------------------------------------------------
    def start_process(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Any:
        log = self.home / f"{name}-{len(self.logs) + 1}.log"
        self.logs[log.stem] = log
        proc = start(args, env or self.env, log)
        self.procs.append(proc)
        return proc

    def start_cluster(self, **env: str) -> subprocess.Popen:
        args = [sys.executable, "manage.py", "qcluster"]
        return self.start_process("qcluster", args, {**self.env, **env} if env else None)

    def start_reaper(self) -> subprocess.Popen:
        args = [sys.executable, "manage.py", "shell", "--verbosity", "0", "-c", REAPER_SCRIPT]
        return self.start_process("reaper", args)

    def worker_pids(self, cluster: subprocess.Popen) -> set[int]:
        """The cluster's process pids (the worker ids name worker processes)."""
        return {cluster.pid, *descendants(cluster.pid)}

    def wait_for_workers(self, cluster: subprocess.Popen) -> None:
        """Until the cluster has forked all its processes: a sentinel, its workers, a monitor
        and a pusher (so its worker pids are known)."""
        self.poll(
            "the cluster forking its workers",
            lambda: len(descendants(cluster.pid)),
            lambda n: n >= WORKERS_PER_CLUSTER + 3,
        )

    def kill_group(self, proc: subprocess.Popen) -> None:
        """kill -9 the whole process group: the cluster and every process it forked."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        # Teardown only: whatever a test left running goes, with every process it forked.
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.procs.clear()

    # -- acting -----------------------------------------------------------------------------
    def submit(self, document: dict[str, Any], count: int) -> list[str]:
        env = {**self.env, "SUBMIT_ARGS": json.dumps({"document": document, "count": count})}
        ids = manage(env, "shell", "--verbosity", "0", "-c", SUBMIT_SCRIPT).split()
        assert len(ids) == count
        return [norm(i) for i in ids]

    # -- looking ----------------------------------------------------------------------------
    def statuses(self, flow_id: str) -> dict[str, str]:
        rows = self.backend.query(
            "SELECT id, status FROM flows_execution WHERE flow_id = %s", flow_id
        )
        return {norm(eid): status for eid, status in rows}

    def steps(self, flow_id: str) -> list[Step]:
        rows = self.backend.query(
            "SELECT t.execution_id, t.seq, t.task_name, t.status, t.attempt, t.worker, t.error, "
            "t.lease_expires_at IS NOT NULL FROM flows_taskrun t "
            "JOIN flows_execution e ON e.id = t.execution_id WHERE e.flow_id = %s "
            "ORDER BY t.execution_id, t.seq",
            flow_id,
        )
        return [
            Step(norm(r[0]), r[1], r[2], r[3], r[4], r[5] or "", r[6] or "", bool(r[7]))
            for r in rows
        ]

    def runs(self, execution_ids: list[str]) -> list[tuple[str, str, int, int]]:
        """(execution, task, attempt, pid) for every run the record task made."""
        wanted = set(execution_ids)
        rows = recorded_runs(self.runs_db)
        return [(norm(e), t, a, p) for e, t, a, p in rows if norm(e) in wanted]

    def poll(self, what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
        return poll(what, read, done, logs=self.logs, seconds=DEADLINE_SECONDS)

    def wait_until_ended(self, flow_id: str, count: int) -> dict[str, str]:
        return self.poll(
            f"all {count} executions of {flow_id} ending",
            lambda: self.statuses(flow_id),
            lambda st: len(st) == count and all(s in TERMINAL for s in st.values()),
        )

    def logs_text(self, prefix: str) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for name, path in self.logs.items()
            if name.startswith(prefix) and path.exists()
        )


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Backend, Path]]:
    home = tmp_path_factory.mktemp("worker_faults")
    plugins = home / "tasks"
    plugins.mkdir()
    shutil.copy(BASE_DIR / "tasks" / "task_noop.py", plugins)
    record_plugin(plugins, home)  # its runs table: home / "runs.sqlite3"
    (plugins / "task_kill_worker.py").write_text(KILL_WORKER_PLUGIN)
    with live_backend(home, "faults") as running:
        yield home, running, plugins


@pytest.fixture
def live(backend: tuple[Path, Backend, Path], tmp_path: Path) -> Iterator[Live]:
    home, running, plugins = backend
    env = running.process_env(
        SECRET_KEY="insecure-key-for-the-worker-fault-tests-only",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1",
        FLOW_TASKS_DIR=str(plugins),
        FLOW_LEASE_SECONDS=str(LEASE_SECONDS),
        FLOW_WAKE_AFTER_SECONDS=str(WAKE_AFTER_SECONDS),
        FLOW_MAX_TASK_TIMEOUT="60",
        Q_WORKERS=str(WORKERS_PER_CLUSTER),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    stack = Live(tmp_path, running, env, home / "runs.sqlite3")
    try:
        yield stack
    finally:
        stack.stop_all()


def recorded(*names_and_seconds: tuple[str, float], flow_id: str) -> dict[str, Any]:
    return flow_doc(
        [task(name, "record", seconds=seconds) for name, seconds in names_and_seconds],
        flow_id=flow_id,
    )


def assert_each_step_ran_once(live: Live, flow_id: str, ids: list[str], tasks: list[str]) -> None:
    """Every execution COMPLETED with one SUCCESS per task, and each task ran exactly once."""
    statuses = live.statuses(flow_id)
    assert collections.Counter(statuses.values()) == {"COMPLETED": len(ids)}, statuses
    by_execution: dict[str, list[tuple[str, str, int]]] = collections.defaultdict(list)
    for step in live.steps(flow_id):
        by_execution[step.execution_id].append((step.task_name, step.status, step.attempt))
    expected = [(name, "SUCCESS", 1) for name in tasks]
    wrong = {eid: got for eid, got in by_execution.items() if got != expected}
    assert not wrong, f"{len(wrong)} executions with other steps than {expected}: {wrong}"
    runs = collections.Counter((e, t) for e, t, _, _ in live.runs(ids))
    assert runs == {(eid, name): 1 for eid in ids for name in tasks}, {
        key: n for key, n in runs.items() if n != 1
    }


# -------------------------------------------------------------------------------------------
# 3. Concurrency
# -------------------------------------------------------------------------------------------
def test_two_clusters_run_200_concurrent_executions_each_step_exactly_once(live: Live) -> None:
    # All 200 are queued before the clusters start, so most wait longer than
    # WAKE_AFTER_SECONDS: the reaper, racing the workers, may wake them again, and every
    # extra message must find its step already taken.
    live.start_reaper()
    tasks = ["a", "b", "c"]
    ids = live.submit(recorded(*((t, 0.05) for t in tasks), flow_id="concurrent"), 200)
    lease = str(CONCURRENCY_LEASE_SECONDS)
    # Few executions per worker, so the first cluster cannot take all 200 (claimed in
    # batches, in well under a second) before the second is up: both must compete.
    clusters = [
        live.start_cluster(FLOW_LEASE_SECONDS=lease, FLOW_WORKER_CONCURRENCY="3") for _ in range(2)
    ]
    for cluster in clusters:
        live.wait_for_workers(cluster)

    live.wait_until_ended("concurrent", 200)
    assert_each_step_ran_once(live, "concurrent", ids, tasks)
    # Both clusters took part, and both are still up.
    pids = {step.pid for step in live.steps("concurrent")}
    for cluster in clusters:
        assert cluster.poll() is None, log_tails(live.logs)
        assert pids & live.worker_pids(cluster), "a cluster ran no step"
    cluster_logs = live.logs_text("qcluster")
    for trouble in ("deadlock detected", "database is locked", "Traceback"):
        assert trouble not in cluster_logs, f"{trouble!r} in the cluster logs"


# -------------------------------------------------------------------------------------------
# 4. Faults
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recovery", ["restart", "other_cluster"])
def test_a_cluster_killed_mid_step_costs_one_rerun_of_each_step_it_held(
    live: Live, recovery: str
) -> None:
    doomed = live.start_cluster()
    live.wait_for_workers(doomed)
    survivor = live.start_cluster() if recovery == "other_cluster" else None
    flow_id = f"killed_{recovery}"
    tasks = ["a", "hold", "c"]
    ids = live.submit(recorded(("a", 0), ("hold", 2), ("c", 0), flow_id=flow_id), 6)
    # Wait for a step of the doomed cluster to be in the middle of its task.
    live.poll(
        "the doomed cluster running a hold step",
        lambda: [r for r in live.runs(ids) if r[1] == "hold" and r[3] in live.worker_pids(doomed)],
        bool,
    )

    doomed_pids = live.worker_pids(doomed)  # a worker may have been replaced meanwhile
    live.kill_group(doomed)
    held = [
        s for s in live.steps(flow_id) if s.pid in doomed_pids and s.status in ("RUNNING", "LOST")
    ]
    assert held, "the kill interrupted no step"
    if survivor is None:
        survivor = live.start_cluster()
    live.start_reaper()

    live.wait_until_ended(flow_id, len(ids))

    statuses = live.statuses(flow_id)
    assert collections.Counter(statuses.values()) == {"COMPLETED": len(ids)}, statuses
    steps = live.steps(flow_id)
    runs = live.runs(ids)
    interrupted = {(s.execution_id, s.task_name) for s in held}
    for step in held:
        [now] = [s for s in steps if (s.execution_id, s.seq) == (step.execution_id, step.seq)]
        # Its first attempt is recorded as lost, with the worker that held it ...
        assert (now.status, now.attempt) == ("LOST", 1), now
        assert step.worker in now.error, now.error
        # ... and it ran again, once, on a live worker.
        again = [
            s for s in steps if (s.execution_id, s.task_name) == (step.execution_id, step.task_name)
        ]
        assert [(s.status, s.attempt) for s in again] == [("LOST", 1), ("SUCCESS", 2)], again
        assert again[1].pid not in doomed_pids
        mine = sorted(
            (a, p) for e, t, a, p in runs if (e, t) == (step.execution_id, step.task_name)
        )
        # The first attempt may have been killed before its task began; the second ran once.
        assert [a for a, _ in mine] in ([1, 2], [2]), mine
        assert all(p == step.pid for a, p in mine if a == 1), mine
    # Everything else ran exactly once, and nothing else was lost.
    others = collections.Counter((e, t) for e, t, _, _ in runs if (e, t) not in interrupted)
    assert others == {
        (eid, name): 1 for eid in ids for name in tasks if (eid, name) not in interrupted
    }
    assert [s for s in steps if s.status == "LOST"] == [
        s for s in steps if (s.execution_id, s.seq) in {(h.execution_id, h.seq) for h in held}
    ]
    assert survivor.poll() is None, log_tails(live.logs)


def test_a_graceful_stop_finishes_its_steps_and_leaves_nothing_running(live: Live) -> None:
    cluster = live.start_cluster()
    live.wait_for_workers(cluster)
    tasks = ["a", "hold", "c"]
    ids = live.submit(recorded(("a", 0), ("hold", 1.5), ("c", 0), flow_id="graceful"), 8)
    live.poll(
        "the cluster running a hold step",
        lambda: [r for r in live.runs(ids) if r[1] == "hold"],
        bool,
    )

    cluster.send_signal(signal.SIGTERM)  # the main pid only, as the Procfile and Docker do
    try:
        cluster.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qcluster did not exit after SIGTERM\n{log_tails(live.logs)}")

    left = [s for s in live.steps("graceful") if s.status == "RUNNING"]
    assert not [s for s in left if not s.leased], f"RUNNING without a lease: {left}"
    assert not left, f"steps left RUNNING (they will run again after the lease): {left}"
    # The rest is picked up by the next cluster, and no step ran twice.
    live.start_cluster()
    live.start_reaper()
    live.wait_until_ended("graceful", len(ids))
    assert_each_step_ran_once(live, "graceful", ids, tasks)


@pytest.mark.skipif(
    not suite_uses_redis(),
    reason="needs the Redis broker: runs in CI pass 3/3 (PostgreSQL + REDIS_URL)",
)
def test_flushing_redis_mid_run_loses_messages_that_the_reaper_replaces(live: Live) -> None:
    # One execution a job: each worker holds a job for the hold's second, so most messages
    # still wait in Redis when it is flushed (with room for all, the first job takes every
    # execution and the other worker empties the queue of messages with nothing left to do,
    # often before the flush: then nothing is lost and there is nothing to test).
    cluster = live.start_cluster(FLOW_WORKER_CONCURRENCY="1")
    live.wait_for_workers(cluster)
    tasks = ["a", "hold", "c"]
    ids = live.submit(recorded(("a", 0), ("hold", 1), ("c", 0), flow_id="flushed"), 12)

    lost = live.backend.flush_redis()  # the queue and the cluster's status, at once
    assert lost > 0, "no message waited in Redis to be lost"
    live.start_reaper()

    live.wait_until_ended("flushed", len(ids))
    assert_each_step_ran_once(live, "flushed", ids, tasks)
    assert cluster.poll() is None, log_tails(live.logs)


def test_a_task_that_kills_its_worker_ends_failed_after_three_lost_attempts(live: Live) -> None:
    # The shortest lease there is: each death is found by the reaper a second later.
    cluster = live.start_cluster(FLOW_LEASE_SECONDS="1")
    live.wait_for_workers(cluster)
    live.start_reaper()
    live.submit(flow_doc([task("crash", "kill_worker"), task("never")], flow_id="poison"), 1)

    assert list(live.wait_until_ended("poison", 1).values()) == ["FAILED"]

    steps = live.steps("poison")
    assert [(s.task_name, s.status, s.attempt) for s in steps] == [
        ("crash", "LOST", 1),
        ("crash", "LOST", 2),
        ("crash", "FAILURE", 3),
    ], steps
    assert len({s.pid for s in steps}) == 3, "each attempt killed the worker that ran it"
    assert "lost with its worker 3 times (FLOW_MAX_LOST_ATTEMPTS=3)" in steps[-1].error
    [(error,)] = live.backend.query(
        "SELECT error FROM flows_execution WHERE flow_id = %s", "poison"
    )
    assert "task 'crash' failed: lost with its worker 3 times" in error
    assert cluster.poll() is None, log_tails(live.logs)  # its workers were replaced


def _pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else ""


def _restartable_here() -> bool:
    if not suite_uses_postgresql() or not shutil.which("pg_ctlcluster") or not _pg_version():
        return False
    host = urlsplit(os.environ["DATABASE_URL"]).hostname or "localhost"
    return host in {"127.0.0.1", "localhost", "::1"}


@pytest.mark.skipif(
    not _restartable_here(),
    reason="needs a local PostgreSQL DATABASE_URL and pg_ctlcluster: runs in CI passes 2/3 and 3/3",
)
def test_workers_reconnect_after_postgresql_restarts_mid_run_and_nothing_is_lost(
    live: Live,
) -> None:
    cluster = live.start_cluster()
    live.wait_for_workers(cluster)
    live.start_reaper()
    tasks = ["a", "hold", "c"]
    ids = live.submit(recorded(("a", 0), ("hold", 1), ("c", 0), flow_id="pg_restart"), 10)
    live.poll(
        "a hold step running",
        lambda: [r for r in live.runs(ids) if r[1] == "hold"],
        bool,
    )

    restart = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr
    live.poll(
        "PostgreSQL accepting connections again",
        lambda: (
            subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-q"], check=False, timeout=10
            ).returncode
        ),
        lambda code: code == 0,
    )
    # This process's own connections (pytest-django's) died with the server too.
    from django.db import connections

    connections.close_all()

    live.wait_until_ended("pg_restart", len(ids))
    statuses = live.statuses("pg_restart")
    assert collections.Counter(statuses.values()) == {"COMPLETED": len(ids)}, statuses
    steps = live.steps("pg_restart")
    runs = collections.Counter((e, t) for e, t, _, _ in live.runs(ids))
    for eid in ids:
        for name in tasks:
            lost = [
                s for s in steps if (s.execution_id, s.task_name, s.status) == (eid, name, "LOST")
            ]
            # Every step ran; one that ran again (at most once) has a LOST attempt saying why.
            assert len(lost) <= 1, lost
            assert runs[(eid, name)] == 1 + len(lost), (eid, name, runs[(eid, name)], lost)
    # The same cluster, reconnected, runs new work.
    assert cluster.poll() is None, log_tails(live.logs)
    more = live.submit(recorded(("a", 0), flow_id="pg_after"), 3)
    live.wait_until_ended("pg_after", len(more))
    assert_each_step_ran_once(live, "pg_after", more, ["a"])


# -------------------------------------------------------------------------------------------
# Racing starts over HTTP
# -------------------------------------------------------------------------------------------
def test_fifty_concurrent_executes_of_one_execution_start_it_once(live: Live) -> None:
    parallel = 50
    token = manage(live.env, "shell", "--verbosity", "0", "-c", SETUP_USER_SCRIPT).split()[-1]
    live.start_cluster()
    port = free_port()
    web = live.start_process("gunicorn", gunicorn_args(port, workers=2, threads=8))
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Token {token}"}

    def health() -> int:
        assert web.poll() is None, log_tails(live.logs)
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code
        except httpx.TransportError:
            return 0

    live.poll("the web server answering", health, lambda code: code == 200)
    created = httpx.post(
        f"{url}/flow/create",
        json=recorded(("a", 0), ("b", 0), flow_id="raced"),
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    execution_id = created.json()["execution_id"]
    barrier = threading.Barrier(parallel)

    def execute(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            barrier.wait()
            return client.post("/flow/execute", json={"execution_id": execution_id})

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        responses = list(pool.map(execute, range(parallel)))

    codes = collections.Counter(r.status_code for r in responses)
    assert codes == {200: 1, 409: parallel - 1}, [r.text[:200] for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert "only a CREATED execution can be executed" in response.text, response.text
    live.wait_until_ended("raced", 1)
    assert_each_step_ran_once(live, "raced", [norm(execution_id)], ["a", "b"])
