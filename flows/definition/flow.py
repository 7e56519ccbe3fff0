"""A parsed flow, or a branch or map iterator inside one: its tasks in order, their
conditions, and the routing between them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from flows.definition.errors import FieldError
from flows.definition.specs import END, ConditionSpec, TaskSpec
from flows.definition.triggers import FlowTriggerSpec
from flows.expressions import DEFAULT_BUDGET_SECONDS, Expression


@dataclass(frozen=True)
class FlowDefinition:
    id: str
    name: str
    start_task: str
    tasks: tuple[TaskSpec, ...]
    conditions: tuple[ConditionSpec, ...] = ()
    description: str = ""
    max_steps: int = 1000
    timeout_seconds: float | None = None
    warnings: tuple[FieldError, ...] = ()
    # The flow's JSON Schema for its input (checked: inputschema.schema_errors); None: any
    # object. Only on the flow itself, never on a branch or iterator.
    input_schema: dict[str, Any] | None = field(default=None, compare=False)
    # The flows whose ends start this one (triggers.parse_triggers); only on the flow itself.
    on_flow_end: tuple[FlowTriggerSpec, ...] = field(default=(), compare=False)
    # The flow started when an execution of this one fails for good (``on_failure.flow_id``);
    # only on the flow itself.
    on_failure: str | None = None
    # At most this many executions of the flow run at once (per concurrency_key's value);
    # the policy says what happens to one more: "queue", "skip" or "cancel_oldest".
    max_concurrent_executions: int | None = None
    concurrency_policy: str = "queue"
    concurrency_key: Expression | None = field(default=None, compare=False)

    # The engine looks tasks and conditions up once per step: index them once per definition.
    @cached_property
    def _tasks_by_name(self) -> dict[str, tuple[int, TaskSpec]]:
        return {spec.name: (i, spec) for i, spec in enumerate(self.tasks)}

    @cached_property
    def _conditions_by_source(self) -> dict[str, ConditionSpec]:
        return {cond.source_task: cond for cond in self.conditions}

    def task(self, name: str) -> TaskSpec:
        return self._tasks_by_name[name][1]

    def scope(self, path: list[str] | tuple[str, ...]) -> FlowDefinition:
        """The definition a child execution runs: ``path`` alternates a control task's name
        and its branch (``""`` for a map's iterator), from this definition down."""
        current = self
        for i in range(0, len(path) - 1, 2):
            current = current.task(path[i]).body(path[i + 1])
        return current

    def condition_for(self, task_name: str) -> ConditionSpec | None:
        return self._conditions_by_source.get(task_name)

    def route(
        self,
        task_name: str,
        status: str,
        *,
        result: Any = None,
        results: Mapping[str, Any] | None = None,
        input: Any = None,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    ) -> tuple[str | None, str]:
        """Where to go after ``task_name`` ended with ``status`` ('success' or 'failure').

        Returns ``(next task name or None to end, a sentence saying why)``. A condition with
        an ``expression`` is evaluated over the task's result, all results and the input when
        the task succeeded (true: success target, false: failure target); a failed task
        takes the failure target. Raises ExpressionError when the expression fails (or runs past
        ``budget_seconds``: ExpressionBudgetError).
        """
        cond = self.condition_for(task_name)
        if cond is not None:
            label = f"condition '{cond.name}'" if cond.name else "its condition"
            if cond.expression is not None:
                if status == "success":
                    matched = cond.expression.evaluate(
                        result=result,
                        results=results or {},
                        input=input,
                        budget_seconds=budget_seconds,
                    )
                    why = f"{task_name} succeeded; {label} `{cond.expression.source}` is {matched}"
                else:
                    matched = False
                    why = f"{task_name} ended {status}; {label} takes its failure target"
            else:
                matched = status == cond.outcome
                verdict = "matched" if matched else "did not match"
                why = f"{task_name} ended {status}; {label} expects {cond.outcome}: {verdict}"
            target = cond.target_task_success if matched else cond.target_task_failure
            return (None if target == END else target), why
        if status != "success":
            return None, f"{task_name} ended {status} and has no condition: the flow ends"
        index = self._tasks_by_name[task_name][0]
        if index + 1 < len(self.tasks):
            nxt = self.tasks[index + 1].name
            return nxt, f"{task_name} succeeded; no condition, next task in order"
        return None, f"{task_name} succeeded and is the last task: the flow ends"

    def bodies(self, prefix: str = "") -> Iterator[tuple[str, FlowDefinition]]:
        """This definition and every branch and map iterator in it, nested ones too, each
        with the path prefix of its fields (``tasks[2].branches.left.``)."""
        yield prefix, self
        for i, spec in enumerate(self.tasks):
            for branch, body in spec.branches:
                yield from body.bodies(f"{prefix}tasks[{i}].branches.{branch}.")
            if spec.iterator is not None:
                yield from spec.iterator.bodies(f"{prefix}tasks[{i}].iterator.")

    def reachable(self) -> set[str]:
        """Names of the tasks some path from the start task reaches."""
        seen: set[str] = set()
        todo = [self.start_task]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            cond = self.condition_for(name)
            if cond is not None:
                targets = {cond.target_task_success, cond.target_task_failure} - {END}
            else:
                targets = {self.route(name, "success")[0]} - {None}
            todo.extend(t for t in targets if t not in seen)
        return seen
