"""Query-string filters of the resource API lists (django-filter)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import django_filters
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError

from flows.models import Execution, ExecutionStatus, ExecutionTrigger


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time with any offset Python accepts, compared in UTC.

    PostgreSQL refuses offsets past ±15:59 (``+22:58`` parses fine in Python), and a time at
    the edge of the calendar may not exist in UTC: both are the caller's error, a 400.
    """

    def __init__(self, *args: Any, param: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.param = param

    def filter(self, qs: QuerySet, value: datetime | None) -> QuerySet:
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                raise ValidationError({self.param: ["out of range"]}) from None
        return super().filter(qs, value)


def _created(param: str, lookup: str, help_text: str) -> Any:
    return UTCDateTimeFilter(
        field_name="created_at", lookup_expr=lookup, help_text=help_text, param=param
    )


class ExecutionFilter(django_filters.FilterSet):
    """``?status=RUNNING&status=QUEUED&flow=etl&created_after=2026-01-01T00:00:00Z``."""

    status = django_filters.MultipleChoiceFilter(
        choices=ExecutionStatus.choices,
        help_text="Only executions in this status; repeat the parameter for several.",
    )
    flow = django_filters.CharFilter(field_name="flow_id", help_text="Only this flow's executions.")
    trigger = django_filters.ChoiceFilter(
        choices=ExecutionTrigger.choices, help_text="How the executions were started."
    )
    created_after = _created("created_after", "gte", "Created at or after this ISO 8601 time.")
    created_before = _created("created_before", "lt", "Created before this ISO 8601 time.")
    parent = django_filters.UUIDFilter(
        method="_children",
        help_text="The child executions of this execution (its parallel branches, map items "
        "and sub-flows), in item order. Without `parent` or `step` the list holds top-level "
        "executions only.",
    )
    step = django_filters.NumberFilter(
        method="_children",
        min_value=1,
        max_value=2**63 - 1,
        help_text="The child executions of this control step (a step's `id`), in item order.",
    )
    triggered_by = django_filters.UUIDFilter(
        field_name="triggered_by_id",
        help_text="The executions this execution's end started (its flow triggers).",
    )
    backfill = django_filters.NumberFilter(
        field_name="backfill_id",
        min_value=1,
        max_value=2**63 - 1,
        help_text="The runs of this backfill (its `backfill` id).",
    )

    class Meta:
        model = Execution
        fields = [
            "status",
            "flow",
            "trigger",
            "triggered_by",
            "backfill",
            "created_after",
            "created_before",
            "parent",
            "step",
        ]

    def _children(self, queryset: QuerySet, name: str, value: Any) -> QuerySet:
        # Without either, the list holds top-level executions (ExecutionViewSet.get_queryset).
        if name == "parent":
            return queryset.filter(parent_step__execution_id=value)
        return queryset.filter(parent_step_id=int(value))
