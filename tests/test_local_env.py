"""A checkout's ``.env`` (flowmanager/localenv.py): after the step ``make run`` takes to write
it (``make dotenv``, before it migrates), every README ``manage.py`` line works in a plain
shell with nothing exported, and ``runflow`` prints its table without log lines.

The commands run for real, as subprocesses of a copy of the project with a clean environment
(no DEBUG, no SECRET_KEY, no ENV_FILE), as a developer's second terminal has.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from flowmanager.localenv import write_local_env

PROJECT = Path(settings.BASE_DIR)
MAKE = shutil.which("make", path="/usr/bin:/bin")
# A fresh clone holds none of these; the copy must not inherit this checkout's .env or db.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".env", "db.sqlite3*", "staticfiles", "__pycache__", ".pytest_cache",
    ".ruff_cache", "test-artifacts", "bench", "*.egg-info",
)  # fmt: skip


def sh(root: Path, command: str, *, stdin: str = "", **extra: str) -> subprocess.CompletedProcess:
    """Run one command line with bash in ``root`` and what `env -i HOME=$HOME PATH=/usr/bin:/bin`
    leaves of the environment (plus ``extra``): none of this suite's settings."""
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", **extra}
    return subprocess.run(
        ["bash", "-c", command],
        cwd=root,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def copy_project(target: Path) -> Path:
    shutil.copytree(PROJECT, target, ignore=NOT_COPIED)
    # The README's lines say .venv/bin/python: the virtualenv running this suite.
    (target / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return target


@dataclass
class Checkout:
    root: Path
    bootstrap: str  # what `make run`'s bootstrap printed


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    """A copy of the project after the steps `make run` takes before it starts the servers:
    `make dotenv`, migrate, bootstrap (the sample flow and the admin login)."""
    if MAKE is None:
        pytest.skip("make is not installed (the README requires it)")
    root = copy_project(tmp_path_factory.mktemp("clone") / "flowmanager")
    assert "wrote .env" in ok(sh(root, "make dotenv"))
    ok(sh(root, ".venv/bin/python manage.py migrate --noinput"))
    return Checkout(root, ok(sh(root, ".venv/bin/python manage.py bootstrap")))


# --- the README's manage.py lines, in a second terminal with nothing exported --------------------
def test_drf_create_token_prints_the_token_make_run_printed(checkout):
    printed = re.search(r"API token for 'admin': (\w+)", checkout.bootstrap).group(1)

    out = ok(sh(checkout.root, ".venv/bin/python manage.py drf_create_token admin"))

    assert out.strip() == f"Generated token {printed} for user admin"


def test_changepassword_changes_the_admin_password(checkout):
    # Without a terminal, getpass reads the two answers from stdin.
    out = ok(
        sh(
            checkout.root,
            ".venv/bin/python manage.py changepassword admin",
            stdin="Another-pass-4821\nAnother-pass-4821\n",
        )
    )
    assert "Password changed successfully for user 'admin'" in out

    check = (
        "from django.contrib.auth import authenticate; "
        "print(authenticate(username='admin', password='Another-pass-4821') is not None)"
    )
    assert (
        ok(sh(checkout.root, f'.venv/bin/python manage.py shell -v 0 -c "{check}"')).strip()
        == "True"
    )


def test_runflow_prints_only_the_table_and_the_status(checkout):
    done = sh(checkout.root, ".venv/bin/python manage.py runflow examples/sample_flow.json")

    out = ok(done)
    assert done.stderr == ""
    lines = out.splitlines()
    assert re.fullmatch(r"flow example_flow v\d+, execution [0-9a-f-]{36}", lines[0])
    assert [line.split()[:3] for line in lines[1:-1]] == [
        ["1", "task1", "SUCCESS"],
        ["2", "task2", "SUCCESS"],
        ["3", "task3", "SUCCESS"],
    ]
    assert lines[-1] == "COMPLETED"


def test_runflow_with_v2_adds_the_engine_log_on_stderr_and_keeps_stdout_the_same(checkout):
    done = sh(checkout.root, ".venv/bin/python manage.py runflow examples/sample_flow.json -v 2")

    out = ok(done)
    assert out.splitlines()[-1] == "COMPLETED"
    assert "flows.engine" not in out
    assert re.search(r"INFO flows\.engine execution=\S+ step=1 task=task1 .*started", done.stderr)


def readme_example_lines() -> list[str]:
    """The README's runflow lines for examples/ other than the two tested above."""
    readme = (PROJECT / "README.md").read_text()
    return [
        line.split("  #")[0].strip()
        for line in readme.splitlines()
        if line.startswith(".venv/bin/python manage.py runflow examples/")
        and "sample_flow" not in line
        and "retry_branch" not in line
        and "partner_api" not in line  # after its limit: the test below
    ]


def test_the_readme_lists_a_runflow_line_for_each_control_and_wait_example():
    # 6 for the control and wait examples, 2 for the input schema's (accepted, refused).
    assert len(readme_example_lines()) == 8, readme_example_lines()


def test_the_readme_s_secret_example_runs_as_written_and_never_shows_the_token(checkout):
    readme = (PROJECT / "README.md").read_text()
    [line] = [
        line
        for line in readme.splitlines()
        if line.startswith("FLOW_SECRET_partner_token=") and "runflow" in line
    ]
    done = sh(checkout.root, line)

    out = ok(done)
    assert out.splitlines()[-1] == "COMPLETED"
    assert "with Authorization: Bearer ***" in done.stderr
    assert "demo-token-123" not in out + done.stderr


def test_the_readme_s_partner_api_lines_run_as_written_in_order(checkout):
    readme = (PROJECT / "README.md").read_text().splitlines()
    limit, run = (
        next(line.split("  #")[0].strip() for line in readme if line.startswith(prefix))
        for prefix in (
            ".venv/bin/python manage.py limit partner_api",
            ".venv/bin/python manage.py runflow examples/partner_api_flow.json",
        )
    )

    assert "limit partner_api defined: 2 at once, 5 per 1 s" in ok(sh(checkout.root, limit))
    done = sh(checkout.root, run)
    assert ok(done).splitlines()[-1] == "COMPLETED"


@pytest.mark.parametrize("line", readme_example_lines())
def test_each_readme_example_line_runs_as_written(checkout, line):
    done = sh(checkout.root, line)

    if "wait_for_signal" in line:  # stops at the wait, as the README says
        assert done.returncode == 1, done.stdout + done.stderr
        assert "waits for signal 'approval'" in done.stdout
        assert done.stdout.splitlines()[-1] == "RUNNING"
    elif '"days": 0' in line:  # an input its schema refuses: exit 2, nothing run
        assert done.returncode == 2, done.stdout + done.stderr
        assert "/days: 0 is less than the minimum of 1" in done.stderr
    else:
        assert ok(done).splitlines()[-1] == "COMPLETED"


def test_the_readme_rotation_line_works_in_a_second_terminal_with_the_env_files_key(checkout):
    store = (
        "from flows import services, vault; "
        "services.secret_create(name='readme_token', value='v-1'); "
        "print(vault.values_for(['readme_token']))"
    )
    assert "'readme_token': 'v-1'" in ok(
        sh(checkout.root, f'.venv/bin/python manage.py shell -v 0 -c "{store}"')
    )

    out = ok(sh(checkout.root, ".venv/bin/python manage.py rotate_secret_keys"))

    assert out.startswith("re-encrypted 1 secret(s) under the first key")


# --- what settings take from .env, and what they never do --------------------------------------
def read_key(root: Path, **env: str) -> subprocess.CompletedProcess:
    return sh(
        root,
        '.venv/bin/python manage.py shell -v 0 -c "from django.conf import settings; '
        'print(settings.SECRET_KEY, settings.DEBUG)"',
        **env,
    )


def test_every_command_of_the_checkout_reads_the_same_key_from_its_env_file(checkout):
    written = re.search(r"^SECRET_KEY=(\S+)$", (checkout.root / ".env").read_text(), re.M)

    assert ok(read_key(checkout.root)).split() == [written.group(1), "True"]


def test_variables_in_the_environment_win_over_the_env_file(checkout):
    out = ok(read_key(checkout.root, SECRET_KEY="from-the-environment", DEBUG="0"))

    assert out.split() == ["from-the-environment", "False"]


def test_an_empty_env_file_setting_reads_no_file_as_the_test_suite_does(checkout):
    done = read_key(checkout.root, ENV_FILE="")

    assert done.returncode != 0
    assert "SECRET_KEY is not set" in done.stderr


def test_without_the_file_a_deploy_still_refuses_to_start_without_a_key(tmp_path):
    root = copy_project(tmp_path / "deploy")

    for debug in ("0", "1"):
        done = sh(root, ".venv/bin/python manage.py check", DEBUG=debug)
        assert done.returncode != 0
        assert "SECRET_KEY is not set" in done.stderr
        assert "make run" in done.stderr  # the message says how a developer gets one
    assert not (root / ".env").exists()  # settings never write it


def test_the_docker_image_and_git_leave_the_env_file_out():
    assert ".env" in (PROJECT / ".dockerignore").read_text().splitlines()
    assert ".env" in (PROJECT / ".gitignore").read_text().splitlines()


# --- the writer ---------------------------------------------------------------------------------
def test_the_file_is_written_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / ".env"

    write_local_env(path)
    first = path.read_text()
    assert write_local_env(path) == ""

    assert path.read_text() == first
    assert "DEBUG=1\n" in first
    assert len(re.search(r"^SECRET_KEY=(\S+)$", first, re.M).group(1)) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_developers_own_file_keeps_its_lines_and_gets_keys_only_when_it_has_none(tmp_path):
    path = tmp_path / ".env"
    path.write_text("LOG_LEVEL=DEBUG")

    write_local_env(path)

    lines = path.read_text().splitlines()
    assert lines[0] == "LOG_LEVEL=DEBUG"
    assert lines[1].startswith("SECRET_KEY=")
    assert lines[2].startswith("FLOW_SECRET_KEYS=")
    assert len(lines) == 3


def test_a_file_from_before_the_secret_store_gets_a_fernet_key_and_keeps_its_secret_key(tmp_path):
    from cryptography.fernet import Fernet

    path = tmp_path / ".env"
    path.write_text("DEBUG=1\nSECRET_KEY=the-old-one\n")

    done = write_local_env(path)

    assert done == "added a generated FLOW_SECRET_KEYS to .env"
    lines = path.read_text().splitlines()
    assert lines[:2] == ["DEBUG=1", "SECRET_KEY=the-old-one"]
    key = lines[2].removeprefix("FLOW_SECRET_KEYS=")
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"x")) == b"x"  # a key Fernet takes
    assert write_local_env(path) == ""  # and once is enough


def test_a_new_file_holds_a_fernet_key_the_settings_accept(checkout):
    written = re.search(r"^FLOW_SECRET_KEYS=(\S+)$", (checkout.root / ".env").read_text(), re.M)
    read = ok(
        sh(
            checkout.root,
            '.venv/bin/python manage.py shell -v 0 -c "from django.conf import settings; '
            'print(settings.FLOW_SECRET_KEYS)"',
        )
    )

    assert read.strip() == str([written.group(1)])


def test_two_checkouts_get_different_keys(tmp_path):
    write_local_env(tmp_path / "a")
    write_local_env(tmp_path / "b")

    assert (tmp_path / "a").read_text() != (tmp_path / "b").read_text()
