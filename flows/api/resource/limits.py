"""``/api/limits/``: named concurrency limits that tasks take (``"limits": ["partner_api"]``),
with what is in use and waiting under each, per key. (Writes: flows/services/limits.py; the
slots: flows/engine/limits.py.)

Who: reading needs ``flows.view_flow``, as reading flows does (flow documents name the
limits); defining, changing and deleting need ``flows.manage_limit`` (admins, the
limits_admin role).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.errors import ErrorSerializer
from flows.api.resource import examples as ex
from flows.api.resource.base import ResourceViewSet, can
from flows.api.schema import READ, WRITE, error_responses
from flows.models import ConcurrencyLimit, LimitFairness


class RateSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, help_text="Starts allowed in the window.")
    per_seconds = serializers.FloatField(help_text="The window, in seconds (sliding).")


USAGE = serializers.DictField(
    child=serializers.IntegerField(), help_text='Steps by key ("" without a key expression).'
)


class LimitSerializer(serializers.ModelSerializer):
    """A limit with its use: ``in_use`` and ``waiting`` steps by key ("" without a key)."""

    rate = serializers.SerializerMethodField()
    in_use = serializers.SerializerMethodField()
    waiting = serializers.SerializerMethodField()

    class Meta:
        model = ConcurrencyLimit
        fields = [
            "name", "max_in_flight", "rate", "key", "fairness", "description",
            "in_use", "waiting", "created_at", "updated_at",
        ]  # fmt: skip

    @extend_schema_field(RateSerializer(allow_null=True))
    def get_rate(self, limit: ConcurrencyLimit) -> dict[str, Any] | None:
        if not limit.rate_count or not limit.rate_per_seconds:
            return None
        return {"count": limit.rate_count, "per_seconds": limit.rate_per_seconds}

    def _usage(self, limit: ConcurrencyLimit) -> dict[str, dict[str, int]]:
        usage = self.context.get("usage", {})
        return usage.get(limit.name, {"in_use": {}, "waiting": {}})

    @extend_schema_field(USAGE)
    def get_in_use(self, limit: ConcurrencyLimit) -> dict[str, int]:
        return self._usage(limit)["in_use"]

    @extend_schema_field(USAGE)
    def get_waiting(self, limit: ConcurrencyLimit) -> dict[str, int]:
        return self._usage(limit)["waiting"]


class LimitWriteSerializer(serializers.Serializer):
    """What a limit is defined with (the service checks it, each problem at its field)."""

    name = serializers.CharField(help_text=services.limits.NAME_HELP)
    max_in_flight = serializers.IntegerField(
        min_value=1, max_value=services.limits.MAX_IN_FLIGHT, help_text="Steps at once."
    )
    rate = RateSerializer(
        required=False, allow_null=True, help_text="At most `count` starts per `per_seconds`."
    )
    key = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="CEL over the step's resolved `parameters`: groups the waiting steps.",
    )
    fairness = serializers.ChoiceField(
        choices=LimitFairness.choices,
        required=False,
        help_text="`fifo`: oldest first; `round_robin`: the key with the fewest steps in "
        "flight first.",
    )
    description = serializers.CharField(required=False, allow_blank=True)


class LimitChangeSerializer(LimitWriteSerializer):
    name = serializers.CharField(required=False, help_text="Cannot change.")
    max_in_flight = serializers.IntegerField(required=False, min_value=1)


TAKEN = OpenApiResponse(
    description="A limit of that name exists (`conflict`).",
    response=ErrorSerializer,
    examples=[
        OpenApiExample(
            "Taken",
            value={
                "detail": "a limit named 'partner_api' exists; change it or delete it",
                "code": "conflict",
                "errors": [{"field": "name", "message": "taken"}],
            },
            status_codes=[409],
        )
    ],
)
LIMIT = {
    "name": "partner_api",
    "max_in_flight": 10,
    "rate": {"count": 20, "per_seconds": 1.0},
    "key": "parameters.tenant",
    "fairness": "round_robin",
    "description": "the partner's API: 10 calls at once, 20 a second",
    "in_use": {"acme": 7, "globex": 3},
    "waiting": {"acme": 120},
    "created_at": ex.AT,
    "updated_at": ex.AT,
}


@extend_schema(tags=["limits"])
@extend_schema_view(
    list=extend_schema(
        summary="List concurrency limits, with the steps in use and waiting by key",
        responses={200: LimitSerializer(many=True), **error_responses(401, 403, 404)},
        examples=[ex.answer("Limits", LIMIT)],
    ),
    retrieve=extend_schema(
        summary="A concurrency limit, with the steps in use and waiting by key",
        responses={200: LimitSerializer, **error_responses(*READ)},
        examples=[ex.answer("Limit", LIMIT)],
    ),
)
class LimitViewSet(
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    ResourceViewSet,
):
    """Named limits on what tasks call: at most so many steps at once, an optional rate."""

    noun = "limit"
    serializer_class = LimitSerializer
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    action_permissions = {
        "list": perms.VIEW_FLOWS,
        "retrieve": perms.VIEW_FLOWS,
        "create": perms.MANAGE_LIMITS,
        "update": perms.MANAGE_LIMITS,
        "partial_update": perms.MANAGE_LIMITS,
        "destroy": perms.MANAGE_LIMITS,
    }

    def get_queryset(self) -> QuerySet[ConcurrencyLimit]:
        if not can(self.request, perms.VIEW_FLOWS):
            return ConcurrencyLimit.objects.none()
        return ConcurrencyLimit.objects.all()

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        # One query for the use of every limit on the page, not one per limit.
        context["usage"] = services.limit_usage()
        return context

    def _answer(self, limit: ConcurrencyLimit, http_status: int = status.HTTP_200_OK) -> Response:
        context = {"usage": services.limit_usage([limit.name])}
        return Response(LimitSerializer(limit, context=context).data, status=http_status)

    def _body(self) -> dict[str, Any]:
        if not isinstance(self.request.data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["the body must be a JSON object"]}
            )
        return dict(self.request.data)

    @extend_schema(
        summary="Define a concurrency limit",
        request=LimitWriteSerializer,
        responses={
            201: LimitSerializer,
            409: TAKEN,
            **error_responses(*WRITE),
        },
        examples=[
            OpenApiExample(
                "Partner API",
                value={
                    "name": "partner_api",
                    "max_in_flight": 10,
                    "rate": {"count": 20, "per_seconds": 1},
                },
                request_only=True,
            ),
            ex.answer("Defined", LIMIT, 201),
        ],
    )
    def create(self, request: Request) -> Response:
        limit = services.limit_create(data=self._body())
        return self._answer(limit, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a concurrency limit (the fields given; its name stays)",
        description="Slots a larger `max_in_flight` frees go to the waiting steps at once.",
        request=LimitChangeSerializer,
        responses={200: LimitSerializer, **error_responses(*WRITE, 404)},
        examples=[
            OpenApiExample("Wider", value={"max_in_flight": 20}, request_only=True),
            ex.answer("Changed", LIMIT),
        ],
    )
    def update(self, request: Request, name: str, partial: bool = False) -> Response:
        limit = self.get_object()
        limit = services.limit_update(name=limit.name, data=self._body())
        return self._answer(limit)

    @extend_schema(
        summary="Change a concurrency limit (the fields given; its name stays)",
        request=LimitChangeSerializer,
        responses={200: LimitSerializer, **error_responses(*WRITE, 404)},
        examples=[ex.answer("Changed", LIMIT)],
    )
    def partial_update(self, request: Request, name: str) -> Response:
        return self.update(request, name, partial=True)

    @extend_schema(
        summary="Delete a concurrency limit",
        description="Steps waiting for it run; tasks that name it run unlimited by it (storing "
        "a flow that names it is refused until it is defined again).",
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(*READ)},
    )
    def destroy(self, request: Request, name: str) -> Response:
        limit = self.get_object()
        services.limit_delete(name=limit.name)
        return Response(status=status.HTTP_204_NO_CONTENT)
