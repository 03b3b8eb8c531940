"""The dispatcher on the embedded SQLite default (`make run`): recording a send is one transaction."""
from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from flask_migrate import upgrade
from sqlalchemy import event, update

from app import create_app
from models import MessageState, OutboundMessage, OutboxItem, db
from services.clock import utcnow
from tests.conftest import TEST_SETTINGS
from tests.services.test_dispatcher import (FAST_RETRIES, GENESYS_PATH, dispatcher, forwarded_statuses,
                                            genesys_client, message, queue_messages)

pytestmark = pytest.mark.usefixtures("fresh_sessions")

# A short busy timeout: a write blocked by another writer fails in a fraction of a second, not in 5 s.
BUSY_TIMEOUT_SECONDS = 0.2


@pytest.fixture
def sqlite_worker(tmp_path):
    """Return an app on a migrated SQLite file, inside its app context, and the file's path."""
    path = tmp_path / "sms.sqlite3"
    app = create_app({**TEST_SETTINGS, **FAST_RETRIES, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
                      "SQLALCHEMY_ENGINE_OPTIONS": {"hide_parameters": True,
                                                    "connect_args": {"timeout": BUSY_TIMEOUT_SECONDS}}})
    with app.app_context():
        upgrade()
        yield app, path
        db.engine.dispose()


def test_a_send_whose_recording_fails_is_not_left_sent_without_its_report(sqlite_worker, httpserver):
    app, path = sqlite_worker
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data("result_code=0")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    web_writer = sqlite3.connect(path, isolation_level=None)

    def a_web_request_writes_meanwhile(conn, cursor, statement, *_args) -> None:
        # A gunicorn worker (a vendor receipt) holds SQLite's one write lock as the send result is
        # to be stored: the recording waits for it and gives up after the busy timeout. (In WAL
        # mode a reader no longer blocks it.)
        if statement.startswith("WITH v(") and not web_writer.in_transaction:
            web_writer.execute("BEGIN IMMEDIATE")

    event.listen(db.engine, "before_cursor_execute", a_web_request_writes_meanwhile)
    try:
        dispatcher(app).run_once()
    finally:
        event.remove(db.engine, "before_cursor_execute", a_web_request_writes_meanwhile)
        web_writer.execute("ROLLBACK")
        web_writer.close()

    row = message(public_id)
    # Nothing of the recording stayed: the row is still leased, so it is sent again (Genesys
    # answers a duplicate) and recorded once the lease ends, rather than 'sent' with no report.
    assert (row.state, row.lease_owner) == ("sending", "worker-a")
    assert db.session.scalars(db.select(MessageState)).all() == []
    assert db.session.scalars(db.select(OutboxItem)).all() == []

    db.session.execute(update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    dispatcher(app, owner="worker-b").run_once()
    assert message(public_id).state == "sent"
    assert forwarded_statuses(row.emarsys_message_id) == ["ACCEPTED"]
