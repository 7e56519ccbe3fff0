"""The API's token authentication: ``Authorization: Token <key>`` or ``Bearer <key>``."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

from flows import selectors


class PrebuiltTokenAuthentication(TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, also taken as ``Authorization: Bearer <key>``
    (what most HTTP clients and API gateways send), with the user looked up by prebuilt SQL
    (``selectors.user_for_token``: every API request pays for it).

    Anonymous requests are still asked for ``Token`` in WWW-Authenticate (the seed's scheme).
    """

    SCHEMES = (b"token", b"bearer")

    def authenticate(self, request: Any) -> tuple[Any, Token] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in self.SCHEMES:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid token header: send 'Authorization: Token <key>' (or Bearer <key>)."
            )
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                "Invalid token header. Token string should not contain invalid characters."
            ) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user = selectors.user_for_token(key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)
