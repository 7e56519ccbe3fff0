"""Webhooks: ``POST /hooks/<slug>`` (signatures, refusals, dedup, mapping, ?wait) and the API
that manages them (``/api/flows/{id}/webhooks/``).

Deliveries are sent through Django's test client as raw bytes, as a sender would; what a
user notices is asserted: the answer, the executions that exist (or not) and the delivery
kept on the hook with its reason.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.test import Client
from django.utils import timezone

from flows import services, vault
from flows.models import Execution, Webhook, WebhookDedup, WebhookDelivery
from flows.services import webhooks as webhook_service
from flows.signatures import SignatureError, check_hmac, check_stripe, digest, stripe_signature
from tests.factories import flow_doc, run_to_end, task

# docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation":
# this secret and payload give exactly this X-Hub-Signature-256.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_PAYLOAD = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# Stripe's documented scheme (docs.stripe.com/webhooks, "Verify webhook signatures manually"):
# the signed payload is "<t>.<raw body>", the v1 signature its HMAC-SHA256 in hex under the
# endpoint's secret. Computed outside Python, with
#   printf '%s' '1700000000.{"id":"evt_1","type":"ping"}' \
#     | openssl dgst -sha256 -hmac whsec_test_secret
STRIPE_SECRET = "whsec_test_secret"
STRIPE_BODY = b'{"id":"evt_1","type":"ping"}'
STRIPE_T = 1700000000
STRIPE_V1 = "74a11abdd08483d064a2a1571e7881b084c522f9f3ccd0b800ec8c74aba47fc2"


@pytest.fixture(autouse=True)
def _keys(settings: Any) -> None:
    settings.FLOW_SECRET_KEYS = [Fernet.generate_key().decode()]


@pytest.fixture
def flow(db: Any) -> Any:
    return services.flow_create(document=flow_doc([task("hello", "print", message="hi")]))


def make_hook(flow_id: str = "test_flow", **options: Any) -> tuple[Webhook, str]:
    return services.webhook_create(flow_id=flow_id, **options)


def with_secret(hook: Webhook, plain: str) -> Webhook:
    """The hook signing with ``plain`` (a published test vector's secret)."""
    hook.secret = vault.encrypt(plain)
    hook.save(update_fields=["secret"])
    return hook


def post(client: Client, hook: Webhook, body: bytes, query: str = "", **headers: str) -> Any:
    return client.post(
        f"/hooks/{hook.slug}{query}", data=body, content_type="application/json", headers=headers
    )


def github_headers(secret: str, body: bytes, delivery: str = "") -> dict[str, str]:
    headers = {"X-Hub-Signature-256": "sha256=" + digest(secret, body)}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def deliveries(hook: Webhook) -> list[tuple[str, int, str]]:
    rows = WebhookDelivery.objects.filter(hook=hook).order_by("id")
    return list(rows.values_list("outcome", "http_status", "reason"))


# --- Signatures ----------------------------------------------------------------------------------
def test_the_published_github_vector_checks() -> None:
    assert "sha256=" + digest(GITHUB_SECRET, GITHUB_PAYLOAD) == GITHUB_SIGNATURE
    common = {"header": "X-Hub-Signature-256", "algorithm": "sha256", "prefix": "sha256="}
    check_hmac(GITHUB_SIGNATURE, GITHUB_PAYLOAD, [GITHUB_SECRET], encoding="hex", **common)
    with pytest.raises(SignatureError, match="does not match"):
        check_hmac(GITHUB_SIGNATURE, b"Hello, World?", [GITHUB_SECRET], encoding="hex", **common)


def test_the_stripe_vector_checks_and_a_replay_outside_the_window_is_refused() -> None:
    header = f"t={STRIPE_T},v1={STRIPE_V1}"
    assert stripe_signature(STRIPE_SECRET, STRIPE_BODY, STRIPE_T) == header
    check_stripe(header, STRIPE_BODY, [STRIPE_SECRET], now=STRIPE_T + 299, tolerance_seconds=300)
    with pytest.raises(SignatureError, match="replay"):
        check_stripe(
            header, STRIPE_BODY, [STRIPE_SECRET], now=STRIPE_T + 301, tolerance_seconds=300
        )


def test_a_github_delivery_signed_as_published_starts_the_flow(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="hmac", preset="github", raw_text=True)
    with_secret(hook, GITHUB_SECRET)

    answer = post(client, hook, GITHUB_PAYLOAD, **{"X-Hub-Signature-256": GITHUB_SIGNATURE})

    assert answer.status_code == 202, answer.content
    execution = Execution.objects.get(pk=answer.json()["execution_id"])
    assert execution.input == {"body": "Hello, World!"}
    assert execution.trigger == "webhook"
    assert execution.status == "QUEUED"
    assert answer.json()["status_url"].endswith(f"/api/executions/{execution.id}/")
    assert deliveries(hook) == [("accepted", 202, "")]


def test_a_stripe_delivery_is_checked_with_its_timestamp(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="hmac", preset="stripe")
    with_secret(hook, STRIPE_SECRET)
    now = int(time.time())

    fresh = post(
        client,
        hook,
        STRIPE_BODY,
        **{"Stripe-Signature": stripe_signature(STRIPE_SECRET, STRIPE_BODY, now)},
    )
    replayed = post(
        client, hook, STRIPE_BODY, **{"Stripe-Signature": f"t={STRIPE_T},v1={STRIPE_V1}"}
    )

    assert fresh.status_code == 202
    assert replayed.status_code == 401
    assert "replay" in replayed.json()["detail"]
    assert Execution.objects.count() == 1
    assert [d[:2] for d in deliveries(hook)] == [("accepted", 202), ("refused", 401)]


def test_rotation_keeps_the_previous_secret_until_the_next_rotation(
    client: Client, flow: Any
) -> None:
    hook, first = make_hook(auth="hmac", preset="github")
    _, second = services.webhook_rotate(flow_id="test_flow", hook_id=hook.pk)
    body = b'{"n": 1}'

    assert post(client, hook, body, **github_headers(first, body)).status_code == 202
    assert post(client, hook, body, **github_headers(second, body)).status_code == 202

    _, third = services.webhook_rotate(flow_id="test_flow", hook_id=hook.pk)
    assert post(client, hook, body, **github_headers(first, body)).status_code == 401
    assert post(client, hook, body, **github_headers(second, body)).status_code == 202
    services.webhook_rotate(flow_id="test_flow", hook_id=hook.pk, drop_previous=True)
    assert post(client, hook, body, **github_headers(second, body)).status_code == 401
    assert post(client, hook, body, **github_headers(third, body)).status_code == 202


def test_a_generic_hmac_hook_checks_its_own_header_algorithm_and_encoding(
    client: Client, flow: Any
) -> None:
    hook, secret = make_hook(
        auth="hmac", header="X-Signature", algorithm="sha1", prefix="v1=", encoding="base64"
    )
    body = b'{"order": 7}'
    good = "v1=" + digest(secret, body, algorithm="sha1", encoding="base64")
    sha256 = "v1=" + digest(secret, body, encoding="base64")

    assert post(client, hook, body, **{"X-Signature": good}).status_code == 202
    assert post(client, hook, body, **{"X-Signature": sha256}).status_code == 401
    assert post(client, hook, body).status_code == 401
    assert deliveries(hook)[2][2] == "no X-Signature header: the delivery is not signed"


def test_a_token_hook_takes_its_header_or_the_url_alone(client: Client, flow: Any) -> None:
    with_header, token = make_hook(auth="token", header="X-Hook-Token")
    url_alone, none = make_hook(auth="token")

    assert none == ""
    assert post(client, with_header, b"{}", **{"X-Hook-Token": token}).status_code == 202
    assert post(client, with_header, b"{}", **{"X-Hook-Token": token + "x"}).status_code == 401
    assert post(client, url_alone, b"{}").status_code == 202


# --- Refusals: each kept with its reason, none starting anything ---------------------------------
def test_every_refusal_is_kept_with_its_reason_and_starts_nothing(
    client: Client, db: Any, settings: Any
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    services.flow_create(document=flow_doc([task("hello")], input_schema=schema))
    settings.FLOW_WEBHOOK_MAX_BODY_BYTES = 1024
    hook, secret = make_hook(auth="hmac", preset="github", rate_limit_per_minute=2)
    disabled, _ = make_hook(auth="token")
    Webhook.objects.filter(pk=disabled.pk).update(enabled=False)

    def signed(body: bytes) -> Any:
        return post(client, hook, body, **github_headers(secret, body))

    unknown = client.post("/hooks/no-such-hook", data=b"{}", content_type="application/json")
    answers = [
        post(client, disabled, b"{}"),
        signed(b'{"n": "' + b"x" * 1100 + b'"}'),
        post(client, hook, b'{"n": 1}', **github_headers("wrong", b'{"n": 1}')),
        signed(b"not json"),
        signed(b'{"n": "one"}'),
        signed(b'{"n": 1}'),
        signed(b'{"n": 2}'),
    ]

    assert unknown.status_code == 404
    assert [a.status_code for a in answers] == [404, 413, 401, 415, 422, 202, 429]
    for refused in [unknown, *answers[:5], answers[6]]:
        assert set(refused.json()) == {"detail", "code", "errors"}
    assert answers[4].json()["code"] == "invalid_input"
    assert answers[4].json()["errors"] == [
        {"field": "/n", "message": "'one' is not of type 'integer'"}
    ]
    assert deliveries(disabled) == [("refused", 404, "this webhook is disabled")]
    kept = deliveries(hook)
    assert [row[:2] for row in kept] == [
        ("refused", 413),
        ("refused", 401),
        ("refused", 415),
        ("refused", 422),
        ("accepted", 202),
        ("refused", 429),
    ]
    assert "FLOW_WEBHOOK_MAX_BODY_BYTES" in kept[0][2]
    assert "does not match" in kept[1][2]
    assert "not JSON" in kept[2][2]
    assert "/n" in kept[3][2]
    assert "rate_limit_per_minute" in kept[5][2]
    assert Execution.objects.count() == 1  # the one accepted delivery's
    assert WebhookDelivery.objects.count() == 7  # nothing kept for the unknown slug


def test_the_rate_limit_opens_again_in_the_next_minute(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token", rate_limit_per_minute=1)
    assert post(client, hook, b"{}").status_code == 202
    assert post(client, hook, b"{}").status_code == 429
    Webhook.objects.filter(pk=hook.pk).update(rate_minute=0)  # as if a minute went by
    assert post(client, hook, b"{}").status_code == 202


def test_other_methods_are_405_and_a_bad_wait_is_400(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token")
    got = client.get(f"/hooks/{hook.slug}")
    assert got.status_code == 405 and got["Allow"] == "POST"
    assert post(client, hook, b"{}", "?wait=31").status_code == 400
    assert post(client, hook, b"{}", "?wait=nan").status_code == 400
    assert Execution.objects.count() == 0


# --- Dedup ---------------------------------------------------------------------------------------
def test_a_repeated_delivery_answers_the_first_execution_and_starts_nothing(
    client: Client, flow: Any
) -> None:
    hook, secret = make_hook(auth="hmac", preset="github")
    body = b'{"ref": "main"}'
    first = post(client, hook, body, **github_headers(secret, body, delivery="d-1"))
    again = post(client, hook, body, **github_headers(secret, body, delivery="d-1"))
    other = post(client, hook, body, **github_headers(secret, body, delivery="d-2"))

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert again.json()["duplicate"] is True
    assert other.status_code == 202
    assert Execution.objects.count() == 2
    assert [d[0] for d in deliveries(hook)] == ["accepted", "duplicate", "accepted"]


def test_a_stripe_event_dedups_on_its_id_within_the_window_only(client: Client, flow: Any) -> None:
    hook, secret = make_hook(auth="hmac", preset="stripe", dedup_window_seconds=60)

    def send() -> Any:
        signed = stripe_signature(secret, STRIPE_BODY, int(time.time()))
        return post(client, hook, STRIPE_BODY, **{"Stripe-Signature": signed})

    first, again = send(), send()
    assert (first.status_code, again.status_code) == (202, 200)
    WebhookDedup.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    later = send()

    assert later.status_code == 202
    assert later.json()["execution_id"] != first.json()["execution_id"]
    assert Execution.objects.count() == 2


def test_a_refused_delivery_does_not_use_up_its_delivery_id(db: Any, client: Client) -> None:
    schema = {"type": "object", "required": ["n"]}
    services.flow_create(document=flow_doc([task("hello")], input_schema=schema))
    hook, _ = make_hook(auth="token", dedup_header="X-Delivery")

    refused = post(client, hook, b"{}", **{"X-Delivery": "7"})
    fixed = post(client, hook, b'{"n": 1}', **{"X-Delivery": "7"})

    assert (refused.status_code, fixed.status_code) == (422, 202)


# --- Input ---------------------------------------------------------------------------------------
def test_the_input_mapping_picks_from_body_headers_and_query(client: Client, flow: Any) -> None:
    mapping = {
        "event": "${headers.X-GitHub-Event}",
        "repo": "${body.repository.full_name}",
        "first": "${body.commits[0].id}",
        "ref": "${query.ref}",
        "note": "push to ${body.repository.full_name}",
    }
    hook, secret = make_hook(auth="hmac", preset="github", input_mapping=mapping)
    body = json.dumps({"repository": {"full_name": "a/b"}, "commits": [{"id": "c1"}]}).encode()
    headers = {**github_headers(secret, body), "X-GitHub-Event": "push"}

    answer = post(client, hook, body, "?ref=main", **headers)

    assert answer.status_code == 202, answer.content
    assert Execution.objects.get().input == {
        "event": "push",
        "repo": "a/b",
        "first": "c1",
        "ref": "main",
        "note": "push to a/b",
    }


def test_whole_headers_and_query_map_to_json(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token", input_mapping={"h": "${headers}", "q": "${query}"})
    answer = post(client, hook, b"{}", "?a=1", **{"X-Custom": "yes"})
    assert answer.status_code == 202, answer.content
    stored = Execution.objects.get().input
    assert stored["h"]["x-custom"] == "yes"
    assert stored["q"] == {"a": "1"}


def test_numbers_no_json_column_stores_are_not_json(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token")
    for body in (b'{"n": 1e999}', b'{"n": NaN}', b"[" * 100_000):
        assert post(client, hook, body).status_code == 415
    assert Execution.objects.count() == 0


def test_text_no_database_stores_is_refused_and_kept(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token")
    for body in (b'{"s": "a\\u0000b"}', b'{"s": "\\ud800"}'):
        answer = post(client, hook, body)
        assert answer.status_code == 400, answer.content
    assert Execution.objects.count() == 0
    assert [d[:2] for d in deliveries(hook)] == [("refused", 400), ("refused", 400)]


def test_a_mapping_reference_the_delivery_lacks_is_422(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token", input_mapping={"ref": "${body.ref}"})
    answer = post(client, hook, b'{"other": 1}')
    assert answer.status_code == 422
    assert "body has no key 'ref'" in answer.json()["detail"]
    assert Execution.objects.count() == 0


def test_a_bad_mapping_is_refused_when_the_hook_is_made(flow: Any) -> None:
    with pytest.raises(services.ServiceError) as refused:
        make_hook(auth="token", input_mapping={"a": "${results.x}", "b": "${body.ok}"})
    assert refused.value.errors == [
        {
            "field": "input_mapping.a",
            "message": "'${results.x}' must start with one of body., headers., query.",
        }
    ]
    assert Webhook.objects.count() == 0


def test_a_json_body_that_is_not_an_object_is_the_input_body(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token")
    assert post(client, hook, b"[1, 2]").status_code == 202
    assert Execution.objects.get().input == {"body": [1, 2]}


# --- ?wait ---------------------------------------------------------------------------------------
def test_wait_answers_the_result_once_the_execution_ended(
    client: Client, flow: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook, _ = make_hook(auth="token")

    def a_worker_runs_it(seconds: float) -> None:
        # The first poll finds it queued; meanwhile a worker would run it: run it here.
        run_to_end(Execution.objects.get().id)

    monkeypatch.setattr(webhook_service, "_pause", a_worker_runs_it)
    answer = post(client, hook, b"{}", "?wait=5")

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["status"] == "COMPLETED"
    assert body["result"]["message"] == "hi"
    assert body["execution_id"] == str(Execution.objects.get().id)


def test_wait_says_it_still_runs_when_time_is_up(client: Client, flow: Any) -> None:
    hook, _ = make_hook(auth="token")
    answer = post(client, hook, b"{}", "?wait=0")
    assert answer.status_code == 202
    assert answer.json()["status"] == "QUEUED"
    assert answer.json()["ended"] is False
    assert answer["Location"] == answer.json()["status_url"]


# --- Retention -----------------------------------------------------------------------------------
def test_the_retention_purge_deletes_old_deliveries_and_their_payloads(
    client: Client, flow: Any
) -> None:
    hook, _ = make_hook(auth="token")
    post(client, hook, b'{"old": true}')
    post(client, hook, b'{"new": true}')
    old = WebhookDelivery.objects.order_by("id").first()
    WebhookDelivery.objects.filter(pk=old.pk).update(
        received_at=timezone.now() - timedelta(days=40)
    )

    services.executions_purge(older_than=timedelta(days=30), statuses=None, batch_size=10)

    assert list(WebhookDelivery.objects.values_list("payload", flat=True)) == ['{"new": true}']


# --- The API -------------------------------------------------------------------------------------
def test_a_created_hook_shows_its_secret_once(api: Any, flow: Any, client: Client) -> None:
    created = api.post(
        "/api/flows/test_flow/webhooks/", {"auth": "hmac", "preset": "github"}, format="json"
    )
    assert created.status_code == 201, created.content
    hook = created.json()
    assert hook["header"] == "X-Hub-Signature-256"
    assert hook["dedup_header"] == "X-GitHub-Delivery"
    secret = hook["secret"]
    assert len(secret) > 30

    listed = api.get("/api/flows/test_flow/webhooks/").json()["results"]
    assert [h["secret"] for h in listed] == ["***"]
    assert secret not in json.dumps(listed)
    stored = Webhook.objects.get()
    assert secret not in stored.secret  # encrypted at rest

    body = b'{"ok": 1}'
    path = hook["url"].split("testserver", 1)[1]
    sent = client.post(
        path, body, content_type="application/json", headers=github_headers(secret, body)
    )
    assert sent.status_code == 202
    rows = api.get(f"/api/flows/test_flow/webhooks/{hook['id']}/deliveries/").json()
    assert [(r["outcome"], r["http_status"]) for r in rows["results"]] == [("accepted", 202)]


def test_rotate_through_the_api_and_delete(api: Any, flow: Any, client: Client) -> None:
    hook, first = make_hook(auth="hmac", preset="github")
    rotated = api.post(f"/api/flows/test_flow/webhooks/{hook.pk}/rotate/", {}, format="json")
    assert rotated.status_code == 200
    assert rotated.json()["has_previous_secret"] is True
    assert rotated.json()["secret"] not in ("***", first)

    deleted = api.delete(f"/api/flows/test_flow/webhooks/{hook.pk}/")
    assert deleted.status_code == 204
    assert post(client, hook, b"{}", **github_headers(first, b"{}")).status_code == 404


def test_api_refusals_name_their_fields(api: Any, flow: Any) -> None:
    answer = api.post(
        "/api/flows/test_flow/webhooks/",
        {"auth": "token", "preset": "github", "dedup_window_seconds": 0},
        format="json",
    )
    assert answer.status_code == 400
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"preset", "dedup_window_seconds"}
    assert (
        api.post("/api/flows/nope/webhooks/", {"auth": "token"}, format="json").status_code == 404
    )
    assert api.delete("/api/flows/test_flow/webhooks/99/").status_code == 404
    assert api.get("/api/flows/test_flow/webhooks/abc/deliveries/").status_code == 404


def test_without_a_secret_key_a_signed_hook_is_refused_with_what_to_set(
    api: Any, flow: Any, settings: Any
) -> None:
    settings.FLOW_SECRET_KEYS = []
    answer = api.post(
        "/api/flows/test_flow/webhooks/", {"auth": "hmac", "preset": "github"}, format="json"
    )
    assert answer.status_code == 409
    assert answer.json()["code"] == "secret_keys_missing"
    assert Webhook.objects.count() == 0


def test_a_viewer_lists_hooks_without_their_urls_and_cannot_make_one(
    client_as: Any, flow: Any
) -> None:
    make_hook(auth="token")
    viewer = client_as("viewer")
    listed = viewer.get("/api/flows/test_flow/webhooks/")
    assert listed.status_code == 200
    assert [h["url"] for h in listed.json()["results"]] == [None]
    refused = viewer.post("/api/flows/test_flow/webhooks/", {"auth": "token"}, format="json")
    assert refused.status_code == 403
    assert Webhook.objects.count() == 1


# --- The flow's page and the admin ---------------------------------------------------------------
def test_the_flow_page_makes_a_hook_shows_its_secret_once_and_its_refused_deliveries(
    alice: Any, flow: Any
) -> None:
    page = Client(enforce_csrf_checks=True)
    page.force_login(alice)
    shown = page.get("/flows/test_flow/")
    token = shown.cookies["csrftoken"].value
    made = page.post(
        "/flows/test_flow/webhooks",
        {"action": "create", "kind": "github", "csrfmiddlewaretoken": token},
    )
    assert made.status_code == 200
    hook = Webhook.objects.get()
    secret = made.context["new_secret"][1]
    assert secret.encode() in made.content
    assert f"/hooks/{hook.slug}".encode() in made.content

    post(Client(), hook, b"{}", **github_headers("wrong", b"{}"))
    again = page.get("/flows/test_flow/")
    assert secret.encode() not in again.content  # once, never again
    assert b"does not match the body" in again.content
    assert b"refused" in again.content


def test_the_flow_page_refuses_a_hook_form_without_its_csrf_token(alice: Any, flow: Any) -> None:
    page = Client(enforce_csrf_checks=True)
    page.force_login(alice)
    refused = page.post("/flows/test_flow/webhooks", {"action": "create", "kind": "token"})
    assert refused.status_code == 403
    assert Webhook.objects.count() == 0


def test_the_admin_shows_a_hook_without_its_secret_or_url(admin_client: Client, flow: Any) -> None:
    hook, secret = make_hook(auth="hmac", preset="github")
    shown = admin_client.get(f"/admin/flows/webhook/{hook.pk}/change/")
    assert shown.status_code == 200
    assert secret.encode() not in shown.content
    assert hook.secret.encode() not in shown.content
    assert hook.slug.encode() not in shown.content


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"auth": "hmac"}, {"header"}),
        (
            {"auth": "hmac", "preset": "github", "header": "X-Sig", "prefix": "v1="},
            {"header", "prefix"},
        ),
        ({"auth": "token", "algorithm": "sha1"}, {"algorithm"}),
        ({"auth": "hmac", "header": "X Sig", "encoding": "base32"}, {"header", "encoding"}),
        (
            {"auth": "token", "dedup_path": "a..b", "rate_limit_per_minute": 0},
            {"dedup_path", "rate_limit_per_minute"},
        ),
        ({"auth": "token", "input_mapping": ["${body}"]}, {"input_mapping"}),
        ({"auth": "magic"}, {"auth"}),
    ],
)
def test_a_hook_is_refused_with_every_problem_at_its_field(
    flow: Any, body: dict[str, Any], fields: set[str]
) -> None:
    with pytest.raises(services.ServiceError) as refused:
        make_hook(**body)
    assert {e["field"] for e in refused.value.errors} == fields
    assert Webhook.objects.count() == 0


def test_the_lists_cost_the_same_queries_for_one_hook_or_many(
    api: Any, alice: Any, flow: Any, client: Client
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def costs() -> tuple[int, int, int]:
        hook = Webhook.objects.order_by("id").first()
        page = Client()
        page.force_login(alice)
        counted = []
        for read in (
            lambda: api.get("/api/flows/test_flow/webhooks/"),
            lambda: api.get(f"/api/flows/test_flow/webhooks/{hook.pk}/deliveries/"),
            lambda: page.get("/flows/test_flow/"),
        ):
            with CaptureQueriesContext(connection) as queries:
                assert read().status_code == 200
            counted.append(len(queries))
        return tuple(counted)

    first, _ = make_hook(auth="token")
    post(client, first, b"{}")
    one = costs()
    for _ in range(4):
        hook, _ = make_hook(auth="token", dedup_header="X-Id")
        post(client, hook, b"{}", **{"X-Id": "1"})
        post(client, first, b"{}")
    assert costs() == one
