"""Flow triggers: ``on_flow_end`` in the downstream flow's document starts it when an
execution of the upstream flow ends, once per end (from the ends outbox)."""

from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection

from flows import services
from flows.models import (
    Execution,
    ExecutionEnd,
    ExecutionStatus,
    ExecutionTrigger,
    Flow,
    FlowTrigger,
)
from tests.factories import failing, flow_doc, run_flow, run_to_end, task
from tests.test_web_run_form import page_value
from tests.web_helpers import builder_post, field_block, field_errors

pytestmark = pytest.mark.django_db


def upstream(message: str = "small", *, flow_id: str = "a", fail: bool = False) -> dict:
    tasks = [failing("boom")] if fail else [task("say", "print", message=message)]
    return flow_doc(tasks, flow_id=flow_id)


def downstream(*triggers: dict, flow_id: str = "b", **extra: object) -> dict:
    return flow_doc(
        [task("got", "print", message="${input.status}")],
        flow_id=flow_id,
        on_flow_end=list(triggers),
        **extra,
    )


def refused_fields(document: dict) -> list[tuple[str, str]]:
    with pytest.raises(services.InvalidFlow) as caught:
        services.flow_create(document=document)
    return [(e["field"], e["message"]) for e in caught.value.errors]


def started_by(execution: Execution) -> list[Execution]:
    return list(Execution.objects.filter(triggered_by=execution).order_by("flow_id"))


# -- the document -----------------------------------------------------------------------------
def test_a_valid_trigger_is_stored_beside_the_flow_s_current_version() -> None:
    services.flow_create(document=upstream())
    services.flow_create(document=downstream({"flow_id": "a", "states": ["COMPLETED", "FAILED"]}))
    assert list(FlowTrigger.objects.values_list("upstream_flow_id", "downstream_id", "states")) == [
        ("a", "b", ["COMPLETED", "FAILED"])
    ]
    # The next version replaces them: no trigger left, no row left.
    services.flow_create(document=flow_doc([task("got")], flow_id="b"))
    assert not FlowTrigger.objects.exists()


@pytest.mark.parametrize(
    ("trigger", "field", "says"),
    [
        ({"flow_id": "a", "states": ["DONE"]}, "on_flow_end[0].states[0]", "not an end state"),
        ({"flow_id": "a", "states": []}, "on_flow_end[0].states", "non-empty list"),
        ({"flow_id": "a", "condition": "result.x >"}, "on_flow_end[0].condition", "CEL"),
        ({"flow_id": "a", "condition": 5}, "on_flow_end[0].condition", "CEL expression"),
        (
            {"flow_id": "a", "condition": "[1].all(x, [2].all(y, [3].all(z, true)))"},
            "on_flow_end[0].condition",
            "nested 3 deep",
        ),
        ({"flow_id": "-bad id"}, "on_flow_end[0].flow_id", "letters, digits"),
        ({"states": ["COMPLETED"]}, "on_flow_end[0].flow_id", "required"),
        ({"flow_id": "a", "when": "x"}, "on_flow_end[0].when", "unknown field"),
    ],
)
def test_a_bad_trigger_is_refused_at_its_path(trigger, field, says) -> None:
    errors = refused_fields(downstream(trigger))
    assert [f for f, _ in errors] == [field]
    assert says in errors[0][1]


def test_two_triggers_on_one_flow_are_refused_as_they_would_start_it_twice() -> None:
    errors = refused_fields(downstream({"flow_id": "a"}, {"flow_id": "a", "states": ["FAILED"]}))
    assert errors[0][0] == "on_flow_end[1].flow_id"
    assert "join the conditions with ||" in errors[0][1]


def test_a_trigger_on_a_flow_not_stored_yet_is_kept_with_a_warning() -> None:
    definition = services.validate_flow(downstream({"flow_id": "later"}))
    assert [(w.field, w.message) for w in definition.warnings] == [
        ("on_flow_end[0].flow_id", "no flow 'later' is stored yet: this trigger fires once it is")
    ]


# -- cycles -----------------------------------------------------------------------------------
def test_a_flow_triggered_by_its_own_end_is_refused() -> None:
    errors = refused_fields(downstream({"flow_id": "b"}))
    assert errors == [
        (
            "on_flow_end[0].flow_id",
            "flow trigger cycle: b -> b (a flow cannot start on its own end)",
        )
    ]


def test_closing_a_chain_is_refused_whichever_flow_is_stored_second() -> None:
    # b on a's end, c on b's end: a trigger of a on c's end would close a -> b -> c -> a.
    services.flow_create(document=upstream())
    services.flow_create(document=downstream({"flow_id": "a"}, flow_id="b"))
    services.flow_create(document=downstream({"flow_id": "b"}, flow_id="c"))
    errors = refused_fields(downstream({"flow_id": "c"}, flow_id="a"))
    assert errors == [
        (
            "on_flow_end[0].flow_id",
            "flow trigger cycle: c -> a -> b -> c (an end of 'a' already starts 'c', whose "
            "end would start 'a' again)",
        )
    ]
    # Nothing of the refused version was stored: a still has no trigger.
    assert not FlowTrigger.objects.filter(downstream_id="a").exists()
    # The dry run says the same.
    with pytest.raises(services.InvalidFlow):
        services.validate_flow(downstream({"flow_id": "c"}, flow_id="a"))


def test_a_chain_broken_by_a_new_version_can_then_be_closed_the_other_way() -> None:
    services.flow_create(document=upstream())
    services.flow_create(document=downstream({"flow_id": "a"}, flow_id="b"))
    services.flow_create(document=flow_doc([task("got")], flow_id="b"))  # b drops its trigger
    services.flow_create(document=downstream({"flow_id": "b"}, flow_id="a"))
    assert list(FlowTrigger.objects.values_list("upstream_flow_id", "downstream_id")) == [
        ("b", "a")
    ]


# -- firing -----------------------------------------------------------------------------------
def test_an_end_in_a_chosen_state_starts_the_downstream_flow_with_the_end_as_input() -> None:
    services.flow_create(document=downstream({"flow_id": "a"}))
    a = run_flow(upstream("hello"))
    assert services.handle_ends() == 1

    (b,) = started_by(a)
    assert b.flow_id == "b"
    assert b.trigger == ExecutionTrigger.FLOW
    assert b.input == {
        "flow_id": "a",
        "execution_id": str(a.id),
        "status": "COMPLETED",
        "result": {"message": "hello", "message_printed": "hello"},
    }
    assert run_to_end(b.id).status == ExecutionStatus.COMPLETED
    assert a.events.filter(message__contains=f"started 'b' (execution {b.id})").exists()


def test_an_end_in_another_state_starts_nothing() -> None:
    services.flow_create(document=upstream(fail=True))
    services.flow_create(document=downstream({"flow_id": "a", "states": ["COMPLETED"]}))
    services.flow_create(document=downstream({"flow_id": "a", "states": ["FAILED"]}, flow_id="c"))
    failed = run_flow(upstream(fail=True))
    services.handle_ends()
    assert [e.flow_id for e in started_by(failed)] == ["c"]
    assert started_by(failed)[0].input["status"] == "FAILED"


@pytest.mark.parametrize(("message", "starts"), [("big order", True), ("small", False)])
def test_the_condition_filters_on_the_upstream_result(message, starts) -> None:
    services.flow_create(
        document=downstream(
            {"flow_id": "a", "condition": 'result.message.startsWith("big") && input.n == 1'}
        )
    )
    a = run_flow(upstream(message), input={"n": 1})
    services.handle_ends()
    assert len(started_by(a)) == (1 if starts else 0)


def test_a_condition_that_fails_is_logged_on_the_upstream_execution_and_starts_nothing() -> None:
    services.flow_create(document=downstream({"flow_id": "a", "condition": "result.missing"}))
    a = run_flow(upstream())
    assert services.handle_ends() == 1
    assert started_by(a) == []
    warning = a.events.get(level="WARNING", message__startswith="flow trigger of 'b'")
    assert "not started" in warning.message
    assert not ExecutionEnd.objects.exists()  # not retried: it would fail again


def test_an_input_the_downstream_schema_refuses_is_logged_and_does_not_block_others() -> None:
    schema = {
        "type": "object",
        "properties": {"result": {"type": "object", "required": ["total"]}},
    }
    services.flow_create(document=downstream({"flow_id": "a"}, input_schema=schema))
    services.flow_create(document=downstream({"flow_id": "a"}, flow_id="c"))
    a = run_flow(upstream())
    assert services.handle_ends() == 1

    assert [e.flow_id for e in started_by(a)] == ["c"]
    warning = a.events.get(level="WARNING")
    assert warning.message.startswith("flow trigger of 'b' refused: the input does not match")
    assert "/result/total" in warning.message
    assert not ExecutionEnd.objects.exists()


def test_the_downstream_flow_s_current_version_is_started() -> None:
    services.flow_create(document=downstream({"flow_id": "a"}))
    services.flow_create(document=downstream({"flow_id": "a"}, description="second version"))
    a = run_flow(upstream())
    services.handle_ends()
    assert started_by(a)[0].flow_version.version == 2


# -- exactly once -----------------------------------------------------------------------------
def test_each_end_starts_the_downstream_flow_once_however_often_ends_are_handled() -> None:
    services.flow_create(document=downstream({"flow_id": "a"}))
    ends = [run_flow(upstream()) for _ in range(3)]
    assert services.handle_ends() == 3
    assert services.handle_ends() == 0
    assert [len(started_by(a)) for a in ends] == [1, 1, 1]


def test_a_second_handling_of_one_end_starts_nothing_more() -> None:
    # As if the outbox row came back (a restored backup, a bug): the unique index holds.
    services.flow_create(document=downstream({"flow_id": "a"}))
    a = run_flow(upstream())
    row = ExecutionEnd.objects.values("execution_id", "flow_id", "status", "ended_at").get()
    services.handle_ends()
    ExecutionEnd.objects.create(**row)
    assert services.handle_ends() == 1
    assert len(started_by(a)) == 1


@pytest.mark.django_db(transaction=True)
def test_handlers_running_at_once_start_the_downstream_flow_once_per_end() -> None:
    services.flow_create(document=downstream({"flow_id": "a"}))
    ends = [run_flow(upstream()) for _ in range(20)]
    handled: list[int] = []

    def worker() -> None:
        try:
            handled.append(services.handle_ends())
        except OperationalError:  # SQLite's test database, locked by another thread
            assert connection.vendor == "sqlite"
        finally:
            connection.close()  # this thread's own

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while services.handle_ends():  # SQLite: a thread that found the database locked
        pass
    assert not ExecutionEnd.objects.exists()
    assert sorted(len(started_by(a)) for a in ends) == [1] * 20


# -- pages ------------------------------------------------------------------------------------
def test_the_pages_show_the_triggers_and_the_chain_to_follow(client, alice) -> None:
    client.force_login(alice)
    services.flow_create(document=upstream())
    services.flow_create(document=downstream({"flow_id": "a", "condition": "true"}))
    a_page = client.get("/flows/a/").content.decode()
    assert 'Its end starts <a href="/flows/b/">b</a> (COMPLETED, <code>true</code>)' in a_page
    b_page = client.get("/flows/b/").content.decode()
    assert 'Starts when <a href="/flows/a/">a</a> ends COMPLETED and <code>true</code>' in b_page

    a = run_flow(upstream())
    services.handle_ends()
    (b,) = started_by(a)
    execution_page = client.get(f"/executions/{b.id}/").content.decode()
    assert f'by the end of <a href="/executions/{a.id}/">{str(a.id)[:8]}</a>' in execution_page


def test_the_api_follows_the_chain_both_ways(api) -> None:
    services.flow_create(document=downstream({"flow_id": "a"}))
    a = run_flow(upstream())
    services.handle_ends()
    (b,) = started_by(a)

    assert api.get(f"/api/executions/{b.id}/").json()["triggered_by"] == str(a.id)
    listed = api.get("/api/executions/", {"triggered_by": str(a.id)}).json()
    assert [row["id"] for row in listed["results"]] == [str(b.id)]


# -- the builder ------------------------------------------------------------------------------
def test_the_builder_keeps_the_triggers_on_a_save_from_its_form(client, alice) -> None:
    client.force_login(alice)
    services.flow_create(document=upstream())
    services.flow_create(document=downstream({"flow_id": "a", "states": ["FAILED"]}))
    page = client.get("/flows/b/edit").content.decode()
    assert "&quot;FAILED&quot;" in field_block(page, "id_on_flow_end")

    rows = [{"name": "got", "task_type": "print", "param_message": "again"}]
    data = builder_post({"on_flow_end": page_value(page, "id_on_flow_end")}, rows, initial=1)
    assert client.post("/flows/b/edit", data).status_code == 302
    assert list(FlowTrigger.objects.values_list("upstream_flow_id", "states")) == [
        ("a", ["FAILED"])
    ]
    assert Flow.objects.get(pk="b").version == 2


def test_a_trigger_cycle_from_the_builder_is_shown_at_its_field(client, alice) -> None:
    client.force_login(alice)
    rows = [{"name": "x", "task_type": "noop"}]
    cycle = '[{"flow_id": "self"}]'
    response = client.post("/flows/new", builder_post({"id": "self", "on_flow_end": cycle}, rows))
    assert response.status_code == 400
    errors = field_errors(response.content.decode(), "id_on_flow_end")
    assert errors == [
        "[0].flow_id: flow trigger cycle: self -&gt; self (a flow cannot start on its own end)"
    ]
    assert not Flow.objects.exists()
