"""Write the checkout's git-ignored ``.env`` for local development: ``python3 -m
flowmanager.localenv`` (``make dotenv``, which ``make run`` runs before it migrates).

The file holds ``DEBUG=1`` and a generated ``SECRET_KEY``. Settings read it when it exists
(values already in the environment win), so every ``manage.py`` command run in this checkout,
from any shell, finds the same key as the web server and the worker: sessions and the
cluster status the workers sign stay valid across restarts. A deploy has no such file (it is
in .gitignore and .dockerignore) and still refuses to start without ``SECRET_KEY``.

Standard library only: ``make`` runs it with the system Python, before any virtualenv exists.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent.parent / ".env"
_KEY_LINE = re.compile(r"^\s*(export\s+)?SECRET_KEY\s*=\s*\S", re.MULTILINE)


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def write_local_env(path: Path = ENV_FILE) -> str:
    """Create ``path`` with ``DEBUG=1`` and a new ``SECRET_KEY``, readable by its owner only.

    An existing file is the developer's: its lines are never changed. When it has no
    ``SECRET_KEY`` one is appended, so the checkout always ends up with a key. Returns what
    was done, for the caller to print.
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
            )
        return f"wrote {path.name}: DEBUG=1 and a generated SECRET_KEY"
    text = path.read_text(encoding="utf-8")
    if _KEY_LINE.search(text):
        return ""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(
            ("" if text.endswith("\n") or not text else "\n") + f"SECRET_KEY={new_secret_key()}\n"
        )
    return f"added a generated SECRET_KEY to {path.name}"


def main() -> int:
    done = write_local_env()
    if done:
        sys.stdout.write(done + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
