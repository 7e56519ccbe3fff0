"""Parse and validate a flow document into plain typed objects, and route between its tasks.

No ORM and no Django here: the same rules serve the API, the operator pages, ``runflow`` and
the engine. ``parse_flow`` reports every problem at once, each with the path of its field.

One module a role, each importing only the public names of the others:

- ``errors``      ``FieldError`` and ``FlowValidationError``: a problem and the path of its field
- ``limits``      how large a document may be; the forms of flow ids and branch names
- ``fields``      checks of single values every part shares (text, names, JSON Schema)
- ``specs``       a task (``TaskSpec``, its ``RetryPolicy`` and ``Tolerance``) and a condition
- ``flow``        ``FlowDefinition``: a flow or a branch/iterator in one; routing and scopes
- ``tasks``       a plain task, which a registered task type runs
- ``control``     parallel, map and sub-flow tasks, which run child executions
- ``conditions``  conditions between tasks, and ``${...}`` references to tasks
- ``body``        the tasks, conditions and start task of a flow, branch or iterator
- ``document``    a whole document: ``parse_flow``, ``unwrap``, the unreachable-task warnings
- ``inputschema`` a flow's ``input_schema``: checked, its defaults filled, an input checked
- ``subflows``    sub-flow calls checked against the stored flows (``check_subflows``)
- ``triggers``    a flow's ``on_flow_end``: the flows whose ends start it (``FlowTriggerSpec``)
"""

from flows.definition.conditions import OUTCOMES
from flows.definition.document import Registry, parse_flow, unwrap
from flows.definition.errors import FieldError, FlowValidationError
from flows.definition.fields import unstorable_paths, unstorable_problem
from flows.definition.flow import FlowDefinition
from flows.definition.inputschema import check_input, fill_defaults, schema_errors
from flows.definition.limits import (
    BRANCH_NAME_RE,
    FLOW_ID_RE,
    MAX_ATTEMPTS,
    MAX_BRANCHES,
    MAX_DEPTH,
    MAX_DURATION,
    MAX_MAP_CONCURRENCY,
    MAX_MAP_ITEMS,
    MAX_NAME,
    MAX_NESTING,
    MAX_RETRY_DELAY,
    MAX_STEPS_LIMIT,
    MAX_TASKS,
)
from flows.definition.specs import (
    CONTROL_TYPES,
    END,
    MAP,
    NO_RETRY,
    PARALLEL,
    SUBFLOW,
    ConditionSpec,
    RetryPolicy,
    TaskSpec,
    Tolerance,
)
from flows.definition.subflows import check_subflows, subflow_calls
from flows.definition.tasks import Lookup
from flows.definition.triggers import (
    END_STATES,
    FlowTriggerSpec,
    parse_triggers,
    trigger_cycles,
)

__all__ = [
    "BRANCH_NAME_RE",
    "CONTROL_TYPES",
    "END",
    "END_STATES",
    "FLOW_ID_RE",
    "MAP",
    "MAX_ATTEMPTS",
    "MAX_BRANCHES",
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_MAP_CONCURRENCY",
    "MAX_MAP_ITEMS",
    "MAX_NAME",
    "MAX_NESTING",
    "MAX_RETRY_DELAY",
    "MAX_STEPS_LIMIT",
    "MAX_TASKS",
    "NO_RETRY",
    "OUTCOMES",
    "PARALLEL",
    "SUBFLOW",
    "ConditionSpec",
    "FieldError",
    "FlowDefinition",
    "FlowTriggerSpec",
    "FlowValidationError",
    "Lookup",
    "Registry",
    "RetryPolicy",
    "TaskSpec",
    "Tolerance",
    "check_input",
    "check_subflows",
    "fill_defaults",
    "parse_flow",
    "parse_triggers",
    "schema_errors",
    "subflow_calls",
    "trigger_cycles",
    "unstorable_paths",
    "unstorable_problem",
    "unwrap",
]
