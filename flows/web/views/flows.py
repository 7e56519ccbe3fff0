"""The flow pages: the list, one flow (its versions, schedule and run form), a stored version
and its export, deleting a flow. Editing one is the builder's (``views.builder``)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from flows import selectors, services
from flows.models import Execution, Flow, FlowTrigger
from flows.web import builder, charts, presenters
from flows.web.forms import RunForm, ScheduleForm, WebhookForm
from flows.web.runform import InputSchemaForm
from flows.web.views.common import (
    PAGE_SIZE,
    download,
    explain,
    flow_or_404,
    needs,
    version_or_404,
)


@login_required
@needs("flows.view_flow")
def flow_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    flows = Flow.objects.search(query).with_last_run().order_by("-updated_at")
    page = Paginator(flows, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"flow": flow, "missing": presenters.missing_types(flow.definition)} for flow in page]
    return render(request, "flows/flow_list.html", {"page": page, "rows": rows, "q": query})


@login_required
@needs("flows.view_flow")
def flow_detail(request: HttpRequest, flow_id: str) -> HttpResponse:
    return _flow_page(request, flow_or_404(flow_id))


def _flow_page(
    request: HttpRequest,
    flow: Flow,
    *,
    webhook_form: WebhookForm | None = None,
    new_secret: tuple[Any, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    executions = Execution.objects.filter(flow=flow, parent_step__isnull=True).for_list()
    context = {
        "flow": flow,
        "graph": presenters.graph_view(flow.definition),
        "problems": presenters.flow_problems(flow.definition),
        "versions": selectors.flow_version_list(flow=flow),
        "executions": executions[:10],
        "run_form": RunForm(),
        # With an input_schema, Run opens the form drawn from it (flow_run).
        "has_input_schema": isinstance(flow.definition.get("input_schema"), dict),
        "schedule": getattr(flow, "schedule", None),
        "schedule_form": ScheduleForm.for_flow(flow),
        # Flow triggers both ways: the ends that start this flow, the flows its ends start.
        "started_on": list(flow.triggers.all()),
        "starts": list(FlowTrigger.objects.filter(upstream_flow_id=flow.id)),
        "charts": charts.flow_charts(flow.id, timezone.now()),
        "webhooks": selectors.webhook_list(flow=flow),
        "deliveries": selectors.webhook_delivery_list_of_flow(flow=flow)[:WEBHOOK_DELIVERIES],
        "webhook_form": webhook_form or WebhookForm(),
        "can_manage_webhooks": request.user.has_perm("flows.change_flow"),
        # (hook, plain secret): shown in this answer only, never stored in a message.
        "new_secret": new_secret,
    }
    return render(request, "flows/flow_detail.html", context, status=status)


# The flow page shows this many of the latest deliveries to the flow's webhooks.
WEBHOOK_DELIVERIES = 10


@login_required
@needs("flows.change_flow")
@require_POST
def flow_webhooks(request: HttpRequest, flow_id: str) -> HttpResponse:
    """Create, delete, rotate a webhook or drop its previous secret. A new secret is shown in
    this answer (the page, not a redirect: it is never stored for a later request)."""
    flow = flow_or_404(flow_id)
    action, hook_id = request.POST.get("action", ""), request.POST.get("hook", "")
    try:
        if action == "create":
            form = WebhookForm(request.POST)
            if not form.is_valid():
                return _flow_page(request, flow, webhook_form=form, status=400)
            hook, plain = services.webhook_create(
                flow_id=flow.id, user=request.user, **form.service_arguments()
            )
            messages.success(request, "Webhook created.")
            return _flow_page(request, flow, new_secret=(hook, plain) if plain else None)
        if action == "delete":
            services.webhook_delete(flow_id=flow.id, hook_id=hook_id)
            messages.success(request, "Webhook deleted: its URL answers 404 from now on.")
        elif action in ("rotate", "drop_previous"):
            drop = action == "drop_previous"
            hook, plain = services.webhook_rotate(
                flow_id=flow.id, hook_id=hook_id, drop_previous=drop
            )
            if drop:
                messages.success(request, "The previous secret is no longer accepted.")
            else:
                messages.success(request, "New secret made; the previous one is still accepted.")
                return _flow_page(request, flow, new_secret=(hook, plain))
        else:
            messages.error(request, "Unknown webhook action.")
    except services.ServiceError as exc:
        messages.error(request, explain(exc))
    return redirect("flow_detail", flow_id=flow.id)


@login_required
@needs("flows.change_flow")
@require_POST
def flow_schedule(request: HttpRequest, flow_id: str) -> HttpResponse:
    """Save (create, change, pause) or delete the flow's cron schedule."""
    flow = flow_or_404(flow_id)
    form = ScheduleForm(request.POST)
    try:
        if request.POST.get("action") == "delete":
            services.flow_schedule_delete(flow_id=flow.id)
            messages.success(request, "Schedule deleted.")
        elif form.is_valid():
            schedule = services.flow_schedule_set(flow_id=flow.id, **form.cleaned_data)
            state = "saved" if schedule.enabled else "saved, paused"
            messages.success(request, f"Schedule {state}: {schedule.cron}")
        else:
            for field, errors in form.errors.items():
                messages.error(request, f"{field}: {' '.join(errors)}")
    except services.ServiceError as exc:
        messages.error(request, explain(exc))
    return redirect("flow_detail", flow_id=flow.id)


@login_required
@needs("flows.view_flow")
def flow_version(request: HttpRequest, flow_id: str, version: int) -> HttpResponse:
    stored = version_or_404(flow_id, version)
    context = {
        "flow": stored.flow,
        "stored": stored,
        "graph": presenters.graph_view(stored.definition),
        "document": builder.pretty(stored.definition),
    }
    return render(request, "flows/flow_version.html", context)


@login_required
@needs("flows.view_flow")
def flow_export(request: HttpRequest, flow_id: str, version: int) -> HttpResponse:
    stored = version_or_404(flow_id, version)
    return download(stored.definition, f"{flow_id}-v{version}.json")


@login_required
@needs("flows.start_execution")
def flow_run(request: HttpRequest, flow_id: str) -> HttpResponse:
    """Start an execution of the flow's current version, then show it.

    A flow with an ``input_schema`` has a page of its own here, its form drawn from the
    schema (GET shows it; POST starts, or shows it again with each error at its field).
    A flow without one is started from the JSON box on its page."""
    flow = flow_or_404(flow_id)
    schema = flow.definition.get("input_schema") if isinstance(flow.definition, dict) else None
    if isinstance(schema, dict):
        return _run_with_schema(request, flow, schema)
    if request.method != "POST":
        return redirect("flow_detail", flow_id=flow.id)
    form = RunForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Input: {' '.join(form.errors['input'])}")
        return redirect("flow_detail", flow_id=flow.id)
    current = version_or_404(flow.id, None)
    try:
        execution, _ = services.execution_submit(
            flow_version=current, user=request.user, input=form.cleaned_data["input"]
        )
    except services.ServiceError as exc:
        messages.error(request, explain(exc))
        return redirect("flow_detail", flow_id=flow.id)
    return redirect("execution_detail", execution_id=execution.id)


def _run_with_schema(request: HttpRequest, flow: Flow, schema: dict[str, Any]) -> HttpResponse:
    form = InputSchemaForm(schema, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        current = version_or_404(flow.id, None)
        try:
            execution, _ = services.execution_submit(
                flow_version=current, user=request.user, input=form.input()
            )
        except services.InvalidInput as exc:
            form.add_input_errors(exc.errors)
        except services.ServiceError as exc:
            form.top_errors.append(explain(exc))
        else:
            return redirect("execution_detail", execution_id=execution.id)
    context = {
        "flow": flow,
        "form": form,
        "problems": presenters.flow_problems(flow.definition),
    }
    bad = request.method == "POST"  # still here after a POST: it was refused
    return render(request, "flows/flow_run.html", context, status=400 if bad else 200)


@login_required
@needs("flows.delete_flow")
def flow_delete(request: HttpRequest, flow_id: str) -> HttpResponse:
    flow = flow_or_404(flow_id)
    if request.method == "POST":
        try:
            services.flow_delete(flow_id=flow.id)
        except services.ServiceError as exc:
            messages.error(request, explain(exc))
            return redirect("flow_detail", flow_id=flow.id)
        messages.success(request, f"Flow {flow.id} and its executions were deleted.")
        return redirect("flow_list")
    count = flow.executions.top_level().count()  # its children go with them, as their steps
    return render(request, "flows/flow_delete.html", {"flow": flow, "count": count})
