"""The execution pages: the list and its bulk delete, one execution (its page, the live
region its script polls, a control step's children) and the downloads of its input and of a
step's result. What an operator does to an execution is ``views.controls``."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from flows import services
from flows.models import Execution, TaskRun
from flows.web import presenters
from flows.web.forms import ExecutionFilterForm
from flows.web.views.common import PAGE_SIZE, download, execution_or_404, needs


@login_required
@needs("flows.view_execution")
def execution_list(request: HttpRequest) -> HttpResponse:
    form = ExecutionFilterForm(request.GET or None)
    # Top-level only: children are listed on their parent's page (execution_children).
    top_level = Execution.objects.for_list().filter(parent_step__isnull=True)
    executions = top_level.matching(**form.filters())
    page = Paginator(executions, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return render(request, "flows/execution_list.html", context)


@login_required
@needs("flows.delete_execution")
@require_POST
def execution_bulk_delete(request: HttpRequest) -> HttpResponse:
    """First POST shows what will be deleted; the POST with ``confirm`` deletes."""
    ids = [i for i in request.POST.getlist("ids") if _is_uuid(i)]
    back = _back(request)
    if not ids:
        messages.error(request, "Select at least one execution to delete.")
        return redirect(back)
    if request.POST.get("confirm") != "yes":
        chosen = Execution.objects.filter(pk__in=ids).for_list()
        return render(request, "flows/execution_delete.html", {"executions": chosen, "next": back})
    deleted = _delete_each(ids)
    messages.success(request, f"Deleted {deleted} execution{'s' if deleted != 1 else ''}.")
    return redirect(back)


def _back(request: HttpRequest) -> str:
    """Where the bulk delete returns: the posted ``next`` when it is a page of this site
    (never another host's), else the list."""
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = ""
    return back or reverse("execution_list")


def _delete_each(ids: list[str]) -> int:
    """Delete each execution; one deleted meanwhile (by another operator) is passed over.
    Returns how many were deleted."""
    deleted = 0
    for execution_id in ids:
        try:
            services.execution_delete(execution_id=execution_id)
            deleted += 1
        except services.NotFound:
            continue
    return deleted


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@login_required
@needs("flows.view_execution")
def execution_detail(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    view = presenters.execution_view(execution_or_404(execution_id))
    return render(request, "flows/execution_detail.html", {"view": view})


@login_required
@needs("flows.view_execution")
def execution_live(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """The live region alone: the execution page's script polls it while the run is active."""
    view = presenters.execution_view(execution_or_404(execution_id))
    return render(request, "flows/_execution_status.html", {"view": view})


@login_required
@needs("flows.view_execution")
def execution_children(request: HttpRequest, execution_id: uuid.UUID, seq: int) -> HttpResponse:
    """The children of one control step (branches, map items, a sub-flow), 50 a page, in item
    order, filtered by status."""
    execution = execution_or_404(execution_id)
    step = get_object_or_404(TaskRun.objects.select_related("fanout"), execution=execution, seq=seq)
    status, page_number = request.GET.get("status", ""), request.GET.get("page")
    context = presenters.children_page(step, status, page_number, PAGE_SIZE)
    return render(request, "flows/execution_children.html", {"execution": execution, **context})


@login_required
@needs("flows.view_execution")
def execution_input(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """The whole input as a .json download (the page shows it cut past FLOW_SHOW_MAX_BYTES)."""
    execution = execution_or_404(execution_id)
    return download(execution.input, f"execution-{execution.id}-input.json")


@login_required
@needs("flows.view_execution")
def execution_step_result(request: HttpRequest, execution_id: uuid.UUID, seq: int) -> HttpResponse:
    """A step's whole result as a .json download (the page shows it cut past the limit)."""
    execution = execution_or_404(execution_id)
    step = get_object_or_404(TaskRun.objects.only("result"), execution=execution, seq=seq)
    return download(step.result, f"execution-{execution.id}-step-{seq}-result.json")
