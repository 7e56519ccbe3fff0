"""What in a body names another of its tasks: the conditions between tasks, and the
``${...}`` references in task parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.definition.errors import Report
from flows.definition.fields import kind_of, listing, optional_text
from flows.definition.specs import CONTROL_TYPES, END, MAP, ConditionSpec
from flows.expressions import (
    SECRETS,
    Expression,
    ExpressionError,
    Reference,
    ResolveError,
    compile_expression,
    references_in,
)

OUTCOMES = ("success", "failure")
_CONDITION_KEYS = {
    "name",
    "description",
    "source_task",
    "outcome",
    "target_task_success",
    "target_task_failure",
    "expression",
}


def parse_conditions(
    raw: Any, known: set[str], names: list[str], err: Report, *, prefix: str
) -> list[ConditionSpec]:
    """The valid conditions of a body whose tasks are ``names`` (``known`` as a set)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        err(f"{prefix}conditions", f"must be a list of conditions, not {kind_of(raw)}")
        return []
    out: list[ConditionSpec] = []
    sources: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = f"{prefix}conditions[{i}]"
        if not isinstance(item, Mapping):
            err(path, f"must be an object, not {kind_of(item)}")
            continue
        for key in sorted(set(item) - _CONDITION_KEYS, key=str):
            err(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(_CONDITION_KEYS))}")
        ok = True
        source = item.get("source_task")
        if not isinstance(source, str) or not source:
            err(f"{path}.source_task", "required: the name of the task this condition follows")
            ok = False
        elif source not in known:
            err(f"{path}.source_task", f"'{source}' is not one of the tasks ({listing(names)})")
            ok = False
        elif source in sources:
            err(
                f"{path}.source_task",
                f"task '{source}' already has a condition (conditions[{sources[source]}]); "
                "at most one condition per task",
            )
            ok = False
        else:
            sources[source] = i
        expression: Expression | None = None
        source_text = item.get("expression")
        if source_text is not None:
            if (
                not isinstance(source_text, str)
                or not source_text.strip()
                or len(source_text) > 2000
            ):
                err(f"{path}.expression", "must be a CEL expression of at most 2000 characters")
                ok = False
            else:
                try:
                    expression = compile_expression(source_text)
                except ExpressionError as exc:
                    err(f"{path}.expression", str(exc))
                    ok = False
        # With an expression the outcome is implied (the task must succeed first).
        outcome = item.get("outcome", "success" if source_text is not None else None)
        if outcome not in OUTCOMES:
            err(f"{path}.outcome", "must be 'success' or 'failure'")
            ok = False
        elif source_text is not None and outcome != "success":
            err(f"{path}.outcome", "with an expression, leave outcome out (or 'success')")
            ok = False
        targets = {}
        for key in ("target_task_success", "target_task_failure"):
            target = item.get(key)
            if not isinstance(target, str) or not target:
                err(f"{path}.{key}", "required: a task name or 'end'")
                ok = False
            elif target != END and target not in known:
                err(f"{path}.{key}", f"'{target}' is not one of the tasks or 'end'")
                ok = False
            targets[key] = target
        cname = optional_text(item, "name", f"{path}.name", err, 200, single_line=True)
        description = optional_text(item, "description", f"{path}.description", err, 5000)
        if ok:
            out.append(
                ConditionSpec(
                    source_task=source,
                    outcome=outcome,
                    target_task_success=targets["target_task_success"],
                    target_task_failure=targets["target_task_failure"],
                    name=cname,
                    description=description,
                    expression=expression,
                )
            )
    return out


def check_references(
    raw_tasks: Any, known: set[str], err: Report, *, prefix: str, in_map: bool
) -> None:
    """Parameters may only refer to tasks of this flow (or branch), in the ${...} syntax;
    ``${item}`` only inside a map's iterator or in a map's own parameters (resolved per
    item), ``${item_index}`` only in a map's own parameters."""
    if not isinstance(raw_tasks, list):
        return
    for i, item in enumerate(raw_tasks):
        if not isinstance(item, Mapping):
            continue
        is_map = item.get("task_type") == MAP
        runs_code = item.get("task_type") not in CONTROL_TYPES
        # (field, value, ${item} known, ${item_index} known): a map's items are resolved in
        # its parent's scope, its parameters once per item.
        fields = [("parameters", item.get("parameters"), in_map or is_map, is_map)]
        if is_map:
            fields.append(("items", item.get("items"), in_map, False))
        for key, value, item_known, index_known in fields:
            for sub, ref in references_in(value) if value is not None else ():
                where = f"{prefix}tasks[{i}].{key}{sub}"
                _check_reference(where, ref, known, err, item_known, index_known)
                if runs_code or isinstance(ref, ResolveError) or ref.root != SECRETS:
                    continue
                err(
                    where,
                    f"'${{{ref.text}}}': a secret is resolved only for the task that uses it; "
                    "reference it in the parameters of a task inside the branch, iterator or "
                    "sub-flow, not in what is passed on as its input",
                )


def _check_reference(
    where: str,
    ref: Reference | ResolveError,
    known: set[str],
    err: Report,
    item_known: bool,
    index_known: bool,
) -> None:
    if isinstance(ref, ResolveError):
        err(where, str(ref))
    elif ref.root == "item" and not item_known:
        err(
            where,
            f"'${{{ref.text}}}': ${{item}} is only known inside a map's iterator and in a "
            "map's own parameters",
        )
    elif ref.root == "item_index" and not index_known:
        err(
            where,
            f"'${{{ref.text}}}': ${{item_index}} is only known in a map's parameters; pass it "
            'to the iterator there, as "index": "${item_index}", and read ${input.index}',
        )
    elif ref.task is not None and (len(ref.path) < 2 or ref.path[1] not in ("data", "status")):
        err(
            where,
            f"'${{{ref.text}}}': write ${{results.{ref.task}.data...}} for what the task "
            f"returned, or ${{results.{ref.task}.status}}",
        )
    elif ref.task is not None and ref.task not in known:
        err(where, f"'${{{ref.text}}}' refers to task '{ref.task}', which is not in this flow")
