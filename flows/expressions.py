"""References in task parameters and CEL conditions: parsed and checked without Django.

References. A parameter value may name earlier results or the execution's input:
``"${results.fetch.data.records}"``, ``"${input.customer_id}"``. A string that is exactly one
reference takes the referenced JSON value with its type; a reference inside a longer string
is interpolated as text. ``results.<task>.data`` is what the task returned and
``results.<task>.status`` its step status. Paths are dot-separated names with ``[n]`` for
list items; ``$${`` writes a literal ``${``. In a map, ``${item}`` is the map's item (in its
iterator, and in the map's own parameters, resolved per item) and ``${item_index}`` its place
(in the map's parameters only).

Secrets. ``${secrets.NAME}`` is a value from the secret store. ``resolve`` treats it like
any root of its scope; the engine resolves task parameters twice, once with the values (what
the task gets) and once with each reference standing for itself (what is stored and shown).

Conditions. A condition's ``expression`` is CEL (the cel-python package, no ``eval``), over
``result`` (what the source task returned), ``results`` (as in references:
``results.<task>.data``) and ``input``; it must evaluate to a boolean.

Budget. cel-python is a tree interpreter in pure Python (~100 us for one iteration of a small
comprehension body), and comprehensions (``all``, ``exists``, ``exists_one``, ``map``,
``filter``) multiply: three nested over 100-item lists are a million iterations, a minute or
more of a worker's time. So an evaluation has a
deadline, checked before every comprehension iteration (the only construct that repeats
work; a body without one is linear in the expression's size and its data), and
``compile_expression`` refuses comprehensions nested deeper than ``MAX_COMPREHENSION_DEPTH``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

REF_RE = re.compile(r"(?<!\$)\$\{\s*([^{}]*?)\s*\}")
_SEGMENT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)")
ROOTS = ("results", "input", "item", "item_index", "secrets")
# ${secrets.NAME}: a value from the secret store, resolved only in the worker just before its
# task runs (flows/engine/inputs.py); never in a condition, a map's items or a child's input.
SECRETS = "secrets"
# What a map's item is known as: in its iterator (${item}) and, with its place among the items
# (${item_index}), in the map's own parameters, which become that item's ${input}.
ITEM_ROOTS = ("item", "item_index")


class ResolveError(ValueError):
    """A reference that is malformed, or that cannot be resolved at run time."""


@dataclass(frozen=True)
class Reference:
    text: str  # as written, without ${ }
    root: str  # "results", "input", "item" or "item_index" (see ITEM_ROOTS)
    path: tuple[str | int, ...]  # for results: (task name, ...)

    @property
    def task(self) -> str | None:
        return str(self.path[0]) if self.root == "results" and self.path else None


def parse_reference(text: str, roots: tuple[str, ...] = ROOTS) -> Reference:
    """``text`` (a reference without its ``${ }``) parsed; ``roots`` are the names it may
    start with (a webhook's input mapping has its own: ``body``, ``headers``, ``query``)."""
    parts: list[str | int] = []
    for raw in text.split("."):
        match = _SEGMENT_RE.fullmatch(raw)
        if not match:
            raise ResolveError(
                f"'${{{text}}}' is not a reference: use names separated by dots, "
                "like ${results.fetch.data.records[0]} or ${input.customer_id}"
            )
        parts.append(match.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    root, path = str(parts[0]), tuple(parts[1:])
    if root not in roots:
        if roots != ROOTS:
            starts = ", ".join(f"{name}." for name in roots)
            raise ResolveError(f"'${{{text}}}' must start with one of {starts}")
        raise ResolveError(
            f"'${{{text}}}' must start with results., input. or secrets. (or item, in a map)"
        )
    if root == SECRETS and (len(path) != 1 or not isinstance(path[0], str)):
        raise ResolveError(f"'${{{text}}}': name one secret, like ${{secrets.api_token}}")
    if root == "item_index" and path:
        raise ResolveError(f"'${{{text}}}': the item's index is a number: write ${{item_index}}")
    if root == "results" and (not path or not isinstance(path[0], str)):
        raise ResolveError(f"'${{{text}}}' must name a task: ${{results.<task>.data...}}")
    return Reference(text, root, path)


def references_in(
    value: Any, roots: tuple[str, ...] = ROOTS
) -> Iterator[tuple[str, Reference | ResolveError]]:
    """Every reference in a parameter value, with the path of the value holding it."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            for match in REF_RE.finditer(item):
                try:
                    yield path, parse_reference(match.group(1), roots)
                except ResolveError as exc:
                    yield path, exc
        elif isinstance(item, Mapping):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))


def needs_resolving(value: Any) -> bool:
    """Whether ``value`` holds a reference or a ``$${`` escape anywhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "${" in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def secret_names(value: Any) -> set[str]:
    """The secrets ``value`` refers to, by name."""
    if not needs_resolving(value):
        return set()
    return {
        str(ref.path[0])
        for _, ref in references_in(value)
        if not isinstance(ref, ResolveError) and ref.root == SECRETS
    }


def refers_to_item(value: Any) -> bool:
    """Whether ``value`` holds a well-formed ``${item...}`` or ``${item_index}`` reference."""
    return any(
        not isinstance(ref, ResolveError) and ref.root in ITEM_ROOTS
        for _, ref in references_in(value)
    )


def has_reference(value: Any) -> bool:
    return isinstance(value, str) and REF_RE.search(value) is not None


def resolve(value: Any, scope: Mapping[str, Any], roots: tuple[str, ...] = ROOTS) -> Any:
    """``value`` with every reference replaced from ``scope`` ({"results", "input"} and, in a
    map's iterator, "item"; in a map's parameters "item" and "item_index").

    ``scope["results"]`` maps task names to ``{"data": result, "status": "SUCCESS"}``.
    Raises ResolveError naming the reference that could not be resolved.
    """
    if isinstance(value, str):
        whole = REF_RE.fullmatch(value.strip()) if value.strip().startswith("${") else None
        if whole:
            return _lookup(parse_reference(whole.group(1), roots), scope)

        def text_of(match: re.Match[str]) -> str:
            found = _lookup(parse_reference(match.group(1), roots), scope)
            return found if isinstance(found, str) else json.dumps(found)

        return REF_RE.sub(text_of, value).replace("$${", "${")
    if isinstance(value, Mapping):
        return {k: resolve(v, scope, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope, roots) for v in value]
    return value


def _lookup(ref: Reference, scope: Mapping[str, Any]) -> Any:
    current: Any = scope.get(ref.root, {})
    walked = ref.root
    for key in ref.path:
        if isinstance(key, int):
            if not isinstance(current, list) or key >= len(current):
                raise ResolveError(f"${{{ref.text}}}: {walked} has no item [{key}]")
            current = current[key]
            walked += f"[{key}]"
            continue
        if not isinstance(current, Mapping) or key not in current:
            if walked == "results":
                raise ResolveError(
                    f"${{{ref.text}}}: task '{key}' has no result yet in this execution"
                )
            raise ResolveError(f"${{{ref.text}}}: {walked} has no key '{key}'")
        current = current[key]
        walked += f".{key}"
    return current


# --- CEL ------------------------------------------------------------------------------------
DEFAULT_BUDGET_SECONDS = 1.0
BUDGET_SETTING = "FLOW_EXPRESSION_BUDGET_SECONDS"
MAX_COMPREHENSION_DEPTH = 2
COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class ExpressionError(ValueError):
    """A CEL expression that does not compile, fails, or does not give a boolean."""


class ExpressionBudgetError(ExpressionError):
    """An evaluation stopped at its deadline (a failure like any other ExpressionError)."""


class _OverBudget(BaseException):
    """Raised inside the interpreter at the deadline.

    A BaseException on purpose: cel-python turns an ``Exception`` raised in a function into a
    CEL error value, and CEL's ``||``, ``&&`` and ``exists`` absorb error values (``error ||
    true`` is true), which would swallow the deadline and let the loop run on.
    """


class _BudgetedEvaluator(celpy.Evaluator):
    """cel-python's interpreter with a deadline, checked before each comprehension iteration.

    Each iteration runs ``evaluate`` on the evaluator ``sub_evaluator`` built for the macro's
    body; both are overridden so that nested bodies share the deadline. One ``monotonic()``
    call per iteration: noise next to the ~100 us the interpreter spends on one.
    """

    deadline = float("inf")

    def sub_evaluator(self, ast: Any) -> celpy.Evaluator:
        nested = _BudgetedEvaluator(ast, activation=self.activation)
        nested.deadline = self.deadline
        return nested

    def evaluate(self, context: Any = None) -> Any:
        if time.monotonic() > self.deadline:
            raise _OverBudget
        return super().evaluate(context)


class _BudgetedRunner(celpy.InterpretedRunner):
    def evaluate_within(self, context: Any, seconds: float) -> Any:
        evaluator = _BudgetedEvaluator(ast=self.ast, activation=self.new_activation())
        evaluator.deadline = time.monotonic() + seconds
        return evaluator.evaluate(context)


_env = celpy.Environment(runner_class=_BudgetedRunner)


@dataclass(frozen=True)
class Expression:
    source: str
    program: Any

    def evaluate(
        self,
        *,
        result: Any,
        results: Mapping[str, Any],
        input: Any,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    ) -> bool:
        """The expression's value over the three variables, within ``budget_seconds``.

        Raises ExpressionBudgetError past the budget, ExpressionError when it fails or does
        not give a boolean.
        """
        variables = {
            "result": result if result is not None else {},
            "results": dict(results),
            "input": input or {},
        }
        value = self._run(variables, budget_seconds)
        if not isinstance(value, celtypes.BoolType):
            raise ExpressionError(
                f"expression '{self.source}' gave {type(value).__name__}, not true or false"
            )
        return bool(value)

    def _run(self, variables: Mapping[str, Any], budget_seconds: float) -> Any:
        """The expression's CEL value over ``variables`` (JSON), within ``budget_seconds``:
        ExpressionBudgetError past it, ExpressionError when it fails."""
        activation = {name: celpy.json_to_cel(value) for name, value in variables.items()}
        try:
            return self.program.evaluate_within(activation, budget_seconds)
        except _OverBudget:
            raise ExpressionBudgetError(
                f"expression '{self.source}' exceeded its budget of {budget_seconds:g} s "
                f"({BUDGET_SETTING}) and was stopped"
            ) from None
        except Exception as exc:  # celpy raises its own error types, and may leak others
            raise ExpressionError(
                f"expression '{self.source}' failed: {_cel_message(exc)}"
            ) from None

    def key(self, variables: Mapping[str, Any], *, budget_seconds: float) -> str:
        """The expression's value over ``variables`` as a key of at most 200 characters (a
        concurrency key: a string or a number, in their JSON form otherwise). Raises
        ExpressionError as ``evaluate`` does."""
        value = self._run(variables, budget_seconds)
        if isinstance(value, celtypes.BoolType):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)[:200]
        return json.dumps(_plain(value), sort_keys=True, default=str)[:200]


def _plain(value: Any) -> Any:
    """A CEL value as plain JSON-able Python (lists and maps walked)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def compile_expression(source: str) -> Expression:
    """``source`` compiled, or ExpressionError saying why not (including comprehensions nested
    deeper than MAX_COMPREHENSION_DEPTH, whose work grows as a list's length to that power)."""
    try:
        ast = _env.compile(source)
    except Exception as exc:  # CELParseError, or anything the compiler raises on odd input
        raise ExpressionError(f"not a valid CEL expression: {_cel_message(exc)}") from None
    depth = comprehension_depth(ast)
    if depth > MAX_COMPREHENSION_DEPTH:
        raise ExpressionError(
            f"comprehensions ({', '.join(sorted(COMPREHENSIONS))}) are nested {depth} deep; "
            f"at most {MAX_COMPREHENSION_DEPTH} are allowed: each level multiplies the work by "
            f"its list's length, and an evaluation has a time budget ({BUDGET_SETTING})"
        )
    try:
        return Expression(source, _env.program(ast))
    except Exception as exc:  # as above: a message, never a crash
        raise ExpressionError(f"not a valid CEL expression: {_cel_message(exc)}") from None


def comprehension_depth(ast: Any) -> int:
    """How deeply comprehension macros nest in a compiled expression: 1 for ``xs.all(x, p)``,
    2 for ``xs.all(x, ys.exists(y, p))``; chaining (``xs.map(...).all(...)``) does not nest.

    A macro is a ``member_dot_arg`` node: [0] what it iterates over, [1] the macro's name,
    [2] the variable and the body. Only the body is inside the macro. Iterative, since a
    2,000-character expression can be deeper than Python's recursion limit.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(ast, 0)]
    while stack:
        node, depth = stack.pop()
        children = getattr(node, "children", None)
        if children is None:  # a token
            continue
        name = children[1] if node.data == "member_dot_arg" and len(children) > 2 else None
        if name is not None and str(name) in COMPREHENSIONS:
            deepest = max(deepest, depth + 1)
            stack.append((children[0], depth))
            stack.extend((child, depth + 1) for child in children[2:])
        else:
            stack.extend((child, depth) for child in children)
    return deepest


def _cel_message(exc: Exception) -> str:
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0].strip().splitlines()[0]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
