"""``/api/flows/{id}/webhooks/``: a flow's webhooks (list, create, delete, rotate the secret)
and their deliveries. Actions of FlowViewSet (mixed in), so they share its flow look-up.

Who: listing hooks and deliveries needs ``flows.view_flow``; creating, deleting and rotating
need ``flows.change_flow`` (a hook starts the flow from outside, as editing it changes what
runs). A hook's ``url`` is a credential (for a ``token`` hook without a header, the only
one), so it is shown to those who may manage hooks, null to others. The plain ``secret`` is
in the answer of create and rotate only; afterwards ``"***"``.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from flows import selectors, services
from flows.api import permissions as perms
from flows.api.errors import ErrorSerializer
from flows.api.resource import examples as ex
from flows.api.resource.base import can
from flows.api.schema import READ, WRITE, error_responses
from flows.models import (
    DeliveryOutcome,
    Webhook,
    WebhookAlgorithm,
    WebhookAuth,
    WebhookDelivery,
    WebhookEncoding,
    WebhookPreset,
)

MASK = "***"
PREVIEW_CHARS = 1024
HOOK_ID = OpenApiParameter("hook_id", int, OpenApiParameter.PATH, description="The hook's id.")


class WebhookSerializer(serializers.ModelSerializer):
    """A hook as every answer shows it; ``secret`` is plain only in create's and rotate's."""

    url = serializers.SerializerMethodField(help_text="POST deliveries here (null: not yours).")
    secret = serializers.SerializerMethodField(
        help_text="The plain secret once (create, rotate); then *** (null: the hook has none)."
    )
    has_previous_secret = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Webhook
        fields = [
            "id",
            "flow",
            "url",
            "description",
            "auth",
            "preset",
            "header",
            "algorithm",
            "prefix",
            "encoding",
            "tolerance_seconds",
            "secret",
            "has_previous_secret",
            "rotated_at",
            "input_mapping",
            "dedup_header",
            "dedup_path",
            "dedup_window_seconds",
            "rate_limit_per_minute",
            "raw_text",
            "enabled",
            "created_at",
            "created_by",
        ]

    def get_url(self, hook: Webhook) -> str | None:
        request = self.context["request"]
        if not can(request, perms.CHANGE_FLOWS):
            return None
        return request.build_absolute_uri(reverse("webhook_receive", args=[hook.slug]))

    def get_secret(self, hook: Webhook) -> str | None:
        plain = self.context.get("plain_secret")
        if plain:
            return plain
        return MASK if hook.secret else None

    def get_has_previous_secret(self, hook: Webhook) -> bool:
        return bool(hook.previous_secret)

    def get_created_by(self, hook: Webhook) -> str | None:
        return hook.created_by.get_username() if hook.created_by else None


def _text(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(required=False, allow_blank=True, allow_null=True, **kwargs)


def _number(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(required=False, allow_null=True, **kwargs)


class WebhookCreateSerializer(serializers.Serializer):
    auth = serializers.ChoiceField(WebhookAuth.choices)
    preset = serializers.ChoiceField(
        WebhookPreset.choices,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="github: X-Hub-Signature-256, dedup on X-GitHub-Delivery; stripe: "
        "Stripe-Signature with its timestamp, dedup on the event's id.",
    )
    header = _text(
        max_length=100,
        help_text="hmac: the signature's header; token: the header carrying the secret "
        "(left out: the URL alone is the credential).",
    )
    algorithm = serializers.ChoiceField(
        WebhookAlgorithm.choices, required=False, allow_null=True, allow_blank=True
    )
    prefix = _text(max_length=40, help_text='Before the digest, e.g. "sha256=".')
    encoding = serializers.ChoiceField(
        WebhookEncoding.choices, required=False, allow_null=True, allow_blank=True
    )
    tolerance_seconds = _number(help_text="Stripe: how old a timestamp may be (default 300).")
    input_mapping = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="The input, with ${body.x}, ${headers.X-Name} and ${query.x} references; "
        "left out: the body is the input.",
    )
    dedup_header = _text(max_length=100, help_text="The header carrying a delivery id.")
    dedup_path = _text(max_length=200, help_text="Or a path into the body: data.id")
    dedup_window_seconds = _number(help_text="How long a delivery id is remembered (1 day).")
    rate_limit_per_minute = _number(help_text="Deliveries past it in a minute are 429.")
    raw_text = serializers.BooleanField(
        required=False, default=False, help_text='Take a non-JSON body as {"body": text}.'
    )
    description = _text(max_length=200)


class WebhookRotateSerializer(serializers.Serializer):
    drop_previous = serializers.BooleanField(
        required=False,
        default=False,
        help_text="true: stop accepting the previous secret now (and make no new one).",
    )


class DeliverySerializer(serializers.ModelSerializer):
    payload_preview = serializers.SerializerMethodField(
        help_text=f"The body's first {PREVIEW_CHARS} characters as kept."
    )
    outcome = serializers.ChoiceField(DeliveryOutcome.choices)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "received_at",
            "outcome",
            "http_status",
            "reason",
            "delivery_id",
            "execution",
            "payload_size",
            "payload_preview",
        ]

    def get_payload_preview(self, delivery: WebhookDelivery) -> str:
        return delivery.payload[:PREVIEW_CHARS]


HOOK = {
    "id": 3,
    "flow": "example_flow",
    "url": "https://flows.example.org/hooks/kq3V9oE1wK0bQk4mJ2N8rT6yXcZ5aPd",
    "description": "pushes to main",
    "auth": "hmac",
    "preset": "github",
    "header": "X-Hub-Signature-256",
    "algorithm": "sha256",
    "prefix": "sha256=",
    "encoding": "hex",
    "tolerance_seconds": 300,
    "secret": MASK,
    "has_previous_secret": False,
    "rotated_at": None,
    "input_mapping": {"event": "${headers.X-GitHub-Event}", "ref": "${body.ref}"},
    "dedup_header": "X-GitHub-Delivery",
    "dedup_path": "",
    "dedup_window_seconds": 86400,
    "rate_limit_per_minute": None,
    "raw_text": False,
    "enabled": True,
    "created_at": ex.AT,
    "created_by": "erin",
}
DELIVERY = {
    "id": 17,
    "received_at": ex.AT,
    "outcome": "refused",
    "http_status": 401,
    "reason": "the X-Hub-Signature-256 signature does not match the body",
    "delivery_id": "",
    "execution": None,
    "payload_size": 212,
    "payload_preview": '{"ref": "refs/heads/main", …}',
}
NO_KEYS = OpenApiResponse(
    ErrorSerializer,
    description="No FLOW_SECRET_KEYS configured to encrypt the hook's secret "
    "(`secret_keys_missing`).",
    examples=[
        OpenApiExample(
            "No key",
            value={
                "detail": "secrets cannot be stored: no encryption key; set FLOW_SECRET_KEYS to "
                "a Fernet key (…)",
                "code": "secret_keys_missing",
                "errors": [{"field": "secret", "message": "secrets cannot be stored: …"}],
            },
            status_codes=[409],
        )
    ],
)
NO_SECRET = OpenApiResponse(
    ErrorSerializer,
    description="Invalid body, or the hook has no secret to rotate.",
    examples=[
        OpenApiExample(
            "No secret",
            value={
                "detail": "this hook has no secret (its URL alone is the credential); delete it "
                "and create another for a new URL",
                "code": "invalid",
                "errors": [{"field": "auth", "message": "no secret to rotate"}],
            },
            status_codes=[400],
        )
    ],
)


class WebhookActions:
    """The webhook actions of FlowViewSet (``get_object`` is the flow, scoped and 404)."""

    webhook_permissions = {
        "webhooks": perms.VIEW_FLOWS,
        "create_webhook": perms.CHANGE_FLOWS,
        "delete_webhook": perms.CHANGE_FLOWS,
        "rotate_webhook": perms.CHANGE_FLOWS,
        "webhook_deliveries": perms.VIEW_FLOWS,
    }

    def _hook_answer(self, hook: Webhook, plain: str, http_status: int) -> Response:
        context = {"request": self.request, "plain_secret": plain}  # type: ignore[attr-defined]
        return Response(WebhookSerializer(hook, context=context).data, status=http_status)

    @extend_schema(
        tags=["webhooks"],
        summary="The flow's webhooks",
        responses={200: WebhookSerializer(many=True), **error_responses(*READ)},
        examples=[ex.answer("Webhooks", HOOK)],
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def webhooks(self, request: Request, pk: str) -> Response:
        flow = self.get_object()  # type: ignore[attr-defined]
        page = self.paginate_queryset(selectors.webhook_list(flow=flow))  # type: ignore[attr-defined]
        data = WebhookSerializer(page, many=True, context={"request": request}).data
        return self.get_paginated_response(data)  # type: ignore[attr-defined]

    @extend_schema(
        tags=["webhooks"],
        summary="Create a webhook (its secret is in this answer only)",
        description='`{"auth": "hmac", "preset": "github"}`, `{"auth": "hmac", '
        '"preset": "stripe"}`, `{"auth": "hmac", "header", "algorithm", "prefix"}` or '
        '`{"auth": "token"}` (with a `header` for a shared secret). Deliveries go to `url`.',
        request=WebhookCreateSerializer,
        responses={201: WebhookSerializer, 409: NO_KEYS, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("GitHub", value={"auth": "hmac", "preset": "github"}, request_only=True),
            OpenApiExample(
                "Generic",
                value={
                    "auth": "hmac",
                    "header": "X-Signature",
                    "algorithm": "sha256",
                    "prefix": "sha256=",
                    "input_mapping": {"order": "${body.order_id}"},
                    "dedup_header": "X-Delivery-Id",
                    "rate_limit_per_minute": 600,
                },
                request_only=True,
            ),
            ex.answer("Created", {**HOOK, "secret": "p3QxN0c9…"}, 201),
        ],
    )
    @webhooks.mapping.post
    def create_webhook(self, request: Request, pk: str) -> Response:
        flow = self.get_object()  # type: ignore[attr-defined]
        body = WebhookCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = {k: v for k, v in body.validated_data.items() if k in request.data}
        hook, plain = services.webhook_create(flow_id=flow.id, user=request.user, **given)
        return self._hook_answer(hook, plain, status.HTTP_201_CREATED)

    @extend_schema(
        tags=["webhooks"],
        summary="Delete a webhook (its URL answers 404 from now on)",
        parameters=[HOOK_ID],
        request=None,
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(*READ)},
    )
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"webhooks/(?P<hook_id>[^/]+)",
        filter_backends=[],
        pagination_class=None,
    )
    def delete_webhook(self, request: Request, pk: str, hook_id: str) -> Response:
        flow = self.get_object()  # type: ignore[attr-defined]
        services.webhook_delete(flow_id=flow.id, hook_id=hook_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        tags=["webhooks"],
        summary="Rotate the webhook's secret (the previous one stays valid until dropped)",
        description="A new secret, in this answer only; the current one becomes the previous "
        "one, still accepted until the next rotation or `drop_previous: true`, which drops it "
        "now and makes no new secret.",
        parameters=[HOOK_ID],
        request=WebhookRotateSerializer,
        responses={
            200: WebhookSerializer,
            409: NO_KEYS,
            **error_responses(401, 403, 404, 413, 415),
            400: NO_SECRET,
        },
        examples=[ex.answer("Rotated", {**HOOK, "secret": "Zr8…", "has_previous_secret": True})],
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"webhooks/(?P<hook_id>[^/]+)/rotate",
        filter_backends=[],
        pagination_class=None,
    )
    def rotate_webhook(self, request: Request, pk: str, hook_id: str) -> Response:
        flow = self.get_object()  # type: ignore[attr-defined]
        body = WebhookRotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        hook, plain = services.webhook_rotate(
            flow_id=flow.id, hook_id=hook_id, drop_previous=body.validated_data["drop_previous"]
        )
        return self._hook_answer(hook, plain, status.HTTP_200_OK)

    @extend_schema(
        tags=["webhooks"],
        summary="The webhook's deliveries, newest first (accepted, duplicate, refused)",
        parameters=[HOOK_ID],
        responses={200: DeliverySerializer(many=True), **error_responses(*READ)},
        examples=[ex.answer("Deliveries", DELIVERY)],
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"webhooks/(?P<hook_id>[^/]+)/deliveries",
        filter_backends=[],
    )
    def webhook_deliveries(self, request: Request, pk: str, hook_id: str) -> Response:
        flow = self.get_object()  # type: ignore[attr-defined]
        hook = selectors.webhook_get(flow_id=flow.id, hook_id=hook_id)
        page = self.paginate_queryset(selectors.webhook_delivery_list(hook=hook))  # type: ignore[attr-defined]
        return self.get_paginated_response(  # type: ignore[attr-defined]
            DeliverySerializer(page, many=True).data
        )
