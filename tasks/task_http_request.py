from __future__ import annotations

import json
from typing import Any

import httpx

from tasks.base_task import BaseTask, PermanentTaskError

_MAX_BODY_BYTES = 1_048_576


class HttpRequestTask(BaseTask):
    """Call an HTTP endpoint and return its status, headers and parsed body."""

    description = (
        "Sends an HTTP request (method, url, headers, json body) and succeeds when the answer "
        "has the expected status (any 2xx by default). Returns status, headers and the body, "
        "parsed as JSON when the response says it is JSON."
    )
    parameters_schema = {
        "type": "object",
        "required": ["url"],
        "properties": {
            "method": {
                "type": "string",
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                "default": "GET",
            },
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 2048},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "default": {},
            },
            "json": {"description": "A JSON body to send."},
            "params": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
                "description": "Query-string parameters.",
            },
            "expected_status": {
                "oneOf": [
                    {"type": "integer", "minimum": 100, "maximum": 599},
                    {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 100, "maximum": 599},
                        "minItems": 1,
                    },
                ],
                "description": "The status (or list of statuses) that counts as success; "
                "default any 2xx.",
            },
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 3600,
                "default": 30,
                "description": "Seconds to wait for the whole request.",
            },
            "follow_redirects": {"type": "boolean", "default": False},
        },
        "additionalProperties": False,
    }
    default_timeout = 60.0

    async def run(self) -> dict[str, Any]:
        p = self.parameters
        method = str(p.get("method", "GET")).upper()
        url = str(p["url"])
        kwargs: dict[str, Any] = {"headers": p.get("headers") or {}, "params": p.get("params")}
        if "json" in p:
            kwargs["json"] = p["json"]
        timeout = float(p.get("timeout", 30))
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=bool(p.get("follow_redirects", False))
        ) as client:
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise TimeoutError(f"{method} {url} timed out after {timeout:g}s") from exc
            except httpx.HTTPError as exc:
                raise ConnectionError(f"{method} {url} failed: {exc}") from exc

        body = _parse_body(response)
        self.context.logger.info("%s %s -> %s", method, url, response.status_code)
        if not _status_ok(response.status_code, p.get("expected_status")):
            detail = f"{method} {url} answered {response.status_code}"
            # A 4xx will answer the same way next time; a 5xx or 429 may not.
            if 400 <= response.status_code < 500 and response.status_code != 429:
                raise PermanentTaskError(detail)
            raise RuntimeError(detail)
        return {
            "message": f"{method} {url} -> {response.status_code}",
            "status_code": response.status_code,
            "headers": dict(response.headers),
            "body": body,
        }


def _status_ok(status: int, expected: int | list[int] | None) -> bool:
    if expected is None:
        return 200 <= status < 300
    if isinstance(expected, int):
        return status == expected
    return status in expected


def _parse_body(response: httpx.Response) -> Any:
    content = response.content[:_MAX_BODY_BYTES]
    if "json" in response.headers.get("content-type", ""):
        try:
            return json.loads(content)
        except ValueError:
            pass
    return content.decode(response.encoding or "utf-8", errors="replace")
