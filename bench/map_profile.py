"""Where a map step's time goes: one map run by the worker's Dispatcher in this process.

Run: ``.venv/bin/python bench/map_profile.py [--backend sqlite|pg-redis] [--items 1000]
[--concurrency N] [--no-cprofile] [--item-parameters]``

It builds a stack as ``suite.py`` does (a SQLite file and the ORM broker, or a fresh
PostgreSQL database and a Redis db number of its own, removed after), runs ``manage.py
migrate``, stores the suite's map flow (``map`` over ``${input.items}``, ``max_concurrency``
100, a ``noop`` iterator; with ``--item-parameters`` the map also has ``parameters`` using
``${item}`` and ``${item_index}``, resolved per item into each child's input) and, with no
qcluster at all, runs maps through the worker's own ``flows.engine.Dispatcher`` in this one
process (``FLOW_WORKER_CONCURRENCY`` unless
``--concurrency``), calling ``run()`` again until the map execution ends (the queue messages
the engine sends go unread: the dispatcher finds ready work by itself):

1. a warm-up map of 50 items (imports, registry, connection);
2. a map of ``--items`` with an ``execute_wrapper`` counting and timing every SQL statement
   and cheap timers around the dispatcher's parts: where an item's time goes;
3. a map of ``--items`` under cProfile (unless ``--no-cprofile``): the functions. cProfile
   inflates call-heavy code (the ORM), so trust the timers for sizes.

Wall = the map execution's ``queued_at`` -> ``ended_at``, as in the suite; this is one
process, not the suite's two workers, so read it for the shares, not as the suite's figure.
Prints markdown on stdout; nothing is written to ``bench/results``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _stack import BASE_DIR, manage, pg_redis_backend, sqlite_backend
from engine_overhead import QueryTimer, Stopwatch
from suite import MAP_FLOW


def run_map(version_obj: Any, items: int, concurrency: int | None) -> dict[str, Any]:
    """Start a map of ``items`` and run dispatchers here until it ends; its figures."""
    from flows import services
    from flows.engine import Dispatcher
    from flows.models import ACTIVE_STATUSES, Execution

    execution = services.execution_create(
        flow_version=version_obj, input={"items": list(range(items))}
    )
    services.execution_start(execution_id=execution.id)
    started = time.perf_counter()
    rounds = steps = 0
    while Execution.objects.get(id=execution.id).status in ACTIVE_STATUSES:
        steps += Dispatcher(concurrency=concurrency).run()
        rounds += 1
        if time.perf_counter() - started > 600:
            sys.exit(f"the map {execution.id} did not end within 600 s")
    row = Execution.objects.get(id=execution.id)
    wall = (row.ended_at - row.queued_at).total_seconds()
    child = (
        Execution.objects.filter(parent_step__execution_id=execution.id)
        .order_by("item_index")
        .values_list("input", flat=True)
        .first()
    )
    return {
        "items": items,
        "child_input_bytes": len(json.dumps(child)),
        "status": row.status,
        "wall_s": wall,
        "items_per_s": items / wall,
        "dispatcher_runs": rounds,
        "steps_recorded": steps,
    }


def profile(version_obj: Any, items: int, concurrency: int | None, cprof: bool) -> None:
    from unittest import mock

    from django.db import connection

    from flows.engine import Dispatcher, dispatcher, fanout

    run_map(version_obj, 50, concurrency)  # warm-up

    watch, queries = Stopwatch(), QueryTimer()
    parts = [
        (Dispatcher, "_write_batch", "record: Dispatcher._write_batch (results + routes + fan-in)"),
        (Dispatcher, "fill", "fill: Dispatcher.fill (claims)"),
        (dispatcher, "start", "start: step.start (build the task, hand it to the loop)"),
        (fanout, "create", "fanout.create (children rows, first max_concurrency QUEUED)"),
        (fanout, "child_ended", "fanout.child_ended (count, start the next item)"),
        (fanout, "join", "fanout.join (read the children's results)"),
    ]
    patches = [
        mock.patch.object(owner, name, watch.wrap(label, getattr(owner, name)))
        for owner, name, label in parts
        if hasattr(owner, name)
    ]
    patches.append(
        mock.patch.object(connection, "_commit", watch.wrap("commit", connection._commit))
    )
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        stack.enter_context(connection.execute_wrapper(queries))
        timed = run_map(version_obj, items, concurrency)
    print(
        f"## Map of {items:,} no-op items in one process "
        f"({connection.vendor}, concurrency {concurrency or 'FLOW_WORKER_CONCURRENCY'})\n"
    )
    print(
        f"With timers: wall {timed['wall_s']:.2f} s, {timed['items_per_s']:,.0f} items/s, "
        f"{timed['dispatcher_runs']} dispatcher runs, {timed['steps_recorded']} steps recorded; "
        f"{timed['wall_s'] / items * 1000:.2f} ms an item; each child execution's input "
        f"holds {timed['child_input_bytes']:,} bytes of JSON\n"
    )
    print("| part | ms per item | calls per item |\n|---|---:|---:|")
    for label, seconds in sorted(watch.seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds / items * 1000:.3f} | {watch.calls[label] / items:.2f} |")
    total_sql = sum(sum(t) for t in queries.by_kind.values())
    count_sql = sum(len(t) for t in queries.by_kind.values())
    print(
        f"| SQL, all statements (execute) | {total_sql / items * 1000:.3f} | "
        f"{count_sql / items:.2f} |"
    )
    print("\n| SQL statement (leading words) | per item | ms per item |\n|---|---:|---:|")
    for kind, times in sorted(queries.by_kind.items(), key=lambda kv: -sum(kv[1]))[:25]:
        print(f"| `{kind}` | {len(times) / items:.2f} | {sum(times) / items * 1000:.3f} |")

    if cprof:
        profiler = cProfile.Profile()
        profiler.enable()
        run = run_map(version_obj, items, concurrency)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(r"flows/|tasks/|django_q/|django/db/", 30)
        stats.sort_stats("tottime").print_callers(5)  # who calls the top five
        print(
            f"\n### cProfile (wall under the profiler {run['wall_s']:.2f} s)\n\n```\n"
            + out.getvalue()
            + "```"
        )


def with_item_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """The map flow with parameters resolved per item: each child's input is its own."""
    (each,) = document["tasks"]
    params = {"value": "${item}", "index": "${item_index}"}
    return {**document, "id": "bench_map_items", "tasks": [{**each, "parameters": params}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "pg-redis"), default="sqlite")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, help="default: FLOW_WORKER_CONCURRENCY")
    parser.add_argument("--no-cprofile", action="store_true")
    parser.add_argument(
        "--item-parameters",
        action="store_true",
        help="the map's parameters use ${item} and ${item_index} (each child its own input)",
    )
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="flow-map-profile-"))
    stack = sqlite_backend(home) if args.backend == "sqlite" else pg_redis_backend()
    with stack as backend:
        env = {
            **backend.env,
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DEBUG": "0",
            "DJANGO_SETTINGS_MODULE": "flowmanager.settings",
            "Q_CLUSTER_NAME": f"bench-map-profile-{os.getpid()}",
            "LOG_LEVEL": "WARNING",
            "FLOW_DEMO_DELAY_SECONDS": "0",
        }
        os.environ.update(env)
        os.environ.pop("Q_SYNC", None)
        if "REDIS_URL" not in backend.env:
            os.environ.pop("REDIS_URL", None)
        manage(dict(os.environ), "migrate", "--noinput", "--verbosity", "0")
        sys.path.insert(0, str(BASE_DIR))
        os.chdir(BASE_DIR)
        import django

        django.setup()
        logging.getLogger("flows").setLevel(logging.WARNING)
        from django.db import connections

        from flows import services

        version_obj = services.flow_create(
            document=with_item_parameters(MAP_FLOW) if args.item_parameters else MAP_FLOW
        )
        try:
            profile(version_obj, args.items, args.concurrency, not args.no_cprofile)
        finally:
            connections.close_all()  # before the database is dropped
    return 0


if __name__ == "__main__":
    sys.exit(main())
