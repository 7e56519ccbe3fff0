"""Shapes of the seed-compatible endpoints, for input checks and the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from flows.api.errors import FieldErrorSerializer
from flows.models import Execution, TaskRun, TaskRunStatus


class FlowCreatedSerializer(serializers.Serializer):
    execution_id = serializers.UUIDField()
    flow_id = serializers.CharField()
    flow_name = serializers.CharField()
    version = serializers.IntegerField()
    new_version = serializers.BooleanField(
        help_text="False when the document was the flow's current one: no version was stored."
    )
    status = serializers.CharField()
    message = serializers.CharField()
    warnings = FieldErrorSerializer(many=True)


class TextUUIDField(serializers.UUIDField):
    """A UUID sent as text. DRF's UUIDField also turns integers (and booleans) into UUIDs,
    so ``{"execution_id": 1}`` would look up 00000000-...-0001 instead of being refused."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ExecuteRequestSerializer(serializers.Serializer):
    execution_id = TextUUIDField(
        help_text="The id returned by POST /flow/create.",
        error_messages={"invalid": "must be a UUID, as returned by POST /flow/create"},
    )
    input = serializers.DictField(
        required=False,
        help_text="An object the tasks read as ${input.<key>} and self.context.input.",
    )


class TaskResultSerializer(serializers.Serializer):
    task_name = serializers.CharField()
    status = serializers.ChoiceField(choices=TaskRunStatus.choices)
    message = serializers.CharField()
    data = serializers.JSONField(allow_null=True)
    execution_time = serializers.FloatField(allow_null=True, help_text="Seconds the task ran.")
    timestamp = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class ExecutionStatusSerializer(serializers.Serializer):
    execution_id = serializers.UUIDField()
    flow_id = serializers.CharField()
    flow_name = serializers.CharField()
    flow_version = serializers.IntegerField()
    status = serializers.CharField()
    current_task = serializers.CharField(allow_null=True)
    completed_tasks = serializers.ListField(child=serializers.CharField())
    executed_tasks = serializers.ListField(
        child=serializers.CharField(), help_text="Task names in run order, repeats included."
    )
    task_results = serializers.DictField(child=TaskResultSerializer())
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class DeletedSerializer(serializers.Serializer):
    message = serializers.CharField()


class ClusterSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The cluster's id (a UUID).")
    name = serializers.CharField(help_text="The id in words, as django-q2's log and qinfo show it.")
    host = serializers.CharField()
    status = serializers.CharField(help_text="As the cluster reports it: Idle, Working, ...")
    processes = serializers.IntegerField(help_text="Its worker processes.")
    started_at = serializers.DateTimeField(allow_null=True)
    last_seen = serializers.DateTimeField(help_text="Its latest report (every few seconds).")


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "starting", "degraded", "unhealthy"])
    timestamp = serializers.DateTimeField()
    database = serializers.CharField()
    workers = serializers.IntegerField(help_text="Worker processes of the live clusters.")
    clusters = ClusterSerializer(many=True, help_text="Every cluster reporting right now.")
    message = serializers.CharField(help_text="What the status means, and what to do.")


def status_document(execution: Execution, steps: list[TaskRun] | None = None) -> dict[str, Any]:
    """The seed's status document for one execution (one query for its steps unless given)."""
    if steps is None:
        steps = list(execution.steps.order_by("seq"))
    finished = [s for s in steps if s.status not in (TaskRunStatus.PENDING, TaskRunStatus.RUNNING)]
    completed: list[str] = []
    for s in finished:
        if s.status == TaskRunStatus.SUCCESS and s.task_name not in completed:
            completed.append(s.task_name)
    return {
        "execution_id": str(execution.id),
        "flow_id": execution.flow_id,
        "flow_name": execution.flow.name,
        "flow_version": execution.flow_version.version,
        "status": execution.status,
        "current_task": execution.current_task or None,
        "completed_tasks": completed,
        "executed_tasks": [s.task_name for s in finished if s.status != TaskRunStatus.LOST],
        "task_results": {
            s.task_name: s.seed_result() for s in finished if s.status != TaskRunStatus.LOST
        },
        "created_at": execution.created_at.isoformat(),
        "started_at": execution.started_at.isoformat() if execution.started_at else None,
        "ended_at": execution.ended_at.isoformat() if execution.ended_at else None,
        "error": execution.error or None,
    }
