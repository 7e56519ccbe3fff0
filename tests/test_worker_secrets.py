"""A secret on a real worker: the server it is sent to receives it, nothing else ever shows it.

A flow's ``http_request`` sends ``${secrets.token}`` in a header and a query string to a local
server that echoes both back. The server got the real value; the stored rows, the worker's
log, and every API and page answer about the run are searched for the value, its base64 and
its JSON-escaped form.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.factories import flow_doc, task
from tests.live import manage
from tests.seed_api import SeedStack, seed_stack

pytestmark = pytest.mark.worker

TOKEN = 'live-"tok"\\en/+value-9f8e7d6c5b4a'
STORE = """
from flows import vault
from flows.models import Secret
Secret.objects.create(name="token", value=vault.encrypt({token!r}))
from django.contrib.auth import get_user_model
get_user_model().objects.create_superuser("boss", password="boss-pass-123")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedStack]:
    extra = {
        "FLOW_SECRET_KEYS": Fernet.generate_key().decode(),
        # The echo server listens on 127.0.0.1, which http_request refuses by default.
        "FLOW_HTTP_ALLOW_PRIVATE": "1",
        "SECURE_COOKIES": "0",  # plain http on the loopback, for the pages
    }
    # The pages' stylesheets come from collectstatic's manifest (served by whitenoise).
    manage({**os.environ, "DEBUG": "0"}, "collectstatic", "--noinput", "--verbosity", "0")
    with seed_stack(tmp_path_factory.mktemp("worker_secrets"), "secrets", extra) as running:
        manage(running.env, "shell", "--verbosity", "0", "-c", STORE.format(token=TOKEN))
        yield running


@pytest.fixture
def echo_server() -> Iterator[tuple[HTTPServer, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    def echo(request: Request) -> Response:
        got = {"authorization": request.headers.get("Authorization", ""), **request.args}
        received.append(got)
        return Response(json.dumps({"you_sent": got}), content_type="application/json")

    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/echo").respond_with_handler(echo)
    server.start()
    try:
        yield server, received
    finally:
        server.clear()
        server.stop()


def leaks(text: str) -> list[str]:
    forms = {
        "value": TOKEN,
        "json": json.dumps(TOKEN)[1:-1],
        "base64": base64.b64encode(TOKEN.encode()).decode().rstrip("="),
        "url": httpx.QueryParams({"k": TOKEN}).__str__()[2:],
    }
    return [name for name, form in forms.items() if form in text]


def test_the_server_gets_the_secret_and_no_answer_or_row_or_log_shows_it(
    stack: SeedStack, echo_server
) -> None:
    server, received = echo_server
    document = flow_doc(
        [
            task(
                "call",
                "http_request",
                url=server.url_for("/echo"),
                headers={"Authorization": "Bearer ${secrets.token}"},
                params={"key": "${secrets.token}"},
            )
        ],
        flow_id="e2e_secret",
    )
    execution_id = stack.create_and_execute(document)
    status = stack.wait_until_ended(execution_id)

    assert status["status"] == "COMPLETED", status
    assert received == [{"authorization": f"Bearer {TOKEN}", "key": TOKEN}]
    body = status["task_results"]["call"]["data"]["body"]
    assert body == {"you_sent": {"authorization": "Bearer ***", "key": "***"}}

    rows = stack.backend.query(
        "SELECT parameters, result, error, traceback, waiting FROM flows_taskrun "
        "WHERE execution_id = %s",
        stack.backend.key(execution_id),
    )
    events = stack.backend.query(
        "SELECT message FROM flows_executionevent WHERE execution_id = %s",
        stack.backend.key(execution_id),
    )
    assert "${secrets.token}" in str(rows)  # the stored parameters say what was used
    assert leaks(str(rows) + str(events)) == []

    api = [
        f"/flow/{execution_id}/status",
        f"/api/executions/{execution_id}/",
        f"/api/executions/{execution_id}/events/",
        f"/api/executions/{execution_id}/steps/1/result/",
        f"/api/executions/{execution_id}/steps/1/parameters/",
        "/api/executions/",
        "/api/flows/e2e_secret/",
    ]
    for path in api:
        answer = stack.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert leaks(answer.text) == [], path

    with httpx.Client(base_url=stack.url, timeout=10, follow_redirects=True) as browser:
        login = browser.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert csrf, login.text
        signed_in = browser.post(
            "/accounts/login/",
            data={
                "username": "boss",
                "password": "boss-pass-123",
                "csrfmiddlewaretoken": csrf.group(1),
            },
        )
        assert signed_in.status_code == 200
        pages = [
            f"/executions/{execution_id}/",
            f"/executions/{execution_id}/steps/1/result.json",
            "/executions/",
            "/flows/e2e_secret/",
            f"/admin/flows/execution/{execution_id}/change/",
            "/admin/flows/executionevent/",
        ]
        for path in pages:
            page = browser.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            if not path.endswith(".json"):
                assert "boss" in page.text, path  # signed in: not the login page
            assert leaks(page.text) == [], path

    worker_log = stack.logs["qcluster"].read_text(errors="replace")
    assert f"execution={execution_id}" in worker_log
    assert leaks(worker_log) == []
