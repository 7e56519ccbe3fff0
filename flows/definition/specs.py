"""One task of a flow and the condition that follows it, as parsed: plain typed objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flows.expressions import Expression

if TYPE_CHECKING:
    from flows.definition.flow import FlowDefinition

# A condition's target that ends the flow instead of naming a task.
END = "end"

# Kinds the engine itself runs (no plugin): each starts child executions and waits for them.
PARALLEL, MAP, SUBFLOW = "parallel", "map", "subflow"
CONTROL_TYPES = (PARALLEL, MAP, SUBFLOW)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed task is tried again, and how long each retry waits."""

    max_attempts: int = 1
    delay_seconds: float = 0.0
    backoff: str = "fixed"  # or "exponential": delay doubles with each attempt
    max_delay_seconds: float = 3600.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (2 for the first retry)."""
        delay = self.delay_seconds
        if self.backoff == "exponential":
            delay = self.delay_seconds * (2 ** max(0, attempt - 2))
        return min(delay, self.max_delay_seconds)


NO_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Tolerance:
    """How many failed map items a map task tolerates: a count, or a percentage of items."""

    count: int | None = None
    percent: float | None = None

    def allows(self, failed: int, total: int) -> bool:
        if self.percent is not None:
            return failed * 100 <= self.percent * total
        return failed <= (self.count or 0)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    task_type: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    timeout_seconds: float | None = None
    retry: RetryPolicy = NO_RETRY
    # parallel: (branch name, its tasks and conditions) in document order.
    branches: tuple[tuple[str, FlowDefinition], ...] = ()
    fail_fast: bool = True
    # map: the list to run `iterator` over (a ${...} reference or a literal list).
    items: Any = None
    iterator: FlowDefinition | None = None
    max_concurrency: int | None = None
    tolerated_failures: Tolerance = field(default_factory=Tolerance)
    # The named limits (ConcurrencyLimit) the step takes a slot of: the task's "limits", else
    # its type's default_limits. Checked against the stored limits by services.validate_flow.
    limits: tuple[str, ...] = ()

    @property
    def is_control(self) -> bool:
        return self.task_type in CONTROL_TYPES

    def body(self, key: str) -> FlowDefinition:
        """The tasks a child execution of this task runs: a branch by name, or the map's
        iterator (key ``""``)."""
        if self.task_type == MAP and self.iterator is not None and not key:
            return self.iterator
        for name, body in self.branches:
            if name == key:
                return body
        raise KeyError(f"task '{self.name}' has no branch '{key}'")


@dataclass(frozen=True)
class ConditionSpec:
    source_task: str
    outcome: str
    target_task_success: str
    target_task_failure: str
    name: str = ""
    description: str = ""
    expression: Expression | None = field(default=None, compare=False)
