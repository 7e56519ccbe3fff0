"""The Notifications page: channels (with a "Send test" button for who may manage them),
alert rules, and the delivery log (newest first, paged, filtered by channel and state).
Channels and rules are written through the API (``/api/channels/``, ``/api/alert-rules/``);
the page shows them and what became of each message."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from flows import services
from flows.models import AlertRule, Channel, Notification, NotificationState
from flows.web.views.common import PAGE_SIZE, needs, or_404

VIEW = "flows.view_execution"
MANAGE = "flows.manage_alerts"


@login_required
@needs(VIEW)
def notification_list(request: HttpRequest) -> HttpResponse:
    channels = list(Channel.objects.defer("secret"))
    deliveries = Notification.objects.select_related("channel", "alert").defer("channel__secret")
    chosen = {"channel": request.GET.get("channel", ""), "state": request.GET.get("state", "")}
    if chosen["channel"].isdigit():
        deliveries = deliveries.filter(channel_id=int(chosen["channel"]))
    if chosen["state"] in NotificationState.values:
        deliveries = deliveries.filter(state=chosen["state"])
    page = Paginator(deliveries, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "channels": channels,
        "rules": AlertRule.objects.select_related("flow").prefetch_related("channels"),
        "page": page,
        "states": NotificationState.choices,
        "chosen": chosen,
        "query": urlencode({k: v for k, v in chosen.items() if v}),
    }
    return render(request, "flows/notification_list.html", context)


@login_required
@needs(MANAGE)
@require_POST
def channel_test(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Send a test message on the channel now; the answer comes back as the page's message."""
    outcome = or_404(services.channel_test, channel_id=channel_id)
    if outcome["sent"]:
        messages.success(request, f"Test message sent: {outcome['detail']}")
    else:
        messages.error(request, f"Test message not sent: {outcome['detail']}")
    return redirect("notification_list")
