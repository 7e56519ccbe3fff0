"""The Limits page: every named concurrency limit with its settings, and the steps in use and
waiting under it by key (defined, changed and deleted with ``/api/limits/`` or ``manage.py
limit``). For whoever reads flows, whose documents name the limits."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from flows import services
from flows.models import ConcurrencyLimit
from flows.web.views.common import needs


@login_required
@needs("flows.view_flow")
def limit_list(request: HttpRequest) -> HttpResponse:
    """Two queries however many limits: the limits, and their use (one GROUP BY)."""
    usage = services.limit_usage()
    rows = []
    for limit in ConcurrencyLimit.objects.all():
        got = usage.get(limit.name, {"in_use": {}, "waiting": {}})
        keys = sorted(set(got["in_use"]) | set(got["waiting"]))
        rows.append(
            {
                "limit": limit,
                "in_use": sum(got["in_use"].values()),
                "waiting": sum(got["waiting"].values()),
                "keys": [(k, got["in_use"].get(k, 0), got["waiting"].get(k, 0)) for k in keys],
            }
        )
    return render(request, "flows/limit_list.html", {"rows": rows})
