from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@pytest.fixture
def alice(db: Any) -> Any:
    """An editor (the widest role short of admin): she may create, run and delete."""
    return _in_role(get_user_model().objects.create_user("alice", password="alice-pass-123"))


@pytest.fixture
def bob(db: Any) -> Any:
    """Another editor, for rules about whose rows are whose."""
    return _in_role(get_user_model().objects.create_user("bob", password="bob-pass-123"))


def _in_role(user: Any, role: str = "editor") -> Any:
    from django.contrib.auth.models import Group

    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def api(alice: Any) -> APIClient:
    """A client authenticated as alice with her API token."""
    client = APIClient()
    token = Token.objects.create(user=alice)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def sync_jobs(monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> Any:
    """Run queued jobs inline, as django-q2's sync mode does.

    Conf.SYNC is read once at import, so it is patched on the class (DJANGO-Q2.md). Use as
    ``with sync_jobs(): client.post(...)``; jobs run when the request's transaction commits.
    """
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture(autouse=True)
def _plain_static_files(settings: Any) -> None:
    """Serve static files without collectstatic's manifest, which tests don't build."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings: Any) -> None:
    """Users are made in most tests; the default PBKDF2 costs ~0.3 s per password."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Roles of the resource API (groups made by migrations 0005 and 0010) ----------------------
ROLES = ("viewer", "approver", "operator", "editor")


def token_client(user: Any) -> APIClient:
    """A client that authenticates as ``user`` with an API token, as scripts do."""
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def make_user(db: Any) -> Any:
    """``make_user("carol", "operator")``: a user in that role; role "admin" is a superuser,
    None a user in no group."""
    from django.contrib.auth.models import Group

    def make(username: str, role: str | None) -> Any:
        model = get_user_model()
        if role == "admin":
            return model.objects.create_superuser(username, password=f"{username}-pass-123")
        user = model.objects.create_user(username, password=f"{username}-pass-123")
        if role is not None:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def grant(db: Any) -> Any:
    """``grant(alice, "operator")``: put an existing user in a role."""
    from django.contrib.auth.models import Group

    def add(user: Any, role: str) -> Any:
        user.groups.add(Group.objects.get(name=role))
        return get_user_model().objects.get(pk=user.pk)  # a fresh object: no stale perm cache

    return add


@pytest.fixture
def client_as(make_user: Any) -> Any:
    """``client_as("editor")``: a token client for a new user in that role (or "admin"/None)."""

    def make(role: str | None) -> APIClient:
        return token_client(make_user(f"{role or 'nobody'}_user", role))

    return make


# --- Task types of the engine control tests (tests/controls.py) ------------------------------
@pytest.fixture(scope="session")
def control_plugin_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The built-in task types and those of tests/controls.py, in one folder (per session)."""
    import shutil
    from pathlib import Path

    from tests.controls import PLUGINS
    from tests.factories import write_plugins

    folder = tmp_path_factory.mktemp("control_plugins")
    for module in (Path(__file__).resolve().parent.parent / "tasks").glob("task_*.py"):
        shutil.copy(module, folder / module.name)
    return write_plugins(folder, PLUGINS)


@pytest.fixture
def control_plugins(control_plugin_folder: Any, settings: Any) -> Any:
    """Point FLOW_TASKS_DIR at the control tests' plugin folder (use with usefixtures)."""
    settings.FLOW_TASKS_DIR = control_plugin_folder
    return control_plugin_folder


@pytest.fixture
def marker(tmp_path: Any) -> Any:
    """A file path a test task waits for (or fails without) until the test creates it."""
    return tmp_path / "marker"


# --- The engine's tests take its production transaction path ---------------------------------
# Inside a test's transaction writes.atomic() falls back to Django's atomic block (a savepoint),
# so a test that runs steps there never sends the BEGIN and COMMIT a worker sends. These
# modules' tests run outside one (django_db(transaction=True)): the tables are emptied after
# each test instead. A test that says django_db itself keeps its own choice.
ENGINE_MODULES = ("test_engine_", "test_dispatcher", "test_reaper", "test_routing", "test_sql_")
# Reference rows the migrations and post_migrate make, left in place when the tables are emptied
# after a transaction=True test: remade, they cost more than the emptying, and the roles
# (groups) would be gone for the next such test. Such a test must not create any of these.
KEPT_TABLES = frozenset(
    {"django_content_type", "auth_permission", "auth_group", "auth_group_permissions"}
)


@pytest.hookimpl(tryfirst=True)  # before pytest-django orders the tests by their marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.stem.startswith(ENGINE_MODULES):
            continue
        if any(mark.name == "django_db" for mark in item.own_markers):
            continue
        marker = item.get_closest_marker("django_db")
        if marker is not None and not marker.kwargs.get("transaction"):
            options = {k: v for k, v in marker.kwargs.items() if k != "transaction"}
            item.add_marker(pytest.mark.django_db(transaction=True, **options), append=False)


@pytest.fixture(scope="session", autouse=True)
def _cheap_flush() -> Any:
    """Empty the tables after a transaction=True test but for KEPT_TABLES, and on PostgreSQL
    with DELETE, as Django does on SQLite: its TRUNCATE costs a few milliseconds per table
    whatever the rows (~0.2 s a test against ~0.01 s). Django's foreign keys there are
    checked at the commit, so the order of the DELETEs does not matter."""
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLWrapper
    from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper

    PostgreSQL, SQLite = PostgreSQLWrapper.ops_class, SQLiteWrapper.ops_class

    truncate, delete = PostgreSQL.sql_flush, SQLite.sql_flush

    def postgresql(self: Any, style: Any, tables: Any, **options: bool) -> list[str]:
        if any(options.values()):  # reset_sequences, allow_cascade: Django's own
            return truncate(self, style, tables, **options)
        emptied = [f"DELETE FROM {self.quote_name(t)};" for t in tables if t not in KEPT_TABLES]
        return [" ".join(emptied)] if emptied else []

    def sqlite(self: Any, style: Any, tables: Any, **options: bool) -> list[str]:
        return delete(self, style, [t for t in tables if t not in KEPT_TABLES], **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PostgreSQL, "sql_flush", postgresql)
        patch.setattr(SQLite, "sql_flush", sqlite)
        yield
