"""``manage.py worker_health`` against a real ``qcluster`` subprocess on a SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.worker


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _healthy(env: dict[str, str]) -> bool:
    return _manage(env, "worker_health", "--verbosity", "0").returncode == 0


def _wait_for(env: dict[str, str], want: bool, deadline_seconds: float) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if _healthy(env) == want:
            return True
        time.sleep(0.5)
    return False


def test_worker_health_follows_a_real_cluster(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "insecure-key-for-the-worker-health-test-only",
        "DEBUG": "0",
        "Q_WORKERS": "1",
        "Q_CLUSTER_NAME": f"health-{os.getpid()}",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("REDIS_URL", "Q_SYNC"):  # the database cache of this file, real workers
        env.pop(name, None)
    assert _manage(env, "migrate", "--noinput", "--verbosity", "0").returncode == 0
    assert not _healthy(env), "no cluster runs yet"

    log = (tmp_path / "qcluster.log").open("w")
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        assert _wait_for(env, True, 45), (tmp_path / "qcluster.log").read_text()[-2000:]
        cluster.send_signal(signal.SIGTERM)  # the main pid only, as in production
        cluster.wait(timeout=60)
        # Its status expires from the cache a few seconds after the last report.
        assert _wait_for(env, False, 30)
    finally:
        if cluster.poll() is None:
            cluster.kill()
            cluster.wait()
        log.close()
