import pytest

from tests.factories import run_flow, sample_flow

pytestmark = pytest.mark.django_db


def test_home_sends_anonymous_visitors_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_user_logs_in_and_sees_flows_and_recent_executions(client, alice):
    execution = run_flow(sample_flow())
    page = client.get("/accounts/login/")
    assert b"csrfmiddlewaretoken" in page.content
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-pass-123", "next": "/"}
    )
    assert response.status_code == 302
    home = client.get("/")
    text = home.content.decode()
    assert "Sample Data Pipeline" in text
    assert str(execution.id) in text
    assert "COMPLETED" in text


def test_a_wrong_password_is_refused_with_a_message(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()


def test_home_tells_an_empty_install_how_to_start(client, alice):
    client.force_login(alice)
    text = client.get("/").content.decode()
    assert "No flows yet" in text
    assert "No executions yet" in text
