"""Write the checkout's git-ignored ``.env`` for local development: ``python3 -m
flowmanager.localenv`` (``make dotenv``, which ``make run`` runs before it migrates).

The file holds ``DEBUG=1``, a generated ``SECRET_KEY`` and a generated ``FLOW_SECRET_KEYS`` (the
secret store's Fernet key, flows/vault.py). Settings read it when it exists
(values already in the environment win), so every ``manage.py`` command run in this checkout,
from any shell, finds the same key as the web server and the worker: sessions and the
cluster status the workers sign stay valid across restarts. A deploy has no such file (it is
in .gitignore and .dockerignore) and still refuses to start without ``SECRET_KEY``.

Standard library only: ``make`` runs it with the system Python, before any virtualenv exists.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent.parent / ".env"


def _setting_line(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*(export\s+)?{name}\s*=\s*\S", re.MULTILINE)


_KEY_LINE = _setting_line("SECRET_KEY")
_SECRET_KEYS_LINE = _setting_line("FLOW_SECRET_KEYS")


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def new_fernet_key() -> str:
    """A Fernet key as ``cryptography``'s ``Fernet.generate_key()`` makes one (32 random bytes,
    URL-safe base64), without importing it: this runs before the virtualenv exists."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def write_local_env(path: Path = ENV_FILE) -> str:
    """Create ``path`` with ``DEBUG=1``, a new ``SECRET_KEY`` and a new ``FLOW_SECRET_KEYS``,
    readable by its owner only.

    An existing file is the developer's: its lines are never changed. When it has no
    ``SECRET_KEY`` or no ``FLOW_SECRET_KEYS`` (a file from before the secret store), the
    missing one is appended, so the checkout always ends up with both. Returns what was done,
    for the caller to print.
    """
    if not path.exists():
        # O_EXCL: two `make` runs racing cannot write two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return write_local_env(path)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(
                "# Local development settings for this checkout, written by `make run`.\n"
                "# Git-ignored; never copy it to a server. Variables set in the environment win.\n"
                "DEBUG=1\n"
                f"SECRET_KEY={new_secret_key()}\n"
                "# Encrypts the stored secrets; losing it loses them (README, Secrets).\n"
                f"FLOW_SECRET_KEYS={new_fernet_key()}\n"
            )
        return f"wrote {path.name}: DEBUG=1, a generated SECRET_KEY and FLOW_SECRET_KEYS"
    text = path.read_text(encoding="utf-8")
    added = [
        (name, make())
        for name, line, make in (
            ("SECRET_KEY", _KEY_LINE, new_secret_key),
            ("FLOW_SECRET_KEYS", _SECRET_KEYS_LINE, new_fernet_key),
        )
        if not line.search(text)
    ]
    if not added:
        return ""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(
            ("" if text.endswith("\n") or not text else "\n")
            + "".join(f"{name}={value}\n" for name, value in added)
        )
    return f"added a generated {' and '.join(name for name, _ in added)} to {path.name}"


def main() -> int:
    done = write_local_env()
    if done:
        sys.stdout.write(done + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
