"""Lay a flow out as a graph (grandalf's Sugiyama layout) for server-rendered SVG.

Edges come from ``FlowDefinition.route``, the engine's own routing, so the picture can never
disagree with what runs. A stored document is drawn even when it no longer validates (a task
type has disappeared): drawing needs only the names and the conditions, not the registry.
Layouts depend only on the document, so they are cached per process.
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

from flows.definition import END, ConditionSpec, FlowDefinition, TaskSpec, unwrap

NODE_W, NODE_H = 184, 48
END_W, END_H = 72, 32
START_D = 16
MARGIN = 24
LOOP_R = 18  # radius of a task's edge to itself
# Node keys that cannot clash with a task name (a task may be called "end").
END_KEY, START_KEY = "\x00end", "\x00start"


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

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def short_name(self) -> str:
        return self.name if len(self.name) <= 22 else self.name[:21] + "…"


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


def layout_document(document: Any) -> Layout:
    """The laid-out graph of a flow document (cached by the document's content)."""
    return _layout_cached(json.dumps(unwrap(document), sort_keys=True, default=str))


@functools.lru_cache(maxsize=256)
def _layout_cached(canonical: str) -> Layout:
    return compute_layout(definition_for_drawing(json.loads(canonical)))


class _Box:
    """The ``view`` grandalf reads a vertex's size from and writes its centre to."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy = (0.0, 0.0)


def compute_layout(definition: FlowDefinition) -> Layout:
    """Top-to-bottom layered layout: start marker, tasks, one end node."""
    if not definition.tasks:
        return Layout(width=2 * MARGIN, height=2 * MARGIN, nodes=(), edges=())
    types = {spec.name: spec.task_type for spec in definition.tasks}
    keys = [START_KEY, *types, END_KEY]
    vertices = {key: Vertex(key) for key in keys}
    for key, vertex in vertices.items():
        size = {START_KEY: (START_D, START_D), END_KEY: (END_W, END_H)}.get(key, (NODE_W, NODE_H))
        vertex.view = _Box(*size)

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
        nodes.append(
            Node(
                key=key,
                name={START_KEY: "start", END_KEY: "end"}.get(key, key),
                task_type=types.get(key, ""),
                kind=kind,
                x=cx - w / 2 + dx,
                y=cy - h / 2 + dy,
                w=w,
                h=h,
                is_start=key == definition.start_task,
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
