"""In a real browser: build a flow in the builder, run it, watch it finish on a real worker.

Debian's Chromium driven by Playwright (never a downloaded browser) against gunicorn and
``manage.py qcluster`` on a fresh SQLite file (tests/live.py). Screenshots of the builder and
of the execution page are saved under ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import BASE_DIR, log_tails, manage, running_stack

pytestmark = [pytest.mark.worker, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = BASE_DIR / "test-artifacts"
TIMEOUT_MS = 30_000  # a deadline for "it never happened", not a speed requirement


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
            )
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    home = tmp_path_factory.mktemp("web_e2e")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
        "SECRET_KEY": "insecure-key-for-the-browser-e2e-test-only",
        "DEBUG": "0",
        "SECURE_COOKIES": "0",  # plain http on the loopback
        "ALLOWED_HOSTS": "127.0.0.1",
        "FLOW_DEMO_DELAY_SECONDS": "0",
        "Q_WORKERS": "1",
        "Q_CLUSTER_NAME": f"browser-{home.name}",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("REDIS_URL", "Q_SYNC"):
        env.pop(name, None)
    manage(env, "migrate", "--noinput", "--verbosity", "0")
    manage(env, "collectstatic", "--noinput", "--verbosity", "0")  # served by whitenoise
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.auth.models import Group\n"
        "user = get_user_model().objects.create_user('operator', password='operator-pass-123')\n"
        "user.groups.add(Group.objects.get(name='editor'))  # builds flows, so an editor",
    )
    with running_stack(home, env) as running:
        yield running


@contextlib.contextmanager
def operator_page(site: tuple[str, dict[str, Path]], name: str) -> Iterator[Any]:
    """A logged-in operator's browser page on the builder; on a failure, a screenshot
    (``<name>_failure.png``) and the stack's log tails."""
    from playwright.sync_api import sync_playwright

    url, logs = site
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            # Log in; the builder is where the login sends us back to.
            page.goto(f"{url}/flows/new")
            page.fill("#id_username", "operator")
            page.fill("#id_password", "operator-pass-123")
            page.click("button:has-text('Log in')")
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"), full_page=True)
            raise AssertionError(log_tails(logs)) from None
        finally:
            browser.close()


def save_through_json_tab(page: Any, document: dict[str, Any]) -> None:
    """Save ``document`` through the builder's JSON tab (the form's id comes along)."""
    from playwright.sync_api import expect

    page.fill("#id_id", document["id"])
    page.click("button[role=tab]:has-text('JSON')")
    page.fill("#document", json.dumps(document))
    page.click(".save-bar button:has-text('Save flow')")
    expect(page.get_by_text(f"Saved {document['id']} version 1")).to_be_visible()


def test_an_operator_builds_runs_and_watches_a_flow_with_a_failure_branch(site) -> None:
    from playwright.sync_api import expect

    with operator_page(site, "builder") as page:
        expect(page.get_by_role("heading", name="New flow")).to_be_visible()

        page.fill("#id_id", "browser_built")
        page.fill("#id_name", "Built in the browser")
        # Three tasks: fetch always fails and slowly enough to be watched running.
        page.click("#add-task")
        page.click("#add-task")
        rows = [
            ("fetch", "fetch_data"),
            ("store", "store_data"),
            ("recover", "print"),
        ]
        for i, (name, task_type) in enumerate(rows):
            page.fill(f"#id_tasks-{i}-name", name)
            page.select_option(f"#id_tasks-{i}-task_type", task_type)
        # The script fetched each type's parameter fields from its schema.
        page.fill("#id_tasks-0-param_failure_rate", "1")
        page.fill("#id_tasks-0-param_delay_seconds", "1.5")
        page.fill("#id_tasks-2-param_message", "recovered from a failed fetch")
        # The failure branch: fetch -> store on success, -> recover on failure.
        page.select_option("#id_tasks-0-outcome", "success")
        page.select_option("#id_tasks-0-target_task_success", "store")
        page.select_option("#id_tasks-0-target_task_failure", "recover")
        for i in (1, 2):
            page.select_option(f"#id_tasks-{i}-outcome", "success")
            page.select_option(f"#id_tasks-{i}-target_task_success", "end")
            page.select_option(f"#id_tasks-{i}-target_task_failure", "end")
        page.screenshot(path=str(ARTIFACTS / "builder.png"), full_page=True)

        page.click(".save-bar button:has-text('Save flow')")
        expect(page.get_by_text("Saved browser_built version 1")).to_be_visible()
        assert page.locator('g.node-task[data-task="recover"]').count() == 1

        page.click("button:has-text('Run v1')")
        live = page.locator("#live")
        expect(page.locator('#live[data-live="false"]')).to_be_attached()
        expect(live.locator(".exec-summary .status")).to_have_text("COMPLETED")
        states = {
            name: page.locator(f'g.node-task[data-task="{name}"]').get_attribute("class")
            for name, _ in rows
        }
        assert "state-failure" in states["fetch"], states
        assert "state-success" in states["recover"], states
        assert "state-not-run" in states["store"], states
        expect(live.locator("table.timeline tbody tr")).to_have_count(2)
        expect(page.get_by_text("recovered from a failed fetch").first).to_be_attached()
        page.screenshot(path=str(ARTIFACTS / "execution.png"), full_page=True)


APPROVAL_FLOW = {
    "id": "browser_approval",
    "name": "Approved in the browser",
    "tasks": [
        {"name": "build", "task_type": "print", "parameters": {"message": "built 1.2"}},
        {
            "name": "check",
            "task_type": "map",
            "items": ["unit", "lint", "smoke"],
            "parameters": {"suite": "${item}"},
            "iterator": {
                "tasks": [
                    {
                        "name": "run",
                        "task_type": "print",
                        "parameters": {"message": "${input.suite}"},
                    }
                ]
            },
        },
        {
            "name": "approve",
            "task_type": "wait_for_signal",
            "parameters": {"prompt": "Ship build 1.2 to production?"},
        },
        {"name": "ship", "task_type": "print", "parameters": {"message": "shipped 1.2"}},
    ],
}


def test_an_operator_approves_a_waiting_execution_and_sees_it_complete(site) -> None:
    from playwright.sync_api import expect

    with operator_page(site, "approval") as page:
        save_through_json_tab(page, APPROVAL_FLOW)

        page.click("button:has-text('Run v1')")
        waiting = page.locator(".waiting-box")
        expect(waiting).to_contain_text("Waiting for approval")
        expect(waiting).to_contain_text("Ship build 1.2 to production?")
        expect(page.locator(".exec-summary .status")).to_have_text("RUNNING")
        # The map's link to its items shows on its row, the row collapsed.
        check = page.locator("#step-2")
        expect(check).not_to_have_attribute("open", "")
        expect(page.get_by_role("link", name="See the 3 items")).to_be_visible()
        # A payload that is not a JSON object is refused next to its field; the wait stays.
        page.fill("textarea[name=comment]", "looks good")
        page.fill("textarea[name=payload]", "[1, 2]")
        waiting.get_by_role("button", name="Approve").click()
        payload_error = page.locator(".waiting-box .field.has-error .field-error")
        expect(payload_error).to_contain_text("JSON object")
        expect(page.locator(".waiting-box")).to_contain_text("Waiting for approval")
        page.fill("textarea[name=payload]", '{"version": "1.2"}')
        page.screenshot(path=str(ARTIFACTS / "approval_waiting.png"), full_page=True)

        page.locator(".waiting-box").get_by_role("button", name="Approve").click()
        expect(page.get_by_text("Approved: the execution goes on.")).to_be_visible()
        expect(page.locator('#live[data-live="false"]')).to_be_attached()
        expect(page.locator("#live .exec-summary .status")).to_have_text("COMPLETED")
        assert "state-success" in page.locator('g.node-task[data-task="ship"]').get_attribute(
            "class"
        )
        expect(page.locator(".waiting-box")).to_have_count(0)
        # Who answered, with the comment and the payload, on the step.
        page.locator("#step-3 > summary").click()
        answer = page.locator("#step-3 .signal-answer")
        expect(answer).to_contain_text("Approved by operator")
        expect(answer).to_contain_text("looks good")
        expect(page.locator("#step-3")).to_contain_text('"version": "1.2"')
        page.screenshot(path=str(ARTIFACTS / "approval_completed.png"), full_page=True)


SCHEMA_FLOW = {
    "id": "browser_schema",
    "name": "Run from a form",
    "input_schema": {
        "type": "object",
        "required": ["customer"],
        "properties": {
            "customer": {"type": "string", "minLength": 1, "description": "Customer id"},
            "days": {"type": "integer", "minimum": 1, "default": 7},
            "format": {"enum": ["csv", "json"], "default": "csv"},
            "notify": {"type": "boolean", "default": False},
            "token": {"type": "string", "format": "password"},
        },
        "additionalProperties": False,
    },
    "tasks": [
        {
            "name": "report",
            "task_type": "print",
            "parameters": {"message": "report for ${input.customer}: ${input.days} days"},
        }
    ],
}


def test_an_operator_runs_a_flow_from_the_form_its_input_schema_draws(site) -> None:
    from playwright.sync_api import expect

    with operator_page(site, "run_form") as page:
        save_through_json_tab(page, SCHEMA_FLOW)

        # Run opens the form drawn from the schema, defaults filled.
        page.click("a:has-text('Run v1')")
        expect(page.get_by_role("heading", name="Run Run from a form")).to_be_visible()
        expect(page.locator("#id_input-days")).to_have_value("7")
        expect(page.locator("#id_input-format")).to_have_value('"csv"')
        assert page.locator("#id_input-token").get_attribute("type") == "password"
        # A value the schema refuses comes back next to its field; nothing started.
        page.fill("#id_input-customer", "acme")
        page.fill("#id_input-days", "0")
        page.click("button:has-text('Run v1')")
        days = page.locator(".field.has-error", has=page.locator("#id_input-days"))
        expect(days.locator(".field-error")).to_have_text("0 is less than the minimum of 1")
        expect(page.locator("#input-errors")).to_contain_text("The input was refused")
        page.screenshot(path=str(ARTIFACTS / "run_form_error.png"), full_page=True)

        page.fill("#id_input-days", "30")
        page.select_option("#id_input-format", '"json"')
        page.click("button:has-text('Run v1')")
        expect(page.locator('#live[data-live="false"]')).to_be_attached()
        expect(page.locator("#live .exec-summary .status")).to_have_text("COMPLETED")
        expect(page.get_by_text("report for acme: 30 days").first).to_be_attached()
        page.screenshot(path=str(ARTIFACTS / "run_form_completed.png"), full_page=True)
