"""What the operator pages show, computed from models: no writes, no rules of their own."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.status import Stat

from flows import services
from flows.definition import MAP
from flows.large import Budget, human_size
from flows.models import Execution, ExecutionEvent, ExecutionStatus, TaskRun, TaskRunStatus
from flows.registry import default_registry
from flows.waiting import children_holder_of, children_holders, fanout_of, signal_of, waiting_of
from flows.web.graph import (
    END_KEY,
    START_KEY,
    Layout,
    layout_document,
    scoped_document,
    taken_edges,
    task_count,
)

logger = logging.getLogger("flows.web")

# Each step status drawn as one of the graph's task states.
STATE_OF_STEP = {
    TaskRunStatus.PENDING: "running",
    TaskRunStatus.RUNNING: "running",
    TaskRunStatus.SUCCESS: "success",
    TaskRunStatus.FAILURE: "failure",
    TaskRunStatus.LOST: "failure",
    TaskRunStatus.CANCELLED: "cancelled",
}
STATE_LABELS = {
    "not-run": "not run",
    "running": "running",
    "success": "success",
    "failure": "failure",
    "cancelled": "cancelled",
}
ACTIVE = {ExecutionStatus.CREATED, ExecutionStatus.QUEUED, ExecutionStatus.RUNNING}
LIVE = {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING}
STEP_LIMIT_SHOWN = 500


# -- graph -----------------------------------------------------------------------------------
@dataclass
class GraphView:
    """A laid-out flow plus per-node state and the edges an execution walked."""

    layout: Layout
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    # A flow past FLOW_GRAPH_MAX_TASKS is not laid out (grandalf's time grows with the square
    # of its tasks: 18 s for 500): its task count, and the limit, for the note shown instead.
    skipped_tasks: int = 0
    max_tasks: int = 0

    @property
    def width(self) -> float:
        return self.layout.width

    @property
    def height(self) -> float:
        return self.layout.height


def graph_view(
    document: Any,
    *,
    states: dict[str, str] | None = None,
    walked: set[tuple[str, str]] | None = None,
    ended: str = "",
    children: dict[str, ChildrenView] | None = None,
    scope: list[str] | None = None,
) -> GraphView:
    """The graph of ``document``; with ``states`` (task name -> state) it shows an execution,
    with ``children`` (control task name -> its children) their counts on the control nodes.
    ``scope`` draws the branch or map iterator a child execution runs."""
    scoped = scoped_document(document, scope or [])
    count, limit = task_count(scoped), settings.FLOW_GRAPH_MAX_TASKS
    if count > limit:
        empty = Layout(width=0, height=0, nodes=(), edges=())
        return GraphView(empty, [], [], skipped_tasks=count, max_tasks=limit)
    layout = layout_document(scoped)
    children = children or {}
    walked = walked or set()
    nodes = []
    for node in layout.nodes:
        if node.kind == "task":
            state = "" if states is None else states.get(node.key, "not-run")
        elif node.kind == "end":
            state = ended
        else:
            state = ""
        nodes.append(
            {
                "node": node,
                "state": state,
                "state_label": STATE_LABELS.get(state, ""),
                "children": children.get(node.key),
            }
        )
    edges = [{"edge": edge, "taken": (edge.source, edge.target) in walked} for edge in layout.edges]
    return GraphView(layout, nodes, edges)


# -- execution page --------------------------------------------------------------------------
@dataclass
class StepRow:
    step: TaskRun
    offset: float  # % of the execution's span before the step started
    width: float  # % of the span the step took
    result_json: str  # indented, cut past FLOW_SHOW_MAX_BYTES (see result_cut)
    logs: list[ExecutionEvent] = field(default_factory=list)
    # What the open step waits for (``waiting_of``), and a control step's children.
    waiting: dict[str, Any] | None = None
    children: ChildrenView | None = None
    # Past FLOW_SHOW_MAX_BYTES the page shows the result's first part, its size and a link.
    result_cut: str = ""  # "" or the whole result's size, for people ("812 KB")
    result_shown: str = ""  # how much of it the page shows ("64 KB"; less past the budget)
    # The answer a wait_for_signal step got (``signal_of``): who, when, how, and why.
    signal: dict[str, Any] | None = None

    @property
    def until(self) -> datetime | None:
        """When the wait ends by itself (a sleep's end, a signal's timeout), as a time."""
        return _time((self.waiting or {}).get("until"))

    @property
    def signal_at(self) -> datetime | None:
        return _time((self.signal or {}).get("at"))

    @property
    def signal_payload_json(self) -> str:
        payload = (self.signal or {}).get("payload")
        return json.dumps(payload, indent=2, ensure_ascii=False) if payload else ""


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) and text else None
    except ValueError:
        return None


@dataclass
class ChildrenView:
    """A control step's children: FanOut counts, and the children themselves for a parallel
    step or a sub-flow (a map's items are on their own paginated page)."""

    kind: str
    total: int
    done: int
    failed: int
    started: int
    listed: list[Execution] = field(default_factory=list)
    # The step that took these children over when the execution was redriven (its seq):
    # they are listed and counted there from then on; these counts are this attempt's.
    taken_over_at: int | None = None

    @property
    def running(self) -> int:
        return self.started - self.done

    @property
    def succeeded(self) -> int:
        return self.done - self.failed

    @property
    def is_map(self) -> bool:
        return self.kind == MAP


def children_counts(step: TaskRun) -> ChildrenView | None:
    """A control step's counts (its ``fanout`` joined), else None."""
    fanout = fanout_of(step)
    if fanout is None:
        return None
    return ChildrenView(fanout.kind, fanout.total, fanout.done, fanout.failed, fanout.started)


def children_rows(step: TaskRun, status: str = "") -> Any:
    """A control step's children in item order (a QuerySet to paginate), optionally those
    in one status."""
    rows = (
        Execution.objects.filter(parent_step=step)
        .only("id", "flow_id", "status", "branch", "item_index", "item", "error", "ended_at")
        .order_by("item_index")
    )
    return rows.filter(status=status) if status else rows


def children_page(step: TaskRun, status: str, page_number: Any, per_page: int) -> dict[str, Any]:
    """The children page of a control step: one page of its children (those in ``status``
    when it is a status, else all), each with ``item_preview`` (its map item as short JSON)
    and ``waits_for_signal``; its counts; and, when it has none left because a redriven step
    took them over, that step's seq."""
    known = status if status in ExecutionStatus.values else ""
    page = Paginator(children_rows(step, known), per_page).get_page(page_number)
    for child in page:
        child.item_preview = json.dumps(child.item, ensure_ascii=False)  # type: ignore[attr-defined]
    mark_waiting_for_signal(list(page))
    return {
        "step": step,
        "taken_over_at": None if page.object_list or status else taken_over_at(step),
        "counts": children_counts(step),
        "page": page,
        "status": status,
        "statuses": ExecutionStatus.values,
        "query": f"status={status}" if status else "",
    }


@dataclass
class ParentView:
    """Where a child execution sits: its parent execution and the step that started it."""

    execution_id: Any
    flow_name: str
    seq: int
    task_name: str
    task_type: str


@dataclass
class ExecutionView:
    execution: Execution
    graph: GraphView
    steps: list[StepRow]
    hidden_steps: int
    general_logs: list[ExecutionEvent]
    live: bool
    span_seconds: float
    parent: ParentView | None = None
    # The input as indented JSON, cut past FLOW_SHOW_MAX_BYTES; input_cut: "" or its size.
    input_json: str = ""
    input_cut: str = ""
    input_shown: str = ""  # how much of it the page shows ("64 KB")

    @property
    def steps_counted(self) -> int:
        """The header's "Steps": those taken, and the open one once it has begun (a map
        running its items, a sleep, a wait for a signal, a task running): the engine counts
        a step only when it ends."""
        last = self.steps[-1].step if self.steps else None
        begun = last is not None and last.started_at is not None
        is_open = last is not None and last.status in (TaskRunStatus.PENDING, TaskRunStatus.RUNNING)
        return self.execution.steps_taken + (1 if is_open and begun else 0)

    @property
    def waiting_rows(self) -> list[StepRow]:
        """The open step when it waits for a signal or a time (shown at the top)."""
        shown = ("signal", "until", "limit")
        return [r for r in self.steps if r.waiting and r.waiting["kind"] in shown]


def parent_view(execution: Execution) -> ParentView | None:
    """A child's parent execution and step (one query), or None for a top-level one."""
    if execution.parent_step_id is None:
        return None
    step = (
        TaskRun.objects.select_related("execution__flow")
        .only("seq", "task_name", "task_type", "execution__id", "execution__flow__name")
        .get(pk=execution.parent_step_id)
    )
    return ParentView(
        step.execution_id, step.execution.flow.name, step.seq, step.task_name, step.task_type
    )


def taken_over_at(step: TaskRun) -> int | None:
    """The seq of the later step of its execution that holds ``step``'s children now, after
    one redrive or several (``engine.redrive``), or None while they are its own."""
    holder = children_holder_of(step)
    return holder.seq if holder else None


def _children_views(steps: list[TaskRun]) -> dict[int, ChildrenView]:
    """Each control step's children view: one query for the branches and sub-flows of all."""
    views = {}
    holders = children_holders(steps)
    for step in steps:
        counts = children_counts(step)
        if counts is not None:
            holder = holders.get(step.pk)
            counts.taken_over_at = holder.seq if holder else None
            views[step.id] = counts
    few = [step_id for step_id, view in views.items() if not view.is_map]
    if few:
        rows = (
            Execution.objects.filter(parent_step_id__in=few)
            .only("id", "status", "branch", "item_index", "flow_id", "parent_step_id")
            .order_by("parent_step_id", "item_index")
        )
        for child in rows:
            views[child.parent_step_id].listed.append(child)
        mark_waiting_for_signal([c for view in views.values() for c in view.listed])
    return views


def mark_waiting_for_signal(children: list[Execution]) -> None:
    """Set ``waits_for_signal`` (the signal's name, or "") on each child: one query, so that
    a parent's page points at the branch or item someone must approve."""
    if not children:
        return
    waiting = dict(
        TaskRun.objects.filter(
            execution_id__in=[c.id for c in children],
            status=TaskRunStatus.PENDING,
            waiting__kind="signal",
        ).values_list("execution_id", "waiting__name")
    )
    for child in children:
        child.waits_for_signal = waiting.get(child.id) or ""  # type: ignore[attr-defined]


def execution_view(execution: Execution) -> ExecutionView:
    """Everything the execution page and its live region show: three queries, one more for
    the children of parallel and sub-flow steps, one more for a child's parent."""
    total = execution.steps.count()
    steps = list(execution.steps.select_related("fanout").order_by("-seq")[:STEP_LIMIT_SHOWN])
    steps = steps[::-1]
    children = _children_views(steps)
    events = list(execution.events.order_by("id"))
    by_step: dict[int | None, list[ExecutionEvent]] = defaultdict(list)
    for event in events:
        by_step[event.task_run_id].append(event)

    now = timezone.now()
    begin = execution.started_at or (steps[0].started_at if steps else None) or now
    end = execution.ended_at or now
    span = max((end - begin).total_seconds(), 0.001)
    budget = Budget()  # the input first, as the page shows it first, then each result
    given = budget.show(execution.input, indent=2) if execution.input else None
    rows = []
    states: dict[str, str] = {}
    for step in steps:
        states[step.task_name] = STATE_OF_STEP.get(step.status, "not-run")
        offset = width = 0.0
        if step.started_at:
            stop = step.ended_at or now
            offset = min(max((step.started_at - begin).total_seconds() / span * 100, 0), 100)
            width = min(max((stop - step.started_at).total_seconds() / span * 100, 0.6), 100)
        result = budget.show(step.result, indent=2) if step.result else None
        rows.append(
            StepRow(
                step,
                offset,
                min(width, 100 - offset),
                result.text if result else "",
                by_step[step.id],
                waiting=waiting_of(step),
                children=children.get(step.id),
                result_cut=human_size(result.size) if result and result.cut else "",
                result_shown=human_size(result.shown_size) if result else "",
                signal=signal_of(step),
            )
        )

    ended = execution.status in {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED}
    end_state = {"COMPLETED": "success", "FAILED": "failure"}.get(execution.status, "")
    latest = {row.step.task_name: row.children for row in rows if row.children is not None}
    graph = graph_view(
        execution.flow_version.definition,
        states=states,
        walked=taken_edges((s.task_name for s in steps), ended=ended),
        ended=end_state,
        children=latest,
        scope=execution.scope,
    )
    return ExecutionView(
        execution=execution,
        graph=graph,
        steps=rows,
        hidden_steps=total - len(steps),
        general_logs=by_step[None],
        live=execution.status in LIVE,
        span_seconds=span,
        parent=parent_view(execution),
        input_json=given.text if given else "",
        input_cut=human_size(given.size) if given and given.cut else "",
        input_shown=human_size(given.shown_size) if given else "",
    )


# -- dashboard -------------------------------------------------------------------------------
@dataclass
class WorkerHealth:
    clusters: list[dict[str, Any]]
    queued: int | None
    problem: str = ""

    @property
    def alive(self) -> int:
        return len(self.clusters)


def worker_health() -> WorkerHealth:
    """Clusters alive (django-q2's status in the shared cache) and jobs waiting in the queue."""
    clusters: list[dict[str, Any]] = []
    problem = ""
    try:
        for stat in Stat.get_all():
            clusters.append(
                {
                    "id": stat.cluster_id,
                    "host": stat.host,
                    "status": stat.status,
                    "workers": len(stat.workers),
                    "uptime": timedelta(seconds=int(stat.uptime())) if stat.tob else None,
                }
            )
    except Exception as exc:  # the page must render even when the cache is unreachable
        logger.warning("dashboard: cannot read cluster status: %s", exc)
        problem = f"cannot read the cluster status: {exc}"
    try:
        queued: int | None = get_broker().queue_size()
    except Exception as exc:
        logger.warning("dashboard: cannot read the queue size: %s", exc)
        queued = None
    return WorkerHealth(clusters, queued, problem)


def status_table(counts_day: dict[str, int], counts_week: dict[str, int]) -> list[dict]:
    return [
        {"status": s.value, "day": counts_day.get(s.value, 0), "week": counts_week.get(s.value, 0)}
        for s in ExecutionStatus
    ]


# -- flows -----------------------------------------------------------------------------------
def missing_types(document: Any) -> list[str]:
    """Task types a stored flow uses that the registry cannot provide any more."""
    snapshot = default_registry().snapshot()
    doc = document.get("flow", document) if isinstance(document, dict) else {}
    out = []
    for task in doc.get("tasks") or []:
        task_type = task.get("task_type") if isinstance(task, dict) else None
        if isinstance(task_type, str) and snapshot.problem(task_type) and task_type not in out:
            out.append(task_type)
    return out


def flow_problems(document: Any) -> list[dict[str, str]]:
    """Why a stored flow cannot run now (validation errors), or an empty list."""
    try:
        services.validate_flow(document)
    except services.InvalidFlow as exc:
        return exc.errors
    return []


__all__ = [
    "END_KEY",
    "START_KEY",
    "ExecutionView",
    "GraphView",
    "WorkerHealth",
    "execution_view",
    "flow_problems",
    "graph_view",
    "missing_types",
    "status_table",
    "worker_health",
]
