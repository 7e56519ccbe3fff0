"""A plain task, one a registered task type runs: its name, type, parameters, timeout and
retry policy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from flows.definition.errors import Report
from flows.definition.fields import check_schema, is_name, kind_of, optional_seconds, optional_text
from flows.definition.limits import MAX_ATTEMPTS, MAX_NAME, MAX_RETRY_DELAY
from flows.definition.specs import NO_RETRY, RetryPolicy, TaskSpec

TASK_KEYS = {
    "name",
    "task_type",
    "description",
    "parameters",
    "timeout_seconds",
    "retry",
    "limits",
}
LIMIT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_LIMITS = 5
_RETRY_KEYS = {"max_attempts", "delay_seconds", "backoff", "max_delay_seconds"}


class Lookup(Protocol):
    """The registered task types, as one parse sees them."""

    def get(self, task_type: str) -> Any: ...

    def problem(self, task_type: str) -> str | None: ...


def claim_name(name: Any, path: str, seen: dict[str, int], index: int, err: Report) -> bool:
    """Whether ``name`` names task ``index`` of a body: valid, and no earlier task's name
    (``seen``, which it joins)."""
    if not is_name(name):
        err(f"{path}.name", f"required: a non-empty name of at most {MAX_NAME} characters")
    elif name in seen:
        err(f"{path}.name", f"duplicate task name '{name}' (also tasks[{seen[name]}])")
    else:
        seen[name] = index
        return True
    return False


def parse_task(
    item: Mapping, path: str, registry: Lookup, err: Report, *, seen: dict[str, int], index: int
) -> TaskSpec | None:
    """Task ``index`` of a body. When it is invalid (errors reported) but has a name, a
    stand-in, so conditions pointing at it are not reported twice; None without a name."""
    for key in sorted(set(item) - TASK_KEYS, key=str):
        err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(TASK_KEYS))}")
    name = item.get("name")
    ok = claim_name(name, path, seen, index, err)
    task_type = item.get("task_type")
    type_info = None
    if not isinstance(task_type, str) or not task_type:
        err(f"{path}.task_type", "required: the name of a registered task type")
        ok = False
    else:
        problem = registry.problem(task_type)
        if problem:
            err(f"{path}.task_type", problem)
            ok = False
        else:
            type_info = registry.get(task_type)
    params = item.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        err(f"{path}.parameters", f"must be an object, not {kind_of(params)}")
        ok = False
    elif type_info is not None:
        ok = check_schema(type_info.parameters_schema, params, f"{path}.parameters", err) and ok
    timeout, timeout_ok = optional_seconds(item, "timeout_seconds", f"{path}.timeout_seconds", err)
    ok = ok and timeout_ok
    description = optional_text(item, "description", f"{path}.description", err, 5000)
    retry = _parse_retry(
        item.get("retry", getattr(type_info, "default_retry", None)), f"{path}.retry", err
    )
    limits = parse_limits(
        item.get("limits", getattr(type_info, "default_limits", None)), f"{path}.limits", err
    )
    if ok and retry is not None and limits is not None:
        return TaskSpec(
            limits=limits,
            name=name,
            task_type=task_type,
            parameters=dict(params),
            description=description,
            timeout_seconds=timeout,
            retry=retry,
        )
    if is_name(name):
        return TaskSpec(name=name, task_type=str(task_type))
    return None


def _parse_retry(raw: Any, path: str, err: Report) -> RetryPolicy | None:
    """The task's retry policy; None (with errors reported) when it is invalid."""
    if raw is None:
        return NO_RETRY
    if not isinstance(raw, Mapping):
        err(
            path,
            f"must be an object like {{'max_attempts': 3, 'delay_seconds': 2}}, not {kind_of(raw)}",
        )
        return None
    ok = True
    for key in sorted(set(raw) - _RETRY_KEYS, key=str):
        err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(_RETRY_KEYS))}")
        ok = False
    attempts = raw.get("max_attempts", 1)
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 1 <= attempts <= MAX_ATTEMPTS
    ):
        err(f"{path}.max_attempts", f"must be a whole number from 1 to {MAX_ATTEMPTS}")
        ok = False
    numbers = {}
    for key, default in (("delay_seconds", 0.0), ("max_delay_seconds", 3600.0)):
        value = raw.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= MAX_RETRY_DELAY
        ):
            err(f"{path}.{key}", f"must be a number of seconds from 0 to {MAX_RETRY_DELAY:,g}")
            ok = False
        else:  # only now: float() of a 401-digit integer overflows
            numbers[key] = float(value)
    backoff = raw.get("backoff", "fixed")
    if backoff not in ("fixed", "exponential"):
        err(f"{path}.backoff", "must be 'fixed' or 'exponential'")
        ok = False
    if not ok:
        return None
    return RetryPolicy(
        max_attempts=attempts,
        delay_seconds=numbers["delay_seconds"],
        backoff=backoff,
        max_delay_seconds=numbers["max_delay_seconds"],
    )


def parse_limits(raw: Any, path: str, err: Report) -> tuple[str, ...] | None:
    """A task's named limits: a list of distinct limit names (whether each exists is the
    stored flow's check, services.validate_flow); None (errors reported) when invalid."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        err(path, f"must be a list of limit names, not {kind_of(raw)}")
        return None
    if len(raw) > MAX_LIMITS:
        err(path, f"at most {MAX_LIMITS} limits")
        return None
    ok = True
    for i, name in enumerate(raw):
        if not isinstance(name, str) or not LIMIT_NAME_RE.match(name):
            err(
                f"{path}[{i}]",
                "must be a limit name: 1-100 letters, digits, '_', '-' and '.', starting with "
                "a letter or digit",
            )
            ok = False
        elif name in raw[:i]:
            err(f"{path}[{i}]", f"duplicate limit '{name}'")
            ok = False
    return tuple(raw) if ok else None
