"""The site's icon: every page links it, and ``/favicon.ico`` (which browsers ask for anyway)
answers with it instead of a 404 in the login page's console."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db


def test_favicon_ico_answers_with_the_svg_icon_without_a_login(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/flows/favicon.svg"
    icon = finders.find("flows/favicon.svg")
    assert icon and Path(icon).read_text().lstrip().startswith("<svg")


def test_the_login_page_links_the_icon(client):
    page = client.get("/accounts/login/").content.decode()

    links = re.findall(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page)
    assert links == ["/static/flows/favicon.svg"]
