"""What the resource API's viewsets share: paging, and a 404 that names the id."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from flows import services


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
