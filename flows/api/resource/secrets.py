"""``/api/secrets/``: the secret store's names and metadata, and writing values that nobody
reads back. (Values: flows/vault.py; writes: flows/services/secrets.py.)

Who: listing names needs ``flows.view_flow``, as reading flows does (flow documents reference
the names anyway, and the builder suggests them); creating, replacing and deleting need
``flows.manage_secret`` (admins, the secrets_admin role). No action answers a value.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.errors import ErrorSerializer
from flows.api.resource import examples as ex
from flows.api.resource.base import ResourceViewSet, can
from flows.api.schema import READ, WRITE, error_responses
from flows.models import Secret
from flows.vault import NAME_HELP


class SecretSerializer(serializers.ModelSerializer):
    """A secret as every answer shows it: never its value."""

    created_by = serializers.SerializerMethodField()
    updated_by = serializers.SerializerMethodField()

    class Meta:
        model = Secret
        fields = ["name", "description", "created_at", "created_by", "updated_at", "updated_by"]

    def get_created_by(self, secret: Secret) -> str | None:
        return secret.created_by.get_username() if secret.created_by else None

    def get_updated_by(self, secret: Secret) -> str | None:
        return secret.updated_by.get_username() if secret.updated_by else None


class TextField(serializers.CharField):
    """A CharField that takes only JSON strings: DRF's would store the number 12 as "12"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _value(**kwargs: Any) -> serializers.CharField:
    # Kept exactly as sent (a trailing newline can be part of a key); the service checks it.
    return TextField(
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text="The plain value; stored encrypted and never shown again.",
        **kwargs,
    )


def _description(**kwargs: Any) -> serializers.CharField:
    return TextField(allow_blank=True, trim_whitespace=False, **kwargs)


class SecretCreateSerializer(serializers.Serializer):
    name = TextField(trim_whitespace=False, help_text=f"Name: {NAME_HELP}.")
    value = _value()
    description = _description(required=False, default="")


class SecretReplaceSerializer(serializers.Serializer):
    value = _value()
    description = _description(required=False, help_text="Left out: the description stays.")


class SecretDescribeSerializer(serializers.Serializer):
    description = _description()


SECRET = {
    "name": "billing_token",
    "description": "API key of the billing service",
    "created_at": ex.AT,
    "created_by": "alice",
    "updated_at": "2026-11-28T09:30:00Z",
    "updated_by": "bob",
}
NO_KEYS = OpenApiResponse(
    description="No FLOW_SECRET_KEYS configured (`secret_keys_missing`; the message says what "
    "to set), or a name taken (`conflict`).",
    response=ErrorSerializer,
    examples=[
        OpenApiExample(
            "No key",
            value={
                "detail": "secrets cannot be stored: no encryption key; set FLOW_SECRET_KEYS to "
                "a Fernet key (…)",
                "code": "secret_keys_missing",
                "errors": [],
            },
            status_codes=[409],
        )
    ],
)


@extend_schema(tags=["secrets"])
@extend_schema_view(
    list=extend_schema(
        summary="List secrets (names and metadata, never values)",
        responses={200: SecretSerializer(many=True), **error_responses(401, 403, 404)},
        examples=[ex.answer("Secrets", SECRET)],
    ),
    retrieve=extend_schema(
        summary="A secret's metadata (never its value)",
        responses={200: SecretSerializer, **error_responses(*READ)},
        examples=[ex.answer("Secret", SECRET)],
    ),
)
class SecretViewSet(
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ResourceViewSet,
):
    """Secrets by name. Values go in (write-only) and never come out."""

    noun = "secret"
    serializer_class = SecretSerializer
    lookup_field = "name"
    action_permissions = {
        "list": perms.VIEW_FLOWS,
        "retrieve": perms.VIEW_FLOWS,
        "create": perms.MANAGE_SECRETS,
        "update": perms.MANAGE_SECRETS,
        "partial_update": perms.MANAGE_SECRETS,
        "destroy": perms.MANAGE_SECRETS,
    }

    def get_queryset(self) -> QuerySet[Secret]:
        if not can(self.request, perms.VIEW_FLOWS):
            return Secret.objects.none()
        return Secret.objects.listed()

    def _answer(self, secret: Secret, http_status: int = status.HTTP_200_OK) -> Response:
        fresh = Secret.objects.listed().get(pk=secret.pk)
        return Response(SecretSerializer(fresh).data, status=http_status)

    def _valid(self, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    @extend_schema(
        summary="Store a secret",
        request=SecretCreateSerializer,
        responses={201: SecretSerializer, 409: NO_KEYS, **error_responses(*WRITE)},
        examples=[
            OpenApiExample(
                "Token",
                value={"name": "billing_token", "value": "sk_live_…", "description": "billing"},
                request_only=True,
            ),
            ex.answer("Stored", SECRET, 201),
        ],
    )
    def create(self, request: Request) -> Response:
        data = self._valid(SecretCreateSerializer)
        secret = services.secret_create(**data, user=request.user)
        return self._answer(secret, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Replace a secret's value (and its description, when given)",
        request=SecretReplaceSerializer,
        responses={200: SecretSerializer, 409: NO_KEYS, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("New value", value={"value": "sk_live_…"}, request_only=True),
            ex.answer("Replaced", SECRET),
        ],
    )
    def update(self, request: Request, name: str) -> Response:
        secret = self.get_object()
        data = self._valid(SecretReplaceSerializer)
        secret = services.secret_replace(name=secret.name, **data, user=request.user)
        return self._answer(secret)

    @extend_schema(
        summary="Change a secret's description (the value stays)",
        request=SecretDescribeSerializer,
        responses={200: SecretSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("Describe", value={"description": "billing, prod"}, request_only=True),
            ex.answer("Described", SECRET),
        ],
    )
    def partial_update(self, request: Request, name: str) -> Response:
        secret = self.get_object()
        if isinstance(request.data, dict) and "value" in request.data:
            # PATCH changes the description only; silently ignoring a value would leave the
            # old one in use while the caller believes it replaced.
            raise serializers.ValidationError(
                {"value": ["PATCH changes the description only; PUT replaces the value"]}
            )
        data = self._valid(SecretDescribeSerializer)
        secret = services.secret_describe(name=secret.name, **data, user=request.user)
        return self._answer(secret)

    @extend_schema(
        summary="Delete a secret",
        description="Steps that reference it fail from then on (unless the environment "
        "provides FLOW_SECRET_<NAME>).",
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(*READ)},
    )
    def destroy(self, request: Request, name: str) -> Response:
        secret = self.get_object()
        services.secret_delete(name=secret.name)
        return Response(status=status.HTTP_204_NO_CONTENT)
