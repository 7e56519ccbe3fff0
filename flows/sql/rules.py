"""The rules of the hand-written SQL in ``flows/sql``, asserted while ``settings.DEBUG`` is on.

The statements are built from the models' metadata, never from values; these checks make a
statement that breaks a rule fail loudly in development and in the tests that turn DEBUG on,
instead of relying on the comments alone. They cost nothing in production: the writes check
only on the path DEBUG's query log already takes, the reads only when DEBUG is on.

1. Every value is a parameter: the text holds no string literal, no comment, one statement
   only, and exactly one ``%s`` placeholder per parameter.
2. At most ``MAX_PARAMETERS`` parameters (SQLite refuses more than 32,766).
3. Only SQLite and PostgreSQL (``RETURNING`` and the casts are written for those two).
4. The hand-written writes are called from the engine, and from the services only to start
   an execution (every client's hot path); everything else keeps to the ORM.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

MAX_PARAMETERS = 32_766
VENDORS = ("sqlite", "postgresql")
WRITERS = ("flows.engine", "flows.services", "flows.sql", "tests.")

# A double-quoted identifier as the backends quote them (no quote inside: model metadata).
_IDENTIFIER = re.compile(r'"[^"]*"')
_FORBIDDEN = (
    ("'", "a string literal"),
    (";", "a second statement"),
    ("--", "a comment"),
    ("/*", "a comment"),
    ("$", "a dollar-quoted literal or a numbered placeholder"),
)


class SqlRuleError(AssertionError):
    """A hand-written statement breaks one of this module's rules."""


def check_statement(sql: str, params: Sequence[Any], vendor: str) -> None:
    """Rules 1-3 for one statement and its parameters."""
    if vendor not in VENDORS:
        raise SqlRuleError(f"hand-written SQL is written for {VENDORS}, not {vendor!r}")
    text = _IDENTIFIER.sub('""', sql)
    for token, what in _FORBIDDEN:
        if token in text:
            raise SqlRuleError(f"statement holds {what} ({token!r}): {sql[:200]}")
    placeholders = text.count("%s")
    if placeholders != len(params):
        raise SqlRuleError(
            f"statement has {placeholders} placeholders for {len(params)} parameters: {sql[:200]}"
        )
    if len(params) > MAX_PARAMETERS:
        raise SqlRuleError(f"{len(params)} parameters, over SQLite's {MAX_PARAMETERS}")


def check_writer(module: str) -> None:
    """Rule 4: ``module`` (the caller's ``__name__``) may use the hand-written writes."""
    if not module.startswith(WRITERS):
        raise SqlRuleError(
            f"{module} writes through flows.sql.writes; outside the engine and starting an "
            "execution, use the ORM"
        )
