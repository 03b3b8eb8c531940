"""The vendor hot path's own connections: a dropped one is a 503 and the next receipt reconnects."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from models import RawEvent, db
from services.ingest import report_connections
from tests.pg import free_port

GENESYS_DR = {"type": "receipt", "message_state": "2", "result_code": "0"}


def post_receipt(client, message_id: str):
    """Post one Genesys delivery receipt."""
    return client.post("/vendors/genesys/delivery-reports", data={**GENESYS_DR, "message_id": message_id})


def stored_message_ids(app) -> set[str]:
    """Return the vendor message ids of every stored raw event."""
    with app.app_context():
        return set(db.session.scalars(db.select(RawEvent.vendor_message_id)))


def hot_path_backend_pid(app) -> int:
    """Return the PostgreSQL backend of this thread's hot-path connection."""
    with app.app_context():
        return report_connections().fetch_one("SELECT pg_backend_pid()", ())[0]


def open_backend_pids(app) -> set[int]:
    """Return the PostgreSQL backends connected to the test database, but this session's own."""
    with app.app_context():
        return set(db.session.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")))


def terminate(app, pids: set[int]) -> None:
    """Drop the given PostgreSQL backends, as a database restart or failover would."""
    with app.app_context():
        for pid in pids:
            db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        db.session.commit()


def test_receipts_of_one_thread_share_one_connection(app, client):
    assert post_receipt(client, "m-1").status_code == 200
    first = hot_path_backend_pid(app)
    assert [post_receipt(client, f"m-{n}").status_code for n in (2, 3)] == [200, 200]
    assert hot_path_backend_pid(app) == first


def test_a_dropped_connection_is_a_503_and_the_next_receipt_reconnects(app, client):
    assert post_receipt(client, "before").status_code == 200
    terminate(app, {hot_path_backend_pid(app)})
    dropped = post_receipt(client, "while-dropped")
    assert dropped.status_code == 503
    assert dropped.get_json()["error"] == "unavailable"
    assert post_receipt(client, "after").status_code == 200
    assert post_receipt(client, "while-dropped").status_code == 200  # the vendor's retry
    assert stored_message_ids(app) == {"before", "while-dropped", "after"}


def test_disposing_the_engine_closes_the_hot_path_connections(app, client):
    assert post_receipt(client, "m-1").status_code == 200
    pid = hot_path_backend_pid(app)
    with app.app_context():
        db.engine.dispose()
    # The backend exits once it reads the client's goodbye: give it a moment.
    deadline = time.monotonic() + 5
    while pid in open_backend_pids(app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid not in open_backend_pids(app)


def test_each_thread_has_its_own_connection(app):
    pids: list[int] = []

    def store_one(number: int) -> None:
        with app.app_context():
            pid = report_connections().fetch_one("SELECT pg_backend_pid()", ())[0]
            pids.append(pid)

    threads = [threading.Thread(target=store_one, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(pids)) == 3


def test_an_unreachable_database_is_a_503_and_nothing_is_acknowledged(make_app):
    app = make_app(SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg2://test@127.0.0.1:{free_port()}/nowhere")
    answer = post_receipt(app.test_client(), "while-down")
    assert answer.status_code == 503
    assert answer.get_json() == {"error": "unavailable", "message": "database unavailable, retry later"}


def test_a_failed_statement_does_not_list_its_parameters_in_the_error(app):
    # SQLAlchemy would append every parameter (raw vendor requests, message texts) to the error it
    # logs. PostgreSQL's own message may still quote the statement; the log filter masks numbers.
    with app.app_context():
        with pytest.raises(DBAPIError) as raised:
            report_connections().fetch_one("SELECT CAST(%s AS integer)", ("x",))
        assert "[SQL parameters hidden" in str(raised.value)
        with pytest.raises(DBAPIError) as raised:
            db.session.execute(text("SELECT CAST(:number AS integer)"), {"number": "x"})
        assert "[SQL parameters hidden" in str(raised.value)
