"""Only ``flows/engine/transitions.py`` writes the status of an execution or a step (issue 19).

Read from the source, like ``test_layers.py``: a module that writes a status anywhere else is
where the next rule on a state change (secrets, outbox rows, limit slots) would be forgotten.
A status write is any of:

- ``status=...`` in an ``.update(...)``, ``.create(...)``, ``.get_or_create``/``update_or_create``
  call, or in building an ``Execution(...)``/``TaskRun(...)`` row;
- a ``"status"`` key in a dict literal of row changes (those given to ``flows.sql.writes``:
  its value names ``ExecutionStatus``/``TaskRunStatus``, or it sets a row's time or worker too);
- an assignment to ``<something>.status`` or ``<changes>["status"]`` (plain, or in a tuple of
  targets), but for a ``StepOutcome`` (``outcome.status``: what a task amounted to, not a row).

``status=`` given to ``.filter``/``.exclude`` or as ``writes.update_rows``'s condition is a read
and is allowed everywhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where a status write belongs (transitions), or is not one of a row (the SQL layer that runs
# the statements transitions build; the models and migrations that define the column).
ALLOWED = {"flows/engine/transitions.py"}
ALLOWED_DIRS = ("flows/sql/", "flows/migrations/")
# Modules that move executions and steps; faces only call services, so they are covered too.
SCANNED = ["flows/engine", "flows/services", "flows/jobs.py", "flows/admin.py", "flows/management"]

WRITING_CALLS = {"update", "create", "get_or_create", "update_or_create"}
ROWS = {"Execution", "TaskRun"}
STATUSES = {"ExecutionStatus", "TaskRunStatus"}
# Keys that only a row's changes have beside "status" (a result document has none of them).
ROW_KEYS = {"ended_at", "queued_at", "started_at", "worker", "lease_expires_at"}


def _modules() -> Iterator[Path]:
    for where in SCANNED:
        path = ROOT / where
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _status_target(target: ast.expr) -> bool:
    if isinstance(target, ast.Attribute) and target.attr == "status":
        return not (isinstance(target.value, ast.Name) and target.value.id == "outcome")
    if isinstance(target, ast.Subscript):  # changes["status"] = ...
        return isinstance(target.slice, ast.Constant) and target.slice.value == "status"
    if isinstance(target, ast.Tuple | ast.List):
        return any(_status_target(t) for t in target.elts)
    return False


def _names(node: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def status_writes(source: str) -> list[int]:
    """The lines of ``source`` that write a status (see the module's docstring)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            writing = (name in WRITING_CALLS and isinstance(func, ast.Attribute)) or name in ROWS
            if writing and any(kw.arg == "status" for kw in node.keywords):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            keys = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant)}  # fmt: skip
            if "status" in keys and (_names(keys["status"]) & STATUSES or ROW_KEYS & set(keys)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign):
            if any(_status_target(t) for t in node.targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign) and _status_target(node.target):
            lines.append(node.lineno)
    return sorted(lines)


def test_only_transitions_writes_a_status() -> None:
    found = []
    for path in _modules():
        where = path.relative_to(ROOT).as_posix()
        if where in ALLOWED or where.startswith(ALLOWED_DIRS):
            continue
        found += [f"{where}:{line}" for line in status_writes(path.read_text())]
    assert not found, (
        "a status is written outside flows/engine/transitions.py (add a transition there and "
        f"call it): {found}"
    )


def test_the_scan_sees_each_kind_of_write() -> None:
    """The scan is honest: each way of writing a status is seen, a read is not."""
    writes_ = """
Execution.objects.filter(pk=1).update(status="PAUSED")
TaskRun.objects.create(execution_id=1, status="PENDING")
TaskRun(execution_id=1, status="RUNNING")
changes = {"status": ExecutionStatus.QUEUED}
ends = {"status": status, "ended_at": now}
step.status = "RUNNING"
step.status, step.worker = "RUNNING", "me"
changes["status"] = ExecutionStatus.PAUSED
"""
    assert status_writes(writes_) == [2, 3, 4, 5, 6, 7, 8, 9]
    reads = """
TaskRun.objects.filter(status="PENDING").update(woken_at=now)
writes.update_rows(TaskRun, closes, status="RUNNING", worker=me)
if step.status == "RUNNING": pass
result = {"execution_id": "1", "status": status, "result": None}
outcome.status = "FAILURE"
"""
    assert status_writes(reads) == []
