"""What a step waits for (``Waiting``, the typed ``TaskRun.waiting``), and the reads of it and
of a control step's children shared by the API, the operator pages and the engine (no writes:
the engine owns ``TaskRun.waiting`` and ``FanOut``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from flows.definition import CONTROL_TYPES
from flows.models import FanOut, TaskRun, TaskRunStatus

# The kinds of wait. A task's ``WaitUntil`` and ``WaitForSignal`` (tasks/base_task.py, which
# imports no flows) write the first two; a control step waits for its children; a redriven
# control step's marker says it is to take over an earlier attempt's children
# (``flows.engine.redrive``).
UNTIL = "until"
SIGNAL = "signal"
CHILDREN = "children"
RESUME = "resume"
# A step waiting for a slot of a named limit, or for its flow's turn
# (max_concurrent_executions): flows/engine/limits.py, flows/engine/admission.py.
LIMIT = "limit"

# JSON keys that are not a valid or a clear field name.
_KEYS = {"children_for": "for"}


@dataclass(frozen=True)
class Waiting:
    """What a step waits for: the typed ``TaskRun.waiting`` (a JSON object in the database,
    and what a task gets back as ``context.waiting``). ``from_json``/``to_json`` are the one
    place it is converted; the JSON keeps exactly its keys (those set, and any other key a
    task wrote, in ``extra``), so stored rows and the API read as before."""

    kind: str | None
    name: str | None = None  # signal: the signal's name
    prompt: str | None = None  # signal: what the person who answers is asked
    timeout_at: str | None = None  # signal: when it stops waiting (ISO), or None
    until: str | None = None  # until: when it runs again (ISO)
    signal: Any = None  # signal: the answer that came (decision, payload, comment, by, at)
    children_for: str | None = None  # children: parallel, map or subflow ("for")
    took_over: int | None = None  # children: the earlier step whose children it took over
    children_of: int | None = None  # resume: the earlier step whose children it takes over
    lost: int | None = None  # children: times lost with its worker while joining
    limit: str | None = None  # limit: the limit's name ("flow" for the flow's own)
    key: str | None = None  # limit: the key the step waits under
    place: int | None = None  # limit: its place among the waiters when it began waiting
    then: Any = None  # limit: what the step waited for before (restored when it runs)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys a task wrote
    # The JSON keys it was read with, in order: written back as they were, even when null.
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_json(cls, value: Any) -> Waiting | None:
        """The column's value typed, or None when the step waits for nothing (no object)."""
        if not isinstance(value, dict) or not value:
            return None
        taken = {name: value[key] for name, key in _FIELDS.items() if key in value}
        extra = {k: v for k, v in value.items() if k not in _FIELDS.values()}
        taken.setdefault("kind", None)
        return cls(**taken, extra=extra, keys=tuple(value))

    def to_json(self) -> dict[str, Any]:
        """The column's value: the keys it was read with (the same object when nothing
        changed), then any field set since."""
        known = {key: getattr(self, name) for name, key in _FIELDS.items()}
        out: dict[str, Any] = {}
        for key in self.keys:
            out[key] = known[key] if key in known else self.extra.get(key)
        for key, value in known.items():
            if key not in out and value is not None:
                out[key] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @property
    def received(self) -> bool:
        """A signal came (its answer is kept on the step)."""
        return bool(self.signal)

    @property
    def ends_at(self) -> str | None:
        """When the wait ends by itself (ISO): a sleep's time, a signal's timeout, else None."""
        if self.kind == SIGNAL:
            return self.timeout_at
        if self.kind in (UNTIL, LIMIT):
            return self.until
        return None

    def answered(self, answer: dict[str, Any]) -> Waiting:
        """The same wait with the signal's answer kept on it."""
        return replace(self, signal=answer)


# Field name -> JSON key, for every field kept in the JSON.
_FIELDS = {
    f.name: _KEYS.get(f.name, f.name) for f in fields(Waiting) if f.name not in ("extra", "keys")
}


def waiting_of(step: TaskRun) -> dict[str, Any] | None:
    """What ``step`` waits for now: ``{kind, signal, prompt, until, received}``, or None when
    it waits for nothing (it is not open, or runs)."""
    state = Waiting.from_json(step.waiting)
    if step.status != TaskRunStatus.PENDING or state is None:
        return None
    if state.kind == RESUME:
        return None  # a redriven control step about to run: it waits for nothing yet
    return {
        "kind": state.kind,
        "signal": state.name if state.kind == SIGNAL else None,
        "prompt": str(state.prompt or ""),
        "until": state.ends_at,
        "received": state.received,
        "limit": state.limit if state.kind == LIMIT else None,
        "place": state.place if state.kind == LIMIT else None,
    }


def signal_of(step: TaskRun) -> dict[str, Any] | None:
    """The answer a ``wait_for_signal`` step got, kept on it after it ended: ``{name,
    decision, by, at, comment, payload}``, or None (no signal came, or not such a step)."""
    state = Waiting.from_json(step.waiting)
    if state is None or state.kind != SIGNAL:
        return None
    came = state.signal
    if not isinstance(came, dict):
        return None
    return {
        "name": state.name,
        "decision": came.get("decision"),
        "by": came.get("by") or "",
        "at": came.get("at"),
        "comment": came.get("comment") or "",
        "payload": came.get("payload"),
    }


def fanout_of(step: TaskRun) -> FanOut | None:
    """A control step's FanOut (its children's counts), else None.

    Only control steps are looked at; join ``fanout`` to the steps (``select_related``) so
    that this costs no query per step."""
    if step.task_type not in CONTROL_TYPES:
        return None
    try:
        return step.fanout
    except FanOut.DoesNotExist:
        return None  # not started yet, or it failed before fanning out


def children_holders(steps: Iterable[TaskRun]) -> dict[int, TaskRun]:
    """For each step whose children a later step took over, the step that holds them now.

    A redriven control step's new attempt takes the earlier attempt's children over (its
    ``Waiting.took_over`` names that step, ``engine.redrive``); redriven again, the next
    attempt takes them from it, and so on: each chain is followed to its end. ``steps`` are
    the execution's steps (at least those that took children over).
    """
    took_over = {}
    for s in steps:
        state = Waiting.from_json(s.waiting)
        if state is not None and isinstance(state.took_over, int):
            took_over[state.took_over] = s
    holders = {}
    for start in took_over:
        holder, seen = took_over[start], {start}
        while holder.pk in took_over and holder.pk not in seen:  # `seen`: no cycle hangs it
            seen.add(holder.pk)
            holder = took_over[holder.pk]
        holders[start] = holder
    return holders


def children_holder_of(step: TaskRun) -> TaskRun | None:
    """The step that holds ``step``'s children now, after one redrive or several, or None
    while they are its own (one query: its execution's steps that took children over)."""
    redriven = TaskRun.objects.filter(
        execution_id=step.execution_id, waiting__has_key="took_over"
    ).only("id", "seq", "waiting")
    return children_holders(redriven).get(step.pk)
