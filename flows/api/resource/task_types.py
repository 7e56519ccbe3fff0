"""``/api/task-types/``: the registered task types, from the plugin registry."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.resource import examples as ex
from flows.api.resource.serializers import TaskTypeSerializer
from flows.api.schema import READ, error_responses
from flows.registry import default_registry


@extend_schema(tags=["task types"])
@extend_schema_view(
    list=extend_schema(
        summary="Every registered task type",
        responses={200: TaskTypeSerializer(many=True), **error_responses(401, 403)},
        examples=[ex.answer("Task types", ex.TASK_TYPE)],
    ),
    retrieve=extend_schema(
        summary="One task type",
        responses={200: TaskTypeSerializer, **error_responses(*READ)},
        examples=[ex.answer("Task type", ex.TASK_TYPE)],
    ),
)
class TaskTypeViewSet(viewsets.ViewSet):
    """Task types come from the plugin registry, not the database: there is no queryset."""

    permission_classes = [perms.ActionPermission]
    metadata_class = None  # OPTIONS is 405: the OpenAPI schema describes the endpoints
    serializer_class = TaskTypeSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    action_permissions = {"list": perms.VIEW_FLOWS, "retrieve": perms.VIEW_FLOWS}

    def list(self, request: Request) -> Response:
        types = default_registry().types
        data = [task_type_document(types[name]) for name in sorted(types)]
        return Response(TaskTypeSerializer(data, many=True).data)

    def retrieve(self, request: Request, name: str) -> Response:
        found = default_registry().types.get(name)
        if found is None:
            raise services.NotFound(f"no task type '{name}'")
        return Response(TaskTypeSerializer(task_type_document(found)).data)


def task_type_document(task_type: Any) -> dict[str, Any]:
    """``TaskType.describe()`` plus the parameter defaults its JSON Schema declares."""
    described = task_type.describe()
    properties = described["parameters_schema"].get("properties") or {}
    described["defaults"] = {
        key: spec["default"]
        for key, spec in properties.items()
        if isinstance(spec, dict) and "default" in spec
    }
    return described
