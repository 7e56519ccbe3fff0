"""``POST /hooks/<slug>``: a webhook delivery. No session, no token, no CSRF: the unguessable
slug and the hook's signature (or token) are the credentials (services/webhooks.py checks
them, records every delivery and starts the execution).

A plain Django view, not DRF: nothing to negotiate, the body must be read raw (signatures are
over its bytes) and at most the limit + 1 bytes of it, and it is the hot path of a sender
that may deliver hundreds a second.
"""

from __future__ import annotations

import math

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from flows import services


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code, "errors": []}, status=status)


def _wait_seconds(request: HttpRequest) -> float | None:
    """``?wait=<seconds>`` as a number from 0 to 30; ValueError for anything else."""
    raw = request.GET.get("wait")
    if raw is None:
        return None
    seconds = float(raw)
    if not math.isfinite(seconds) or not 0 <= seconds <= services.WEBHOOK_MAX_WAIT_SECONDS:
        raise ValueError(raw)
    return seconds


def _size(request: HttpRequest, read: int) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), read)
    except ValueError:
        return read


@csrf_exempt
def receive(request: HttpRequest, slug: str) -> HttpResponse:
    if request.method != "POST":
        response = _error(405, "method_not_allowed", f'method "{request.method}" not allowed')
        response["Allow"] = "POST"
        return response
    try:
        wait = _wait_seconds(request)
    except ValueError:
        limit = services.WEBHOOK_MAX_WAIT_SECONDS
        return _error(400, "invalid", f"wait must be a number of seconds from 0 to {limit}")
    body = request.read(services.webhook_max_body_bytes() + 1)
    answer = services.webhook_deliver(
        slug=slug,
        body=body,
        size=_size(request, len(body)),
        headers=request.headers,
        query=request.GET.dict(),
    )
    if answer.execution_id is None:
        return JsonResponse(answer.body, status=answer.status)
    # The API's documented form, with its slash (the router's reverse() leaves it out).
    status_url = request.build_absolute_uri(f"/api/executions/{answer.execution_id}/")
    body_out = {**answer.body, "status_url": status_url}
    status = answer.status
    if wait is not None and answer.status in (200, 202):
        state = services.execution_wait(execution_id=answer.execution_id, seconds=wait)
        body_out.update(state)
        status = 200 if state["ended"] else 202
    response = JsonResponse(body_out, status=status)
    if status == 202:
        response["Location"] = status_url
    return response
