"""Health and readiness endpoints."""
from __future__ import annotations

from tests.pg import free_port


def test_health_answers_200(client):
    assert client.get("/health").get_json() == {"status": "up"}


def test_ready_answers_200_when_the_database_answers(client):
    response = client.get("/ready")
    assert (response.status_code, response.get_json()["status"]) == (200, "ready")


def test_ready_answers_503_with_a_reason_when_the_database_is_down(make_app):
    dead = f"postgresql+psycopg2://test@127.0.0.1:{free_port()}/none"
    client = make_app(SQLALCHEMY_DATABASE_URI=dead).test_client()
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.get_json()["reason"].startswith("database")
