"""Parallel branches, map items, sub-flows, durable sleeps and signals on a real ``qcluster``.

A module fixture migrates a fresh database of the CI pass's backend (tests/live.py's
``live_backend``: a SQLite file with the ORM broker, a PostgreSQL database of its own, or that
plus the suite's Redis broker with a queue name of its own) and a plugin folder: the built-in
task types plus ``record`` (inserts a row into a SQLite file of its own each time it runs, so
"each item ran" is read from what the task did, not from the engine's bookkeeping) and
``needs_marker``. Each test starts the clusters it needs (``Live.start_cluster``, with its own
settings where they matter) and stops them after. Flows are stored, started, signalled and
controlled through ``flows.services`` in ``manage.py shell`` processes, as an operator's
script would; what the workers did is read from the database, read-only, from the test
process.

Deadlines only bound "it never happened"; nothing asserts how fast anything was.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.factories import (
    NEEDS_MARKER_PLUGIN,
    approval_flow,
    cond,
    failing,
    flow_doc,
    mapped,
    parallel,
    task,
    write_plugins,
)
from tests.live import (
    BASE_DIR,
    REAPER_SCRIPT,
    Backend,
    descendants,
    live_backend,
    log_tails,
    manage,
    poll,
    record_plugin,
    recorded_runs,
    start,
    stop,
    timestamp,
)

pytestmark = pytest.mark.worker

DEADLINE_SECONDS = 60.0
# The 1,000-item map with a worker killed in the middle: a bound for "it never finished".
BIG_MAP_DEADLINE_SECONDS = 180.0
STOP_GRACE_SECONDS = 30.0
WORKERS_PER_CLUSTER = 2
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
OPEN_STEPS = {"PENDING", "RUNNING"}
# Far longer than any deadline here: a task that was not really stopped cannot end on its own
# before a poll gives up.
HOLD_SECONDS = 600


# Runs in `manage.py shell`: a service call with JSON arguments; prints execution ids.
SERVICE_SCRIPT = """
import json, os, time
from flows import services
from flows.models import TaskRun
args = json.loads(os.environ["SERVICE_ARGS"])
action = args.pop("action")
if action == "store":
    for document in args["documents"]:
        services.flow_create(document=document)
elif action == "submit":
    version = services.flow_create(document=args["document"])
    for given in args["inputs"]:
        execution, _ = services.execution_submit(flow_version=version, input=given)
        print(execution.id)
elif action == "submit_when_waiting":
    # Start the second flow only once the first one's step waits in the database.
    deadline = time.monotonic() + args["seconds"]
    while not TaskRun.objects.filter(
        execution_id=args["waiting_id"], status="PENDING", waiting__isnull=False
    ).exists():
        assert time.monotonic() < deadline, "the first flow never waited"
        time.sleep(0.02)
    version = services.flow_create(document=args["document"])
    execution, _ = services.execution_submit(flow_version=version)
    print(execution.id)
elif action == "end_sleep":
    # The sleep's time comes now, as the clock would bring it: its step due now and woken.
    from django.db import transaction
    from django.utils import timezone
    from flows.engine.wakeup import wake
    now = timezone.now()
    with transaction.atomic():
        nap = TaskRun.objects.select_for_update().get(
            execution_id=args["execution_id"], status="PENDING", waiting__kind="until"
        )
        nap.waiting = {**nap.waiting, "until": now.isoformat()}
        nap.not_before = now
        nap.save(update_fields=["waiting", "not_before"])
        wake(nap.execution_id)
    print(nap.execution_id)
elif action == "signal":
    for one in args["signals"]:
        print(services.execution_signal(**one).execution_id)
else:
    print(getattr(services, "execution_" + action)(**args).id)
"""


def norm(execution_id: Any) -> str:
    """An execution id as one spelling, whether it came from SQLite (hex) or PostgreSQL."""
    return str(uuid.UUID(str(execution_id)))


@dataclass
class Live:
    """The module's database and plugins, and the processes one test starts on them."""

    home: Path
    backend: Backend
    env: dict[str, str]
    runs_db: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    # -- processes -----------------------------------------------------------------------
    def start_process(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.home / f"{name}-{len(self.logs) + 1}.log"
        self.logs[log.stem] = log
        proc = start(args, env, log)
        self.procs.append(proc)
        return proc

    def start_cluster(self, **env: str) -> subprocess.Popen:
        cluster = self.start_process(
            "qcluster", [sys.executable, "manage.py", "qcluster"], {**self.env, **env}
        )
        workers = int(env.get("Q_WORKERS", WORKERS_PER_CLUSTER))
        # A sentinel, its workers, a monitor and a pusher: then its worker pids are known.
        self.poll(
            "the cluster forking its workers",
            lambda: len(descendants(cluster.pid)),
            lambda n: n >= workers + 3,
        )
        return cluster

    def start_reaper(self) -> subprocess.Popen:
        args = [sys.executable, "manage.py", "shell", "--verbosity", "0", "-c", REAPER_SCRIPT]
        return self.start_process("reaper", args, self.env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, grace=STOP_GRACE_SECONDS)
        self.procs.clear()

    # -- acting as an operator -----------------------------------------------------------
    def service(self, action: str, **args: Any) -> list[str]:
        env = {**self.env, "SERVICE_ARGS": json.dumps({"action": action, **args})}
        return [
            norm(i) for i in manage(env, "shell", "--verbosity", "0", "-c", SERVICE_SCRIPT).split()
        ]

    def submit(self, document: dict[str, Any], *inputs: dict[str, Any] | None) -> list[str]:
        """Store ``document`` and start one execution per input (one with none given)."""
        return self.service("submit", document=document, inputs=list(inputs) or [None])

    def signal(self, execution_id: str, name: str, **extra: Any) -> None:
        self.service("signal", signals=[{"execution_id": execution_id, "name": name, **extra}])

    # -- looking at what the workers did -------------------------------------------------
    def loaded(self, value: Any) -> Any:
        """A JSON column as read: PostgreSQL gives it decoded (a JSON string as a str), SQLite
        as its text."""
        if self.backend.postgresql or not isinstance(value, str):
            return value
        return json.loads(value)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        return self.backend.query(sql, *params)

    def key(self, execution_id: str) -> str:
        return self.backend.key(execution_id)

    def execution(self, execution_id: str) -> dict[str, Any]:
        [(status, error, result, redrive_count)] = self.query(
            "SELECT status, error, result, redrive_count FROM flows_execution WHERE id = %s",
            self.key(execution_id),
        )
        return {
            "status": status,
            "error": error,
            "result": self.loaded(result),
            "redrive_count": redrive_count,
        }

    def steps(self, execution_id: str) -> list[dict[str, Any]]:
        columns = (
            "id", "seq", "task_name", "status", "attempt", "error", "worker", "result",
            "waiting", "started_at", "ended_at",
        )  # fmt: skip
        rows = self.query(
            f"SELECT {', '.join(columns)} FROM flows_taskrun WHERE execution_id = %s ORDER BY seq",
            self.key(execution_id),
        )
        steps = [dict(zip(columns, row, strict=True)) for row in rows]
        for step in steps:
            step["result"], step["waiting"] = (
                self.loaded(step["result"]),
                self.loaded(step["waiting"]),
            )
            step["started_at"], step["ended_at"] = (
                timestamp(step["started_at"]),
                timestamp(step["ended_at"]),
            )
        return steps

    def ran(self, execution_id: str) -> list[tuple[str, str]]:
        return [(s["task_name"], s["status"]) for s in self.steps(execution_id)]

    def step(self, execution_id: str, task_name: str) -> dict[str, Any]:
        """The latest step of ``task_name``."""
        return [s for s in self.steps(execution_id) if s["task_name"] == task_name][-1]

    def children(self, step_id: int) -> list[dict[str, Any]]:
        """The child executions of a control step, in item order."""
        columns = ("id", "status", "branch", "item_index", "item", "result", "error")
        rows = self.query(
            f"SELECT {', '.join(columns)} FROM flows_execution WHERE parent_step_id = %s "
            "ORDER BY item_index",
            step_id,
        )
        found = [dict(zip(columns, row, strict=True)) for row in rows]
        for child in found:
            child["id"] = norm(child["id"])
            child["item"], child["result"] = (
                self.loaded(child["item"]),
                self.loaded(child["result"]),
            )
        return found

    def fanout(self, step_id: int) -> dict[str, int]:
        [(total, started, done, failed)] = self.query(
            "SELECT total, started, done, failed FROM flows_fanout WHERE step_id = %s", step_id
        )
        return {"total": total, "started": started, "done": done, "failed": failed}

    def tree(self, root_id: str) -> dict[str, str]:
        """Status of the execution and of every execution under it."""
        rows = self.query(
            "SELECT id, status FROM flows_execution WHERE id = %s OR root_id = %s",
            self.key(root_id),
            self.key(root_id),
        )
        return {norm(eid): status for eid, status in rows}

    def open_steps(self, root_id: str) -> list[tuple]:
        """Steps left PENDING or RUNNING anywhere in the tree."""
        return self.query(
            "SELECT t.execution_id, t.task_name, t.status FROM flows_taskrun t "
            "JOIN flows_execution e ON e.id = t.execution_id "
            "WHERE (e.id = %s OR e.root_id = %s) AND t.status IN ('PENDING', 'RUNNING')",
            self.key(root_id),
            self.key(root_id),
        )

    def runs(self) -> list[tuple[str, str, int, int]]:
        """(execution, task, attempt, pid) of every run the record task made."""
        rows = recorded_runs(self.runs_db)
        return [(norm(e), t, a, p) for e, t, a, p in rows]

    # -- waiting -------------------------------------------------------------------------
    def poll(
        self,
        what: str,
        read: Callable[[], Any],
        done: Callable[[Any], bool],
        seconds: float = DEADLINE_SECONDS,
    ) -> Any:
        return poll(what, read, done, logs=self.logs, seconds=seconds)

    def wait_until_ended(self, execution_id: str, seconds: float = DEADLINE_SECONDS) -> dict:
        return self.poll(
            f"execution {execution_id} ending",
            lambda: self.execution(execution_id),
            lambda doc: doc["status"] in TERMINAL,
            seconds,
        )

    def wait_for_status(self, execution_id: str, *statuses: str) -> dict[str, Any]:
        return self.poll(
            f"execution {execution_id} reaching {'/'.join(statuses)}",
            lambda: self.execution(execution_id),
            lambda doc: doc["status"] in statuses,
        )

    def wait_until_waiting(self, execution_id: str, task_name: str) -> dict[str, Any]:
        """Until ``task_name`` waits in the database (PENDING, its worker let go)."""
        return self.poll(
            f"{task_name} of {execution_id} waiting",
            lambda: self.step(execution_id, task_name) if self.steps(execution_id) else None,
            lambda s: bool(s) and s["status"] == "PENDING" and s["waiting"] is not None,
        )

    def wait_until_tree_ended(self, root_id: str) -> dict[str, str]:
        return self.poll(
            f"every execution under {root_id} ending",
            lambda: self.tree(root_id),
            lambda tree: all(status in TERMINAL for status in tree.values()),
        )


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Backend, Path]]:
    home = tmp_path_factory.mktemp("worker_parallel")
    plugins = home / "tasks"
    plugins.mkdir()
    for built_in in (BASE_DIR / "tasks").glob("task_*.py"):
        shutil.copy(built_in, plugins)
    write_plugins(plugins, {"needs_marker": NEEDS_MARKER_PLUGIN})
    record_plugin(plugins, home)  # its runs table: home / "runs.sqlite3"
    with live_backend(home, "parallel") as running:
        yield home, running, plugins


@pytest.fixture
def live(backend: tuple[Path, Backend, Path], tmp_path: Path) -> Iterator[Live]:
    home, running, plugins = backend
    env = running.process_env(
        SECRET_KEY="insecure-key-for-the-worker-parallel-tests-only",
        DEBUG="0",
        FLOW_TASKS_DIR=str(plugins),
        FLOW_DEMO_DELAY_SECONDS="0",
        FLOW_MAX_TASK_TIMEOUT="900",
        Q_WORKERS=str(WORKERS_PER_CLUSTER),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    stack = Live(tmp_path, running, env, home / "runs.sqlite3")
    try:
        yield stack
    finally:
        stack.stop_all()


def peak_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one time (one ending as another starts does not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:  # at equal times the -1 sorts first
        running += delta
        peak = max(peak, running)
    return peak


# -------------------------------------------------------------------------------------------
# 1. Each kind, end to end
# -------------------------------------------------------------------------------------------
def test_a_parallel_task_runs_its_branches_on_the_workers_and_returns_each_result(
    live: Live,
) -> None:
    cluster = live.start_cluster()
    document = flow_doc(
        [
            parallel(
                "both",
                {
                    "left": [
                        task("l1", "print", message="left one"),
                        task("l2", "print", message="left ${input.n}"),
                    ],
                    "right": [task("r1", "print", message="right")],
                },
            ),
            task("after", "print", message="joined: ${results.both.data.left.message}"),
        ],
        flow_id="pl_parallel",
    )
    [execution_id] = live.submit(document, {"n": 2})

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"

    assert live.ran(execution_id) == [("both", "SUCCESS"), ("after", "SUCCESS")]
    both = live.step(execution_id, "both")
    assert both["result"]["left"]["message"] == "left 2"
    assert both["result"]["right"]["message"] == "right"
    assert live.step(execution_id, "after")["result"]["message"] == "joined: left 2"
    left, right = live.children(both["id"])
    assert (left["branch"], left["status"], right["branch"], right["status"]) == (
        "left", "COMPLETED", "right", "COMPLETED",
    )  # fmt: skip
    assert left["result"]["message"] == "left 2"  # a child's own result: its last step's
    assert live.ran(left["id"]) == [("l1", "SUCCESS"), ("l2", "SUCCESS")]
    assert live.ran(right["id"]) == [("r1", "SUCCESS")]
    # Every step of the tree ran on a worker of the cluster.
    pids = {cluster.pid, *descendants(cluster.pid)}
    for eid in (execution_id, left["id"], right["id"]):
        assert {int(s["worker"].rsplit(":", 1)[1]) for s in live.steps(eid)} <= pids


def test_a_map_of_50_items_keeps_their_order_and_never_runs_more_than_5_at_once(
    live: Live,
) -> None:
    live.start_cluster()
    items = list(range(50))
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("hold", "wait", seconds=0.2), task("say", "print", message="item ${item}")],
                max_concurrency=5,
            )
        ],
        flow_id="pl_map50",
    )
    [execution_id] = live.submit(document, {"items": items})

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"

    each = live.step(execution_id, "each")
    assert each["status"] == "SUCCESS"
    assert [r["message"] for r in each["result"]["results"]] == [f"item {i}" for i in items]
    assert (each["result"]["count"], each["result"]["failed"]) == (50, 0)
    assert live.fanout(each["id"]) == {"total": 50, "started": 50, "done": 50, "failed": 0}
    children = live.children(each["id"])
    assert [(c["item_index"], c["item"], c["status"]) for c in children] == [
        (i, i, "COMPLETED") for i in items
    ]
    # From the database: each item ran from its first step's start to its last step's end;
    # at no time were more than 5 of those intervals open.
    intervals = []
    for child in children:
        steps = live.steps(child["id"])
        assert [(s["task_name"], s["status"]) for s in steps] == [
            ("hold", "SUCCESS"),
            ("say", "SUCCESS"),
        ]
        intervals.append((steps[0]["started_at"], steps[-1]["ended_at"]))
    peak = peak_overlap(intervals)
    assert peak <= 5, f"{peak} items ran at once"
    assert peak >= 2, "the items ran one at a time: the map ran nothing concurrently"


def test_a_sub_flow_runs_another_stored_flow_on_the_workers(live: Live) -> None:
    live.start_cluster()
    live.service(
        "store",
        documents=[
            flow_doc(
                [
                    task("greet", "print", message="hello ${input.who}"),
                    task("bye", "print", message="bye ${input.who}"),
                ],
                flow_id="pl_child",
            )
        ],
    )
    document = flow_doc(
        [
            {
                "name": "call",
                "task_type": "subflow",
                "parameters": {"flow_id": "pl_child", "input": {"who": "${input.who}"}},
            },
            task("after", "print", message="child said ${results.call.data.result.message}"),
        ],
        flow_id="pl_parent",
    )
    [execution_id] = live.submit(document, {"who": "ops"})

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"

    call = live.step(execution_id, "call")
    assert (call["status"], call["result"]["status"]) == ("SUCCESS", "COMPLETED")
    assert call["result"]["result"]["message"] == "bye ops"
    assert live.step(execution_id, "after")["result"]["message"] == "child said bye ops"
    [child] = live.children(call["id"])
    assert child["id"] == call["result"]["execution_id"]
    assert live.ran(child["id"]) == [("greet", "SUCCESS"), ("bye", "SUCCESS")]
    [(flow_id, root)] = live.query(
        "SELECT flow_id, root_id FROM flows_execution WHERE id = %s", live.key(child["id"])
    )
    assert (flow_id, norm(root)) == ("pl_child", execution_id)


def test_a_sleep_holds_no_worker_slot_so_another_flow_runs_meanwhile(live: Live) -> None:
    # ONE worker process running ONE execution at a time: the second flow can only run while
    # the first sleeps if the sleep gave its slot back. The sleep is far longer than the test;
    # once the other flow has ended, its time is brought forward, so nothing races the clock.
    live.start_cluster(Q_WORKERS="1", FLOW_WORKER_CONCURRENCY="1")
    [sleeper] = live.submit(
        flow_doc([task("nap", "sleep", seconds=HOLD_SECONDS), task("after")], flow_id="pl_sleeper")
    )
    [other] = live.service(
        "submit_when_waiting",
        waiting_id=sleeper,
        seconds=DEADLINE_SECONDS,
        document=flow_doc([task("quick")], flow_id="pl_quick"),
    )

    assert live.wait_until_ended(other)["status"] == "COMPLETED"
    assert live.execution(sleeper)["status"] == "RUNNING"
    live.service("end_sleep", execution_id=sleeper)
    assert live.wait_until_ended(sleeper)["status"] == "COMPLETED"

    nap, after = live.steps(sleeper)
    [quick] = live.steps(other)
    assert (nap["task_name"], nap["status"], after["status"]) == ("nap", "SUCCESS", "SUCCESS")
    assert nap["waiting"]["kind"] == "until"
    slept_until = datetime.fromisoformat(nap["result"]["slept_until"])
    # The other flow ran while the sleep waited, and was done before the sleep ended, on the
    # same (only) worker.
    assert quick["ended_at"] < slept_until <= after["started_at"]
    assert quick["worker"] == nap["worker"] == after["worker"]


def test_a_signal_approves_one_waiting_flow_and_rejects_another(live: Live) -> None:
    live.start_cluster()
    approved, rejected = live.submit(approval_flow("pl_approval"), None, None)
    live.wait_until_waiting(approved, "approve")
    live.wait_until_waiting(rejected, "approve")

    live.service(
        "signal",
        signals=[
            {"execution_id": approved, "name": "deploy", "payload": {"version": "1.2"}},
            {"execution_id": rejected, "name": "deploy", "decision": "reject",
             "comment": "not today"},
        ],
    )  # fmt: skip

    assert live.wait_until_ended(approved)["status"] == "COMPLETED"
    assert live.wait_until_ended(rejected)["status"] == "COMPLETED"
    assert live.ran(approved) == [("approve", "SUCCESS"), ("ship", "SUCCESS")]
    assert live.step(approved, "approve")["result"]["version"] == "1.2"
    assert live.step(approved, "ship")["result"]["message"] == "shipping 1.2"
    assert live.ran(rejected) == [("approve", "FAILURE"), ("rejected", "SUCCESS")]
    assert "not today" in live.step(rejected, "approve")["error"]


# -------------------------------------------------------------------------------------------
# 2. Failures: fail fast, tolerated failures
# -------------------------------------------------------------------------------------------
def test_a_failed_branch_fails_fast_and_stops_the_branch_still_running(live: Live) -> None:
    live.start_cluster()
    document = flow_doc(
        [
            parallel(
                "both",
                {"bad": [failing("boom")], "slow": [task("hold", "wait", seconds=HOLD_SECONDS)]},
            ),
            task("after"),
            task("recover", "print", message="recovered"),
        ],
        [cond("both", "success", "after", "recover")],
        flow_id="pl_fail_fast",
    )
    [execution_id] = live.submit(document)

    # The slow branch would hold for longer than this deadline: only fail fast ends it.
    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"
    live.wait_until_tree_ended(execution_id)

    assert live.ran(execution_id) == [("both", "FAILURE"), ("recover", "SUCCESS")]
    both = live.step(execution_id, "both")
    assert "1 of 2 branches failed" in both["error"]
    bad, slow = live.children(both["id"])
    assert (bad["branch"], bad["status"]) == ("bad", "FAILED")
    assert (slow["branch"], slow["status"]) == ("slow", "CANCELLED")
    assert [s["status"] for s in live.steps(slow["id"])] == ["CANCELLED"]
    assert live.open_steps(execution_id) == []


def test_without_fail_fast_every_branch_finishes_and_the_failure_still_fails_the_task(
    live: Live,
) -> None:
    live.start_cluster()
    document = flow_doc(
        [
            parallel(
                "both",
                {
                    "bad": [failing("boom")],
                    "good": [task("hold", "wait", seconds=1), task("done", "print", message="ok")],
                },
                fail_fast=False,
            )
        ],
        flow_id="pl_no_fail_fast",
    )
    [execution_id] = live.submit(document)

    assert live.wait_until_ended(execution_id)["status"] == "FAILED"

    both = live.step(execution_id, "both")
    assert both["status"] == "FAILURE" and "1 of 2 branches failed" in both["error"]
    bad, good = live.children(both["id"])
    assert (bad["status"], good["status"]) == ("FAILED", "COMPLETED")
    assert live.ran(good["id"]) == [("hold", "SUCCESS"), ("done", "SUCCESS")]
    assert live.fanout(both["id"])["done"] == 2
    assert live.open_steps(execution_id) == []


def test_a_map_tolerates_failures_up_to_its_limit_and_fails_past_it(live: Live) -> None:
    live.start_cluster()
    items = [{"rate": r} for r in (0, 1, 0, 1, 0)]
    iterator = [task("maybe", "fetch_data", failure_rate="${item.rate}")]
    [tolerant] = live.submit(
        flow_doc([mapped("each", "${input.items}", iterator, tolerated_failures=2)],
                 flow_id="pl_tolerant"),
        {"items": items},
    )  # fmt: skip
    [strict] = live.submit(
        flow_doc([mapped("each", "${input.items}", iterator, tolerated_failures="10%")],
                 flow_id="pl_strict"),
        {"items": items},
    )  # fmt: skip

    assert live.wait_until_ended(tolerant)["status"] == "COMPLETED"
    assert live.wait_until_ended(strict)["status"] == "FAILED"

    each = live.step(tolerant, "each")
    results = each["result"]["results"]
    assert [r is None for r in results] == [False, True, False, True, False]
    assert results[0]["message"] == "Fetched 3 records"
    assert (each["result"]["count"], each["result"]["failed"]) == (5, 2)
    assert live.fanout(each["id"]) == {"total": 5, "started": 5, "done": 5, "failed": 2}
    assert [c["status"] for c in live.children(each["id"])] == [
        "COMPLETED", "FAILED", "COMPLETED", "FAILED", "COMPLETED",
    ]  # fmt: skip

    strict_each = live.step(strict, "each")
    assert strict_each["status"] == "FAILURE"
    assert "of 5 items failed" in strict_each["error"]
    live.wait_until_tree_ended(strict)
    assert live.open_steps(strict) == []


# -------------------------------------------------------------------------------------------
# 3. Controls on a tree: cancel, pause/resume, redrive
# -------------------------------------------------------------------------------------------
def test_cancelling_one_branch_fails_its_parallel_task_and_stops_the_other(live: Live) -> None:
    live.start_cluster()
    document = flow_doc(
        [
            parallel(
                "both",
                {
                    "asks": [task("hold", "wait_for_signal", signal="go")],
                    "works": [task("hold", "wait", seconds=HOLD_SECONDS)],
                },
            )
        ],
        flow_id="pl_cancel_branch",
    )
    [execution_id] = live.submit(document)
    both = live.wait_until_waiting(execution_id, "both")
    asks, works = live.children(both["id"])
    live.wait_until_waiting(asks["id"], "hold")
    live.poll(
        "the works branch running",
        lambda: live.ran(works["id"]),
        lambda r: r == [("hold", "RUNNING")],
    )

    live.service("cancel", execution_id=asks["id"])

    assert live.wait_until_ended(execution_id)["status"] == "FAILED"
    tree = live.wait_until_tree_ended(execution_id)
    assert tree == {execution_id: "FAILED", asks["id"]: "CANCELLED", works["id"]: "CANCELLED"}
    both = live.step(execution_id, "both")
    assert "branch asks cancelled" in both["error"]
    assert [s["status"] for s in live.steps(works["id"])] == ["CANCELLED"]
    assert live.open_steps(execution_id) == []


def test_cancelling_the_parent_while_its_map_runs_cancels_every_item(live: Live) -> None:
    live.start_cluster()
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("hold", "wait", seconds=HOLD_SECONDS)],
                max_concurrency=3,
            )
        ],
        flow_id="pl_cancel_map",
    )
    [execution_id] = live.submit(document, {"items": list(range(20))})
    each = live.wait_until_waiting(execution_id, "each")
    live.poll(
        "3 items running",
        lambda: [live.ran(c["id"]) for c in live.children(each["id"])[:3]],
        lambda ran: ran == [[("hold", "RUNNING")]] * 3,
    )

    live.service("cancel", execution_id=execution_id)

    tree = live.wait_until_tree_ended(execution_id)
    assert collections.Counter(tree.values()) == {"CANCELLED": 21}, tree
    assert live.open_steps(execution_id) == []
    children = live.children(each["id"])
    assert [len(live.steps(c["id"])) for c in children] == [1] * 3 + [0] * 17, (
        "an item started after the cancel"
    )
    assert [s["status"] for c in children[:3] for s in live.steps(c["id"])] == ["CANCELLED"] * 3
    assert live.step(execution_id, "each")["status"] == "CANCELLED"


def test_cancelling_the_parent_while_map_items_end_and_start_leaves_nothing_open(
    live: Live,
) -> None:
    # Items end (and start their successors) all the time here: the cancel races the
    # workers' endings, and neither may leave an item or a step open.
    live.start_cluster()
    document = flow_doc(
        # 0.2 s an item: the map runs for some 8 s, well past the cancel's arrival (a
        # `manage.py shell` of a second or two), however fast the engine hands items on.
        [mapped("each", "${input.items}",
                [task("echo", "record", value="${item}", seconds=0.2)], max_concurrency=10)],
        flow_id="pl_cancel_busy_map",
    )  # fmt: skip
    [execution_id] = live.submit(document, {"items": list(range(400))})
    each = live.wait_until_waiting(execution_id, "each")
    live.poll(
        "the map under way",
        lambda: live.fanout(each["id"])["done"],
        lambda done: done >= 30,
    )

    # The cancel and the workers take the FanOut row before any child's (no deadlock).
    live.service("cancel", execution_id=execution_id)

    tree = live.wait_until_tree_ended(execution_id)
    assert tree.pop(execution_id) == "CANCELLED"
    statuses = collections.Counter(tree.values())
    assert set(statuses) <= {"COMPLETED", "CANCELLED"}, statuses
    assert statuses["CANCELLED"] > 0 and len(tree) == 400, statuses
    assert live.open_steps(execution_id) == []
    # An item ran only if it was started, and a cancelled one that never started has no step.
    steps = collections.Counter(
        norm(e)
        for (e,) in live.query(
            "SELECT t.execution_id FROM flows_taskrun t JOIN flows_execution e "
            "ON e.id = t.execution_id WHERE e.parent_step_id = %s",
            each["id"],
        )
    )
    completed = {eid for eid, status in tree.items() if status == "COMPLETED"}
    assert all(steps[eid] == 1 for eid in completed)
    ran = collections.Counter(e for e, _, _, _ in live.runs() if e in tree)
    assert set(ran) <= set(steps) and all(n == 1 for n in ran.values()), ran
    assert completed <= set(ran)


def test_a_parent_paused_while_its_map_runs_finishes_the_map_after_resume(live: Live) -> None:
    live.start_cluster()
    items = list(range(6))
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                # 1.5 s an item, 2 at a time: the map outlasts the pause's arrival.
                [task("hold", "wait", seconds=1.5), task("say", "print", message="item ${item}")],
                max_concurrency=2,
            ),
            task("after", "print", message="${results.each.data.count} mapped"),
        ],
        flow_id="pl_pause_map",
    )
    [execution_id] = live.submit(document, {"items": items})
    each = live.wait_until_waiting(execution_id, "each")

    live.service("pause", execution_id=execution_id)

    assert live.wait_for_status(execution_id, "PAUSED", *TERMINAL)["status"] == "PAUSED"
    # The items go on; the paused parent does not take its map's end until resumed.
    live.poll(
        "every item ending",
        lambda: [c["status"] for c in live.children(each["id"])],
        lambda statuses: all(s in TERMINAL for s in statuses),
    )
    time.sleep(1)  # room for a wrongly woken parent to run on; none may
    assert live.execution(execution_id)["status"] == "PAUSED"
    assert live.ran(execution_id) == [("each", "PENDING")]

    live.service("resume", execution_id=execution_id)

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"
    assert live.ran(execution_id) == [("each", "SUCCESS"), ("after", "SUCCESS")]
    result = live.step(execution_id, "each")["result"]
    assert [r["message"] for r in result["results"]] == [f"item {i}" for i in items]
    assert live.step(execution_id, "after")["result"]["message"] == "6 mapped"


def test_redriving_a_failed_parallel_parent_runs_again_only_its_failed_branch(live: Live) -> None:
    live.start_cluster()
    marker = live.home / "redrive-marker"
    document = flow_doc(
        [
            parallel(
                "both",
                {
                    "check": [task("check", "needs_marker", marker=str(marker))],
                    "other": [task("say", "record", value="fine")],
                },
                fail_fast=False,
            )
        ],
        flow_id="pl_redrive",
    )
    [execution_id] = live.submit(document)
    failed = live.wait_until_ended(execution_id)
    assert failed["status"] == "FAILED", failed
    first = live.step(execution_id, "both")
    assert "branch check failed" in first["error"] and "marker file missing" in first["error"]
    live.wait_until_tree_ended(execution_id)
    check, other = live.children(first["id"])
    marker.touch()

    live.service("redrive", execution_id=execution_id)

    doc = live.wait_until_ended(execution_id)
    assert (doc["status"], doc["redrive_count"]) == ("COMPLETED", 1)
    assert live.ran(execution_id) == [("both", "FAILURE"), ("both", "SUCCESS")]
    again = live.step(execution_id, "both")
    # The same child, redriven from its failed step; the completed branch kept its result.
    assert again["result"]["check"]["attempt"] == 2
    assert again["result"]["other"]["value"] == "fine"
    assert [c["id"] for c in live.children(again["id"])] == [check["id"], other["id"]]
    assert live.children(first["id"]) == []
    assert live.ran(check["id"]) == [("check", "FAILURE"), ("check", "SUCCESS")]
    assert [e for e, _, _, _ in live.runs() if e == other["id"]] == [other["id"]]  # ran once
    assert live.fanout(again["id"]) == {"total": 2, "started": 2, "done": 2, "failed": 0}


def test_redriving_a_failed_map_runs_again_only_its_unfinished_items(live: Live) -> None:
    live.start_cluster()
    markers = live.home / "map-markers"
    markers.mkdir()
    for item in (0, 2, 4, 5):
        (markers / str(item)).touch()
    iterator = [
        task("note", "record", value="${item}"),
        task("check", "needs_marker", marker=f"{markers}/${{item}}"),
    ]
    document = flow_doc(
        [mapped("each", "${input.items}", iterator, max_concurrency=1, tolerated_failures=1)],
        flow_id="pl_redrive_map",
    )
    [execution_id] = live.submit(document, {"items": list(range(6))})
    assert live.wait_until_ended(execution_id)["status"] == "FAILED"
    live.wait_until_tree_ended(execution_id)
    first = live.step(execution_id, "each")
    items = live.children(first["id"])
    # One item at a time: 1 failed (tolerated), 3 failed too, 4 and 5 never started.
    assert [c["status"] for c in items] == [
        "COMPLETED", "FAILED", "COMPLETED", "FAILED", "CANCELLED", "CANCELLED",
    ]  # fmt: skip
    (markers / "1").touch()
    (markers / "3").touch()

    live.service("redrive", execution_id=execution_id)

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"
    again = live.step(execution_id, "each")
    assert [r["attempt"] for r in again["result"]["results"]] == [1, 2, 1, 2, 1, 1]
    assert [c["id"] for c in live.children(again["id"])] == [c["id"] for c in items]
    # Every item's first task ran exactly once: the completed items were not run again, the
    # failed ones went on from their failed step, the others started.
    noted = collections.Counter(e for e, task_name, _, _ in live.runs() if task_name == "note")
    assert {c["id"]: noted[c["id"]] for c in items} == {c["id"]: 1 for c in items}
    assert live.ran(items[1]["id"]) == [("note", "SUCCESS"), ("check", "FAILURE"),
                                        ("check", "SUCCESS")]  # fmt: skip
    assert live.fanout(again["id"]) == {"total": 6, "started": 6, "done": 6, "failed": 0}
    assert live.open_steps(execution_id) == []


# -------------------------------------------------------------------------------------------
# 4. Signals across cluster stops
# -------------------------------------------------------------------------------------------
def test_signals_delivered_while_the_cluster_is_down_or_after_a_restart_both_complete(
    live: Live,
) -> None:
    first = live.start_cluster()
    while_down, after_restart = live.submit(approval_flow("pl_signal_restart"), None, None)
    live.wait_until_waiting(while_down, "approve")
    live.wait_until_waiting(after_restart, "approve")

    first.send_signal(signal.SIGTERM)  # the main pid only (DJANGO-Q2.md, "Shutdown")
    try:
        first.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qcluster did not exit after SIGTERM\n{log_tails(live.logs)}")
    live.signal(while_down, "deploy", payload={"version": "down"})
    assert live.execution(while_down)["status"] == "RUNNING"  # nobody took it meanwhile

    second = live.start_cluster()
    assert live.wait_until_ended(while_down)["status"] == "COMPLETED"
    assert live.ran(while_down) == [("approve", "SUCCESS"), ("ship", "SUCCESS")]
    assert live.step(while_down, "ship")["result"]["message"] == "shipping down"
    pids = {second.pid, *descendants(second.pid)}
    assert {int(s["worker"].rsplit(":", 1)[1]) for s in live.steps(while_down)} <= pids

    # The other still waits; a worker killed outright and a new cluster change nothing.
    assert live.ran(after_restart) == [("approve", "PENDING")]
    os.killpg(second.pid, signal.SIGKILL)
    second.wait(timeout=30)
    third = live.start_cluster()
    live.signal(after_restart, "deploy", payload={"version": "after"})

    assert live.wait_until_ended(after_restart)["status"] == "COMPLETED"
    assert live.step(after_restart, "ship")["result"]["message"] == "shipping after"
    pids = {third.pid, *descendants(third.pid)}
    assert int(live.step(after_restart, "ship")["worker"].rsplit(":", 1)[1]) in pids


def test_signals_to_the_items_of_a_map_end_each_item_with_its_payload(live: Live) -> None:
    live.start_cluster()
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("ask", "wait_for_signal", signal="go"),
                 task("say", "print", message="${item}: ${results.ask.data.answer}")],
            )
        ],
        flow_id="pl_signal_items",
    )  # fmt: skip
    [execution_id] = live.submit(document, {"items": ["a", "b", "c"]})
    each = live.wait_until_waiting(execution_id, "each")
    children = live.children(each["id"])
    for child in children:
        live.wait_until_waiting(child["id"], "ask")

    live.service(
        "signal",
        signals=[
            {"execution_id": child["id"], "name": "go", "payload": {"answer": f"yes {i}"}}
            for i, child in enumerate(children)
        ],
    )

    assert live.wait_until_ended(execution_id)["status"] == "COMPLETED"
    results = live.step(execution_id, "each")["result"]["results"]
    assert [r["message"] for r in results] == ["a: yes 0", "b: yes 1", "c: yes 2"]


# -------------------------------------------------------------------------------------------
# 5. kill -9 in the middle of a 1,000-item map
# -------------------------------------------------------------------------------------------
BIG_MAP_ITEMS = 1000


def test_kill_9_of_workers_in_the_middle_of_a_1000_item_map_loses_nothing(live: Live) -> None:
    # A short lease and a reaper looping beside the cluster, so the steps the killed workers
    # held are taken back within the deadline (as in test_worker_faults.py).
    cluster = live.start_cluster(FLOW_LEASE_SECONDS="3", FLOW_WAKE_AFTER_SECONDS="2")
    live.start_reaper()
    items = list(range(BIG_MAP_ITEMS))
    document = flow_doc(
        [
            mapped(
                "each",
                "${input.items}",
                [task("echo", "record", value="${item}", seconds=0.1)],
                max_concurrency=100,
            )
        ],
        flow_id="pl_kill_map",
    )
    [execution_id] = live.submit(document, {"items": items})
    each = live.wait_until_waiting(execution_id, "each")

    def running_item_steps() -> list[tuple[int, str]]:
        return live.query(
            "SELECT t.id, t.worker FROM flows_taskrun t JOIN flows_execution e "
            "ON e.id = t.execution_id WHERE e.parent_step_id = %s AND t.status = 'RUNNING'",
            each["id"],
        )

    # In the middle: a fair share of the items done, and steps running on the workers.
    live.poll(
        "the map a quarter done",
        lambda: live.fanout(each["id"])["done"],
        lambda done: done >= BIG_MAP_ITEMS // 4,
        BIG_MAP_DEADLINE_SECONDS,
    )
    held = live.poll("item steps running", running_item_steps, bool)
    workers = set(descendants(cluster.pid))
    doomed = {int(w.rsplit(":", 1)[1]) for _, w in held} & workers
    assert doomed, f"no running step is held by a worker of the cluster: {held}"
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    done_at_kill = live.fanout(each["id"])["done"]
    assert done_at_kill < BIG_MAP_ITEMS, "the map ended before the kill"

    doc = live.wait_until_ended(execution_id, BIG_MAP_DEADLINE_SECONDS)

    assert doc["status"] == "COMPLETED", doc
    each = live.step(execution_id, "each")
    assert each["status"] == "SUCCESS"
    assert [r["value"] for r in each["result"]["results"]] == items
    assert (each["result"]["count"], each["result"]["failed"]) == (BIG_MAP_ITEMS, 0)
    assert live.fanout(each["id"]) == {
        "total": BIG_MAP_ITEMS,
        "started": BIG_MAP_ITEMS,
        "done": BIG_MAP_ITEMS,
        "failed": 0,
    }
    children = live.children(each["id"])
    assert [(c["item_index"], c["status"]) for c in children] == [(i, "COMPLETED") for i in items]
    assert [c["result"]["value"] for c in children] == items
    # Each item: one SUCCESS step, after any attempts lost with the killed workers.
    rows = live.query(
        "SELECT t.execution_id, t.status, t.worker FROM flows_taskrun t JOIN flows_execution e "
        "ON e.id = t.execution_id WHERE e.parent_step_id = %s ORDER BY t.execution_id, t.seq",
        each["id"],
    )
    by_child: dict[str, list[str]] = collections.defaultdict(list)
    lost_with: set[int] = set()
    for eid, status, worker in rows:
        by_child[norm(eid)].append(status)
        if status == "LOST":
            lost_with.add(int(worker.rsplit(":", 1)[1]))
    assert set(by_child) == {c["id"] for c in children}
    wrong = {e: s for e, s in by_child.items() if s[-1] != "SUCCESS" or set(s[:-1]) - {"LOST"}}
    assert not wrong, f"items with other steps than LOST..., SUCCESS: {wrong}"
    lost = {e: len(s) - 1 for e, s in by_child.items() if len(s) > 1}
    assert lost, "the kill interrupted no item step"
    assert lost_with <= doomed, "a step was lost with a worker that was not killed"
    # What the task itself saw: every item ran; only one interrupted by the kill ran again.
    runs = collections.Counter(e for e, t, _, _ in live.runs() if e in by_child)
    for child in children:
        eid = child["id"]
        assert 1 <= runs[eid] <= 1 + lost.get(eid, 0), (eid, runs[eid], lost.get(eid, 0))
    assert cluster.poll() is None, log_tails(live.logs)
