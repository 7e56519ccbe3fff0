"""The API's JSON renderer: DRF's, which never fails on text UTF-8 cannot encode."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer


class SafeJSONRenderer(JSONRenderer):
    """DRF's JSON renderer (UTF-8 text as it is), falling back to ``\\u`` escapes for the
    whole body when some text holds a lone surrogate, which UTF-8 cannot encode.

    Nothing new can hold one (the services refuse it), but a message may quote what a client
    sent, and a row stored before the check may hold one: either should still be answered.
    """

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> bytes:
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            escaping = JSONRenderer()
            escaping.ensure_ascii = True
            return escaping.render(data, accepted_media_type, renderer_context)
