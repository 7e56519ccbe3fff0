"""The secret store (flows/vault.py, flows/services/secrets.py): values encrypted at rest under
FLOW_SECRET_KEYS, read back only by ``values_for``, rotated under the first key, refused
without a key; the role that may manage them. Runs on SQLite and PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from flowmanager.env import env_fernet_keys
from flows import services, vault
from flows.models import Secret

pytestmark = pytest.mark.django_db

VALUE = "sk_live_51HyperSecret-Ünïcode-värde"


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def keys(settings):
    """One fresh key; the test may change ``settings.FLOW_SECRET_KEYS`` further."""
    settings.FLOW_SECRET_KEYS = [new_key()]
    return settings


def raw_value(name: str) -> str:
    """The ``value`` column of the row as the database holds it, read past the ORM."""
    table = connection.ops.quote_name(Secret._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT value FROM {table} WHERE name = %s", [name])
        return cursor.fetchone()[0]


def whole_row(name: str) -> str:
    table = connection.ops.quote_name(Secret._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE name = %s", [name])
        return json.dumps([str(c) for c in cursor.fetchone()], ensure_ascii=False)


# --- encryption at rest --------------------------------------------------------------------------
def test_the_database_never_holds_the_plain_value_in_any_form(keys):
    services.secret_create(name="billing", value=VALUE, description="billing API")

    row = whole_row("billing")
    for form in (VALUE, base64.b64encode(VALUE.encode()).decode(), json.dumps(VALUE)[1:-1]):
        assert form not in row
    assert "sk_live" not in row
    assert vault.values_for(["billing"]) == ({"billing": VALUE}, [])


def test_the_value_is_a_fernet_token_under_the_configured_key_not_the_secret_key(keys, settings):
    services.secret_create(name="token", value=VALUE)

    token = raw_value("token").encode()
    assert Fernet(settings.FLOW_SECRET_KEYS[0]).decrypt(token).decode() == VALUE
    settings.FLOW_SECRET_KEYS = [new_key()]  # the same SECRET_KEY, another store key
    with pytest.raises(vault.UnreadableSecret):
        vault.values_for(["token"])


def test_replacing_a_value_encrypts_the_new_one_and_keeps_the_creator(keys, make_user):
    alice, bob = make_user("alice", "secrets_admin"), make_user("bob", "secrets_admin")
    services.secret_create(name="token", value="first-value", user=alice)

    services.secret_replace(name="token", value="second-value", user=bob)

    assert "second-value" not in raw_value("token")
    assert vault.values_for(["token"]) == ({"token": "second-value"}, [])
    secret = Secret.objects.get(name="token")
    assert (secret.created_by, secret.updated_by) == (alice, bob)


# --- values_for and known_names ------------------------------------------------------------------
def test_values_for_reads_all_names_in_one_query_and_lists_the_missing_sorted(
    keys, django_assert_num_queries
):
    for name in ("a_one", "b_two", "c_three"):
        services.secret_create(name=name, value=f"value of {name}")

    with django_assert_num_queries(1):
        found, missing = vault.values_for(["c_three", "zeta", "a_one", "b_two", "alpha"])

    assert found == {
        "a_one": "value of a_one",
        "b_two": "value of b_two",
        "c_three": "value of c_three",
    }
    assert missing == ["alpha", "zeta"]


def test_the_store_wins_over_the_environment_which_fills_in_the_rest(keys, monkeypatch):
    services.secret_create(name="token", value="from-the-store")
    monkeypatch.setenv("FLOW_SECRET_token", "from-the-environment")
    monkeypatch.setenv("FLOW_SECRET_DEPLOY_KEY", "deploy-from-env")  # upper-case fallback
    monkeypatch.setenv("FLOW_SECRET_exact", "as written")
    monkeypatch.setenv("FLOW_SECRET_empty", "")  # an empty variable is no secret

    found, missing = vault.values_for(["token", "deploy_key", "exact", "empty"])

    assert found == {
        "token": "from-the-store",
        "deploy_key": "deploy-from-env",
        "exact": "as written",
    }
    assert missing == ["empty"]


def test_the_key_list_itself_is_never_a_secret_from_the_environment(keys, monkeypatch):
    monkeypatch.setenv("FLOW_SECRET_KEYS", keys.FLOW_SECRET_KEYS[0])

    assert vault.values_for(["KEYS", "keys"]) == ({}, ["KEYS", "keys"])
    assert "KEYS" not in vault.known_names()


def test_known_names_are_the_stored_ones_and_the_environments(keys, monkeypatch):
    services.secret_create(name="stored_one", value="x")
    monkeypatch.setenv("FLOW_SECRET_FROM_ENV", "y")
    monkeypatch.setenv("FLOW_SECRET_not-a-name", "z")  # no ${secrets.…} could reach it

    names = vault.known_names()

    assert {"stored_one", "FROM_ENV"} <= names
    assert "not-a-name" not in names


def test_a_value_under_a_key_no_longer_configured_is_unreadable_naming_the_secret(keys):
    services.secret_create(name="old_token", value=VALUE)
    keys.FLOW_SECRET_KEYS = [new_key()]

    with pytest.raises(vault.UnreadableSecret) as caught:
        vault.values_for(["old_token"])

    message = str(caught.value)
    assert "'old_token'" in message
    assert "not in FLOW_SECRET_KEYS" in message
    assert VALUE not in message


def test_without_any_key_a_stored_value_is_unreadable_and_says_what_to_set(keys):
    services.secret_create(name="token", value=VALUE)
    keys.FLOW_SECRET_KEYS = []

    with pytest.raises(vault.UnreadableSecret, match="FLOW_SECRET_KEYS is not set"):
        vault.values_for(["token"])


@pytest.mark.parametrize(
    "name", ["Token", "a", "api_key_2", "X" * 100], ids=["Token", "a", "api_key_2", "100"]
)
def test_valid_names_are_letters_digits_underscores_starting_with_a_letter(name):
    assert vault.NAME_RE.fullmatch(name)


@pytest.mark.parametrize("name", ["", "_token", "2fa", "api-key", "a.b", "ä", "X" * 101, "a b"])
def test_other_names_are_refused(name):
    assert not vault.NAME_RE.fullmatch(name)


# --- refusals ------------------------------------------------------------------------------------
def test_without_a_key_storing_is_refused_with_what_to_set_and_nothing_is_stored(settings):
    settings.FLOW_SECRET_KEYS = []

    with pytest.raises(services.NoSecretKeys) as caught:
        services.secret_create(name="token", value=VALUE)

    assert caught.value.status == 409
    assert "FLOW_SECRET_KEYS" in caught.value.message
    assert "make dotenv" in caught.value.message
    assert not Secret.objects.exists()


def test_the_key_generator_the_message_gives_makes_a_key_fernet_takes():
    code = vault.HOW_TO_SET_KEYS.split("python3 -c '")[1].split("')")[0]

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    key = done.stdout.strip()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"ok")) == b"ok"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "bad-name", "value": "x"}, "name"),
        ({"name": "token", "value": ""}, "value"),
        ({"name": "token", "value": "a\x00b"}, "value"),
        ({"name": "token", "value": "x" * 65_537}, "value"),
        ({"name": "token", "value": 12}, "value"),
        ({"name": "token", "value": "x", "description": "d" * 501}, "description"),
    ],
    ids=["name", "empty", "nul", "too-big", "not-text", "long-description"],
)
def test_bad_fields_are_refused_by_field_and_nothing_is_stored(keys, fields, field):
    with pytest.raises(services.ServiceError) as caught:
        services.secret_create(**fields)

    assert caught.value.status == 400
    assert [e["field"] for e in caught.value.errors] == [field]
    assert not Secret.objects.exists()


def test_a_name_taken_in_any_letter_case_is_a_conflict(keys):
    services.secret_create(name="Token", value="x")

    for name in ("Token", "TOKEN", "token"):
        with pytest.raises(services.Conflict, match="'Token' exists"):
            services.secret_create(name=name, value="y")
    assert vault.values_for(["Token"])[0] == {"Token": "x"}


def test_replacing_or_deleting_a_missing_secret_is_not_found(keys):
    with pytest.raises(services.NotFound):
        services.secret_replace(name="nope", value="x")
    with pytest.raises(services.NotFound):
        services.secret_describe(name="nope", description="x")
    with pytest.raises(services.NotFound):
        services.secret_delete(name="nope")


def test_changing_the_description_needs_no_key_and_keeps_the_value(keys):
    services.secret_create(name="token", value=VALUE, description="old")
    key = keys.FLOW_SECRET_KEYS
    keys.FLOW_SECRET_KEYS = []

    services.secret_describe(name="token", description="new")

    keys.FLOW_SECRET_KEYS = key
    assert Secret.objects.get(name="token").description == "new"
    assert vault.values_for(["token"])[0] == {"token": VALUE}


# --- rotation ------------------------------------------------------------------------------------
def test_rotation_moves_every_value_to_the_first_key_and_the_old_key_can_go(keys):
    old = keys.FLOW_SECRET_KEYS[0]
    values = {f"secret_{i}": f"value-{i}" for i in range(5)}
    for name, value in values.items():
        services.secret_create(name=name, value=value)
    before = {name: raw_value(name) for name in values}
    new = new_key()
    keys.FLOW_SECRET_KEYS = [new, old]
    out = StringIO()

    call_command("rotate_secret_keys", stdout=out)

    assert "re-encrypted 5 secret(s)" in out.getvalue()
    keys.FLOW_SECRET_KEYS = [new]  # the old key dropped
    assert vault.values_for(values)[0] == values
    for name in values:
        assert raw_value(name) != before[name]
        Fernet(new).decrypt(raw_value(name).encode())


def test_rotation_stops_at_a_value_under_an_unknown_key_naming_it_and_changes_nothing(keys):
    first = keys.FLOW_SECRET_KEYS[0]
    services.secret_create(name="good", value="good-value")
    keys.FLOW_SECRET_KEYS = [new_key()]
    services.secret_create(name="orphan", value="orphan-value")  # under a key soon lost
    keys.FLOW_SECRET_KEYS = [new_key(), first]
    before = {name: raw_value(name) for name in ("good", "orphan")}

    with pytest.raises(CommandError) as caught:
        call_command("rotate_secret_keys", stdout=StringIO())

    assert "'orphan'" in str(caught.value)
    assert "'good'" not in str(caught.value)
    assert "nothing was re-encrypted" in str(caught.value)
    assert {name: raw_value(name) for name in before} == before


def test_rotation_without_a_key_says_what_to_set(settings):
    settings.FLOW_SECRET_KEYS = []

    with pytest.raises(CommandError, match="FLOW_SECRET_KEYS"):
        call_command("rotate_secret_keys", stdout=StringIO())


def test_rotation_keeps_dates_and_authors(keys, make_user):
    alice = make_user("alice", "secrets_admin")
    services.secret_create(name="token", value="x", user=alice)
    before = Secret.objects.values("updated_at", "updated_by").get(name="token")
    keys.FLOW_SECRET_KEYS = [new_key(), *keys.FLOW_SECRET_KEYS]

    assert services.secret_keys_rotate() == 1

    assert Secret.objects.values("updated_at", "updated_by").get(name="token") == before


# --- settings ------------------------------------------------------------------------------------
def test_the_setting_reads_a_comma_separated_list_and_refuses_a_bad_key(monkeypatch):
    one, two = new_key(), new_key()
    monkeypatch.setenv("FLOW_SECRET_KEYS", f" {one} , {two} ,")
    assert env_fernet_keys("FLOW_SECRET_KEYS") == [one, two]

    monkeypatch.setenv("FLOW_SECRET_KEYS", f"{one},not-a-key")
    with pytest.raises(ImproperlyConfigured, match="key 2 of 2 is not a Fernet key"):
        env_fernet_keys("FLOW_SECRET_KEYS")

    monkeypatch.delenv("FLOW_SECRET_KEYS")
    assert env_fernet_keys("FLOW_SECRET_KEYS") == []


# --- the role ------------------------------------------------------------------------------------
def test_the_secrets_admin_role_reads_like_a_viewer_and_manages_secrets_besides():
    viewer = set(Group.objects.get(name="viewer").permissions.values_list("codename", flat=True))
    role = set(
        Group.objects.get(name="secrets_admin").permissions.values_list("codename", flat=True)
    )

    assert role == viewer | {"manage_secret"}
    for other in ("viewer", "approver", "operator", "editor"):
        held = Group.objects.get(name=other).permissions.values_list("codename", flat=True)
        assert "manage_secret" not in held


def test_admins_may_manage_secrets_and_no_other_role_may(make_user):
    assert make_user("root", "admin").has_perm("flows.manage_secret")
    assert make_user("sam", "secrets_admin").has_perm("flows.manage_secret")
    for role in ("viewer", "approver", "operator", "editor"):
        assert not make_user(f"{role}_user", role).has_perm("flows.manage_secret")
    # No "view_secret" or other default right: one right for every write.
    assert set(
        Permission.objects.filter(content_type__model="secret").values_list("codename", flat=True)
    ) == {"manage_secret"}


def test_the_migration_runs_backwards_and_forwards_again():
    import importlib

    from django.db.migrations.loader import MigrationLoader

    module = importlib.import_module("flows.migrations.0013_store")
    apps = MigrationLoader(connection).project_state(("flows", "0013_store")).apps
    sam = get_user_model().objects.create_user("sam")
    sam.user_permissions.add(Permission.objects.get(codename="manage_secret"))

    module.backwards(apps, None)
    assert not Group.objects.filter(name="secrets_admin").exists()
    assert not Permission.objects.filter(codename="manage_secret").exists()
    module.forwards(apps, None)

    role = Group.objects.get(name="secrets_admin").permissions.values_list("codename", flat=True)
    assert "manage_secret" in role
