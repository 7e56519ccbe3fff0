"""Which layer may import which (shared/DESIGN.md, "Rules of the house"), read from the source.

Every ``import`` and ``from ... import`` of every module is checked, those inside functions
too, so a rule cannot be broken by an import written where it runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The faces: what people and clients reach. They write through flows.services and read
# through flows.selectors (or model query methods), never the engine or hand-written SQL.
FACES = ["flows/api", "flows/web", "flows/admin.py", "flows/management", "flows/metrics"]
# Readers the faces share: the same rule as the faces.
SHARED_READERS = ["flows/waiting.py", "flows/selectors.py"]
FACE_MODULES = ("flows.api", "flows.web", "flows.admin", "flows.management", "flows.metrics")

RULES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("a face imports no engine and no SQL", FACES, ("flows.engine", "flows.sql")),
    ("a shared reader imports no engine", SHARED_READERS, ("flows.engine",)),
    (
        "the SQL layer imports no DRF, no services and no face",
        ["flows/sql"],
        ("rest_framework", "flows.services", "flows.selectors", *FACE_MODULES),
    ),
    (
        "the engine imports no face and no services",
        ["flows/engine"],
        (*FACE_MODULES, "flows.services"),
    ),
    (
        "a flow definition is parsed without the ORM",
        ["flows/definition"],
        ("django.db", "flows.models", "flows.engine", "flows.services", "flows.sql"),
    ),
    ("a task plugin imports neither Django nor flows", ["tasks"], ("django", "flows")),
]


def modules(paths: list[str]) -> Iterator[Path]:
    for path in paths:
        found = ROOT / path
        yield from [found] if found.is_file() else sorted(found.rglob("*.py"))


def imported(source: Path, package: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` imports: ``from flows import engine``
    counts as ``flows.engine``; relative imports are resolved against the module's package
    (its folder under the project, unless given)."""
    if package is None:
        package = ".".join(source.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)


@pytest.mark.parametrize(("rule", "paths", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_each_layer_imports_only_what_it_may(rule, paths, forbidden) -> None:
    found = list(modules(paths))
    assert found, f"no module under {paths}: the rule would check nothing"
    broken = sorted(
        f"{source.relative_to(ROOT)}:{line} imports {name}"
        for source in found
        for line, name in imported(source)
        if breaks(name, forbidden)
    )
    assert broken == [], f"{rule}:\n" + "\n".join(broken)


def test_the_check_sees_imports_written_inside_functions_and_relative_ones(tmp_path) -> None:
    # The rule above is only as good as what `imported` sees: a lazy import, an aliased one
    # and a relative one are all caught.
    module = tmp_path / "probe.py"
    module.write_text(
        "def f():\n    from flows import engine as e\n    from ..sql import writes\n"
        "    import flows.engine.reaper\n"
    )
    names = [name for _, name in imported(module, package="flows.web")]
    assert [n for n in names if breaks(n, ("flows.engine", "flows.sql"))] == [
        "flows.engine",
        "flows.sql",
        "flows.sql.writes",
        "flows.engine.reaper",
    ]
