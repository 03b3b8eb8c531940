"""Health and readiness endpoints."""
from __future__ import annotations

import socket
import threading

import pytest

from services import health
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


@pytest.fixture
def hanging_database():
    """Return the URL of a 'database' that takes connections and never answers; they close at the end."""
    listener, accepted = socket.create_server(("127.0.0.1", 0)), []

    def accept() -> None:
        """Take every connection and hold it."""
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"postgresql+psycopg2://test@127.0.0.1:{listener.getsockname()[1]}/none"
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept; closing alone would not
    listener.close()
    acceptor.join(5)
    for connection in accepted:
        connection.close()
    # The hung checks now fail at once; later tests' checks must find every slot free.
    for _ in range(health.MAX_PROBES_IN_FLIGHT):
        assert health._probe_slots.acquire(timeout=10)
    for _ in range(health.MAX_PROBES_IN_FLIGHT):
        health._probe_slots.release()


def test_ready_checks_queue_no_further_than_a_few_while_the_database_hangs(make_app, hanging_database):
    client = make_app(SQLALCHEMY_DATABASE_URI=hanging_database).test_client()

    reasons = [client.get("/ready").get_json()["reason"] for _ in range(health.MAX_PROBES_IN_FLIGHT + 2)]

    assert reasons == (["database did not answer within 1 s"] * health.MAX_PROBES_IN_FLIGHT
                       + ["database did not answer the checks still running"] * 2)
