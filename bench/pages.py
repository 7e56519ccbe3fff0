"""Server time of the operator pages over a large history (10,000 executions, 50,000 steps).

Run: ``.venv/bin/python bench/pages.py [--executions 10000] [--steps 5] [--runs 30]``
(or ``make bench-pages``). The target is < 100 ms per page.

What it does
    1. Creates a temporary SQLite file (the project's settings: WAL, IMMEDIATE) and migrates it.
    2. Stores 20 flows of 5 tasks through ``flows.services.flow_create``, then bulk-inserts
       ``--executions`` executions spread over the last 10 days (mixed statuses), ``--steps``
       steps for each (so 50,000 by default) and one log line per step.
    3. Renders each page ``--warmup`` times (not counted: template loading, layout cache),
       then ``--runs`` times with Django's test client, logged in. The client goes through
       the whole request handler (middleware, session, auth, view, template rendering): that
       is the server time; no network, no browser.

Pages: the dashboard ``/``, the flows list, the executions list (first page and a filtered
one) and an execution page (a finished execution of the longest flow) and its live region.

Output: a markdown table (median, p95, max in ms; queries per request) on stdout and
``bench/results/pages-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS = BASE_DIR / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=5, help="steps per execution")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    args = parser.parse_args()

    home = django_on_new_sqlite("bench-pages-")
    import django

    started = time.perf_counter()
    execution_id = populate(args.executions, args.steps)
    print(f"stored {args.executions} executions, {args.executions * args.steps} steps "
          f"in {time.perf_counter() - started:.1f} s ({home})")  # fmt: skip

    pages = {
        "dashboard": "/",
        "flows list": "/flows/",
        "executions list": "/executions/",
        "executions list, filtered": "/executions/?status=FAILED&flow=flow_07",
        "execution page": f"/executions/{execution_id}/",
        "execution live region": f"/executions/{execution_id}/live",
    }
    rows = measure(pages, args.runs, args.warmup)
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"pages-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "nproc": os.cpu_count(),
                    "python": platform.python_version(),
                    "django": django.get_version(),
                },
                "config": vars(args),
                "pages": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out.relative_to(BASE_DIR)}")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


def django_on_new_sqlite(prefix: str, **env: str) -> Path:
    """Django set up on a new, migrated SQLite database in a new temporary folder (returned),
    with ``env`` over the benchmark's settings. Templates reference static files; no
    collectstatic manifest here, so they are served plain."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        DATABASE_URL=f"sqlite:///{home / 'db.sqlite3'}",
        SECRET_KEY="bench-only-not-a-secret",
        DEBUG="0",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="WARNING",
        **env,
    )
    sys.path.insert(0, str(BASE_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowmanager.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.STORAGES["staticfiles"] = {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
    }
    call_command("migrate", verbosity=0)
    return home


def populate(executions: int, steps: int) -> uuid.UUID:
    """Store the history; returns the id of a finished execution to open."""
    from django.utils import timezone

    from flows import services
    from flows.models import Execution, ExecutionEvent, FlowVersion, TaskRun

    rng = random.Random(7)
    versions: list[FlowVersion] = []
    for i in range(20):
        tasks = [{"name": f"t{j}", "task_type": "noop"} for j in range(5)]
        conditions = [
            {"source_task": "t0", "outcome": "success", "target_task_success": "t1",
             "target_task_failure": "t4"},
        ]  # fmt: skip
        document = {"id": f"flow_{i:02d}", "name": f"Flow {i:02d}", "tasks": tasks,
                    "conditions": conditions}  # fmt: skip
        versions.append(services.flow_create(document=document))

    now = timezone.now()
    statuses = ["COMPLETED"] * 7 + ["FAILED"] * 2 + ["CANCELLED"]
    batch: list[Execution] = []
    for _ in range(executions):
        version = rng.choice(versions)
        created = now - dt.timedelta(seconds=rng.uniform(0, 10 * 86400))
        batch.append(
            Execution(
                flow_id=version.flow_id,
                flow_version=version,
                status=rng.choice(statuses),
                created_at=created,
                started_at=created,
                ended_at=created + dt.timedelta(seconds=2),
                steps_taken=steps,
            )
        )
    Execution.objects.bulk_create(batch, batch_size=2000)
    # auto_now_add overwrote created_at; put the spread back in one statement per batch.
    created = [e.started_at for e in batch]
    for e, when in zip(batch, created, strict=True):
        e.created_at = when
    Execution.objects.bulk_update(batch, ["created_at"], batch_size=2000)

    runs: list[TaskRun] = []
    for e in batch:
        for seq in range(1, steps + 1):
            start = e.started_at + dt.timedelta(seconds=0.3 * (seq - 1))
            failed = e.status == "FAILED" and seq == steps
            runs.append(
                TaskRun(
                    execution_id=e.id,
                    seq=seq,
                    task_name=f"t{(seq - 1) % 5}",
                    task_type="noop",
                    status="FAILURE" if failed else "SUCCESS",
                    result=None if failed else {"message": f"step {seq}", "n": seq},
                    error="RuntimeError: boom" if failed else "",
                    started_at=start,
                    ended_at=start + dt.timedelta(seconds=0.25),
                    duration=0.25,
                    route=f"t{seq} succeeded; no condition, next task in order",
                )
            )
    TaskRun.objects.bulk_create(runs, batch_size=5000)
    step_ids = TaskRun.objects.values_list("id", "execution_id", "created_at")
    ExecutionEvent.objects.bulk_create(
        (
            ExecutionEvent(execution_id=eid, task_run_id=sid, created_at=when, message="done")
            for sid, eid, when in step_ids.iterator()
        ),
        batch_size=5000,
    )
    return batch[-1].id


def measure(pages: dict[str, str], runs: int, warmup: int) -> list[dict]:
    """Each page's server time over ``runs`` (after ``warmup``), statements and size, for a
    logged-in superuser (one who may see every page: a user without a role sees none)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    user = get_user_model().objects.create_superuser("bench", password="bench-pass-123")
    client = Client()
    client.force_login(user)
    rows = []
    for name, url in pages.items():
        for _ in range(warmup):
            assert client.get(url).status_code == 200, url
        # Django clears connection.queries at each request start: count with a wrapper.
        statements: list[str] = []

        def count(execute, sql, params, many, context, statements=statements):
            statements.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            client.get(url)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, url
        times.sort()
        rows.append(
            {
                "page": name,
                "url": url,
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
                "max_ms": round(times[-1], 1),
                "queries": len(statements),
                "bytes": len(response.content),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| page | median ms | p95 ms | max ms | queries | KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['page']} | {r['median_ms']} | {r['p95_ms']} | {r['max_ms']} | "
            f"{r['queries']} | {r['bytes'] // 1024} |"
        )


if __name__ == "__main__":
    main()
