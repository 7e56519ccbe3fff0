"""Notifications on real worker processes (``manage.py qcluster``, tests/live.py): a local SMTP
server (aiosmtpd) and a local webhook receiver (pytest_httpserver) in this process, the
workers' own timers handling the ends outbox and sending the notifications outbox.

What a user would notice: a receiver down while ten executions fail gets all ten once it comes
back, each once, in the order they failed, while mail keeps arriving; a failure after three
retries is one message; a cluster killed with SIGKILL just as an execution fails loses none
and sends none twice. Deadlines only bound "it never happened".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from werkzeug import Request, Response

from tests.factories import failing, flow_doc
from tests.live import free_port, live_backend, manage, poll, start

pytestmark = pytest.mark.worker

DEADLINE_SECONDS = 90.0

SETUP_SCRIPT = """
import json, os
from flows import services
args = json.loads(os.environ["SETUP_ARGS"])
hook, secret = services.channel_create(name="hook", kind="webhook", config={"url": args["url"]})
mail, _ = services.channel_create(name="mail", kind="email", config={"to": ["ops@example.com"]})
services.rule_create(event="execution_failed", channels=[hook.pk, mail.pk])
print(secret)
"""

SUBMIT_SCRIPT = """
import json, os
from flows import services
args = json.loads(os.environ["SUBMIT_ARGS"])
version = services.flow_create(document=args["document"])
execution, _ = services.execution_submit(flow_version=version)
print(execution.id)
"""


class Receiver:
    """The webhook receiver: answers 503 while ``down``; keeps every request that came."""

    def __init__(self, httpserver: Any) -> None:
        self.down = True
        self.refused = 0
        self.got: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.lock = threading.Lock()
        self.url = httpserver.url_for("/hook")
        httpserver.expect_request("/hook", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        with self.lock:
            if self.down:
                self.refused += 1
                return Response("down for maintenance", status=503)
            self.got.append((json.loads(request.get_data()), dict(request.headers)))
        return Response("ok")

    def executions(self) -> list[str]:
        with self.lock:
            return [payload["execution_id"] for payload, _ in self.got]


class Mailbox:
    """A local SMTP server (aiosmtpd): the execution ids of the mails it accepted."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.mails: list[str] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        body = message_from_bytes(envelope.content).get_payload(decode=True).decode()
        self.mails.append(body)
        return "250 OK"

    def executions(self, ids: list[str]) -> list[str]:
        return [e for body in list(self.mails) for e in ids if e in body]


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    try:
        yield box
    finally:
        box.controller.stop()


class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.logs: dict[str, Path] = {}
        self.clusters: list[subprocess.Popen] = []

    def start_cluster(self) -> subprocess.Popen:
        log = self.home / f"qcluster-{len(self.clusters) + 1}.log"
        self.logs[log.stem] = log
        proc = start([sys.executable, "manage.py", "qcluster"], self.env, log)
        self.clusters.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """kill -9 the cluster and every process it forked (it runs in a group of its own)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.clusters:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def shell(self, script: str, **args: Any) -> str:
        env = {**self.env, **{k: json.dumps(v) for k, v in args.items()}}
        return manage(env, "shell", "--verbosity", "0", "-c", script).strip()

    def submit(self, document: dict[str, Any]) -> str:
        return str(uuid.UUID(self.shell(SUBMIT_SCRIPT, SUBMIT_ARGS={"document": document})))

    def poll(self, what: str, read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
        return poll(what, read, done, logs=self.logs, seconds=DEADLINE_SECONDS)


@pytest.fixture
def stack(tmp_path: Path, httpserver: Any, mailbox: Mailbox) -> Iterator[tuple[Stack, Any]]:
    with live_backend(tmp_path, "alerts") as backend:
        env = backend.process_env(
            SECRET_KEY="insecure-key-for-the-alerts-live-test-only",
            DEBUG="0",
            Q_WORKERS="2",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            FLOW_DEMO_DELAY_SECONDS="0",
            FLOW_HTTP_ALLOW_PRIVATE="1",  # the receiver listens on 127.0.0.1
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(mailbox.controller.port),
            FLOW_NOTIFY_RETRY_SECONDS="0.3",
            FLOW_NOTIFY_MAX_BACKOFF_SECONDS="1",
        )
        running = Stack(tmp_path, env)
        try:
            yield running, backend
        finally:
            running.stop_all()


def status_of(backend: Any, execution_id: str) -> str | None:
    rows = backend.query(
        "SELECT status FROM flows_execution WHERE id = %s", backend.key(execution_id)
    )
    return rows[0][0] if rows else None


def notifications(backend: Any) -> list[tuple[str, str, int]]:
    rows = backend.query(
        "SELECT c.name, n.state, n.attempts FROM flows_notification n "
        "JOIN flows_channel c ON c.id = n.channel_id ORDER BY n.id"
    )
    return [(name, state, attempts) for name, state, attempts in rows]


def test_a_receiver_down_for_ten_failures_gets_all_ten_once_in_order_and_mail_goes_on(
    stack, httpserver, mailbox
) -> None:
    running, backend = stack
    receiver = Receiver(httpserver)
    running.shell(SETUP_SCRIPT, SETUP_ARGS={"url": receiver.url})
    running.start_cluster()

    failed = []
    for _ in range(10):  # one after the other: the order they failed in is known
        execution_id = running.submit(flow_doc([failing("load")], flow_id="etl"))
        running.poll(
            f"{execution_id} failing",
            lambda e=execution_id: status_of(backend, e),
            lambda s: s == "FAILED",
        )
        failed.append(execution_id)

    running.poll(
        "ten messages to each channel written, the webhook's first refused again and again",
        lambda: notifications(backend),
        lambda rows: len(rows) == 20 and any(n == "hook" and a >= 2 for n, _, a in rows),
    )
    # The mail channel is not held up by the webhook's.
    running.poll("ten mails", lambda: mailbox.executions(failed), lambda got: len(got) == 10)
    assert receiver.got == []

    receiver.down = False
    running.poll("the ten webhooks", receiver.executions, lambda got: len(got) >= 10)
    running.poll(
        "every message sent",
        lambda: notifications(backend),
        lambda rows: {s for _, s, _ in rows} == {"sent"},
    )

    assert receiver.executions() == failed  # each once, in the order of the failures
    assert sorted(mailbox.executions(failed)) == sorted(failed)
    assert receiver.refused >= 2


def test_a_failure_after_three_retries_sends_one_message(stack, httpserver, mailbox) -> None:
    running, backend = stack
    receiver = Receiver(httpserver)
    receiver.down = False
    running.shell(SETUP_SCRIPT, SETUP_ARGS={"url": receiver.url})
    running.start_cluster()
    retried = failing("load") | {"retry": {"max_attempts": 4}}

    execution_id = running.submit(flow_doc([retried], flow_id="etl"))

    running.poll("the webhook", receiver.executions, lambda got: len(got) >= 1)
    running.poll(
        "every message sent",
        lambda: notifications(backend),
        lambda rows: len(rows) == 2 and {s for _, s, _ in rows} == {"sent"},
    )
    attempts = backend.query(
        "SELECT COUNT(*) FROM flows_taskrun WHERE execution_id = %s", backend.key(execution_id)
    )[0][0]
    assert attempts == 4
    assert receiver.executions() == [execution_id]
    assert mailbox.executions([execution_id]) == [execution_id]


def test_a_cluster_killed_as_an_execution_fails_sends_its_message_exactly_once(
    stack, httpserver, mailbox
) -> None:
    running, backend = stack
    receiver = Receiver(httpserver)  # down: no send can succeed before the kill
    running.shell(SETUP_SCRIPT, SETUP_ARGS={"url": receiver.url})
    cluster = running.start_cluster()

    execution_id = running.submit(flow_doc([failing("load")], flow_id="etl"))
    running.poll("the failure", lambda: status_of(backend, execution_id), lambda s: s == "FAILED")
    running.kill(cluster)  # just as it failed: its end handled or not, a send begun or not

    running.start_cluster()
    receiver.down = False
    running.poll("the webhook", receiver.executions, lambda got: len(got) >= 1)
    running.poll(
        "every message sent",
        lambda: notifications(backend),
        lambda rows: len(rows) == 2 and {s for _, s, _ in rows} == {"sent"},
    )

    assert receiver.executions() == [execution_id]
