"""Logging filters the settings' LOGGING names."""

from __future__ import annotations

import logging


class ClientErrorsAsInfo(logging.Filter):
    """Django logs every 4xx answer as a WARNING on ``django.request`` ("Not Found: ...",
    "Conflict: ..."). A 404 for an unknown id or a 409 for a signal that already came is the
    API doing its job, not a problem with the server: such records go down to INFO (and out,
    unless the logger shows INFO). A 5xx stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if record.levelno != logging.WARNING or not isinstance(status, int) or status >= 500:
            return True
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)
