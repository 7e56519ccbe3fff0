"""The contract every task plugin fulfils.

A module ``tasks/task_<task_type>.py`` holds ``class <TaskType>Task(BaseTask)`` (``fetch_data``
-> ``FetchDataTask``). The engine builds it as ``Task(name=..., parameters=...)``, sets
``task.context`` and awaits ``task.run()``. Returning a dict is success; raising is failure
(raise :class:`PermanentTaskError` for a failure no retry will fix).

Optional class attributes describe the type: ``description`` (else the docstring),
``parameters_schema`` (a JSON Schema object the flow's parameters must match) and
``default_timeout`` (seconds) and ``default_retry`` (a retry policy, as in a flow's task:
``{"max_attempts": 3, "delay_seconds": 2, "backoff": "exponential"}``) and ``default_limits``
(names of concurrency limits its steps take unless a flow's task lists its own ``limits``).
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

_forward = logging.getLogger("tasks")


class PermanentTaskError(Exception):
    """A failure that retrying will not fix (bad input, a 4xx answer, ...)."""


class Waiting(Exception):
    """Raised by ``run()`` to wait in the database, holding no worker, and run again later.

    The step stays open (PENDING) and its worker moves on; what the task was waiting for
    comes back in ``self.context.waiting`` when it runs again. A durable wait, not a sleep.
    """

    def __init__(self, state: dict[str, Any], until: datetime | None) -> None:
        super().__init__(state)
        self.state = state
        self.until = until


class WaitUntil(Waiting):
    """Run this task again at ``until`` (an aware datetime)."""

    def __init__(self, until: datetime) -> None:
        super().__init__({"kind": "until", "until": until.isoformat()}, until)


class WaitForSignal(Waiting):
    """Run this task again when signal ``name`` arrives for the execution (the API's
    ``POST /api/executions/{id}/signal/`` or the execution page's Approve/Reject), or at
    ``timeout_at`` if that comes first; ``context.waiting["signal"]`` then holds what came."""

    def __init__(self, name: str, *, timeout_at: datetime | None = None, prompt: str = "") -> None:
        state = {
            "kind": "signal",
            "name": name,
            "timeout_at": timeout_at.isoformat() if timeout_at else None,
            "prompt": prompt,
        }
        super().__init__(state, timeout_at)


class TaskLogger:
    """Collects a task's log lines so the engine stores them as the execution's events.

    Every line also goes to the ``tasks`` logger (stderr) with the execution id.
    """

    def __init__(self, execution_id: str = "", task_name: str = "") -> None:
        self.execution_id = execution_id
        self.task_name = task_name
        self.lines: list[tuple[str, str]] = []
        # Set by the engine when the task uses secrets: hides their values in every line,
        # before it is kept or forwarded.
        self.mask: Callable[[str], str] | None = None

    def log(self, level: int, message: str, *args: Any) -> None:
        text = message % args if args else str(message)
        # A NUL or a lone surrogate is stored escaped: no database column holds either, and
        # storing the line must never fail the step.
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
        if self.mask is not None:
            text = self.mask(text)
        self.lines.append((logging.getLevelName(level), text))
        _forward.log(level, "execution=%s task=%s %s", self.execution_id, self.task_name, text)

    def debug(self, message: str, *args: Any) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args: Any) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: Any) -> None:
        self.log(logging.ERROR, message, *args)


class Results(Mapping[str, Any]):
    """Earlier results as a task reads them: a read-only mapping whose every value is a fresh
    deep copy, so a task may change what it read without changing what its flow routes on.
    Copies are made on reading, so a task that reads none costs nothing (a step of a long
    flow would otherwise copy every earlier result before it starts)."""

    def __init__(self, results: Mapping[str, Any] | None = None) -> None:
        self._results = results if results is not None else {}

    def __getitem__(self, name: str) -> Any:
        return copy.deepcopy(self._results[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"Results({dict(self)!r})"


@dataclass
class TaskContext:
    """What a running task may read about its execution."""

    execution_id: str = ""
    #: Results of the tasks that already succeeded in this execution, by task name (read-only;
    #: each value read is the task's own copy).
    results: Mapping[str, Any] = field(default_factory=Results)
    #: The execution's input object.
    input: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    logger: TaskLogger = field(default_factory=TaskLogger)
    #: What this step last waited for (the state of the ``Waiting`` it raised, plus
    #: ``"signal"`` once a signal arrived); None the first time the step runs.
    waiting: dict[str, Any] | None = None


class BaseTask(ABC):
    """Base class of every task type (the seed's contract, kept)."""

    description: ClassVar[str] = ""
    parameters_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    default_timeout: ClassVar[float | None] = None
    default_retry: ClassVar[dict[str, Any] | None] = None
    # Named concurrency limits every task of this type takes unless the flow's task lists its
    # own "limits" (e.g. ["partner_api"]); defined with /api/limits/.
    default_limits: ClassVar[list[str] | None] = None

    def __init__(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.context = TaskContext()

    @abstractmethod
    async def run(self) -> dict[str, Any]:
        """Do the work; return a JSON-serialisable dict, or raise to fail the step."""
