"""Login throttling: django-axes counts wrong passwords per user name and client address and,
past AXES_FAILURE_LIMIT, refuses that pair on every login form (README "Security")."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class LoginThrottleBackend(AxesStandaloneBackend):
    """axes's gate, first in AUTHENTICATION_BACKENDS; it only refuses, ModelBackend logs in.

    Every login form (ours, the admin's) passes the request to ``authenticate()``; a call without
    one is code on the server (the test client's ``login()``, a management command), not a guess
    from outside, so it is let through to the next backend instead of raising as axes does.
    API tokens never reach ``authenticate()``: a locked-out user's scripts keep working.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
