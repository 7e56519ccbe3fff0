"""Operator pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from flows.models import Execution, Flow


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Flows and the most recent executions, with links to the API docs and the admin."""
    return render(
        request,
        "flows/home.html",
        {
            "flows": Flow.objects.order_by("-updated_at")[:50],
            "executions": Execution.objects.with_flow().order_by("-created_at")[:25],
        },
    )
