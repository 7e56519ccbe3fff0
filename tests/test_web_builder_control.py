"""The builder and flows with parallel, map and sub-flow tasks, and the fields of the
durable-wait task types."""

from __future__ import annotations

import json
import re

import pytest

from flows.models import FlowVersion
from tests.factories import cond, flow_doc, mapped, parallel, task
from tests.web_helpers import stored

pytestmark = pytest.mark.django_db

FANNED = flow_doc(
    [
        task("first"),
        parallel("both", {"left": [task("l1"), task("l2")], "right": [task("r1")]}),
        mapped("each", "${input.orders}", [task("say", "print", message="${item}")]),
        task("after"),
    ],
    [cond("both", "success", "each", "after")],
    flow_id="fanned",
)


@pytest.fixture
def editor(client, alice):
    client.force_login(alice)
    return client


def test_the_json_tab_saves_a_flow_with_parallel_and_map_tasks(editor):
    response = editor.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(FANNED)}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert FlowVersion.objects.get(flow_id="fanned").definition == FANNED


def test_the_json_tab_shows_errors_inside_branches_with_their_paths(editor):
    broken = json.loads(json.dumps(FANNED))
    broken["tasks"][1]["branches"]["left"]["tasks"][1]["task_type"] = "nope"
    del broken["tasks"][2]["iterator"]

    response = editor.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(broken)}
    )

    html = response.content.decode()
    assert response.status_code == 400
    assert "<code>tasks[1].branches.left.tasks[1].task_type</code>" in html
    assert "<code>tasks[2].iterator</code>" in html


def test_the_form_view_shows_control_tasks_read_only_with_a_note(editor):
    stored(FANNED)

    html = editor.get("/flows/fanned/edit").content.decode()

    assert html.count("edit it in the JSON tab") == 2
    assert "branches: left (2 tasks), right (1 task)" in html
    assert "over ${input.orders}, each item runs: say" in html
    assert 'id="id_tasks-1-param_' not in html  # no parameter fields for the parallel task
    assert 'id="id_tasks-1-outcome"' in html  # its condition can still be changed


def test_saving_from_the_form_view_keeps_control_tasks_whole(editor):
    stored(FANNED)
    html = editor.get("/flows/fanned/edit").content.decode()
    data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
    data = {k: v.replace("&quot;", '"').replace("&#x27;", "'") for k, v in data.items()}
    for i, (name, outcome) in enumerate([("first", ""), ("both", "success"), ("each", ""),
                                         ("after", "")]):  # fmt: skip
        data.setdefault(f"tasks-{i}-name", name)
        data[f"tasks-{i}-ORDER"] = str(i + 1)
        data[f"tasks-{i}-outcome"] = outcome
    data.update({"tasks-0-task_type": "noop", "tasks-3-task_type": "noop", "id": "fanned"})
    data.update({"tasks-1-target_task_success": "after", "tasks-1-target_task_failure": "end"})
    data.update({"mode": "builder", "action": "save", "name": "Fanned"})

    response = editor.post("/flows/fanned/edit", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    saved = FlowVersion.objects.get(flow_id="fanned", version=2).definition
    assert saved["tasks"][1] == FANNED["tasks"][1]
    assert saved["tasks"][2] == FANNED["tasks"][2]
    assert saved["conditions"] == [cond("both", "success", "after", "end")]


@pytest.mark.parametrize(
    ("task_type", "fields"),
    [("sleep", ["seconds", "until"]), ("wait_for_signal", ["signal", "prompt", "timeout_seconds"])],
)
def test_the_durable_wait_types_get_fields_from_their_schemas(editor, task_type, fields):
    html = editor.get(f"/flows/builder/task-fields?prefix=tasks-0&type={task_type}").content
    html = html.decode()

    for name in fields:
        assert f'name="tasks-0-param_{name}"' in html


def test_a_wait_for_signal_task_is_saved_from_the_form_view(editor):
    from tests.web_helpers import builder_post

    row = {"name": "approve", "task_type": "wait_for_signal", "param_signal": "deploy",
           "param_prompt": "Ship it?", "param_timeout_seconds": "3600"}  # fmt: skip

    response = editor.post("/flows/new", builder_post({"id": "gate", "name": "Gate"}, [row]))

    assert response.status_code == 302, response.content.decode()[:2000]
    assert FlowVersion.objects.get(flow_id="gate").definition["tasks"][0]["parameters"] == {
        "signal": "deploy",
        "prompt": "Ship it?",
        "timeout_seconds": 3600,
    }


ITEM_INPUT = flow_doc(
    [
        mapped(
            "each",
            "${input.orders}",
            [task("say", "print", message="${input.n}: ${input.order.id}")],
            parameters={"order": "${item}", "n": "${item_index}"},
        )
    ],
    flow_id="item_input",
)


def test_the_json_tab_saves_a_map_whose_parameters_use_its_item(editor):
    response = editor.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(ITEM_INPUT)}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert FlowVersion.objects.get(flow_id="item_input").definition == ITEM_INPUT


def test_the_form_view_says_what_each_map_item_gets_as_its_input(editor):
    stored(ITEM_INPUT)

    html = editor.get("/flows/item_input/edit").content.decode()

    # (in either key order: PostgreSQL's jsonb keeps its own)
    assert "each item runs: say, with input {" in html
    assert "&quot;order&quot;: &quot;${item}&quot;" in html
    assert "&quot;n&quot;: &quot;${item_index}&quot;" in html


def test_the_json_tab_says_where_item_index_is_known(editor):
    broken = json.loads(json.dumps(ITEM_INPUT))
    broken["tasks"][0]["iterator"]["tasks"][0]["parameters"]["message"] = "${item_index}"

    response = editor.post(
        "/flows/new", {"mode": "json", "action": "save", "document": json.dumps(broken)}
    )

    html = response.content.decode()
    assert response.status_code == 400
    assert "<code>tasks[0].iterator.tasks[0].parameters.message</code>" in html
    assert "is only known in a map&#x27;s parameters" in html
