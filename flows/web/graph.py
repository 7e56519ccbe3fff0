"""Lay a flow out as a graph (grandalf's Sugiyama layout) for server-rendered SVG.

Edges come from ``FlowDefinition.route``, the engine's own routing, so the picture can never
disagree with what runs. A stored document is drawn even when it no longer validates (a task
type has disappeared): drawing needs only the names and the conditions, not the registry.
Layouts depend only on the document, so they are cached per process.

Control tasks are drawn by kind: a ``parallel`` task as a wide box with one lane per branch,
side by side, each listing its tasks; a ``map`` as one node "map over <items>"; a ``subflow``
naming the flow it calls. The counts of an execution's children are added by the page.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout
from grandalf.routing import EdgeViewer, route_with_lines

from flows.definition import (
    END,
    MAP,
    PARALLEL,
    SUBFLOW,
    ConditionSpec,
    FlowDefinition,
    TaskSpec,
    unwrap,
)

NODE_W, NODE_H = 184, 48
END_W, END_H = 72, 32
START_D = 16
MARGIN = 24
LANE_W, LANE_GAP, LANE_HEAD, LANE_ROW = 150, 10, 44, 22  # a parallel task's branch lanes
LANES_TOP = NODE_H + 16  # below the name, the label and the children's counts
LOOP_R = 18  # radius of a task's edge to itself
# Node keys that cannot clash with a task name (a task may be called "end").
END_KEY, START_KEY = "\x00end", "\x00start"


@dataclass(frozen=True)
class Lane:
    """One branch of a parallel task, drawn inside its node: the branch's tasks in order."""

    name: str
    tasks: tuple[tuple[str, str], ...]  # (name, task_type)
    x: float = 0.0  # top-left corner, set when the node is placed
    y: float = 0.0
    w: float = LANE_W
    h: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Where each task's label goes in the lane."""
        return [
            {"name": _short(name, 18), "task_type": task_type,
             "y": self.y + LANE_HEAD - 6 + i * LANE_ROW}
            for i, (name, task_type) in enumerate(self.tasks)
        ]  # fmt: skip


@dataclass(frozen=True)
class Control:
    """What a control task shows on its node: branches, the items it maps, the flow it calls."""

    kind: str  # parallel, map or subflow
    label: str  # "3 branches", "map over ${input.orders}", "calls flow 'x' v2"
    lanes: tuple[Lane, ...] = ()


@dataclass(frozen=True)
class Node:
    key: str
    name: str
    task_type: str
    kind: str  # "task", "end" or "start"
    x: float  # top-left corner
    y: float
    w: float
    h: float
    is_start: bool = False
    control: Control | None = None

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def short_name(self) -> str:
        return _short(self.name, 22)

    @property
    def lanes(self) -> tuple[Lane, ...]:
        return self.control.lanes if self.control else ()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    kind: str  # "success", "failure", "always" (both outcomes) or "start"
    d: str  # SVG path
    label_x: float
    label_y: float

    @property
    def label(self) -> str:
        return {"success": "success", "failure": "failure", "always": "always"}.get(self.kind, "")

    @property
    def title(self) -> str:
        source, target = (k.replace("\x00", "") for k in (self.source, self.target))
        return f"{source} → {target}" + (f" on {self.label}" if self.label else "")


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    nodes: tuple[Node, ...]
    edges: tuple[GraphEdge, ...]


def definition_for_drawing(document: Any) -> FlowDefinition:
    """A FlowDefinition built from a document without validating it against the registry.

    Stored documents were valid when saved; this keeps drawing them after a task type is
    removed. Malformed items are skipped rather than raised.
    """
    doc = unwrap(document)
    doc = doc if isinstance(doc, Mapping) else {}
    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for item in doc.get("tasks") or []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            name = item["name"]
            if name and name not in seen:
                seen.add(name)
                tasks.append(TaskSpec(name=name, task_type=str(item.get("task_type") or "")))
    conditions: list[ConditionSpec] = []
    sources: set[str] = set()
    for item in doc.get("conditions") or []:
        if not isinstance(item, Mapping):
            continue
        source = item.get("source_task")
        if source in seen and source not in sources:
            sources.add(source)
            conditions.append(
                ConditionSpec(
                    source_task=source,
                    outcome=str(item.get("outcome") or "success"),
                    target_task_success=_target(item.get("target_task_success"), seen),
                    target_task_failure=_target(item.get("target_task_failure"), seen),
                    name=str(item.get("name") or ""),
                )
            )
    start = doc.get("start_task")
    if start not in seen:
        start = tasks[0].name if tasks else ""
    return FlowDefinition(
        id=str(doc.get("id") or ""),
        name=str(doc.get("name") or ""),
        start_task=start,
        tasks=tuple(tasks),
        conditions=tuple(conditions),
    )


def _target(value: Any, names: set[str]) -> str:
    return value if isinstance(value, str) and value in names else END


def flow_edges(definition: FlowDefinition) -> list[tuple[str, str, str]]:
    """(source, target, kind) for every way out of every task; the end is ``END_KEY``.

    A task without a condition that fails ends the flow; that implicit edge is not drawn
    (every task would have one), the legend says so instead.
    """
    edges: list[tuple[str, str, str]] = []
    for spec in definition.tasks:
        on_success = definition.route(spec.name, "success")[0] or END_KEY
        on_failure = definition.route(spec.name, "failure")[0] or END_KEY
        if definition.condition_for(spec.name) is None:
            edges.append((spec.name, on_success, "success"))
        elif on_success == on_failure:
            edges.append((spec.name, on_success, "always"))
        else:
            edges.append((spec.name, on_success, "success"))
            edges.append((spec.name, on_failure, "failure"))
    return edges


def control_shapes(document: Any) -> dict[str, Control]:
    """What each control task of a (maybe invalid) document shows, by task name."""
    doc = unwrap(document)
    shapes: dict[str, Control] = {}
    for item in (doc.get("tasks") if isinstance(doc, Mapping) else None) or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        kind = item.get("task_type")
        if kind == PARALLEL:
            branches = item.get("branches") if isinstance(item.get("branches"), Mapping) else {}
            lanes = tuple(Lane(str(name), _body_tasks(body)) for name, body in branches.items())
            label = f"{len(lanes)} branch{'es' if len(lanes) != 1 else ''} side by side"
            shapes[item["name"]] = Control(PARALLEL, label, lanes)
        elif kind == MAP:
            items = item.get("items")
            what = items if isinstance(items, str) else f"{len(items)} items" if isinstance(
                items, list) else "items"  # fmt: skip
            shapes[item["name"]] = Control(MAP, f"map over {what}")
        elif kind == SUBFLOW:
            params = item.get("parameters") if isinstance(item.get("parameters"), Mapping) else {}
            version = params.get("version")
            called = f"calls flow '{params.get('flow_id', '?')}'"
            shapes[item["name"]] = Control(SUBFLOW, called + (f" v{version}" if version else ""))
    return shapes


def _body_tasks(body: Any) -> tuple[tuple[str, str], ...]:
    tasks = body.get("tasks") if isinstance(body, Mapping) else None
    return tuple(
        (str(t.get("name")), str(t.get("task_type") or ""))
        for t in (tasks if isinstance(tasks, list) else [])
        if isinstance(t, Mapping)
    )


def scoped_document(document: Any, scope: list[str] | tuple[str, ...]) -> Any:
    """The part of a document a child execution runs: ``scope`` alternates control task names
    and branch names (``""`` for a map's iterator). The whole document when it is empty or
    does not match (a drawing never raises)."""
    doc = unwrap(document)
    for task_name, branch in zip(scope[::2], scope[1::2], strict=False):
        tasks = doc.get("tasks") if isinstance(doc, Mapping) else None
        found = next(
            (t for t in tasks or [] if isinstance(t, Mapping) and t.get("name") == task_name), None
        )
        if found is None:
            return unwrap(document)
        body = found.get("iterator") if found.get("task_type") == MAP else (
            found.get("branches") or {}).get(branch)  # fmt: skip
        if not isinstance(body, Mapping):
            return unwrap(document)
        doc = body
    return doc


def task_count(document: Any) -> int:
    """How many tasks a document's top level holds (its nodes; branch tasks are lanes)."""
    doc = unwrap(document)
    tasks = doc.get("tasks") if isinstance(doc, Mapping) else None
    return len(tasks) if isinstance(tasks, list) else 0


def layout_document(document: Any) -> Layout:
    """The laid-out graph of a flow document (cached by the document's content)."""
    return _layout_cached(json.dumps(unwrap(document), sort_keys=True, default=str))


@functools.lru_cache(maxsize=256)
def _layout_cached(canonical: str) -> Layout:
    document = json.loads(canonical)
    return compute_layout(definition_for_drawing(document), control_shapes(document))


class _Box:
    """The ``view`` grandalf reads a vertex's size from and writes its centre to."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy = (0.0, 0.0)


def _control_size(control: Control | None) -> tuple[float, float]:
    """A node's size: control nodes have a third line (their children's counts on an
    execution); a parallel task is as wide as its lanes and as tall as its longest."""
    if control is None:
        return NODE_W, NODE_H
    if not control.lanes:
        return NODE_W + 48, NODE_H + 16
    lanes = len(control.lanes)
    longest = max(max(len(lane.tasks) for lane in control.lanes), 1)
    width = max(NODE_W + 48, lanes * LANE_W + (lanes + 1) * LANE_GAP)
    return width, LANES_TOP + _lane_height(longest) + LANE_GAP


def _lane_height(rows: int) -> float:
    return LANE_HEAD - 20 + rows * LANE_ROW


def _placed(control: Control | None, x: float, y: float) -> Control | None:
    """The control with its lanes placed side by side inside the node at (x, y)."""
    if control is None or not control.lanes:
        return control
    longest = max(max(len(lane.tasks) for lane in control.lanes), 1)
    lanes = tuple(
        Lane(
            lane.name,
            lane.tasks,
            x=x + LANE_GAP + i * (LANE_W + LANE_GAP),
            y=y + LANES_TOP,
            w=LANE_W,
            h=_lane_height(longest),
        )
        for i, lane in enumerate(control.lanes)
    )
    return Control(control.kind, control.label, lanes)


def compute_layout(
    definition: FlowDefinition, controls: Mapping[str, Control] | None = None
) -> Layout:
    """Top-to-bottom layered layout: start marker, tasks, one end node."""
    if not definition.tasks:
        return Layout(width=2 * MARGIN, height=2 * MARGIN, nodes=(), edges=())
    controls = controls or {}
    types = {spec.name: spec.task_type for spec in definition.tasks}
    keys = [START_KEY, *types, END_KEY]
    vertices = {key: Vertex(key) for key in keys}
    for key, vertex in vertices.items():
        size = {START_KEY: (START_D, START_D), END_KEY: (END_W, END_H)}.get(key)
        vertex.view = _Box(*(size or _control_size(controls.get(key))))

    links = [(START_KEY, definition.start_task, "start"), *flow_edges(definition)]
    graph_edges: dict[tuple[str, str], Edge] = {}
    for source, target, _ in links:
        if source != target and (source, target) not in graph_edges:
            edge = Edge(vertices[source], vertices[target])
            edge.view = EdgeViewer()
            graph_edges[(source, target)] = edge
    graph = Graph(list(vertices.values()), list(graph_edges.values()))

    # Lay out each connected part (unreachable tasks form their own) and set them side by side.
    offset_x = 0.0
    for component in graph.C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.xspace, sugiyama.yspace = 36, 44
        sugiyama.route_edge = route_with_lines
        roots = [v for v in component.sV if v.data == START_KEY] or [
            v for v in component.sV if not v.e_in()
        ]
        sugiyama.init_all(roots=roots or [component.sV[0]], optimize=True)
        sugiyama.draw(3)
        xs = [v.view.xy[0] - v.view.w / 2 for v in component.sV]
        right = [v.view.xy[0] + v.view.w / 2 for v in component.sV]
        shift = offset_x - min(xs)
        for vertex in component.sV:
            vertex.view.xy = (vertex.view.xy[0] + shift, vertex.view.xy[1])
        for edge in component.sE:
            edge.view._pts = [(x + shift, y) for x, y in edge.view._pts]
        offset_x += max(right) - min(xs) + 60

    min_x = min(v.view.xy[0] - v.view.w / 2 for v in vertices.values())
    min_y = min(v.view.xy[1] - v.view.h / 2 for v in vertices.values())
    dx, dy = MARGIN - min_x, MARGIN - min_y

    nodes = []
    for key, vertex in vertices.items():
        (cx, cy), w, h = vertex.view.xy, vertex.view.w, vertex.view.h
        kind = {START_KEY: "start", END_KEY: "end"}.get(key, "task")
        x, y = cx - w / 2 + dx, cy - h / 2 + dy
        nodes.append(
            Node(
                key=key,
                name={START_KEY: "start", END_KEY: "end"}.get(key, key),
                task_type=types.get(key, ""),
                kind=kind,
                x=x,
                y=y,
                w=w,
                h=h,
                is_start=key == definition.start_task,
                control=_placed(controls.get(key), x, y) if kind == "task" else None,
            )
        )
    by_key = {node.key: node for node in nodes}

    edges = []
    rightmost = max(node.x + node.w for node in nodes)
    for source, target, kind in links:
        if source == target:
            edges.append(_self_loop(by_key[source], kind))
            continue
        edge = graph_edges[(source, target)]
        points = [(x + dx, y + dy) for x, y in edge.view._pts]
        if edge.v[0].data != source:  # grandalf inverted this edge to break a cycle
            points.reverse()
        if (target, source) in graph_edges and source < target:
            points = _nudge(points, 8)  # two edges between the same pair: keep both visible
        edges.append(_edge(source, target, kind, points))
        rightmost = max(rightmost, *(x for x, _ in points), edges[-1].label_x + 44)

    width = rightmost + MARGIN + LOOP_R * 2
    height = max(node.y + node.h for node in nodes) + MARGIN
    return Layout(width=round(width), height=round(height), nodes=tuple(nodes), edges=tuple(edges))


def _edge(source: str, target: str, kind: str, points: list[tuple[float, float]]) -> GraphEdge:
    d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)
    # Label the middle of the edge's middle segment.
    i = max(0, len(points) // 2 - 1)
    (x1, y1), (x2, y2) = points[i], points[min(i + 1, len(points) - 1)]
    return GraphEdge(source, target, kind, d, (x1 + x2) / 2 + 4, (y1 + y2) / 2)


def _nudge(points: list[tuple[float, float]], by: float) -> list[tuple[float, float]]:
    return [(x + by, y) for x, y in points]


def _self_loop(node: Node, kind: str) -> GraphEdge:
    x, top, bottom = node.x + node.w, node.y + 12, node.y + node.h - 12
    d = (
        f"M{x:.1f},{top:.1f} C{x + LOOP_R * 2:.1f},{top - 6:.1f} "
        f"{x + LOOP_R * 2:.1f},{bottom + 6:.1f} {x:.1f},{bottom:.1f}"
    )
    return GraphEdge(node.key, node.key, kind, d, x + LOOP_R * 1.6, node.cy)


def taken_edges(task_names: Iterable[str], *, ended: bool) -> set[tuple[str, str]]:
    """The (source, target) pairs an execution walked, from its steps' task names in order."""
    names = list(task_names)
    pairs = {(START_KEY, names[0])} if names else set()
    pairs.update(itertools.pairwise(names))
    if ended and names:
        pairs.add((names[-1], END_KEY))
    return pairs
