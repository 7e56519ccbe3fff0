"""How large a flow document may be, and the forms of its ids and names."""

from __future__ import annotations

import re

FLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
BRANCH_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")
MAX_NAME = 100
MAX_TASKS = 500
MAX_STEPS_LIMIT = 100_000
# Deeper documents are refused up front, so no later walk over them can hit Python's
# recursion limit.
MAX_DEPTH = 64

# Every timeout (a flow's, a task's) is at most a year: past it a typo, not a plan (and a
# 401-digit number or 1e308 overflows the datetime its deadline is).
MAX_DURATION = 366 * 86_400

MAX_ATTEMPTS = 100
MAX_RETRY_DELAY = 86_400.0

MAX_BRANCHES = 50
# Parallel, map and sub-flow tasks nest; deeper than this is refused.
MAX_NESTING = 5
MAX_MAP_CONCURRENCY = 10_000
# A map runs at most this many items (flows/engine/fanout.py refuses more at run time).
MAX_MAP_ITEMS = 100_000
