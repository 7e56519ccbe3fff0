"""docker-compose.yml: no Docker engine here, so check the file's meaning by parsing it."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from django.core.management import CommandError, call_command, get_commands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def seconds(duration: str) -> int:
    """A compose duration such as ``11m``, ``40s`` or ``1m30s`` in seconds."""
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def test_it_has_postgres_redis_web_and_worker() -> None:
    assert set(SERVICES) == {"postgres", "redis", "web", "worker"}
    assert SERVICES["postgres"]["image"] == "postgres:15"
    assert SERVICES["redis"]["image"] == "redis:7"


@pytest.mark.parametrize("name", ["postgres", "redis", "web", "worker"])
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert check["interval"] and check["retries"] >= 1


def test_web_and_worker_share_one_image_and_one_environment() -> None:
    web, worker = SERVICES["web"], SERVICES["worker"]
    assert web["image"] == worker["image"]
    assert web["environment"]["DATABASE_URL"] == worker["environment"]["DATABASE_URL"]
    assert web["environment"] == worker["environment"]
    assert web["command"] == ["web"] and worker["command"] == ["worker"]


def test_the_secret_key_must_come_from_the_environment() -> None:
    for name in ("web", "worker"):
        assert SERVICES[name]["environment"]["SECRET_KEY"] == "${SECRET_KEY:?set SECRET_KEY}"


def test_database_and_redis_urls_point_at_the_compose_services() -> None:
    env = SERVICES["web"]["environment"]
    database = urlparse(env["DATABASE_URL"])
    assert database.scheme == "postgres" and database.hostname == "postgres"
    assert database.path == "/" + SERVICES["postgres"]["environment"]["POSTGRES_DB"]
    assert urlparse(env["REDIS_URL"]).hostname == "redis"


def test_web_healthcheck_asks_health_on_an_allowed_host() -> None:
    web = SERVICES["web"]
    command = " ".join(web["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in command
    assert "127.0.0.1" in web["environment"]["ALLOWED_HOSTS"].split(",")
    assert web["ports"] == ["${WEB_PORT:-8000}:8000"]


def test_worker_healthcheck_runs_a_command_that_exists() -> None:
    test = SERVICES["worker"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "manage.py", "worker_health"]
    assert "worker_health" in get_commands()


def test_worker_can_be_scaled() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


@pytest.mark.parametrize("name", ["web", "worker"])
def test_stop_is_a_sigterm_to_the_main_process_without_an_init(name: str) -> None:
    service = SERVICES[name]
    assert service["stop_signal"] == "SIGTERM"
    assert not service.get("init", False)


def test_worker_grace_period_outlasts_the_longest_step_twice() -> None:
    worker = SERVICES["worker"]
    longest_step = float(worker["environment"]["FLOW_MAX_TASK_TIMEOUT"])
    # The step in flight and the one prefetched job both finish before the cluster exits.
    assert seconds(worker["stop_grace_period"]) > 2 * longest_step


def test_the_worker_role_makes_qcluster_pid_1() -> None:
    entrypoint = (ROOT / "docker-entrypoint.sh").read_text()
    assert "exec python manage.py qcluster" in entrypoint
    assert "tini" not in (ROOT / "Dockerfile").read_text()


def test_workers_start_after_web_has_migrated() -> None:
    depends = SERVICES["worker"]["depends_on"]
    assert depends["web"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"


# --- manage.py worker_health --------------------------------------------------------------
def cluster(status: str, host: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(host=host or socket.gethostname(), status=status, cluster_id="c1")


@pytest.fixture
def clusters(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    found: list[Any] = []
    monkeypatch.setattr(
        "flows.management.commands.worker_health.Stat.get_all", lambda *a, **k: found
    )
    return found


@pytest.mark.parametrize("status", ["Idle", "Working"])
def test_worker_health_passes_when_this_hosts_cluster_is_alive(
    clusters: list[Any], status: str
) -> None:
    clusters.append(cluster(status))
    out = io.StringIO()

    call_command("worker_health", stdout=out)

    assert out.getvalue().strip() == f"1 live cluster(s) on {socket.gethostname()}: c1 {status}"


@pytest.mark.parametrize(
    "found",
    [[], [cluster("Idle", host="some-other-host")], [cluster("Stopping")], [cluster("Starting")]],
)
def test_worker_health_fails_without_a_live_cluster_here(
    clusters: list[Any], found: list[Any]
) -> None:
    clusters.extend(found)
    with pytest.raises(CommandError, match="no live django-q2 cluster"):
        call_command("worker_health", verbosity=0)


def test_worker_health_fails_when_the_cache_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[Any]:
        raise ConnectionError("cache down")

    monkeypatch.setattr("flows.management.commands.worker_health.Stat.get_all", broken)
    with pytest.raises(CommandError, match="cannot read cluster status"):
        call_command("worker_health", verbosity=0)
