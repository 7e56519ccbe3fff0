"""A flow's ``on_flow_end``: the other flows whose ends start it (flow triggers).

``"on_flow_end": [{"flow_id": "A", "states": ["COMPLETED"], "condition": "<CEL>"}]`` in flow
B's document starts B when an execution of A ends in one of ``states`` (``COMPLETED`` when
left out) and ``condition`` (CEL over ``result``, A's result, and ``input``, A's input; none
means always) is true. Checked here for its form; that no chain of triggers comes back to the
flow is checked over the stored flows (``services.flows``), as sub-flow cycles are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flows.definition.errors import FieldError, Report
from flows.definition.fields import kind_of
from flows.definition.limits import FLOW_ID_RE
from flows.expressions import Expression, ExpressionError, compile_expression

# The states an execution ends in (models.TERMINAL_STATUSES; no ORM here).
END_STATES = ("COMPLETED", "FAILED", "CANCELLED")
MAX_TRIGGERS = 50
MAX_CONDITION = 2000
_TRIGGER_KEYS = {"flow_id", "states", "condition"}


@dataclass(frozen=True)
class FlowTriggerSpec:
    flow_id: str
    states: tuple[str, ...]
    condition: Expression | None = None

    @property
    def condition_source(self) -> str:
        return self.condition.source if self.condition is not None else ""


def parse_triggers(raw: Any, err: Report) -> tuple[FlowTriggerSpec, ...]:
    """The valid entries of a document's ``on_flow_end``; each problem at its path."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        err("on_flow_end", f"must be a list of flow triggers, not {kind_of(raw)}")
        return ()
    if len(raw) > MAX_TRIGGERS:
        err("on_flow_end", f"at most {MAX_TRIGGERS} flow triggers, not {len(raw)}")
        return ()
    out: list[FlowTriggerSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"on_flow_end[{i}]"
        if not isinstance(item, Mapping):
            err(path, f"must be an object, not {kind_of(item)}")
            continue
        ok = True
        for key in sorted(set(item) - _TRIGGER_KEYS, key=str):
            err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(_TRIGGER_KEYS))}")
            ok = False
        flow_id = item.get("flow_id")
        if not isinstance(flow_id, str) or not FLOW_ID_RE.match(flow_id):
            err(
                f"{path}.flow_id",
                "required: the id of the flow whose end starts this one (1-100 characters, "
                "letters, digits, '-' and '_', starting with a letter or digit)",
            )
            ok = False
        elif flow_id in seen:
            # Two entries would start this flow twice for one end: one entry, one condition
            # (join conditions with ||).
            err(
                f"{path}.flow_id",
                f"flow '{flow_id}' already has a trigger (on_flow_end[{seen[flow_id]}]); "
                "at most one per flow: join the conditions with ||",
            )
            ok = False
        else:
            seen[flow_id] = i
        states = _states(item.get("states", ["COMPLETED"]), f"{path}.states", err)
        if states is None:
            ok = False
        condition: Expression | None = None
        source = item.get("condition")
        if source is not None:
            if not isinstance(source, str) or not source.strip() or len(source) > MAX_CONDITION:
                err(
                    f"{path}.condition",
                    f"must be a CEL expression of at most {MAX_CONDITION} characters",
                )
                ok = False
            else:
                try:
                    condition = compile_expression(source)
                except ExpressionError as exc:
                    err(f"{path}.condition", str(exc))
                    ok = False
        if ok and states is not None:
            out.append(FlowTriggerSpec(flow_id=flow_id, states=states, condition=condition))
    return tuple(out)


def _states(raw: Any, path: str, err: Report) -> tuple[str, ...] | None:
    allowed = ", ".join(END_STATES)
    if not isinstance(raw, list) or not raw:
        err(path, f"must be a non-empty list of end states ({allowed})")
        return None
    states: list[str] = []
    ok = True
    for j, state in enumerate(raw):
        if state not in END_STATES:
            shown = f"'{state}'" if isinstance(state, str) else kind_of(state)
            err(f"{path}[{j}]", f"{shown} is not an end state; one of {allowed}")
            ok = False
        elif state in states:
            err(f"{path}[{j}]", f"'{state}' is listed twice")
            ok = False
        else:
            states.append(state)
    return tuple(states) if ok else None


def trigger_cycles(
    flow_id: str, triggers: tuple[FlowTriggerSpec, ...], downstreams: Callable[[str], list[str]]
) -> list[FieldError]:
    """An error at ``on_flow_end[i]`` for each trigger of flow ``flow_id`` that closes a
    chain: its upstream flow is ``flow_id`` itself, or is started (through any number of
    triggers) by an end of ``flow_id``. ``downstreams(x)``: the flows an end of ``x`` starts,
    as stored now (the current version of every flow).

    Refusing is per stored state. Stored in either order, the flow stored second is the one
    refused: with B stored first (A -> B: B starts on A's end), storing A with a trigger on B
    walks from A, finds B among A's downstreams, and refuses A's ``on_flow_end`` entry. So no
    cycle is ever stored, and the walk needs only the stored edges, not a second look at
    B's document.
    """
    errors: list[FieldError] = []
    reached = _reached_from(flow_id, downstreams)
    for i, spec in enumerate(triggers):
        if spec.flow_id == flow_id:
            errors.append(
                FieldError(
                    f"on_flow_end[{i}].flow_id",
                    f"flow trigger cycle: {flow_id} -> {flow_id} (a flow cannot start on its "
                    "own end)",
                )
            )
        elif spec.flow_id in reached:
            chain = " -> ".join([spec.flow_id, *reached[spec.flow_id]])
            errors.append(
                FieldError(
                    f"on_flow_end[{i}].flow_id",
                    f"flow trigger cycle: {chain} (an end of '{flow_id}' already starts "
                    f"'{spec.flow_id}', whose end would start '{flow_id}' again)",
                )
            )
    return errors


def _reached_from(start: str, downstreams: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """Every flow an end of ``start`` starts, directly or down a chain: each with the chain
    from ``start`` to it (``[start, ..., it]``). Breadth first: the shortest chains."""
    reached: dict[str, list[str]] = {start: [start]}
    todo = [start]
    while todo:
        current = todo.pop(0)
        for nxt in downstreams(current):
            if nxt not in reached:
                reached[nxt] = [*reached[current], nxt]
                todo.append(nxt)
    reached.pop(start)
    return reached
