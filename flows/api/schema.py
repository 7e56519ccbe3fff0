"""OpenAPI pieces shared by every endpoint: the documented error responses, with examples."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse

from flows.api.serializers import ErrorSerializer

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
        "Not authenticated: send `Authorization: Token <key>` or log in.",
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
    413: (
        "The request body is larger than MAX_REQUEST_BYTES.",
        {
            "detail": "request body too large; send at most 1048576 bytes (MAX_REQUEST_BYTES)",
            "code": "too_large",
            "errors": [],
        },
    ),
    415: (
        "The body is not JSON.",
        {
            "detail": 'Unsupported media type "text/plain" in request.',
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
