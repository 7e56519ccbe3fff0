"""Where ``http_request`` may connect (issue 18, finding 4).

By default a flow cannot make the worker call the project's own pages, Redis, a cloud metadata
service or anything else on a loopback, private or link-local address: the step fails, at once
and for good, with a message that says which setting allows it. ``FLOW_HTTP_ALLOW_PRIVATE=1``
and ``FLOW_HTTP_ALLOWED_HOSTS`` are the two ways to allow it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from pytest_httpserver import HTTPServer

from flows.models import ExecutionStatus, TaskRunStatus
from tasks import _netpolicy
from tasks.base_task import PermanentTaskError, TaskContext
from tasks.task_http_request import HttpRequestTask
from tests.factories import flow_doc, run_flow, task

HINT = "set FLOW_HTTP_ALLOWED_HOSTS="


@pytest.fixture(autouse=True)
def default_policy(monkeypatch) -> None:
    """The policy a deploy gets when it sets neither variable, whatever this shell exports."""
    monkeypatch.delenv("FLOW_HTTP_ALLOW_PRIVATE", raising=False)
    monkeypatch.delenv("FLOW_HTTP_ALLOWED_HOSTS", raising=False)


def on_loopback(httpserver, path: str) -> str:
    """The test server's URL by address (``url_for`` names it ``localhost``)."""
    return f"http://127.0.0.1:{httpserver.port}{path}"


def call(**parameters: Any) -> dict[str, Any]:
    instance = HttpRequestTask(name="call", parameters=parameters)
    instance.context = TaskContext(execution_id="exec-1", results={})
    return asyncio.run(instance.run())


def refusal(**parameters: Any) -> str:
    with pytest.raises(PermanentTaskError) as caught:
        call(**parameters)
    return str(caught.value)


def test_the_projects_own_server_on_loopback_is_refused_and_never_contacted(httpserver) -> None:
    httpserver.expect_request("/admin/").respond_with_data("the admin login page")
    url = on_loopback(httpserver, "/admin/")

    message = refusal(url=url)

    assert message == (
        f"http_request refused {url}: 127.0.0.1 is a loopback address; "
        "set FLOW_HTTP_ALLOWED_HOSTS=127.0.0.1 or FLOW_HTTP_ALLOW_PRIVATE=1 to allow it"
    )
    assert httpserver.log == []  # refused before connecting


def test_a_closed_and_an_open_local_port_are_refused_alike(httpserver) -> None:
    # Before, Redis on 6379 answered where a closed port was refused: a port scanner.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    open_port = httpserver.port

    closed_message = refusal(url=f"http://127.0.0.1:{closed}/")
    open_message = refusal(url=f"http://127.0.0.1:{open_port}/")

    assert closed_message.replace(str(closed), "PORT") == open_message.replace(
        str(open_port), "PORT"
    )


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address (cloud metadata)"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("[::1]", "a loopback address"),
        ("[fd00:ec2::254]", "a private address"),
        ("[fe80::1]", "a link-local address"),
        ("[::ffff:127.0.0.1]", "a loopback address"),
        ("[::ffff:169.254.169.254]", "a link-local address (cloud metadata)"),
        ("[64:ff9b::a9fe:a9fe]", "a link-local address (cloud metadata)"),  # NAT64
        ("[2002:7f00:1::]", "a loopback address"),  # 6to4 of 127.0.0.1
    ],
)
def test_a_literal_address_that_is_not_public_is_refused(host: str, why: str) -> None:
    message = refusal(url=f"http://{host}/latest/meta-data/", timeout=2)

    assert f"{host.strip('[]')} is {why};" in message
    assert HINT in message


def test_a_name_that_resolves_to_loopback_is_refused(httpserver) -> None:
    url = f"http://localhost:{httpserver.port}/api/"

    message = refusal(url=url)

    assert message.startswith(f"http_request refused {url}: localhost resolves to ")
    assert "a loopback address" in message
    assert "set FLOW_HTTP_ALLOWED_HOSTS=localhost or FLOW_HTTP_ALLOW_PRIVATE=1" in message


def test_a_name_is_refused_when_any_of_its_addresses_is_private(monkeypatch) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    monkeypatch.setattr(_netpolicy, "resolve", resolve)

    message = refusal(url="https://mixed.example.com/")

    assert "mixed.example.com resolves to 10.0.0.7, a private address" in message


def test_the_connection_goes_to_the_address_that_was_checked(httpserver, monkeypatch) -> None:
    # No second lookup between the check and the connect, so a name that answers differently
    # the second time (DNS rebinding) cannot slip past. ".test" names never resolve, so the
    # request only reaches the server through the checked address.
    checked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        checked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(_netpolicy, "resolve", resolve)
    monkeypatch.setattr(_netpolicy, "refusal_reason", lambda address: None)
    httpserver.expect_request(
        "/ok", headers={"Host": f"pinned.test:{httpserver.port}"}
    ).respond_with_json({"ok": True})

    result = call(url=f"http://pinned.test:{httpserver.port}/ok")

    assert result["body"] == {"ok": True}
    assert checked == ["pinned.test"]


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 whose certificate names ``pinned.test`` only, trusted
    through SSL_CERT_FILE as a deploy's own CA would be."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=pinned.test", "-addext", "subjectAltName=DNS:pinned.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    yield server
    server.clear()
    server.stop()


def test_tls_checks_the_name_while_connecting_to_the_checked_address(
    tls_server, monkeypatch
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(_netpolicy, "resolve", resolve)
    monkeypatch.setattr(_netpolicy, "refusal_reason", lambda address: None)
    tls_server.expect_request("/ok").respond_with_json({"ok": True})

    result = call(url=f"https://pinned.test:{tls_server.port}/ok")

    assert result["body"] == {"ok": True}
    # The certificate is still checked against the name in the URL, not the address.
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        call(url=f"https://other.test:{tls_server.port}/ok")


def test_a_redirect_to_the_metadata_service_is_refused(httpserver, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOWED_HOSTS", "127.0.0.1")
    target = "http://169.254.169.254/latest/meta-data/iam/"
    httpserver.expect_request("/go").respond_with_data("", status=302, headers={"Location": target})

    message = refusal(url=on_loopback(httpserver, "/go"), follow_redirects=True, timeout=2)

    assert message.startswith(
        f"http_request refused {target}: 169.254.169.254 is a link-local address (cloud metadata)"
    )


def test_a_redirect_to_a_loopback_name_is_refused(httpserver, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOWED_HOSTS", "127.0.0.1")
    target = f"http://localhost:{httpserver.port}/admin/"
    httpserver.expect_request("/go").respond_with_data("", status=302, headers={"Location": target})
    httpserver.expect_request("/admin/").respond_with_data("secret")

    message = refusal(url=on_loopback(httpserver, "/go"), follow_redirects=True)

    assert message.startswith(f"http_request refused {target}: localhost resolves to ")
    assert [entry[0].path for entry in httpserver.log] == ["/go"]


@pytest.mark.parametrize("listed", ["localhost", "LocalHost", "api.internal, localhost"])
def test_a_listed_host_is_allowed(httpserver, monkeypatch, listed: str) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOWED_HOSTS", listed)
    httpserver.expect_request("/ping").respond_with_json({"pong": True})

    result = call(url=f"http://localhost:{httpserver.port}/ping")

    assert result["body"] == {"pong": True}


def test_a_listed_address_is_allowed(httpserver, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOWED_HOSTS", "127.0.0.1")
    httpserver.expect_request("/ping").respond_with_json({"pong": True})

    assert call(url=on_loopback(httpserver, "/ping"))["status_code"] == 200


def test_allow_private_allows_every_address(httpserver, monkeypatch) -> None:
    monkeypatch.setenv("FLOW_HTTP_ALLOW_PRIVATE", "1")
    httpserver.expect_request("/ping").respond_with_json({"pong": True})

    assert call(url=f"http://localhost:{httpserver.port}/ping")["status_code"] == 200


def test_a_suffix_pattern_allows_the_subdomains_only() -> None:
    policy = _netpolicy.policy_from_env(
        {"FLOW_HTTP_ALLOWED_HOSTS": "*.corp.example, billing.internal, [fd00::1]"}
    )

    assert policy.allows_host("api.corp.example")
    assert policy.allows_host("a.b.CORP.example.")
    assert not policy.allows_host("corp.example")
    assert not policy.allows_host("evilcorp.example")
    assert policy.allows_host("billing.internal")
    assert not policy.allows_host("billing.internal.evil.com")
    assert policy.allows_host("fd00::1")


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"FLOW_HTTP_ALLOW_PRIVATE": "maybe"}, "FLOW_HTTP_ALLOW_PRIVATE='maybe' is not a boolean"),
        ({"FLOW_HTTP_ALLOWED_HOSTS": "http://api.internal"}, "'http://api.internal'"),
        ({"FLOW_HTTP_ALLOWED_HOSTS": "redis:6379"}, "'redis:6379'"),
        ({"FLOW_HTTP_ALLOWED_HOSTS": "a.*.example"}, "'a.*.example'"),
    ],
)
def test_a_bad_setting_is_refused_with_what_to_write(environ: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        _netpolicy.policy_from_env(environ)


def test_a_bad_setting_stops_the_process_at_start() -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENV_FILE": "",
        "SECRET_KEY": "x" * 50,
        "FLOW_HTTP_ALLOWED_HOSTS": "https://api.internal/",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "FLOW_HTTP_ALLOWED_HOSTS" in done.stderr
    assert "'https://api.internal/' is not a host name" in done.stderr


@pytest.mark.django_db
def test_a_refused_request_fails_its_step_once_with_the_reason(httpserver) -> None:
    url = on_loopback(httpserver, "/api/flows/")
    document = flow_doc([task("call", "http_request", url=url)])
    document["tasks"][0]["retry"] = {"max_attempts": 3, "delay_seconds": 0}

    execution = run_flow(document)

    assert execution.status == ExecutionStatus.FAILED
    step = execution.steps.get()  # one attempt: retrying would be refused the same way
    assert step.status == TaskRunStatus.FAILURE
    assert step.error.startswith(f"PermanentTaskError: http_request refused {url}: ")
    assert "FLOW_HTTP_ALLOW_PRIVATE=1" in step.error
    assert httpserver.log == []
