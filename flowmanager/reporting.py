"""What Django's error reports (the DEBUG 500 page, error mails) may show of the settings.

Django hides settings whose *name* looks secret (SECRET_KEY, *_TOKEN, PASSWORD…), but a
credential can sit in a setting with an innocent name: ``DATABASE_URL``, ``REDIS_URL``, the
cache's ``LOCATION`` and django-q2's ``Q_CLUSTER["redis"]`` all hold the URL a deploy was given,
password included. This filter masks the password of every URL with a user part, wherever it
appears: in settings (nested dicts and lists too), in ``request.META`` (under runserver that is
the whole process environment) and in the local variables of the traceback.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@ → the password is everything up to the last "@" of that word; a
# password containing "@" unencoded is masked whole with what follows it (safe side).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:@/\s]*:)[^\s]*@", re.IGNORECASE)


class CredentialsReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: more secret-looking names hidden whole, and URL passwords masked."""

    # Django's list (API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE) and a few more names
    # that hold credentials by convention.
    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|CREDENTIAL|PRIVATE|DSN",
        flags=re.IGNORECASE,
    )

    def mask_url(self, value: str) -> str:
        """``postgres://fm:s3cret@db/fm`` → ``postgres://fm:********************@db/fm``.

        ``str()`` first: a lazy string (django-axes has one among its settings) passes
        ``isinstance(value, str)`` but not the regex; the page shows it as text anyway.
        """
        return _URL_PASSWORD.sub(
            lambda match: f"{match['head']}{self.cleansed_substitute}@", str(value)
        )

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        # Django's method recurses into dicts, lists and tuples through this one, so every
        # string at any depth passes here once.
        cleansed = super().cleanse_setting(key, value)
        return self.mask_url(cleansed) if isinstance(cleansed, str) else cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        # A frame's local variables are shown as they are under DEBUG (Django cleanses only
        # those named by @sensitive_variables, and only with DEBUG off).
        return [
            (name, self._mask_nested(value))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _mask_nested(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.mask_url(value)
        if depth < 3 and isinstance(value, dict):
            return {k: self._mask_nested(v, depth + 1) for k, v in value.items()}
        if depth < 3 and isinstance(value, list | tuple):
            return type(value)(self._mask_nested(v, depth + 1) for v in value)
        return value
