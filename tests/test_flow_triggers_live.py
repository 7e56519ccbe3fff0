"""Flow triggers on real processes: clusters killed with kill -9 while executions of the
upstream flow end, then started again. Every end starts the downstream flow exactly once
(the ends outbox: a start commits with the deletion of its end's row, or neither does).

Uses the fault tests' stack (a fresh database of the suite's backend, the ``record`` task);
each worker process handles the outbox about once a second (``flows.jobs.EndsTimer``).
"""

from __future__ import annotations

import collections

import pytest

from tests import test_worker_faults as faults
from tests.factories import flow_doc, task
from tests.test_worker_faults import Live, norm

# The fault tests' fixtures: a fresh database for this module, the processes of one test.
backend = faults.backend
live = faults.live

pytestmark = pytest.mark.worker

COUNT = 40


def test_a_cluster_killed_while_upstream_executions_end_starts_each_downstream_once(
    live: Live,
) -> None:
    downstream = flow_doc(
        [task("got", "noop")], flow_id="after_a", on_flow_end=[{"flow_id": "live_a"}]
    )
    live.submit(downstream, 0)
    ids = live.submit(flow_doc([task("work", "record", seconds=0.2)], flow_id="live_a"), COUNT)

    # Kill the cluster twice, each time with some upstream executions ended and others not:
    # the ends being handled at that moment are cut at any point of their transaction.
    for round_ in (1, 2):
        cluster = live.start_cluster()
        live.poll(
            f"more upstream executions ending (round {round_})",
            lambda: sum(s == "COMPLETED" for s in live.statuses("live_a").values()),
            lambda done, r=round_: done >= r * COUNT // 3,
        )
        live.kill_group(cluster)

    live.start_cluster()
    live.start_reaper()
    live.wait_until_ended("live_a", COUNT)
    live.poll(
        "the outbox emptied",
        lambda: live.backend.query("SELECT COUNT(*) FROM flows_executionend")[0][0],
        lambda n: n == 0,
    )

    started = live.backend.query(
        "SELECT triggered_by_id, trigger, input FROM flows_execution WHERE flow_id = %s",
        "after_a",
    )
    by_upstream = collections.Counter(norm(row[0]) for row in started)
    assert collections.Counter(live.statuses("live_a").values()) == {"COMPLETED": COUNT}
    assert by_upstream == {execution_id: 1 for execution_id in ids}, {
        k: n for k, n in by_upstream.items() if n != 1
    }
    assert {row[1] for row in started} == {"flow"}
