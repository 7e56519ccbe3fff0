"""Query-string filters of the resource API lists (django-filter)."""

from __future__ import annotations

import django_filters

from flows.models import Execution, ExecutionStatus, ExecutionTrigger


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
    created_after = django_filters.IsoDateTimeFilter(
        field_name="created_at",
        lookup_expr="gte",
        help_text="Created at or after this ISO 8601 time.",
    )
    created_before = django_filters.IsoDateTimeFilter(
        field_name="created_at",
        lookup_expr="lt",
        help_text="Created before this ISO 8601 time.",
    )

    class Meta:
        model = Execution
        fields = ["status", "flow", "trigger", "created_after", "created_before"]
