"""Django admin: every row for staff. Engine-owned fields are read-only; actions call services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from flows import services
from flows.models import Execution, ExecutionEvent, Flow, FlowVersion, TaskRun


class FlowVersionInline(admin.TabularInline):
    model = FlowVersion
    extra = 0
    fields = ("version", "created_at", "created_by")
    readonly_fields = fields
    can_delete = False
    ordering = ("-version",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions are made by saving the flow through the builder or the API


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "version", "updated_at")
    list_filter = ("updated_at",)
    search_fields = ("id", "name")
    readonly_fields = ("version", "definition", "created_at", "updated_at")
    inlines = [FlowVersionInline]


class TaskRunInline(admin.TabularInline):
    model = TaskRun
    extra = 0
    can_delete = False
    fields = (
        "seq",
        "task_name",
        "task_type",
        "attempt",
        "status",
        "started_at",
        "duration",
        "route",
        "error",
        "worker",
    )
    readonly_fields = fields
    ordering = ("seq",)
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # steps are written by the engine only


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ("id", "flow", "version", "status", "current_task", "created_at", "ended_at")
    list_filter = ("status", "trigger", "created_at", "flow")
    search_fields = ("id", "flow__id", "flow__name", "error")
    list_select_related = ("flow", "flow_version")
    date_hierarchy = "created_at"
    # Everything the engine or the services own; nothing here is edited by hand.
    readonly_fields = (
        "id",
        "flow",
        "flow_version",
        "status",
        "current_task",
        "input",
        "error",
        "steps_taken",
        "cancel_requested",
        "pause_requested",
        "deadline_at",
        "trigger",
        "rerun_of",
        "redrive_count",
        "idempotency_key",
        "created_by",
        "created_at",
        "queued_at",
        "started_at",
        "ended_at",
    )
    inlines = [TaskRunInline]
    actions = ["cancel_executions", "run_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # executions start from a flow (operator pages, API)

    @admin.display(description="version", ordering="flow_version__version")
    def version(self, obj: Execution) -> str:
        return f"v{obj.flow_version.version}"

    @admin.action(description="Cancel the selected executions")
    def cancel_executions(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        done, refused = 0, []
        for execution_id in queryset.values_list("id", flat=True):
            try:
                services.execution_cancel(execution_id=execution_id)
                done += 1
            except services.ServiceError as exc:
                refused.append(exc.message)
        self._report(request, f"Cancel requested for {done} execution(s).", refused)

    @admin.action(description="Run again (a new execution of the same version)")
    def run_again(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        done, refused = 0, []
        for execution_id in queryset.values_list("id", flat=True):
            try:
                services.execution_rerun(execution_id=execution_id, user=request.user)
                done += 1
            except services.ServiceError as exc:
                refused.append(exc.message)
        self._report(request, f"Started {done} new execution(s).", refused)

    def _report(self, request: HttpRequest, summary: str, refused: list[str]) -> None:
        self.message_user(request, summary, messages.SUCCESS)
        for message in refused[:10]:
            self.message_user(request, message, messages.WARNING)


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "execution", "task", "level", "message")
    list_filter = ("level", "created_at")
    search_fields = ("message", "execution__id")
    list_select_related = ("execution", "task_run")
    readonly_fields = ("execution", "task_run", "created_at", "level", "message")

    @admin.display(description="task", ordering="task_run__task_name")
    def task(self, obj: ExecutionEvent) -> str:
        return obj.task_run.task_name if obj.task_run else "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
