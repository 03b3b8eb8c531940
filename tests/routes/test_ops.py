"""Health and readiness endpoints."""
from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy import text

from app import create_app
from models import db
from services import health
from tests.conftest import TEST_SETTINGS
from tests.pg import free_port
from tests.test_migrations import fresh_postgresql_database, migrated_app


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


@pytest.mark.parametrize("revision, status, reason", [
    (None, 503, "database schema not migrated; this code needs 0013: run flask --app app db-upgrade-locked"),
    ("0012", 503, "database schema at 0012, this code needs 0013: run flask --app app db-upgrade-locked"),
    ("0013", 200, None),
    # Newer than this code: a rolling deploy's new release migrated it, and the old one still serves.
    ("0014", 200, None),
])
def test_ready_says_when_the_schema_is_older_than_this_code(postgres, revision, status, reason):
    url = fresh_postgresql_database(postgres, "sms_ready_test")
    if revision is not None:
        app = migrated_app(url, min(revision, "0013"))
        if revision == "0014":
            with app.app_context():
                db.session.execute(text("UPDATE alembic_version SET version_num = '0014'"))
                db.session.commit()
    app = create_app({**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": url})

    response = app.test_client().get("/ready")

    assert (response.status_code, response.get_json().get("reason")) == (status, reason)
    with app.app_context():
        db.engine.dispose()


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
