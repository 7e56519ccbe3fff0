"""What the page families share: the permission decorator, the look-ups that 404, a
service's error as a message, a JSON download."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpResponse

from flows import selectors, services
from flows.models import Execution, Flow, FlowVersion

PAGE_SIZE = 50
T = TypeVar("T")


def needs(permission: str) -> Any:
    """The page needs this permission (roles are groups, migration 0005); 403 otherwise."""
    return permission_required(permission, raise_exception=True)


def or_404(read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``read(...)``, a selector or a service, with its NotFound as the page's 404."""
    try:
        return read(*args, **kwargs)
    except services.NotFound as exc:
        raise Http404(exc.message) from None


def flow_or_404(flow_id: str) -> Flow:
    return or_404(selectors.flow_get, flow_id)


def version_or_404(flow_id: str, version: int | None) -> FlowVersion:
    return or_404(selectors.flow_version_get, flow_id=flow_id, version=version)


def execution_or_404(execution_id: Any) -> Execution:
    return or_404(selectors.execution_get, execution_id)


def explain(exc: services.ServiceError) -> str:
    """A service's refusal as one line for the page's messages (its first field errors)."""
    details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors[:5] if e.get("field"))
    return f"{exc.message}" + (f" ({details})" if details and details not in exc.message else "")


def download(document: Any, filename: str) -> HttpResponse:
    """A JSON document as a ``.json`` attachment, indented as the pages show it."""
    response = HttpResponse(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        content_type="application/json",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
