"""Login throttling (django-axes): after a few wrong passwords for one user from one address,
both login pages refuse that pair, even with the right password, until the cool-off ends or an
admin lifts it with manage.py; API tokens are not logins and keep working."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from tests.conftest import token_client

pytestmark = pytest.mark.django_db

LOGIN_PAGES = ("/accounts/login/", "/admin/login/")


def guess(client, page, password, *, address="10.0.0.1"):
    return client.post(
        page, {"username": "carol", "password": password}, REMOTE_ADDR=address, follow=False
    )


@pytest.fixture
def carol(make_user):
    user = make_user("carol", "editor")
    user.is_staff = True  # so that the admin's login page would let her in
    user.save()
    return user


def lock_out(client, page):
    for _ in range(5):
        guess(client, page, "wrong")


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_five_wrong_passwords_lock_the_user_out_of_that_address_even_with_the_right_one(
    client, carol, page, settings
):
    lock_out(client, page)

    response = guess(client, page, "carol-pass-123")

    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed logins" in text
    assert "15 minutes" in text
    assert "manage.py axes_reset_username carol" in text
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_per_user_and_address(client, carol, make_user):
    lock_out(client, "/accounts/login/")

    # The same user from another address, and another user from the same address, still log in.
    elsewhere = guess(client, "/accounts/login/", "carol-pass-123", address="10.0.0.2")
    assert elsewhere.status_code == 302
    client.logout()
    make_user("dave", "viewer")
    response = client.post(
        "/accounts/login/",
        {"username": "dave", "password": "dave-pass-123"},
        REMOTE_ADDR="10.0.0.1",
    )
    assert response.status_code == 302


def test_fewer_wrong_passwords_than_the_limit_still_let_the_right_one_in(client, carol):
    for _ in range(4):
        assert guess(client, "/accounts/login/", "wrong").status_code == 200

    assert guess(client, "/accounts/login/", "carol-pass-123").status_code == 302


@pytest.mark.parametrize(
    "command", [("axes_reset",), ("axes_reset_username", "carol")], ids=lambda c: c[0]
)
def test_an_admin_lifts_the_lockout_with_manage_py(client, carol, command):
    lock_out(client, "/accounts/login/")
    assert guess(client, "/accounts/login/", "carol-pass-123").status_code == 429

    call_command(*command, stdout=StringIO())

    assert guess(client, "/accounts/login/", "carol-pass-123").status_code == 302


def test_a_locked_out_users_api_token_still_works(client, carol):
    from tests.factories import sample_flow

    api = token_client(carol)
    lock_out(client, "/accounts/login/")
    assert guess(client, "/accounts/login/", "carol-pass-123").status_code == 429

    assert api.get("/api/executions/").status_code == 200
    response = api.post("/flow/create", sample_flow(), format="json")
    assert response.status_code == 200, response.content
