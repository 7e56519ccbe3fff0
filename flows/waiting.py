"""Reads of what an open step waits for and of a control step's children, shared by the API
and the operator pages (no writes: the engine owns ``TaskRun.waiting`` and ``FanOut``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flows.definition import CONTROL_TYPES
from flows.models import FanOut, TaskRun, TaskRunStatus

# A redriven control step's marker in ``TaskRun.waiting``: it is to take over the children of
# an earlier attempt (written by ``flows.engine.redrive``).
RESUME = "resume"


def waiting_of(step: TaskRun) -> dict[str, Any] | None:
    """What ``step`` waits for now: ``{kind, signal, prompt, until, received}``, or None when
    it waits for nothing (it is not open, or runs)."""
    state = step.waiting
    if step.status != TaskRunStatus.PENDING or not isinstance(state, dict):
        return None
    kind = state.get("kind")
    if kind == RESUME:
        return None  # a redriven control step about to run: it waits for nothing yet
    if kind == "signal":
        until = state.get("timeout_at")
    elif kind == "until":
        until = state.get("until")
    else:
        until = None
    return {
        "kind": kind,
        "signal": state.get("name") if kind == "signal" else None,
        "prompt": str(state.get("prompt") or ""),
        "until": until,
        "received": bool(state.get("signal")),
    }


def signal_of(step: TaskRun) -> dict[str, Any] | None:
    """The answer a ``wait_for_signal`` step got, kept on it after it ended: ``{name,
    decision, by, at, comment, payload}``, or None (no signal came, or not such a step)."""
    state = step.waiting
    if not isinstance(state, dict) or state.get("kind") != "signal":
        return None
    came = state.get("signal")
    if not isinstance(came, dict):
        return None
    return {
        "name": state.get("name"),
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
    ``waiting["took_over"]`` names that step, ``engine.redrive``); redriven again, the next
    attempt takes them from it, and so on: each chain is followed to its end. ``steps`` are
    the execution's steps (at least those that took children over).
    """
    took_over = {
        s.waiting["took_over"]: s
        for s in steps
        if isinstance(s.waiting, dict) and isinstance(s.waiting.get("took_over"), int)
    }
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
