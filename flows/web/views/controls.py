"""What an operator does to an execution from its page, each a POST that redirects back:
execute, cancel, pause, resume, redrive, rerun, and answering a wait for a signal."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from flows import services
from flows.web import presenters
from flows.web.forms import SignalForm
from flows.web.views.common import execution_or_404, explain, needs, or_404

# Each execution action: the permission it needs (granted by the roles, migrations 0005 and
# 0006), the service it calls and what the page says after it. Answering a signal needs
# SIGNAL (migration 0010), not START: an approver may approve without running anything.
START, CANCEL = "flows.start_execution", "flows.cancel_execution"
SIGNAL = "flows.signal_execution"
EXECUTION_ACTIONS: dict[str, tuple[str, Any, str]] = {
    "execute": (START, services.execution_start, "Execution started."),
    "resume": (START, services.execution_resume, "Resumed."),
    "redrive": (START, services.execution_redrive, "Redriven from the step that stopped it."),
    "rerun": (START, services.execution_rerun, "Started a new execution of the same version."),
    "cancel": (CANCEL, services.execution_cancel, "Cancel requested."),
    "pause": (
        CANCEL,
        services.execution_pause,
        "Pausing: the step in flight finishes, then it waits.",
    ),
}
# What the page says once the service took an answer to a signal.
SIGNAL_DONE = {
    "approve": "Approved: the execution goes on.",
    "reject": "Rejected: the step fails and its failure route applies.",
}


@login_required
@needs("flows.view_execution")
@require_POST
def execution_action(request: HttpRequest, execution_id: uuid.UUID, action: str) -> HttpResponse:
    """execute (a CREATED one), cancel, pause, resume, redrive, or rerun (a new execution of
    the same version)."""
    if action not in EXECUTION_ACTIONS:
        raise Http404(f"unknown action {action}")
    permission, service, done = EXECUTION_ACTIONS[action]
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"your role may not {action} executions")
    try:
        if action == "rerun":  # a new execution: show that one
            new = or_404(services.execution_rerun, execution_id=execution_id, user=request.user)
            execution_id = new.id
        else:
            or_404(service, execution_id=execution_id)
        messages.success(request, done)
    except services.ServiceError as exc:
        messages.error(request, explain(exc))
    return redirect("execution_detail", execution_id=execution_id)


@login_required
@needs("flows.view_execution")
@require_POST
def execution_signal(request: HttpRequest, execution_id: uuid.UUID) -> HttpResponse:
    """Approve or reject the step that waits for a signal (the API's signal, as a form)."""
    if not request.user.has_perm(SIGNAL):
        raise PermissionDenied(f"your role may not answer signals (needs permission '{SIGNAL}')")
    form = SignalForm(request.POST)
    if form.is_valid():
        answer = form.cleaned_data  # name, decision, payload, comment
        try:
            or_404(
                services.execution_signal, execution_id=execution_id, user=request.user, **answer
            )
            messages.success(request, SIGNAL_DONE[answer["decision"]])
        except services.ServiceError as exc:
            messages.error(request, explain(exc))
    elif form.understood():
        # A payload or comment to fix: the page again, the error next to its field and what
        # was typed kept; nothing was sent.
        view = presenters.execution_view(execution_or_404(execution_id))
        context = {"view": view, "signal_form": form}
        return render(request, "flows/execution_detail.html", context, status=400)
    else:
        # A name or decision the page never sends: said at the top, as the service would.
        messages.error(request, "That answer was not understood; use Approve or Reject.")
    return redirect("execution_detail", execution_id=execution_id)
