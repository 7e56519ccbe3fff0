from django.contrib import admin

from flows.models import Execution, ExecutionEvent, Flow, FlowVersion, TaskRun


class FlowVersionInline(admin.TabularInline):
    model = FlowVersion
    extra = 0
    fields = ("version", "created_at", "created_by")
    readonly_fields = fields
    can_delete = False


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "version", "updated_at")
    search_fields = ("id", "name")
    readonly_fields = ("version", "created_at", "updated_at")
    inlines = [FlowVersionInline]


class TaskRunInline(admin.TabularInline):
    model = TaskRun
    extra = 0
    can_delete = False
    fields = ("seq", "task_name", "task_type", "attempt", "status", "duration", "error", "worker")
    readonly_fields = fields
    ordering = ("seq",)


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ("id", "flow", "status", "current_task", "created_at", "ended_at")
    list_filter = ("status", "flow")
    search_fields = ("id", "flow__id", "flow__name")
    list_select_related = ("flow",)
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
        "created_by",
        "created_at",
        "queued_at",
        "started_at",
        "ended_at",
    )
    inlines = [TaskRunInline]


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "execution", "level", "message")
    list_filter = ("level",)
    search_fields = ("message", "execution__id")
    list_select_related = ("execution",)
