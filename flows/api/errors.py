"""One JSON error shape for the whole API: ``{"detail", "code", "errors": [{field, message}]}``."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from flows.services import ServiceError

logger = logging.getLogger("flows.api")


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="Path of the field, e.g. tasks[1].task_type")
    message = serializers.CharField()


# The one error shape, as the OpenAPI schema shows it (component "Error"). No docstring: it
# would become the component's description.
class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    errors = FieldErrorSerializer(many=True)


def error_response(
    detail: str, *, code: str, http_status: int, errors: list[dict[str, str]] | None = None
) -> Response:
    return Response({"detail": detail, "code": code, "errors": errors or []}, status=http_status)


def _flatten(data: Any, prefix: str = "") -> list[dict[str, str]]:
    """DRF's nested validation errors as a list of {field, message}."""
    if isinstance(data, dict):
        out: list[dict[str, str]] = []
        for key, value in data.items():
            name = "" if key == "non_field_errors" else str(key)
            out += _flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name)
        return out
    if isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data):
            return [{"field": prefix, "message": str(v)} for v in data]
        out = []
        for i, value in enumerate(data):
            out += _flatten(value, f"{prefix}[{i}]")
        return out
    return [{"field": prefix, "message": str(data)}]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        return error_response(exc.message, code=exc.code, http_status=exc.status, errors=exc.errors)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(
            f"request body too large; send at most {limit} bytes (MAX_REQUEST_BYTES)",
            code="too_large",
            http_status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, RecursionError):
        # json.load (or json.dumps of what it returned) gives up on a document nested a few
        # hundred levels deep; that is bad input, not a server error.
        logger.warning("request refused: JSON nested too deeply")
        return error_response(
            "JSON parse error - the document is nested too deeply; send a flatter JSON object",
            code="parse_error",
            http_status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        exc = _unsupported_media_type(context)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        detail = "; ".join(
            f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors
        )
        response.data = {"detail": detail or "invalid input", "code": "invalid", "errors": errors}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        response.data = {
            "detail": str(detail),
            "code": code if isinstance(code, str) else "error",
            "errors": [],
        }
    return response


ASK_FOR_JSON = "send the body as JSON with Content-Type: application/json"


def _unsupported_media_type(context: dict[str, Any]) -> exceptions.UnsupportedMediaType:
    """DRF's 415, saying what to send instead (it names only what it refused)."""
    request = context.get("request")
    media_type = getattr(request, "content_type", "") or ""
    if not media_type.strip():
        return exceptions.UnsupportedMediaType(
            "", detail=f"the request has a body but no Content-Type; {ASK_FOR_JSON}"
        )
    return exceptions.UnsupportedMediaType(
        media_type, detail=f'unsupported media type "{media_type}"; {ASK_FOR_JSON}'
    )


# --- URLs no API view matched, and Django's own error pages ---------------------------------
API_ROOTS = ("/api", "/flow", "/health", "/hooks")


def _is_api(request: HttpRequest) -> bool:
    path = request.path
    return any(path == root or path.startswith(f"{root}/") for root in API_ROOTS)


@csrf_exempt  # it changes nothing, and a session POST without a token should hear 404 too
def no_endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """The last route under /api/, /flow/ and /health: 404 in the API's shape, any method."""
    body = {"detail": f"no endpoint at {request.path}", "code": "not_found", "errors": []}
    return JsonResponse(body, status=404)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: an Http404 under the API (none is expected) answers in the API's shape."""
    if not _is_api(request):
        return defaults.page_not_found(request, exception)  # type: ignore[arg-type]
    return no_endpoint(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: never a stack trace, and JSON under the API."""
    if not _is_api(request):
        return defaults.server_error(request)
    body = {"detail": "internal server error", "code": "server_error", "errors": []}
    return JsonResponse(body, status=500)
