"""OpenAPI pieces shared by every endpoint: the documented error responses, with examples."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from drf_spectacular.views import SpectacularAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from flows.api.errors import ErrorSerializer

_ERRORS: dict[int, tuple[str, dict]] = {
    400: (
        "Invalid input; `errors` names each field.",
        {
            "detail": 'input: Expected a dictionary of items but got type "list".',
            "code": "invalid",
            "errors": [
                {"field": "input", "message": 'Expected a dictionary of items but got type "list".'}
            ],
        },
    ),
    401: (
        "Not authenticated: send `Authorization: Token <key>` (or `Bearer <key>`) or log in.",
        {
            "detail": "Authentication credentials were not provided.",
            "code": "not_authenticated",
            "errors": [],
        },
    ),
    403: (
        "Your role may not do this (or a session request lacks its CSRF token).",
        {
            "detail": "your role may not do this (needs permission 'flows.start_execution')",
            "code": "permission_denied",
            "errors": [],
        },
    ),
    404: (
        "No such object.",
        {"detail": "no flow with id 'nightly_etl'", "code": "not_found", "errors": []},
    ),
    409: (
        "The object is in the wrong state for this.",
        {
            "detail": "execution 6f0c1a55-… is already COMPLETED",
            "code": "conflict",
            "errors": [],
        },
    ),
    422: (
        "The Idempotency-Key was used before with a different request body.",
        {
            "detail": "Idempotency-Key 'order-17' was already used with a different request "
            "body; send a new key for a new request (or repeat the first body exactly to get "
            "the execution it started)",
            "code": "idempotency_conflict",
            "errors": [{"field": "Idempotency-Key", "message": "already used with another body"}],
        },
    ),
    413: (
        "The request body is larger than MAX_REQUEST_BYTES.",
        {
            "detail": "request body too large; send at most 1048576 bytes (MAX_REQUEST_BYTES)",
            "code": "too_large",
            "errors": [],
        },
    ),
    415: (
        "The body is not JSON, or has no Content-Type.",
        {
            "detail": 'unsupported media type "text/plain"; send the body as JSON with '
            "Content-Type: application/json",
            "code": "unsupported_media_type",
            "errors": [],
        },
    ),
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """The error responses ``codes`` as OpenAPI responses, all in the one error shape."""
    return {
        code: OpenApiResponse(
            ErrorSerializer,
            description=_ERRORS[code][0],
            examples=[OpenApiExample(f"{code}", value=_ERRORS[code][1], status_codes=[code])],
        )
        for code in codes
    }


READ = (401, 403, 404)
WRITE = (400, 401, 403, 413, 415)


class TokenOrBearerScheme(OpenApiAuthenticationExtension):
    """The API token is taken as ``Token <key>`` or ``Bearer <key>``: two schemes, either one."""

    target_class = "flows.api.authentication.PrebuiltTokenAuthentication"
    name = ["tokenAuth", "bearerAuth"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        return [{"tokenAuth": []}, {"bearerAuth": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": 'API token with the prefix "Token": `Token <key>` '
                "(`manage.py drf_create_token <user>`).",
            },
            {
                "type": "http",
                "scheme": "bearer",
                "description": "The same API token as `Authorization: Bearer <key>`.",
            },
        ]


class SchemaView(SpectacularAPIView):
    """``/api/schema/``: its errors (a method other than GET) in the API's JSON error shape,
    not rendered by the schema's own YAML renderer."""

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return response
