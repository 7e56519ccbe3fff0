"""What the resource API's viewsets share: their base class (permissions by action, paging,
a 404 that names the id) and the execution detail they answer with."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import mixins, status, viewsets
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from flows import services
from flows.api import permissions as perms
from flows.api.resource.serializers import ExecutionDetailSerializer
from flows.models import Execution


class Pages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class ScopedObjectMixin:
    """``get_object`` over the scoped ``get_queryset``, with a 404 that names the id."""

    noun = "object"

    def get_object(self) -> Any:
        key = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)  # type: ignore[attr-defined]
        try:
            if "\x00" in str(key):  # no row has one, and PostgreSQL refuses to compare it
                raise Http404
            return super().get_object()  # type: ignore[misc]
        except Http404:
            raise services.NotFound(f"no {self.noun} with id {str(key)!r}") from None


def can(request: Request, permission: str) -> bool:
    """The request's user holds ``permission`` (``get_queryset`` scopes by it)."""
    return bool(request.user and request.user.has_perm(permission))


class ResourceViewSet(
    ScopedObjectMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """A list and a detail over the scoped ``get_queryset``, with more actions in subclasses;
    each action needs the permission its ``action_permissions`` names."""

    permission_classes = [perms.ActionPermission]
    metadata_class = None  # OPTIONS is 405: the OpenAPI schema describes the endpoints
    pagination_class = Pages
    lookup_value_regex = "[^/]+"
    action_permissions: dict[str, str] = {}


def execution_detail(execution: Execution, http_status: int = status.HTTP_200_OK) -> Response:
    """The execution as ``GET /api/executions/{id}/`` shows it, read afresh with its steps."""
    fresh = Execution.objects.for_api_detail().get(pk=execution.pk)
    return Response(ExecutionDetailSerializer(fresh).data, status=http_status)
