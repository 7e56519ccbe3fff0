"""``manage.py runflow FILE.json`` runs a flow inline; ``manage.py bootstrap`` prepares a fresh
install (the sample flow, an admin login, an API token) and is safe to run again."""

from __future__ import annotations

import json
import re
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django_q.conf import Conf
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from flows.models import Execution, Flow, FlowVersion
from tests.factories import cond, failing, flow_doc, stored_counts, task

SAMPLE_PATH = Path(settings.BASE_DIR) / "examples" / "sample_flow.json"


def runflow(*args: str) -> tuple[int, str, str]:
    """Run the command; return (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("runflow", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, document: object, name: str = "flow.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture(autouse=True)
def _queue_mode_restored(monkeypatch):
    """Belt and braces: whatever runflow does to django-q's process-wide mode is undone."""
    monkeypatch.setattr(Conf, "SYNC", Conf.SYNC)


# --- runflow -----------------------------------------------------------------------------------
def test_runflow_runs_the_sample_prints_each_step_and_exits_0(db, tmp_path):
    path = shutil.copy(SAMPLE_PATH, tmp_path / "sample_flow.json")

    code, out, err = runflow(str(path))

    assert code == 0, err
    lines = out.splitlines()
    for name in ("task1", "task2", "task3"):
        step = next(line for line in lines if f" {name} " in line)
        assert "SUCCESS" in step
        assert re.search(r"\d+\.\d{3}s", step), step
    assert lines[-1] == "COMPLETED"
    execution = Execution.objects.get()
    assert execution.status == "COMPLETED"
    assert str(execution.id) in out


def test_runflow_without_log_output_still_stores_the_task_log_lines_with_the_execution(
    db, tmp_path
):
    # Default verbosity silences logging (tests/test_local_env.py checks the output); the
    # execution's log is collected by the engine itself and must not be lost with it.
    document = flow_doc([task("say", "print", message="hello from the task")])

    code, _, _ = runflow(write(tmp_path, document))

    assert code == 0
    messages = Execution.objects.get().events.values_list("message", flat=True)
    assert any("hello from the task" in message for message in messages)


def test_runflow_of_a_failing_flow_prints_the_error_and_exits_1(db, tmp_path):
    path = write(tmp_path, flow_doc([failing("fetch"), task("never")]))

    code, out, _ = runflow(path)

    assert code == 1
    step = next(line for line in out.splitlines() if " fetch " in line)
    assert "FAILURE" in step
    assert "Simulated failure in task fetch" in step
    assert "never" not in out
    assert out.splitlines()[-1].startswith("FAILED: task 'fetch' failed")


def test_runflow_follows_the_failure_branch_to_a_recovery_task_and_exits_0(db, tmp_path):
    document = flow_doc(
        [failing("fetch"), task("alert", "print", message="fetch failed")],
        [cond("fetch", "success", "end", "alert")],
    )

    code, out, _ = runflow(write(tmp_path, document))

    assert code == 0
    assert [line.split()[1:3] for line in out.splitlines()[1:-1]] == [
        ["fetch", "FAILURE"],
        ["alert", "SUCCESS"],
    ]


def test_runflow_of_an_invalid_flow_prints_every_error_and_exits_2_storing_nothing(db, tmp_path):
    document = flow_doc([task("a", "no_such_type"), task("a")], start_task="ghost")

    code, out, err = runflow(write(tmp_path, document))

    assert code == 2
    assert "invalid flow" in err
    assert "tasks[0].task_type:" in err
    assert "tasks[1].name: duplicate task name 'a'" in err
    assert "start_task:" in err
    assert out == ""
    assert stored_counts() == (0, 0, 0)


CALLED = flow_doc([task("greet", "print", message="hello ${input.who}")], flow_id="called")
CALLER = flow_doc(
    [
        {
            "name": "call",
            "task_type": "subflow",
            "parameters": {"flow_id": "called", "input": {"who": "ops"}},
        }
    ],
    flow_id="caller",
)


def test_runflow_with_stores_the_flow_a_subflow_calls_first_and_runs_to_the_end(db, tmp_path):
    called = write(tmp_path, CALLED, "called.json")

    code, out, err = runflow(write(tmp_path, CALLER), "--with", called)

    assert code == 0, out + err
    assert f"stored flow called v1 from {called}" in out
    assert out.rstrip().endswith("COMPLETED")
    assert FlowVersion.objects.filter(flow_id__in=["called", "caller"]).count() == 2


def test_runflow_of_a_subflow_whose_flow_is_not_stored_says_to_pass_it_with(db, tmp_path):
    code, _, err = runflow(write(tmp_path, CALLER))

    assert code == 2
    assert "tasks[0].parameters.flow_id:" in err
    assert "--with" in err  # how to store the flow it calls in the same command
    assert stored_counts() == (0, 0, 0)


def test_runflow_with_an_invalid_flow_stores_none_of_the_files(db, tmp_path):
    called = write(tmp_path, CALLED, "called.json")
    broken = write(tmp_path, flow_doc([task("a", "no_such_type")], flow_id="caller"))

    code, _, err = runflow(broken, "--with", called)

    assert code == 2 and "tasks[0].task_type:" in err
    assert stored_counts() == (0, 0, 0)


def test_runflow_with_a_missing_file_exits_2_naming_it(db, tmp_path):
    code, _, err = runflow(write(tmp_path, CALLER), "--with", str(tmp_path / "nope.json"))

    assert code == 2
    assert "nope.json" in err
    assert stored_counts() == (0, 0, 0)


def test_runflow_stops_at_a_signal_wait_instead_of_waiting_out_its_timeout(db, tmp_path):
    # On the code before, runflow slept until the timeout and printed a FAILED step.
    document = flow_doc([task("ask", "wait_for_signal", signal="go", timeout_seconds=30)])

    code, out, _ = runflow(write(tmp_path, document))

    assert code == 1
    assert "waits for signal 'go'" in out
    execution = Execution.objects.get()
    assert (execution.status, execution.steps.get().status) == ("RUNNING", "PENDING")


def test_runflow_of_a_missing_file_exits_2_saying_it_cannot_read_it(db, tmp_path):
    code, _, err = runflow(str(tmp_path / "nope.json"))

    assert code == 2
    assert "cannot read" in err and "nope.json" in err


def test_runflow_of_a_file_that_is_not_json_exits_2(db, tmp_path):
    path = tmp_path / "flow.json"
    path.write_text("id: not json\n")

    code, _, err = runflow(str(path))

    assert code == 2
    assert "is not valid JSON" in err
    assert stored_counts() == (0, 0, 0)


def test_runflow_of_a_binary_file_exits_2(db, tmp_path):
    path = tmp_path / "flow.json"
    path.write_bytes(b"\xff\xfe\x00garbage")

    code, _, err = runflow(str(path))

    assert code == 2
    assert "is not valid JSON" in err


def test_runflow_of_a_json_array_exits_2(db, tmp_path):
    code, _, err = runflow(write(tmp_path, [1, 2, 3]))

    assert code == 2
    assert "must be a JSON object" in err


@pytest.mark.parametrize("depth", [2_000, 50_000])
def test_runflow_of_a_deeply_nested_file_exits_2_instead_of_crashing(db, tmp_path, depth):
    path = tmp_path / "flow.json"
    deep = "[" * depth + "1" + "]" * depth
    path.write_text(
        '{"id": "deep", "tasks": [{"name": "a", "task_type": "fetch_data", '
        f'"parameters": {{"deep": {deep}}}}}]}}'
    )

    code, _, err = runflow(str(path))

    assert code == 2
    assert "nested too deeply" in err
    assert stored_counts() == (0, 0, 0)


def test_runflow_passes_its_input_to_the_execution(db, tmp_path):
    code, _, _ = runflow(write(tmp_path, flow_doc([task("a")])), "--input", '{"order": 42}')

    assert code == 0
    assert Execution.objects.get().input == {"order": 42}


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", '"text"'])
def test_runflow_with_bad_input_exits_2_before_storing_anything(db, tmp_path, value):
    code, _, err = runflow(write(tmp_path, flow_doc([task("a")])), "--input", value)

    assert code == 2
    assert "--input" in err
    assert stored_counts() == (0, 0, 0)


def test_runflow_stores_a_new_version_only_when_the_document_changed(db, tmp_path):
    path = write(tmp_path, flow_doc([task("a")]))
    runflow(path)

    code, out, _ = runflow(path)
    assert code == 0
    assert "flow test_flow v1" in out
    write(tmp_path, flow_doc([task("a"), task("b")]))
    _, changed, _ = runflow(path)

    assert "flow test_flow v2" in changed
    assert FlowVersion.objects.filter(flow_id="test_flow").count() == 2


def test_runflow_leaves_the_queue_mode_as_it_found_it(db, tmp_path, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)

    runflow(write(tmp_path, flow_doc([task("a")])))

    assert Conf.SYNC is False


# --- bootstrap ---------------------------------------------------------------------------------
def bootstrap(*args: str) -> str:
    out = StringIO()
    call_command("bootstrap", *args, stdout=out)
    return out.getvalue()


def printed_password(out: str) -> str:
    match = re.search(r"password: (\S+)", out)
    assert match, out
    return match.group(1)


def printed_token(out: str) -> str:
    match = re.search(r"API token for '[^']+': (\w+)", out)
    assert match, out
    return match.group(1)


def test_bootstrap_loads_the_sample_flow_and_creates_an_admin_with_a_random_password(
    db, monkeypatch
):
    monkeypatch.delenv("FLOW_ADMIN_PASSWORD", raising=False)

    out = bootstrap()

    flow = Flow.objects.get(pk="example_flow")
    assert flow.name == "Sample Data Pipeline"
    assert flow.version == 1
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    password = printed_password(out)
    assert len(password) >= 12
    assert admin.check_password(password)
    assert Token.objects.get(user=admin).key == printed_token(out)


def test_bootstrap_passwords_differ_between_installs(db, monkeypatch):
    monkeypatch.delenv("FLOW_ADMIN_PASSWORD", raising=False)
    first = printed_password(bootstrap())
    get_user_model().objects.all().delete()

    second = printed_password(bootstrap())

    assert first != second


def test_bootstrap_is_idempotent_and_prints_the_password_only_once(db, monkeypatch):
    monkeypatch.delenv("FLOW_ADMIN_PASSWORD", raising=False)
    first = bootstrap()
    password = printed_password(first)

    second = bootstrap()

    assert password not in second
    assert "already present" in second
    assert FlowVersion.objects.filter(flow_id="example_flow").count() == 1
    assert get_user_model().objects.count() == 1
    assert Token.objects.count() == 1
    assert printed_token(second) == printed_token(first)
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_bootstrap_uses_flow_admin_password_without_printing_it(db, monkeypatch):
    monkeypatch.setenv("FLOW_ADMIN_PASSWORD", "chosen-by-the-operator-42")

    out = bootstrap()

    assert "chosen-by-the-operator-42" not in out
    assert (
        get_user_model().objects.get(username="admin").check_password("chosen-by-the-operator-42")
    )


def test_the_token_bootstrap_prints_authenticates_the_api(db, monkeypatch):
    monkeypatch.delenv("FLOW_ADMIN_PASSWORD", raising=False)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {printed_token(bootstrap())}")

    response = client.post("/flow/create", flow_doc([task("a")]), format="json")

    assert response.status_code == 200


def test_bootstrap_without_the_sample_creates_only_the_admin(db, monkeypatch):
    monkeypatch.delenv("FLOW_ADMIN_PASSWORD", raising=False)

    bootstrap("--no-sample")

    assert Flow.objects.count() == 0
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_bootstrap_keeps_an_existing_admin_and_its_password(db, monkeypatch):
    monkeypatch.setenv("FLOW_ADMIN_PASSWORD", "a-different-password-99")
    get_user_model().objects.create_superuser("root", password="original-pass-123")

    out = bootstrap()

    assert "a-different-password-99" not in out
    assert get_user_model().objects.count() == 1
    root = get_user_model().objects.get(username="root")
    assert root.check_password("original-pass-123")
    assert "user 'root'" in out


def test_bootstrap_refuses_to_reuse_a_plain_user_named_like_the_admin(db, monkeypatch):
    monkeypatch.setenv("FLOW_ADMIN_USER", "ops")
    get_user_model().objects.create_user("ops", password="ops-pass-123")

    with pytest.raises(CommandError, match="user 'ops' exists but is not a superuser"):
        bootstrap("--no-sample")

    assert not get_user_model().objects.filter(is_superuser=True).exists()
    assert get_user_model().objects.get(username="ops").check_password("ops-pass-123")
