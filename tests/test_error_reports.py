"""Django's error reports (the DEBUG 500 page) mask every credential of the settings: the
password of a DATABASE_URL or REDIS_URL, wherever the URL was copied to, and in the process
environment that runserver puts in request.META."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.http import HttpRequest
from django.urls import path
from django.views.debug import get_default_exception_reporter_filter

DB_PASSWORD = "db-pw-Zq81"
REDIS_PASSWORD = "redis-pw-Kx42"
DATABASE_URL = f"postgres://fm:{DB_PASSWORD}@db.internal:5432/fm"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"


@pytest.fixture
def deployed(settings):
    """Settings as a deploy with credentials in its URLs leaves them."""
    settings.DATABASE_URL = DATABASE_URL
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": REDIS_URL,
        }
    }
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": REDIS_URL}
    settings.SENTRY_DSN = "https://public@sentry.internal/1"
    return settings


def test_the_safe_settings_mask_the_passwords_of_urls_and_keep_the_rest(deployed):
    safe = get_default_exception_reporter_filter().get_safe_settings()

    shown = repr(safe)
    assert DB_PASSWORD not in shown
    assert REDIS_PASSWORD not in shown
    # What helps to debug stays: the user, the host, the database.
    assert safe["DATABASE_URL"] == "postgres://fm:********************@db.internal:5432/fm"
    assert safe["CACHES"]["default"]["LOCATION"].endswith("@cache.internal:6379/0")
    assert safe["Q_CLUSTER"]["redis"].startswith("redis://:****")
    assert safe["SENTRY_DSN"] == "********************"
    assert safe["SECRET_KEY"] == "********************"


@pytest.mark.urls(__name__)
def test_the_debug_500_page_shows_no_credential(client, deployed, db):
    deployed.DEBUG = True
    client.raise_request_exception = False

    # Under runserver request.META holds the whole process environment: pass it as such.
    response = client.get("/boom", DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL)

    page = response.content.decode()
    assert response.status_code == 500
    assert "cannot reach the database at db.internal" in page  # it is the technical page
    assert "DATABASE_URL" in page and "db.internal:5432" in page
    for secret in (DB_PASSWORD, REDIS_PASSWORD, DATABASE_URL, REDIS_URL):
        assert secret not in page


# Last in the file: the 500 page shows the source lines around the failing one, and these are
# far from the constants above.
def boom(request: HttpRequest) -> None:
    connection_url = settings.DATABASE_URL  # the failing frame's variables are shown too
    raise RuntimeError(f"cannot reach the database at {connection_url.split('@')[1]}")


urlpatterns = [path("boom", boom)]
