"""``GET /metrics``: the Prometheus text format, protected like the API.

Allowed when any of these holds, else 401:
1. ``METRICS_PUBLIC=1`` (the endpoint is open, e.g. only reachable on a private network);
2. ``Authorization: Bearer <METRICS_TOKEN>`` (what a Prometheus scrape job sends);
3. a logged-in session, or an API token (``Authorization: Token <key>`` or ``Bearer <key>``)
   as for the API.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from rest_framework.exceptions import AuthenticationFailed

from flows.api.authentication import PrebuiltTokenAuthentication
from flows.metrics.collector import FlowCollector


def _authorized(request: HttpRequest) -> bool:
    if settings.METRICS_PUBLIC:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    token = settings.METRICS_TOKEN
    if (
        scheme.lower() == "bearer"
        and token
        and hmac.compare_digest(credentials.strip().encode(), token.encode())
    ):
        return True
    if request.user.is_authenticated:
        return True
    try:
        # Not the metrics token: maybe an API token, sent as Token or Bearer.
        return PrebuiltTokenAuthentication().authenticate(request) is not None  # type: ignore[arg-type]
    except AuthenticationFailed:
        return False


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = JsonResponse(
            {
                "detail": "Authentication credentials were not provided or are not valid.",
                "code": "not_authenticated",
                "errors": [],
            },
            status=401,
        )
        scheme = 'Bearer realm="metrics"' if settings.METRICS_TOKEN else "Token"
        response["WWW-Authenticate"] = scheme
        return response
    # A registry per scrape holding only our collector: no per-process default collectors,
    # whose figures would differ from one web process to the next.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlowCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
