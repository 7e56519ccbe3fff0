"""The builder: a new flow, or a new version of one, edited on a form or as JSON, imported
from a file or exported to one. What a POST asks for is read by ``flows.web.builder_page``;
these views store, redirect or render what it says."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flows import services
from flows.models import Flow
from flows.web import builder, builder_page
from flows.web.builder_page import BuilderPage, Next
from flows.web.views.common import download, flow_or_404, needs


@login_required
@needs("flows.add_flow")
def flow_new(request: HttpRequest) -> HttpResponse:
    return _builder(request, None)


@login_required
@needs("flows.change_flow")
def flow_edit(request: HttpRequest, flow_id: str) -> HttpResponse:
    return _builder(request, flow_or_404(flow_id))


@login_required
@needs("flows.view_flow")
def builder_task_fields(request: HttpRequest) -> HttpResponse:
    """The parameter fields of one task row for a task type (the builder's script asks)."""
    prefix = request.GET.get("prefix", "")
    if not prefix.startswith("tasks-") or not prefix[6:].isdigit():
        raise Http404("bad prefix")
    form = builder.TaskForm(prefix=prefix, initial={"task_type": request.GET.get("type", "")})
    return render(request, "flows/_task_params.html", {"form": form})


def _builder(request: HttpRequest, flow: Flow | None) -> HttpResponse:
    if request.method != "POST":
        return _render(request, flow, builder_page.first_page(flow))
    flow_id = flow.id if flow else None
    then = builder_page.read_post(request.POST, request.FILES, flow_id=flow_id)
    if then.message:
        messages.add_message(request, *then.message)
    if then.kind == "reload":
        return redirect(request.path)
    if then.kind == "export":
        return download(then.document, then.filename)
    if then.kind == "save":
        return _save(request, flow, then)
    assert then.page is not None
    return _render(request, flow, then.page)


def _save(request: HttpRequest, flow: Flow | None, then: Next) -> HttpResponse:
    try:
        version, stored = services.flow_store(document=then.document, user=request.user)
    except services.InvalidFlow as exc:
        return _render(request, flow, then.refused(exc.errors))
    messages.success(
        request,
        f"Saved {version.flow_id} version {version.version}."
        if stored
        else f"No changes: {version.flow_id} version {version.version} is already this document.",
    )
    return redirect("flow_detail", flow_id=version.flow_id)


def _render(request: HttpRequest, flow: Flow | None, page: BuilderPage) -> HttpResponse:
    return render(request, "flows/builder.html", page.context(flow), status=page.status)
