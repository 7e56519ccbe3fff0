"""The seed's routes, as its README wrote them; each also answers with a trailing slash."""

from django.urls import URLPattern, path
from rest_framework.views import APIView

from flows.api.seed import views as seed


def slash_optional(route: str, view: type[APIView], name: str) -> list[URLPattern]:
    """``route`` as the seed wrote it (in the schema) and ``route/`` (left out of it)."""
    return [
        path(route, view.as_view(), name=name),
        path(f"{route}/", view.as_view(schema=None)),
    ]


urlpatterns = [
    *slash_optional("flow/create", seed.FlowCreateView, "flow-create"),
    *slash_optional("flow/execute", seed.FlowExecuteView, "flow-execute"),
    *slash_optional("flow/<str:execution_id>/status", seed.FlowStatusView, "flow-status"),
    *slash_optional("flow/<str:execution_id>", seed.FlowDeleteView, "flow-delete"),
    *slash_optional("health", seed.HealthView, "health"),
]
