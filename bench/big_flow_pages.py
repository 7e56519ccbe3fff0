"""Time and size of the pages that show big things: a 500-task flow, a 1 MB input and result.

Run: ``.venv/bin/python bench/big_flow_pages.py [--tasks 500] [--items 100000] [--runs 3]``.
The targets (issue 18, issue 20): the builder and flow pages of a 500-task flow under 1 s and
1 MB; lists carry no input or result bodies; the execution page stays small whatever the
result's size.

What it does
    1. Creates a temporary SQLite file (the project's settings: WAL, IMMEDIATE), migrates it.
    2. Stores a flow of ``--tasks`` ``print`` tasks, each with a condition (success to the
       next, failure to the end), through ``flows.services.flow_store``.
    3. Stores a finished execution of a one-task flow whose input and step result are each a
       list of ``--items`` numbers (what a big map leaves behind), and 49 small ones beside it.
    4. Requests each page once to warm up, then ``--runs`` times with Django's test client,
       logged in as a superuser (the whole request handler, no network).

Output: a markdown table (median and max ms, KB) on stdout and
``bench/results/big-pages-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from pathlib import Path

from pages import django_on_new_sqlite, measure  # bench/ is this script's sys.path[0]

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS = BASE_DIR / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    home = django_on_new_sqlite("bench-big-", FLOW_MAX_DOCUMENT_BYTES=str(8 * 1024 * 1024))
    flow_id, execution_id = populate(args.tasks, args.items)
    pages = {
        f"builder, {args.tasks} tasks": f"/flows/{flow_id}/edit",
        f"flow page, {args.tasks} tasks": f"/flows/{flow_id}/",
        f"flow version page, {args.tasks} tasks": f"/flows/{flow_id}/v1/",
        "API executions list (one big input)": "/api/executions/",
        "executions list page": "/executions/",
        f"execution page ({args.items:,}-item input and result)": f"/executions/{execution_id}/",
        f"API execution ({args.items:,}-item input and result)": f"/api/executions/{execution_id}/",
    }
    rows = measure(pages, args.runs, warmup=1)
    print("\n| page | median ms | max ms | KB |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['page']} | {r['median_ms']} | {r['max_ms']} | {r['bytes'] // 1024} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"big-pages-{stamp}.json"
    out.write_text(json.dumps({"config": vars(args), "pages": rows}, indent=2))
    print(f"\nwritten to {out.relative_to(BASE_DIR)}")
    shutil.rmtree(home, ignore_errors=True)


def populate(tasks: int, items: int) -> tuple[str, object]:
    from django.utils import timezone

    from flows import services
    from flows.models import Execution, TaskRun

    names = [f"task_{i:04d}" for i in range(tasks)]
    document = {
        "id": "big_flow",
        "name": "Big flow",
        "tasks": [
            {"name": n, "task_type": "print", "description": f"Step {i}",
             "parameters": {"message": f"step {i}"}}
            for i, n in enumerate(names)
        ],
        "conditions": [
            {"name": f"c_{n}", "source_task": n, "outcome": "success",
             "target_task_success": names[i + 1] if i + 1 < tasks else "end",
             "target_task_failure": "end"}
            for i, n in enumerate(names)
        ],
    }  # fmt: skip
    services.flow_store(document=document)
    small = {"id": "one_task", "tasks": [{"name": "t", "task_type": "noop"}]}
    version, _ = services.flow_store(document=small)
    now = timezone.now()
    big = list(range(items))
    executions = [
        Execution(
            flow_id=version.flow_id,
            flow_version=version,
            status="COMPLETED",
            input={"items": big} if i == 0 else {"n": i},
            created_at=now - dt.timedelta(seconds=i),
            started_at=now - dt.timedelta(seconds=i),
            ended_at=now,
            steps_taken=1,
        )
        for i in range(50)
    ]
    Execution.objects.bulk_create(executions)
    TaskRun.objects.create(
        execution=executions[0],
        seq=1,
        task_name="t",
        task_type="noop",
        status="SUCCESS",
        result={"items": big},
        started_at=now,
        ended_at=now,
        duration=0.1,
    )
    return "big_flow", executions[0].id


if __name__ == "__main__":
    main()
