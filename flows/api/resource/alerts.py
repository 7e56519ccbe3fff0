"""``/api/channels/``, ``/api/alert-rules/`` and ``/api/notifications/``: where alerts go, when
they are raised, and the delivery log. (Writes: flows/services/alerts.py; sending:
flows/services/notifications.py.)

Who: reading needs ``flows.view_execution`` (as the executions the alerts are about);
creating, changing, deleting and testing channels and rules need ``flows.manage_alerts``
(admins, the editor role). A channel's secret (a webhook's signing key, a Slack URL) is never
read back: a webhook's key is shown once, in the answer that creates the channel.

Bodies are passed to the services as sent and checked there (so ``"5"`` is not taken for
``5``, and the pages refuse what the API refuses, with the same messages).
"""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.resource import examples as ex
from flows.api.resource.base import ResourceViewSet, can
from flows.api.schema import READ, WRITE, error_responses
from flows.models import (
    AlertEvent,
    AlertRule,
    Channel,
    ChannelKind,
    Notification,
    NotificationState,
)


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise services.ServiceError(
            "the body must be a JSON object", errors=[{"field": "", "message": "not an object"}]
        )
    return request.data


# --- channels ---------------------------------------------------------------------------------
class ChannelSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Channel
        fields = ["id", "name", "kind", "config", "created_at", "created_by"]

    def get_created_by(self, channel: Channel) -> str | None:
        return channel.created_by.get_username() if channel.created_by else None


class ChannelCreatedSerializer(ChannelSerializer):
    secret = serializers.CharField(
        help_text="A webhook channel's signing key, shown this once (empty for other kinds)."
    )

    class Meta(ChannelSerializer.Meta):
        fields = [*ChannelSerializer.Meta.fields, "secret"]


class ChannelWriteSerializer(serializers.Serializer):
    """The body of a create (all three) or a change (``name``, ``config``)."""

    name = serializers.CharField(help_text="Unique; 1-100 characters.")
    kind = serializers.ChoiceField(choices=ChannelKind.choices, help_text="Fixed once created.")
    config = serializers.JSONField(
        help_text='email: {"to": ["ops@example.com"]}; webhook: {"url": "https://…"}; slack: '
        '{"url": "https://hooks.slack.com/services/…"} (kept encrypted; shown as its host).'
    )


class ChannelTestSerializer(serializers.Serializer):
    sent = serializers.BooleanField()
    detail = serializers.CharField(help_text="The receiver's answer, or why it failed.")


CHANNEL = {
    "id": 3,
    "name": "ops-webhook",
    "kind": "webhook",
    "config": {"url": "https://hooks.example.com/flows"},
    "created_at": ex.AT,
    "created_by": "alice",
}


@extend_schema(tags=["alerts"])
@extend_schema_view(
    list=extend_schema(
        summary="List notification channels",
        responses={200: ChannelSerializer(many=True), **error_responses(401, 403, 404)},
        examples=[ex.answer("Channels", CHANNEL)],
    ),
    retrieve=extend_schema(
        summary="A notification channel",
        responses={200: ChannelSerializer, **error_responses(*READ)},
        examples=[ex.answer("Channel", CHANNEL)],
    ),
)
class ChannelViewSet(ResourceViewSet):
    """Email lists, signed webhooks and Slack incoming webhooks that alerts are sent to."""

    noun = "channel"
    serializer_class = ChannelSerializer
    action_permissions = {
        "list": perms.VIEW_EXECUTIONS,
        "retrieve": perms.VIEW_EXECUTIONS,
        "create": perms.MANAGE_ALERTS,
        "partial_update": perms.MANAGE_ALERTS,
        "destroy": perms.MANAGE_ALERTS,
        "send_test": perms.MANAGE_ALERTS,
    }
    http_method_names = ["get", "post", "patch", "delete", "head"]

    def get_queryset(self) -> QuerySet[Channel]:
        if not can(self.request, perms.VIEW_EXECUTIONS):
            return Channel.objects.none()
        return Channel.objects.select_related("created_by").defer("secret")

    @extend_schema(
        summary="Create a channel",
        request=ChannelWriteSerializer,
        responses={201: ChannelCreatedSerializer, **error_responses(*WRITE, 409)},
        examples=[
            OpenApiExample(
                "Webhook",
                value={
                    "name": "ops-webhook",
                    "kind": "webhook",
                    "config": {"url": "https://hooks.example.com/flows"},
                },
                request_only=True,
            ),
            ex.answer("Created", {**CHANNEL, "secret": "q3J…"}, 201),
        ],
    )
    def create(self, request: Request) -> Response:
        body = _body(request)
        channel, secret = services.channel_create(
            name=body.get("name"),
            kind=body.get("kind"),
            config=body.get("config"),
            user=request.user,
        )
        data = {**ChannelSerializer(channel).data, "secret": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Rename a channel or change its config",
        request=ChannelWriteSerializer(partial=True),
        responses={200: ChannelSerializer, **error_responses(*WRITE, 404, 409)},
        examples=[
            OpenApiExample("Rename", value={"name": "ops-hook"}, request_only=True),
            ex.answer("Changed", {**CHANNEL, "name": "ops-hook"}),
        ],
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        channel = self.get_object()
        body = _body(request)
        if "kind" in body and body["kind"] != channel.kind:
            raise services.ServiceError(
                "a channel's kind is fixed; create a new channel",
                errors=[{"field": "kind", "message": "cannot be changed"}],
            )
        channel = services.channel_update(
            channel_id=channel.pk, name=body.get("name"), config=body.get("config")
        )
        return Response(ChannelSerializer(channel).data)

    @extend_schema(
        summary="Delete a channel (and its deliveries)",
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(*READ)},
    )
    def destroy(self, request: Request, pk: str) -> Response:
        services.channel_delete(channel_id=self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Send a test message now",
        description="Sent at once, outside the delivery queue; the answer says what happened "
        "(`sent` false with the reason when the channel did not take it). Not logged.",
        request=None,
        responses={200: ChannelTestSerializer, **error_responses(*READ)},
        examples=[ex.answer("Sent", {"sent": True, "detail": "HTTP 200"})],
    )
    @action(
        detail=True, methods=["post"], url_path="test", filter_backends=[], pagination_class=None
    )
    def send_test(self, request: Request, pk: str) -> Response:
        return Response(services.channel_test(channel_id=self.get_object().pk))


# --- rules ------------------------------------------------------------------------------------
class AlertRuleSerializer(serializers.ModelSerializer):
    channels = serializers.SerializerMethodField()

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "flow",
            "event",
            "threshold",
            "channels",
            "cooldown_seconds",
            "enabled",
            "created_at",
        ]

    def get_channels(self, rule: AlertRule) -> list[int]:
        return [c.pk for c in rule.channels.all()]


class AlertRuleWriteSerializer(serializers.Serializer):
    flow = serializers.CharField(allow_null=True, required=False, help_text="null: every flow.")
    event = serializers.ChoiceField(choices=AlertEvent.choices)
    threshold = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="failures_in_a_row: how many; running_longer_than: seconds; else left out.",
    )
    channels = serializers.ListField(child=serializers.IntegerField(), help_text="Channel ids.")
    cooldown_seconds = serializers.IntegerField(
        required=False,
        default=0,
        help_text="Repeats within this many seconds of an alert are counted on it, not sent.",
    )
    enabled = serializers.BooleanField(required=False, help_text="PATCH only.")


RULE = {
    "id": 7,
    "flow": None,
    "event": "execution_failed",
    "threshold": None,
    "channels": [3],
    "cooldown_seconds": 600,
    "enabled": True,
    "created_at": ex.AT,
}
RULE_FIELDS = ("flow", "event", "threshold", "channels", "cooldown_seconds", "enabled")


@extend_schema(tags=["alerts"])
@extend_schema_view(
    list=extend_schema(
        summary="List alert rules",
        responses={200: AlertRuleSerializer(many=True), **error_responses(401, 403, 404)},
        examples=[ex.answer("Rules", RULE)],
    ),
    retrieve=extend_schema(
        summary="An alert rule",
        responses={200: AlertRuleSerializer, **error_responses(*READ)},
        examples=[ex.answer("Rule", RULE)],
    ),
)
class AlertRuleViewSet(ResourceViewSet):
    """When to alert: an event of one flow's executions (or every flow's) to channels."""

    noun = "alert rule"
    serializer_class = AlertRuleSerializer
    action_permissions = {
        "list": perms.VIEW_EXECUTIONS,
        "retrieve": perms.VIEW_EXECUTIONS,
        "create": perms.MANAGE_ALERTS,
        "partial_update": perms.MANAGE_ALERTS,
        "destroy": perms.MANAGE_ALERTS,
    }
    http_method_names = ["get", "post", "patch", "delete", "head"]

    def get_queryset(self) -> QuerySet[AlertRule]:
        if not can(self.request, perms.VIEW_EXECUTIONS):
            return AlertRule.objects.none()
        return AlertRule.objects.prefetch_related("channels")

    def _answer(self, rule: AlertRule, http_status: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=rule.pk)
        return Response(AlertRuleSerializer(fresh).data, status=http_status)

    @extend_schema(
        summary="Create an alert rule",
        request=AlertRuleWriteSerializer,
        responses={201: AlertRuleSerializer, **error_responses(*WRITE)},
        examples=[
            OpenApiExample(
                "Every failure",
                value={
                    "flow": None,
                    "event": "execution_failed",
                    "channels": [3],
                    "cooldown_seconds": 600,
                },
                request_only=True,
            ),
            ex.answer("Created", RULE, 201),
        ],
    )
    def create(self, request: Request) -> Response:
        body = _body(request)
        unknown = sorted(set(body) - set(RULE_FIELDS) - {"enabled"})
        if unknown or "enabled" in body:
            field = unknown[0] if unknown else "enabled"
            raise services.ServiceError(
                f"{field}: unknown field",
                errors=[{"field": field, "message": "unknown field; a new rule is enabled"}],
            )
        rule = services.rule_create(
            flow=body.get("flow"),
            event=body.get("event"),
            threshold=body.get("threshold"),
            channels=body.get("channels"),
            cooldown_seconds=body.get("cooldown_seconds", 0),
        )
        return self._answer(rule, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change an alert rule (the fields given)",
        request=AlertRuleWriteSerializer(partial=True),
        responses={200: AlertRuleSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("Turn off", value={"enabled": False}, request_only=True),
            ex.answer("Changed", {**RULE, "enabled": False}),
        ],
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        rule = self.get_object()
        body = _body(request)
        unknown = sorted(set(body) - set(RULE_FIELDS))
        if unknown:
            raise services.ServiceError(
                f"{unknown[0]}: unknown field",
                errors=[{"field": f, "message": "unknown field"} for f in unknown],
            )
        rule = services.rule_update(rule_id=rule.pk, **body)
        return self._answer(rule)

    @extend_schema(
        summary="Delete an alert rule",
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(*READ)},
    )
    def destroy(self, request: Request, pk: str) -> Response:
        services.rule_delete(rule_id=self.get_object().pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- the delivery log -------------------------------------------------------------------------
class NotificationFilter(django_filters.FilterSet):
    """``?channel=3&state=retrying&state=given_up``."""

    channel = django_filters.NumberFilter(field_name="channel_id", help_text="Only this channel.")
    state = django_filters.MultipleChoiceFilter(
        choices=NotificationState.choices,
        help_text="Only deliveries in this state; repeat the parameter for several.",
    )

    class Meta:
        model = Notification
        fields = ["channel", "state"]


class NotificationSerializer(serializers.ModelSerializer):
    channel_name = serializers.CharField(source="channel.name")
    alert_count = serializers.SerializerMethodField(
        help_text="How many times the alert happened (repeats within the rule's cooldown are "
        "counted on it, not sent)."
    )

    class Meta:
        model = Notification
        fields = [
            "id",
            "channel",
            "channel_name",
            "state",
            "attempts",
            "created_at",
            "next_attempt_at",
            "sent_at",
            "last_error",
            "alert",
            "alert_count",
            "payload",
        ]

    def get_alert_count(self, notification: Notification) -> int | None:
        return notification.alert.count if notification.alert else None


NOTIFICATION = {
    "id": 41,
    "channel": 3,
    "channel_name": "ops-webhook",
    "state": "retrying",
    "attempts": 2,
    "created_at": ex.AT,
    "next_attempt_at": "2026-11-28T08:00:10Z",
    "sent_at": None,
    "last_error": "HTTP 503: Service Unavailable",
    "alert": 12,
    "alert_count": 1,
    "payload": {"event": "execution_failed", "flow_id": "etl", "title": "etl: an execution failed"},
}


@extend_schema(tags=["alerts"])
@extend_schema_view(
    list=extend_schema(
        summary="The delivery log (newest first)",
        responses={200: NotificationSerializer(many=True), **error_responses(400, 401, 403, 404)},
        examples=[ex.answer("Deliveries", NOTIFICATION)],
    ),
    retrieve=extend_schema(
        summary="One delivery",
        responses={200: NotificationSerializer, **error_responses(*READ)},
        examples=[ex.answer("Delivery", NOTIFICATION)],
    ),
)
class NotificationViewSet(ResourceViewSet):
    """Every message to a channel: pending, sending, retrying (with the last error), sent,
    or given up."""

    noun = "notification"
    serializer_class = NotificationSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = NotificationFilter
    action_permissions = {"list": perms.VIEW_EXECUTIONS, "retrieve": perms.VIEW_EXECUTIONS}

    def get_queryset(self) -> QuerySet[Notification]:
        if not can(self.request, perms.VIEW_EXECUTIONS):
            return Notification.objects.none()
        return Notification.objects.select_related("channel", "alert").defer("channel__secret")
