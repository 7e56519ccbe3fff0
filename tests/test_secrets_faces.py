"""The secret store's faces: ``/api/secrets/``, the Secrets page, the admin and the builder's
suggestions. Values go in and never come out: every answer is searched for the value (and its
base64 and JSON-escaped forms). Who may: names for whoever reads flows, writes for
``flows.manage_secret`` (admins, the secrets_admin role)."""

from __future__ import annotations

import base64
import json
import re

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from flows import services, vault
from flows.models import Secret
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

VALUE = 'sk_live_"quoted"/Ünï-\\-value'


def forms_of(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode(), json.dumps(value)[1:-1]]


def assert_no_trace(body: bytes | str, value: str = VALUE) -> None:
    text = body.decode() if isinstance(body, bytes) else body
    for form in forms_of(value):
        assert form not in text
    # Nor the stored token: an encrypted value is nobody's business either.
    for token in Secret.objects.values_list("value", flat=True):
        assert token not in text


@pytest.fixture(autouse=True)
def _key(settings):
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]


@pytest.fixture
def keeper(make_user):
    """A user in the secrets_admin role."""
    return make_user("sam", "secrets_admin")


@pytest.fixture
def stored(keeper):
    return services.secret_create(
        name="billing_token", value=VALUE, description="billing API", user=keeper
    )


def error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}
    return body


# --- API ---------------------------------------------------------------------------------------
def test_a_viewer_lists_names_and_metadata_never_a_value(client_as, stored):
    viewer = client_as("viewer")

    listed = viewer.get("/api/secrets/")
    detail = viewer.get("/api/secrets/billing_token/")

    assert listed.status_code == 200
    assert listed.json()["results"] == [
        {
            "name": "billing_token",
            "description": "billing API",
            "created_at": listed.json()["results"][0]["created_at"],
            "created_by": "sam",
            "updated_at": listed.json()["results"][0]["updated_at"],
            "updated_by": "sam",
        }
    ]
    assert detail.status_code == 200 and "value" not in detail.json()
    assert_no_trace(listed.content)
    assert_no_trace(detail.content)


def test_anonymous_is_401_and_a_user_without_a_role_sees_no_name(anon_client, client_as, stored):
    assert error(anon_client.get("/api/secrets/"), 401)
    assert error(client_as(None).get("/api/secrets/"), 403)


@pytest.mark.parametrize("role", ["viewer", "operator", "editor", "approver"])
def test_no_role_but_secrets_admin_may_create_replace_or_delete(client_as, stored, role):
    api = client_as(role)

    refused = [
        api.post("/api/secrets/", {"name": "other", "value": "x"}, format="json"),
        api.put("/api/secrets/billing_token/", {"value": "x"}, format="json"),
        api.patch("/api/secrets/billing_token/", {"description": "x"}, format="json"),
        api.delete("/api/secrets/billing_token/"),
    ]

    for response in refused:
        assert "flows.manage_secret" in error(response, 403)["detail"]
    assert list(Secret.objects.values_list("name", "description")) == [
        ("billing_token", "billing API")
    ]
    assert vault.values_for(["billing_token"])[0] == {"billing_token": VALUE}


def test_a_secrets_admin_creates_replaces_describes_and_deletes(keeper):
    api = token_client(keeper)

    created = api.post(
        "/api/secrets/",
        {"name": "deploy_key", "value": VALUE, "description": "deploys"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["name"] == "deploy_key" and "value" not in created.json()
    assert vault.values_for(["deploy_key"])[0] == {"deploy_key": VALUE}

    replaced = api.put("/api/secrets/deploy_key/", {"value": "second value\n"}, format="json")
    assert replaced.status_code == 200
    assert replaced.json()["description"] == "deploys"  # left out: kept
    assert vault.values_for(["deploy_key"])[0] == {"deploy_key": "second value\n"}  # as sent

    described = api.patch("/api/secrets/deploy_key/", {"description": "prod"}, format="json")
    assert described.status_code == 200 and described.json()["description"] == "prod"
    assert vault.values_for(["deploy_key"])[0] == {"deploy_key": "second value\n"}

    for response in (created, replaced, described):
        assert_no_trace(response.content)
        assert_no_trace(response.content, "second value")

    assert api.delete("/api/secrets/deploy_key/").status_code == 204
    assert not Secret.objects.exists()
    assert "deploy_key" in error(api.get("/api/secrets/deploy_key/"), 404)["detail"]


def test_an_admin_may_manage_secrets_too(client_as):
    api = client_as("admin")

    assert api.post("/api/secrets/", {"name": "t", "value": "v"}, format="json").status_code == 201


def test_without_a_key_storing_is_a_409_that_says_what_to_set(keeper, settings):
    settings.FLOW_SECRET_KEYS = []
    api = token_client(keeper)

    body = error(api.post("/api/secrets/", {"name": "token", "value": VALUE}, format="json"), 409)

    assert body["code"] == "secret_keys_missing"
    assert "set FLOW_SECRET_KEYS" in body["detail"]
    assert not Secret.objects.exists()
    assert_no_trace(json.dumps(body))


def test_bad_input_is_a_400_by_field_and_a_taken_name_a_409(keeper, stored):
    api = token_client(keeper)

    bad_name = error(
        api.post("/api/secrets/", {"name": "my-key", "value": "x"}, format="json"), 400
    )
    no_value = error(api.post("/api/secrets/", {"name": "token"}, format="json"), 400)
    not_object = error(api.post("/api/secrets/", ["token"], format="json"), 400)
    number = error(api.post("/api/secrets/", {"name": "token", "value": 12}, format="json"), 400)
    taken = error(
        api.post("/api/secrets/", {"name": "BILLING_TOKEN", "value": "x"}, format="json"), 409
    )
    patch_value = error(
        api.patch("/api/secrets/billing_token/", {"value": "x"}, format="json"), 400
    )

    assert [e["field"] for e in bad_name["errors"]] == ["name"]
    assert [e["field"] for e in no_value["errors"]] == ["value"]
    assert not_object["code"] == "invalid"
    assert [e["field"] for e in number["errors"]] == ["value"]  # not stored as "12"
    assert "'billing_token' exists" in taken["detail"]
    assert "PUT replaces the value" in patch_value["detail"]
    assert Secret.objects.count() == 1
    assert vault.values_for(["billing_token"])[0] == {"billing_token": VALUE}


def test_the_list_costs_the_same_queries_for_1_or_20_secrets(
    client_as, keeper, django_assert_num_queries
):
    api = client_as("viewer")
    services.secret_create(name="s0", value="v", user=keeper)
    with CaptureQueriesContext(connection) as one:
        assert api.get("/api/secrets/").json()["count"] == 1
    for i in range(1, 20):
        services.secret_create(name=f"s{i}", value="v", user=keeper)

    with django_assert_num_queries(len(one.captured_queries)):
        assert api.get("/api/secrets/").json()["count"] == 20


def test_the_openapi_schema_documents_the_value_as_write_only(client_as, tmp_path):
    import yaml
    from django.core.management import call_command

    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target))
    schema = yaml.safe_load(target.read_text())

    assert {"get", "post"} <= set(schema["paths"]["/api/secrets/"])
    assert {"get", "put", "patch", "delete"} <= set(schema["paths"]["/api/secrets/{name}/"])
    components = schema["components"]["schemas"]
    assert "value" not in components["Secret"]["properties"]
    assert "value" in components["SecretCreateRequest"]["properties"]
    assert components["SecretCreateRequest"]["properties"]["value"].get("writeOnly")


# --- the Secrets page ----------------------------------------------------------------------------
@pytest.fixture
def page(client, keeper):
    client.force_login(keeper)
    return client


def test_the_nav_links_to_the_page_only_for_those_who_may_manage_secrets(client, make_user):
    for role, shown in (("secrets_admin", True), ("admin", True), ("editor", False)):
        client.force_login(make_user(f"{role}_u", role))
        html = client.get("/flows/").content.decode()
        assert ('href="/secrets/"' in html) is shown, role


@pytest.mark.parametrize(
    "path", ["/secrets/", "/secrets/billing_token/", "/secrets/billing_token/delete"]
)
def test_an_editor_may_not_open_the_pages(client, alice, stored, path):
    client.force_login(alice)

    assert client.get(path).status_code == 403
    assert client.post(path, {"name": "x", "value": "y"}).status_code == 403
    assert vault.values_for(["billing_token"])[0] == {"billing_token": VALUE}


def test_the_list_shows_names_and_who_changed_them_never_a_value(page, stored):
    html = page.get("/secrets/").content.decode()

    assert "<code>billing_token</code>" in html
    assert "billing API" in html and "by sam" in html
    assert_no_trace(html)


def test_storing_through_the_form_encrypts_and_never_shows_the_value_again(page):
    response = page.post(
        "/secrets/", {"name": "deploy_key", "value": VALUE, "description": "deploys"}, follow=True
    )

    assert response.redirect_chain[-1][0] == "/secrets/"
    assert "Secret deploy_key stored." in response.content.decode()
    assert vault.values_for(["deploy_key"])[0] == {"deploy_key": VALUE}
    assert Secret.objects.get(name="deploy_key").created_by.username == "sam"
    assert_no_trace(response.content)


def test_a_refused_form_keeps_the_name_shows_the_error_by_its_field_and_drops_the_value(
    page, stored
):
    response = page.post("/secrets/", {"name": "bad-name", "value": VALUE})

    assert response.status_code == 400
    html = response.content.decode()
    assert 'value="bad-name"' in html
    assert re.search(r'has-error">\s*<label for="id_name"', html)
    assert_no_trace(html)  # the password input is not filled in again
    assert Secret.objects.count() == 1


def test_without_a_key_the_page_says_what_to_set_and_stores_nothing(page, settings):
    settings.FLOW_SECRET_KEYS = []

    shown = page.get("/secrets/").content.decode()
    response = page.post("/secrets/", {"name": "token", "value": VALUE})

    assert "No encryption key" in shown
    assert response.status_code == 400
    assert "set FLOW_SECRET_KEYS" in response.content.decode()
    assert not Secret.objects.exists()
    assert_no_trace(response.content)


def test_the_replace_form_is_never_filled_in_and_replaces_the_value(page, stored):
    form = page.get("/secrets/billing_token/").content.decode()

    assert re.search(r'<input type="password" name="value"[^>]*>', form)
    assert not re.search(r'<input type="password" name="value"[^>]*value=', form)
    assert_no_trace(form)
    response = page.post(
        "/secrets/billing_token/", {"value": "the new one", "description": "billing API v2"}
    )
    assert response.status_code == 302
    assert vault.values_for(["billing_token"])[0] == {"billing_token": "the new one"}
    assert Secret.objects.get(name="billing_token").description == "billing API v2"


def test_deleting_asks_first_then_deletes(page, stored):
    confirm = page.get("/secrets/billing_token/delete")

    assert confirm.status_code == 200
    assert "Delete secret <code>billing_token</code>?" in confirm.content.decode()
    assert Secret.objects.exists()
    assert page.post("/secrets/billing_token/delete").status_code == 302
    assert not Secret.objects.exists()
    assert page.get("/secrets/billing_token/").status_code == 404


def test_a_post_without_its_csrf_token_is_refused(keeper):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(keeper)

    response = browser.post("/secrets/", {"name": "token", "value": VALUE})

    assert response.status_code == 403
    assert not Secret.objects.exists()


# --- the admin ----------------------------------------------------------------------------------
@pytest.fixture
def root(client):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-pass-1"))
    return client


def test_the_admin_shows_name_and_dates_never_the_value(root, stored):
    listing = root.get("/admin/flows/secret/")
    change = root.get("/admin/flows/secret/billing_token/change/")

    assert listing.status_code == 200 and change.status_code == 200
    assert "billing_token" in listing.content.decode()
    assert_no_trace(listing.content)
    assert_no_trace(change.content)
    assert re.search(r'<input type="password" name="new_value"', change.content.decode())


def test_a_secret_added_in_the_admin_is_stored_encrypted(root):
    response = root.post(
        "/admin/flows/secret/add/", {"name": "from_admin", "new_value": VALUE, "description": ""}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert vault.values_for(["from_admin"])[0] == {"from_admin": VALUE}
    assert Secret.objects.get(name="from_admin").created_by.username == "root"


def test_changing_in_the_admin_keeps_the_value_unless_a_new_one_is_typed(root, stored):
    url = "/admin/flows/secret/billing_token/change/"

    assert root.post(url, {"new_value": "", "description": "kept value"}).status_code == 302
    assert vault.values_for(["billing_token"])[0] == {"billing_token": VALUE}
    assert root.post(url, {"new_value": "replaced", "description": "x"}).status_code == 302
    assert vault.values_for(["billing_token"])[0] == {"billing_token": "replaced"}
    assert Secret.objects.get(name="billing_token").description == "x"


def test_the_admin_refuses_without_a_key_at_the_field_and_stores_nothing(root, settings):
    settings.FLOW_SECRET_KEYS = []

    response = root.post("/admin/flows/secret/add/", {"name": "token", "new_value": VALUE})

    assert response.status_code == 200  # the form again, with its error
    assert "set FLOW_SECRET_KEYS" in response.content.decode()
    assert not Secret.objects.exists()
    assert_no_trace(response.content)


def test_the_admin_refuses_a_bad_name_and_a_missing_value(root):
    response = root.post("/admin/flows/secret/add/", {"name": "bad-name", "new_value": ""})

    html = response.content.decode()
    assert response.status_code == 200
    assert "A new secret needs a value." in html
    assert "letters, digits and underscores" in html
    assert not Secret.objects.exists()


def test_staff_without_the_right_cannot_open_the_secrets_admin(client, make_user, stored):
    for role, allowed in (("editor", False), ("secrets_admin", True)):
        user = make_user(f"staff_{role}", role)
        user.is_staff = True
        user.save()
        client.force_login(user)
        assert (client.get("/admin/flows/secret/").status_code == 200) is allowed, role
        assert (client.get("/admin/flows/secret/add/").status_code == 200) is allowed, role
    client.force_login(get_user_model().objects.get(username="staff_editor"))
    client.post("/admin/flows/secret/billing_token/delete/", {"post": "yes"})
    assert Secret.objects.exists()


# --- the builder ---------------------------------------------------------------------------------
def test_the_builder_suggests_known_secret_references_for_text_parameters(
    client, alice, stored, monkeypatch
):
    monkeypatch.setenv("FLOW_SECRET_FROM_ENV", "env-value")
    client.force_login(alice)

    html = client.get("/flows/new").content.decode()
    fields = client.get("/flows/builder/task-fields?prefix=tasks-0&type=wait_for_signal")

    datalist = re.search(r'<datalist id="secret-names">(.*?)</datalist>', html, re.S).group(1)
    assert '<option value="${secrets.billing_token}">' in datalist
    assert '<option value="${secrets.FROM_ENV}">' in datalist
    assert 'list="secret-names"' in fields.content.decode()  # a text parameter's input
    # Where a datalist cannot help (a long text, a JSON object), the references are listed.
    assert "<li><code>${secrets.billing_token}</code></li>" in html
    assert_no_trace(html)
    assert "env-value" not in html


def test_an_api_session_cannot_read_a_value_back_anywhere(client_as, stored):
    admin = client_as("admin")

    answers = [
        admin.get("/api/secrets/"),
        admin.get("/api/secrets/billing_token/"),
        admin.get("/api/secrets/billing_token/?fields=value"),
        admin.get("/api/secrets/?format=json"),
    ]

    for response in answers:
        assert_no_trace(response.content)
