"""The site's root: the dashboard, and ``/favicon.ico``."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.utils import timezone

from flows.models import Execution, Flow
from flows.web import charts, presenters
from flows.web.views.common import needs


def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for whatever a page links: our SVG icon (its
    static URL carries a content hash in production, so the redirect itself is cached a day)."""
    response = redirect(static("flows/favicon.svg"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


@login_required
@needs("flows.view_execution")
def home(request: HttpRequest) -> HttpResponse:
    """Executions by status, recent executions, failing flows and the workers' health."""
    now = timezone.now()
    executions = Execution.objects
    context = {
        "status_rows": presenters.status_table(
            executions.status_counts(now - timedelta(days=1)),
            executions.status_counts(now - timedelta(days=7)),
        ),
        "recent": executions.for_list().filter(parent_step__isnull=True)[:10],
        "failing": executions.failing_flows(now - timedelta(days=7)),
        "workers": presenters.worker_health(),
        "flow_count": Flow.objects.count(),
        "charts": charts.dashboard_charts(now),
    }
    return render(request, "flows/dashboard.html", context)
