"""Fuzzing: schemathesis drives every operation of the application's own OpenAPI schema, in
process through WSGI, with data that fits the schema and data that does not.

Whatever it sends, the API must never answer 5xx, and every answer must be one the schema
documents: its status code, content type, headers and body. Path parameters are sometimes
replaced with ids that exist, so that success paths are fuzzed too, not only 404s.

The number of examples per operation is bounded (FUZZ_EXAMPLES, default 12) so the suite stays
fast; run with a larger FUZZ_EXAMPLES to dig deeper locally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import HealthCheck
from hypothesis import settings as examples
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flowmanager.wsgi import application
from flows import services
from flows.models import Notification
from tests.factories import flow_doc, run_to_end, sample_flow, task

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def fuzz_token(db: Any) -> str:
    admin = get_user_model().objects.create_superuser("fuzz", password="fuzz-pass-123")
    return Token.objects.create(user=admin).key


# The schema the running application serves, fetched through WSGI at collection time (before
# pytest-django allows the test host, hence the override).
with override_settings(ALLOWED_HOSTS=["localhost"]):
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

# Ids that exist, per path prefix; filled by the rows fixture before each operation's examples.
EXISTING: dict[str, list[str]] = {}


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Often aim a path parameter at a row that exists."""
    if not path_parameters:
        return st.just(path_parameters)
    for prefix, ids in EXISTING.items():
        key = next((k for k in ("id", "execution_id", "name") if k in path_parameters), "")
        if key and context.operation.path.startswith(prefix):
            real = [{**path_parameters, key: value} for value in ids]
            return st.sampled_from([path_parameters, *real])
    return st.just(path_parameters)


@pytest.fixture
def in_test_transaction() -> Iterator[None]:
    """Keep the test's database connection across WSGI requests, as Django's test client does.

    The WSGI handler closes "old" connections when a request starts and ends; inside a test that
    would close the connection holding the test's transaction (PostgreSQL).
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def rows(db: Any, settings: Any, in_test_transaction: None) -> None:
    """Two flows, a finished and a queued execution, for path parameters to find."""
    settings.ALLOWED_HOSTS = ["localhost"]  # schemathesis calls the WSGI app as localhost
    services.flow_create(document=sample_flow())
    version = services.flow_create(document=flow_doc([task("hello", "print", message="hi")]))
    done, _ = services.execution_submit(flow_version=version, input={"n": 1})
    run_to_end(done.id)
    queued, _ = services.execution_submit(flow_version=version)
    executions = [str(done.id), str(queued.id)]
    # An email channel (its test goes to Django's test mail box, no network), a rule, and a
    # delivery in the log.
    channel, _ = services.channel_create(name="ops", kind="email", config={"to": ["o@example.com"]})
    rule = services.rule_create(event="execution_failed", channels=[channel.pk])
    failed, _ = services.execution_submit(
        flow_version=services.flow_create(
            document=flow_doc(
                [{"name": "boom", "task_type": "fetch_data", "parameters": {"failure_rate": 1}}],
                flow_id="failing",
            )
        )
    )
    run_to_end(failed.id)
    services.handle_ends()
    EXISTING.clear()
    EXISTING.update(
        {
            "/api/flows/": ["example_flow", "test_flow"],
            "/api/executions/": executions,
            "/flow/": executions,
            "/api/task-types/": ["noop", "fetch_data"],
            "/api/channels/": [str(channel.pk)],
            "/api/alert-rules/": [str(rule.pk)],
            "/api/notifications/": [
                str(n) for n in Notification.objects.values_list("pk", flat=True)
            ],
        }
    )


@schema.parametrize()
@examples(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_operation_answers_5xx_or_outside_its_schema(
    case: Any, rows: None, fuzz_token: str
) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {fuzz_token}"}, checks=CHECKS)
