"""The flow graph: edges follow the engine's routing, laid out by grandalf, drawn as SVG."""

from __future__ import annotations

import pytest

from flows.web.graph import END_KEY, START_KEY, compute_layout, definition_for_drawing, flow_edges
from flows.web.presenters import graph_view
from tests.factories import cond, flow_doc, sample_flow, task


def _edges(document):
    return set(flow_edges(definition_for_drawing(document)))


def test_edges_follow_the_routing_rules():
    doc = flow_doc(
        [task("a"), task("b"), task("c"), task("d")],
        [cond("a", "failure", "d", "b"), cond("d", "success", "end", "end")],
    )
    # a's condition expects *failure*: its "success" target is taken when a fails.
    assert _edges(doc) == {
        ("a", "b", "success"),
        ("a", "d", "failure"),
        ("b", "c", "success"),  # no condition: next task in order
        ("c", "d", "success"),
        ("d", END_KEY, "always"),
    }


def test_a_task_named_end_is_not_the_end_node():
    doc = flow_doc([task("end"), task("b")], [cond("end", "success", "b", "end")])
    assert _edges(doc) == {
        ("end", "b", "success"),
        ("end", END_KEY, "failure"),
        ("b", END_KEY, "success"),
    }


def test_every_task_gets_a_box_and_loops_and_unreachable_tasks_are_drawn():
    doc = flow_doc(
        [task("a"), task("retry"), task("island")],
        [cond("a", "success", "end", "retry"), cond("retry", "success", "end", "retry")],
    )
    layout = compute_layout(definition_for_drawing(doc))
    boxes = {n.key: n for n in layout.nodes}
    assert set(boxes) == {START_KEY, "a", "retry", "island", END_KEY}
    assert boxes["a"].is_start and not boxes["retry"].is_start
    assert ("retry", "retry", "failure") in {(e.source, e.target, e.kind) for e in layout.edges}
    for node in layout.nodes:  # inside the picture, no two boxes overlap
        assert node.x >= 0 and node.x + node.w <= layout.width
        assert node.y >= 0 and node.y + node.h <= layout.height
    tasks = [n for n in layout.nodes if n.kind == "task"]
    for i, p in enumerate(tasks):
        for q in tasks[i + 1 :]:
            assert p.x + p.w <= q.x or q.x + q.w <= p.x or p.y + p.h <= q.y or q.y + q.h <= p.y


def test_thirty_tasks_with_branches_lay_out_without_overlap():
    tasks = [task(f"step_{i:02d}") for i in range(30)]
    conditions = [
        cond(f"step_{i:02d}", "success", f"step_{i + 1:02d}", "end") for i in range(0, 29, 3)
    ]
    layout = compute_layout(definition_for_drawing(flow_doc(tasks, conditions)))
    boxes = [(n.x, n.y) for n in layout.nodes if n.kind == "task"]
    assert len(set(boxes)) == 30


def test_the_svg_marks_start_end_and_the_two_kinds_of_edge(client, alice):
    view = graph_view(sample_flow())
    from django.template.loader import render_to_string

    svg = render_to_string("flows/_graph.html", {"graph": view})
    assert svg.count('class="node node-task') == 3
    assert 'class="node node-end"' in svg and 'class="node node-start"' in svg
    assert "is-start" in svg
    assert 'class="edge edge-success' in svg and 'class="edge edge-failure' in svg
    assert 'marker-end="url(#arrow-failure)"' in svg


@pytest.mark.parametrize("document", [{}, {"tasks": "nope"}])
def test_a_document_without_tasks_draws_an_empty_graph(document):
    layout = compute_layout(definition_for_drawing(document))

    assert (layout.nodes, layout.edges) == ((), ())


def test_a_malformed_condition_is_left_out_and_its_task_still_drawn():
    layout = compute_layout(definition_for_drawing({"tasks": [{"name": "a"}], "conditions": [1]}))

    assert [node.key for node in layout.nodes] == [START_KEY, "a", END_KEY]
    # No usable condition: "a" goes on to the end on success, as the routing rules say.
    assert [(e.source, e.target, e.kind) for e in layout.edges] == [
        (START_KEY, "a", "start"),
        ("a", END_KEY, "success"),
    ]
