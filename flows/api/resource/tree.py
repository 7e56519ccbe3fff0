"""Child executions in the resource API: the querysets that read an execution's place in its
tree (parent step, root, branch, item) and each step's fan-out without a query per row.

``Execution.objects.for_api_list``/``for_api_detail`` (flows/models.py) load only the columns
the list shows; these add the tree columns to them and join what the new fields read.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from flows.models import API_LIST_FIELDS, Execution, TaskRun

# The columns of ``for_api_list`` (flows/models.py) and those of an execution's place in a tree.
_LIST_COLUMNS = (*API_LIST_FIELDS, "flow__name", "flow_version__version", "created_by__username")
TREE_COLUMNS = (
    "parent_step",
    "root",
    "branch",
    "item_index",
    "parent_step__execution",
    "parent_step__seq",
    "parent_step__task_name",
)


def for_api_list() -> QuerySet[Execution]:
    """The API's list rows with their parent step joined (one query per page)."""
    return (
        Execution.objects.for_api_list()
        .select_related("parent_step")
        .only(*_LIST_COLUMNS, *TREE_COLUMNS)
    )


def for_api_detail() -> QuerySet[Execution]:
    """One execution as the API shows it: the list's row, then its steps in order, each with
    its fan-out (a control step's children counts) joined: two queries whatever the steps."""
    steps = TaskRun.objects.order_by("seq").select_related("fanout")
    return for_api_list().prefetch_related(Prefetch("steps", queryset=steps))


def listing(queryset: QuerySet[Execution], params: Any) -> QuerySet[Execution]:
    """Top-level executions only, unless the query asks for children (``?parent=``,
    ``?step=``: ExecutionFilter filters those)."""
    if "parent" in params or "step" in params:
        return queryset
    return queryset.filter(parent_step__isnull=True)
