from __future__ import annotations

import json
from typing import Any

import httpx

from tasks import _netpolicy
from tasks.base_task import BaseTask, PermanentTaskError

# The engine stores results up to FLOW_MAX_RESULT_BYTES (1 MiB by default), JSON-escaped and
# with the headers beside the body: keep the body well under that by default.
DEFAULT_MAX_BODY_BYTES = 262_144


class HttpRequestTask(BaseTask):
    """Call an HTTP endpoint and return its status, headers and parsed body."""

    description = (
        "Sends an HTTP request (method, url, headers, json body) and succeeds when the answer "
        "has the expected status (any 2xx by default). Returns status, headers and the body, "
        "parsed as JSON when the response says it is JSON. Loopback, private and link-local "
        "addresses are refused unless FLOW_HTTP_ALLOWED_HOSTS lists the host or "
        "FLOW_HTTP_ALLOW_PRIVATE=1."
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
            "max_body_bytes": {
                "type": "integer",
                "minimum": 0,
                "maximum": 786_432,
                "default": DEFAULT_MAX_BODY_BYTES,
                "description": "Keep at most this many bytes of the response body; a longer "
                "body is cut and the result says body_truncated.",
            },
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
        limit = int(p.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
        try:
            policy = _netpolicy.policy_from_env()
        except ValueError as exc:
            raise PermanentTaskError(str(exc)) from None
        async with httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=bool(p.get("follow_redirects", False)),
            # Checks every connection, redirects included, against the address policy.
            transport=_netpolicy.transport_for(policy),
        ) as client:
            try:
                # Streamed, so a huge answer is never held in memory past the limit.
                async with client.stream(method, url, **kwargs) as response:
                    content, truncated = await _read_capped(response, limit)
            except _netpolicy.AddressRefused as exc:
                # What the answer holds lands in the step's result for every viewer: refuse,
                # for good, to reach the project's own or its network's private services.
                raise PermanentTaskError(
                    f"http_request refused {exc.url or url}: {exc}; {exc.hint()}"
                ) from None
            except httpx.TimeoutException as exc:
                raise TimeoutError(f"{method} {url} timed out after {timeout:g}s") from exc
            except httpx.HTTPError as exc:
                raise ConnectionError(f"{method} {url} failed: {exc}") from exc

        body = _parse_body(response, content, truncated)
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
            "body_truncated": truncated,
        }


def _status_ok(status: int, expected: int | list[int] | None) -> bool:
    if expected is None:
        return 200 <= status < 300
    if isinstance(expected, int):
        return status == expected
    return status in expected


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _parse_body(response: httpx.Response, content: bytes, truncated: bool) -> Any:
    if not truncated and "json" in response.headers.get("content-type", ""):
        try:
            return json.loads(content)
        except ValueError:
            pass
    return content.decode(response.encoding or "utf-8", errors="replace")
