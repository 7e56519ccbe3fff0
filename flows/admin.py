"""Django admin: every row for staff. Engine-owned fields are read-only; actions call services.

Being on the staff opens the admin, not every door in it: each action that changes an execution
or a flow needs the Django permission the API needs for the same change (flows.api.permissions),
so a viewer on the staff reads what the API lets it read and changes nothing.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from flows import services
from flows.api import permissions as perms
from flows.models import (
    Backfill,
    Execution,
    ExecutionEvent,
    Flow,
    FlowSchedule,
    FlowVersion,
    Secret,
    TaskRun,
    Webhook,
    WebhookDelivery,
)


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


class ChildrenFilter(admin.SimpleListFilter):
    """Top-level executions by default; children (parallel branches, map items, sub-flows)
    are listed under the step that started them, on their parent's page."""

    title = "children"
    parameter_name = "children"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "No (top-level)"), ("yes", "Yes (children only)"), ("all", "All")]

    def value(self) -> str:
        return super().value() or "no"

    def queryset(self, request: HttpRequest, queryset: QuerySet[Execution]) -> QuerySet:
        if self.value() == "no":
            return queryset.filter(parent_step__isnull=True)
        if self.value() == "yes":
            return queryset.filter(parent_step__isnull=False)
        return queryset

    def choices(self, changelist: Any) -> Any:
        # No "All" entry of Django's own: "no" is the default, "all" is one of the lookups.
        for key, title in self.lookup_choices:
            yield {
                "selected": self.value() == key,
                "query_string": changelist.get_query_string({self.parameter_name: key}),
                "display": title,
            }


CHILDREN_SHOWN = 50  # per step on the change page; the operator page lists them all


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ("id", "flow", "version", "status", "current_task", "created_at", "ended_at")
    list_filter = (ChildrenFilter, "status", "trigger", "created_at", "flow")
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
        "parent",
        "root",
        "branch",
        "item_index",
        "item",
        "scope",
        "result",
        "children",
    )
    exclude = ("parent_step",)  # shown as the `parent` link
    inlines = [TaskRunInline]

    @admin.display(description="parent")
    def parent(self, obj: Execution) -> str:
        """A child's parent execution (a link) and the step that started it."""
        if obj.parent_step_id is None:
            return "—"
        step = TaskRun.objects.only("execution_id", "seq", "task_name").get(pk=obj.parent_step_id)
        url = reverse("admin:flows_execution_change", args=[step.execution_id])
        return format_html(
            '<a href="{}">{}</a>, step #{} {}', url, step.execution_id, step.seq, step.task_name
        )

    @admin.display(description="children")
    def children(self, obj: Execution) -> str:
        """Its children under the step that started each (read-only links): a query for the
        steps, one per control step for its first children."""
        steps = list(
            TaskRun.objects.filter(execution_id=obj.pk, fanout__isnull=False)
            .select_related("fanout")
            .only("id", "seq", "task_name", "task_type", "fanout__total")
            .order_by("seq")
        )
        if not steps:
            return "—"
        by_step = {
            step.id: list(
                Execution.objects.filter(parent_step=step)
                .only("id", "status", "branch", "item_index", "flow_id")
                .order_by("item_index")[:CHILDREN_SHOWN]
            )
            for step in steps
        }
        blocks = []
        for step in steps:
            kids = by_step[step.id]
            items = format_html_join(
                "",
                '<li><a href="{}">{}</a> {}</li>',
                (
                    (
                        reverse("admin:flows_execution_change", args=[kid.id]),
                        kid.branch or f"item {kid.item_index}"
                        if step.task_type == "map"
                        else kid.branch or kid.flow_id,
                        kid.status,
                    )
                    for kid in kids[:CHILDREN_SHOWN]
                ),
            )
            more = (
                format_html(
                    '<li><a href="{}">all {} on the operator page</a></li>',
                    reverse("execution_children", args=[obj.pk, step.seq]),
                    step.fanout.total,
                )
                if step.fanout.total > len(kids)
                else ""
            )
            blocks.append(
                format_html(
                    "<p>step #{} <strong>{}</strong> ({})</p><ul>{}{}</ul>",
                    step.seq,
                    step.task_name,
                    step.task_type,
                    items,
                    more,
                )
            )
        return format_html_join("", "{}", ((b,) for b in blocks))

    actions = ["cancel_executions", "pause", "resume", "redrive", "run_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # executions start from a flow (operator pages, API)

    @admin.display(description="version", ordering="flow_version__version")
    def version(self, obj: Execution) -> str:
        return f"v{obj.flow_version.version}"

    # The same permission per action as the API's ExecutionViewSet.action_permissions: Django
    # offers an action only to whom its has_<name>_permission says yes, and refuses a POST of
    # one it did not offer.
    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perms.CANCEL_EXECUTIONS)

    def has_start_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perms.START_EXECUTIONS)

    @admin.action(description="Cancel the selected executions", permissions=["cancel"])
    def cancel_executions(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        self._each(request, queryset, services.execution_cancel, "Cancel requested for {n}")

    @admin.action(description="Pause the selected executions", permissions=["cancel"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        self._each(request, queryset, services.execution_pause, "Pause requested for {n}")

    @admin.action(description="Resume the selected executions", permissions=["start"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        self._each(request, queryset, services.execution_resume, "Resumed {n}")

    @admin.action(
        description="Redrive the selected executions from the step that stopped them",
        permissions=["start"],
    )
    def redrive(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        self._each(request, queryset, services.execution_redrive, "Redrove {n}")

    @admin.action(
        description="Run again (a new execution of the same version)", permissions=["start"]
    )
    def run_again(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        def rerun(*, execution_id: Any) -> Any:
            return services.execution_rerun(execution_id=execution_id, user=request.user)

        self._each(request, queryset, rerun, "Started {n} new")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Execution], service: Any, summary: str
    ) -> None:
        """Apply a service to each selected execution; report what it refused, and why."""
        done, refused = 0, []
        for execution_id in queryset.values_list("id", flat=True):
            try:
                service(execution_id=execution_id)
                done += 1
            except services.ServiceError as exc:
                refused.append(exc.message)
        self.message_user(request, summary.format(n=done) + " execution(s).", messages.SUCCESS)
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


class FlowScheduleForm(forms.ModelForm):
    class Meta:
        model = FlowSchedule
        fields = (
            "flow",
            "cron",
            "enabled",
            "input",
            "overlap",
            "catchup",
            "catchup_window_seconds",
        )

    # Left out (a form of before these fields): the schedule's own, or the defaults.
    POLICIES = ("overlap", "catchup", "catchup_window_seconds")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self.POLICIES:
            self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in self.POLICIES:
            if cleaned.get(name) in (None, ""):
                cleaned[name] = getattr(self.instance, name)
        return cleaned

    def clean_cron(self) -> str:
        problem = services.cron_error(self.cleaned_data["cron"])
        if problem:
            raise forms.ValidationError(problem)
        return self.cleaned_data["cron"].strip()


@admin.register(FlowSchedule)
class FlowScheduleAdmin(admin.ModelAdmin):
    """Saving and deleting go through the services, which keep the django-q2 Schedule in step."""

    form = FlowScheduleForm
    list_display = ("flow", "cron", "enabled", "overlap", "catchup", "next_run", "updated_at")
    list_filter = ("enabled", "overlap", "catchup")
    search_fields = ("flow__id", "flow__name", "cron")
    list_select_related = ("flow", "q_schedule")
    readonly_fields = (
        "q_schedule",
        "last_slot_at",
        "buffered_slot",
        "skipped_slots",
        "last_skipped_at",
        "created_at",
        "updated_at",
    )

    @admin.display(description="next run", ordering="q_schedule__next_run")
    def next_run(self, obj: FlowSchedule) -> Any:
        return obj.q_schedule.next_run if obj.q_schedule and obj.enabled else None

    def save_model(self, request: HttpRequest, obj: FlowSchedule, form: Any, change: bool) -> None:
        saved = services.flow_schedule_set(
            flow_id=obj.flow_id,
            cron=obj.cron,
            enabled=obj.enabled,
            input=obj.input,
            overlap=obj.overlap,
            catchup=obj.catchup,
            catchup_window_seconds=obj.catchup_window_seconds,
        )
        obj.pk, obj.q_schedule = saved.pk, saved.q_schedule

    def delete_model(self, request: HttpRequest, obj: FlowSchedule) -> None:
        services.flow_schedule_delete(flow_id=obj.flow_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[FlowSchedule]) -> None:
        for flow_id in queryset.values_list("flow_id", flat=True):
            services.flow_schedule_delete(flow_id=flow_id)


@admin.register(Backfill)
class BackfillAdmin(admin.ModelAdmin):
    """Backfills are made by the API and ``manage.py backfill``; here they are read (and a
    run refused when its turn came is counted, with why)."""

    list_display = (
        "id",
        "flow",
        "start",
        "end",
        "max_active",
        "reprocess",
        "refused",
        "created_at",
    )
    list_filter = ("reprocess",)
    search_fields = ("flow__id",)
    list_select_related = ("flow",)
    readonly_fields = [f.name for f in Backfill._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SecretForm(forms.ModelForm):
    """Name and description, and the value through a password field that is never filled in:
    the form has no field for the stored (encrypted) column at all."""

    new_value = forms.CharField(
        label="Value",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again. When changing a secret, leave it "
        "empty to keep the current value.",
    )

    class Meta:
        model = Secret
        fields = ("name", "description")

    def clean(self) -> dict[str, Any]:
        # The service's own checks, shown on the form: a refusal in save_model would be a 500.
        data = super().clean()
        adding = self.instance._state.adding
        value = data.get("new_value") or None
        if adding and value is None:
            self.add_error("new_value", "A new secret needs a value.")
        problems = services.secret_problems(
            name=data.get("name") if adding else None,
            value=value,
            description=data.get("description", ""),
        )
        for problem in problems:
            field = "new_value" if problem["field"] == "value" else problem["field"]
            self.add_error(field if field in self.fields else None, problem["message"])
        return data


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    """Secrets by name: the value can be set, never read. Every door needs
    ``flows.manage_secret`` (there is no separate view right: names are all one could see)."""

    form = SecretForm
    list_display = ("name", "description", "created_at", "updated_at", "updated_by")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "created_by", "updated_at", "updated_by")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Secret]:
        return Secret.objects.listed()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The name is the key flows reference it by: renaming would break them silently.
        return ("name", *self.readonly_fields) if obj is not None else self.readonly_fields

    def _may(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perms.MANAGE_SECRETS)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._may(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)

    def save_model(self, request: HttpRequest, obj: Secret, form: Any, change: bool) -> None:
        value = form.cleaned_data.get("new_value") or None
        if not change:
            saved = services.secret_create(
                name=obj.name, value=value, description=obj.description, user=request.user
            )
        elif value is not None:
            saved = services.secret_replace(
                name=obj.name, value=value, description=obj.description, user=request.user
            )
        else:
            saved = services.secret_describe(
                name=obj.name, description=obj.description, user=request.user
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at

    def delete_model(self, request: HttpRequest, obj: Secret) -> None:
        services.secret_delete(name=obj.name)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Secret]) -> None:
        for name in queryset.values_list("name", flat=True):
            services.secret_delete(name=name)


class WebhookDeliveryInline(admin.TabularInline):
    """The hook's last deliveries, read-only (payloads are on the API and purged with
    retention)."""

    model = WebhookDelivery
    extra = 0
    can_delete = False
    max_num = 0
    fields = ("received_at", "outcome", "http_status", "reason", "delivery_id", "execution")
    readonly_fields = fields
    ordering = ("-received_at",)

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).defer("payload")


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Webhooks, without their secrets or slugs (the URL is a credential): made, rotated and
    deleted through the API or the flow's page, which show a new secret once. The admin may
    disable one (its URL then answers 404, each delivery kept) and change its limits."""

    list_display = (
        "id",
        "flow",
        "auth",
        "preset",
        "enabled",
        "rate_limit_per_minute",
        "created_at",
    )
    list_filter = ("auth", "preset", "enabled")
    search_fields = ("flow__id", "description")
    fields = (
        "flow",
        "description",
        "auth",
        "preset",
        "header",
        "algorithm",
        "prefix",
        "encoding",
        "tolerance_seconds",
        "input_mapping",
        "dedup_header",
        "dedup_path",
        "dedup_window_seconds",
        "rate_limit_per_minute",
        "raw_text",
        "enabled",
        "rotated_at",
        "created_by",
        "created_at",
    )
    # What decides how a signature is checked is the service's (validated when made).
    readonly_fields = (
        "flow",
        "auth",
        "preset",
        "header",
        "algorithm",
        "prefix",
        "encoding",
        "input_mapping",
        "dedup_header",
        "dedup_path",
        "rotated_at",
        "created_by",
        "created_at",
    )
    inlines = [WebhookDeliveryInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made through the API or the flow's page, which show the secret once
