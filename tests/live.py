"""Run the real thing for end-to-end tests: a migrated SQLite file, gunicorn and a qcluster.

Shared by the worker tests (``test_worker_e2e.py``) and the browser test
(``test_web_e2e.py``). Processes get a session of their own and are stopped with SIGTERM to
their main pid only (DJANGO-Q2.md, "Shutdown"), then SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def descendants(pid: int) -> list[int]:
    """Child pids, recursively, from /proc (empty where /proc has no children files)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def stop(proc: subprocess.Popen, *, grace: float) -> None:
    """SIGTERM the main pid only (never its group: DJANGO-Q2.md, "Shutdown"), then SIGKILL."""
    if proc.poll() is not None:
        return
    leftovers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    # A SIGKILLed main process leaves its worker processes behind; end exactly those.
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        # A session of its own keeps a Ctrl-C at the terminal (a signal to the whole
        # foreground group) away from qcluster, which hangs on group signals; the
        # finalizer stops it properly instead.
        return subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def gunicorn_args(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "flowmanager.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "4",
        "--no-control-socket",
    ]


def log_tails(logs: dict[str, Path], lines: int = 40) -> str:
    parts = []
    for name, path in logs.items():
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        parts.append(f"--- {name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


@contextlib.contextmanager
def running_stack(
    home: Path, env: dict[str, str], *, deadline: float = 30.0
) -> Iterator[tuple[str, dict[str, Path]]]:
    """Start ``qcluster`` and gunicorn with ``env``; yield (base URL, log paths) once up."""
    port = free_port()
    logs = {"qcluster": home / "qcluster.log", "gunicorn": home / "gunicorn.log"}
    procs: list[tuple[subprocess.Popen, float]] = []
    try:
        procs.append((start([sys.executable, "manage.py", "qcluster"], env, logs["qcluster"]), 15))
        procs.append((start(gunicorn_args(port), env, logs["gunicorn"]), 10))
        url = f"http://127.0.0.1:{port}"
        until = time.monotonic() + deadline
        while True:
            for proc, _ in procs:
                assert proc.poll() is None, f"{proc.args} exited\n{log_tails(logs)}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < until, f"web server never answered\n{log_tails(logs)}"
            time.sleep(0.1)
        yield url, logs
    finally:
        for proc, grace in reversed(procs):
            stop(proc, grace=grace)
