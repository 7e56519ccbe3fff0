"""The typed ``Waiting`` reads and writes ``TaskRun.waiting`` as it was stored: every kind of
wait comes back as the same JSON object, keys and order, so stored rows, the API's
``waiting``/``signal`` blocks and a task's ``context.waiting`` read exactly as before."""

from __future__ import annotations

from typing import Any

import pytest

from flows.waiting import CHILDREN, RESUME, SIGNAL, Waiting

STORED: list[dict[str, Any]] = [
    # WaitForSignal's state, before and after its answer came
    {"kind": "signal", "name": "approve", "timeout_at": None, "prompt": ""},
    {
        "kind": "signal",
        "name": "approve",
        "timeout_at": "2026-12-05T10:00:00+00:00",
        "prompt": "Ship it?",
        "signal": {
            "decision": "approve",
            "payload": {"a": 1},
            "comment": "",
            "by": "ann",
            "at": "x",
        },
    },
    {"kind": "until", "until": "2026-12-05T10:00:00+00:00"},  # WaitUntil
    {"kind": "children", "for": "map"},  # a control step waiting for its children
    {"kind": "children", "for": "parallel", "took_over": 7, "lost": 2},  # redriven, lost
    {"kind": "resume", "children_of": 7},  # a redriven control step's marker
    {"kind": "resume", "children_of": None},
    {"kind": "custom", "mine": [1, 2]},  # a task's own Waiting: its keys kept
    {"mine": 1},  # no kind at all
]


@pytest.mark.parametrize("stored", STORED)
def test_every_stored_wait_comes_back_the_same(stored: dict[str, Any]) -> None:
    back = Waiting.from_json(stored).to_json()  # type: ignore[union-attr]
    assert back == stored
    assert list(back) == list(stored)


def test_fields_are_typed_and_new_waits_write_only_what_is_set() -> None:
    signal = Waiting.from_json(STORED[1])
    assert signal is not None and signal.kind == SIGNAL and signal.received
    assert signal.ends_at == "2026-12-05T10:00:00+00:00" and signal.name == "approve"
    children = Waiting.from_json(STORED[4])
    assert children is not None and children.kind == CHILDREN
    assert (children.children_for, children.took_over, children.lost) == ("parallel", 7, 2)
    assert Waiting(kind=RESUME, children_of=3).to_json() == {"kind": "resume", "children_of": 3}
    answered = Waiting.from_json(STORED[0]).answered({"decision": "reject"})  # type: ignore[union-attr]
    assert answered.to_json() == {**STORED[0], "signal": {"decision": "reject"}}
    assert Waiting.from_json(None) is None and Waiting.from_json({}) is None
