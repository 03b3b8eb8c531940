"""A client deleted while a batch for it is being queued: no message a 202 answered is left unsent."""
from __future__ import annotations

import json
import threading
import uuid

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from errors import NotFound
from models import Client, OutboundMessage, db
from schemas.client_config import load_client_config
from schemas.outbound import OutboundMessage as BatchMessage
from services.clients import delete_client, save_client, secret_box
from services.clock import utcnow
from services.outbound import accept_batch
from tests.concurrency import start_waiting_for_a_lock

QUEUED_ROW = """
INSERT INTO outbound_messages (public_id, client_id, emarsys_message_id, source, destination, body, state,
                               attempts, next_attempt_at, created_at, updated_at)
VALUES (%(public_id)s, %(client_id)s, 'em-1', 'ACME', '+4915112345678', 'hi', 'queued', 0, %(now)s, %(now)s, %(now)s)
"""


@pytest.fixture
def client_id(app) -> uuid.UUID:
    """Onboard a Genesys client and return its id."""
    config = load_client_config({"customFieldValues": {"vendor": "genesys", "login": "l", "password": "p"}})
    with app.app_context():
        return save_client(uuid.uuid4(), config).id


@pytest.fixture
def other_transaction(app):
    """Return a second PostgreSQL connection, outside the app, in its own transaction."""
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    yield connection
    connection.rollback()
    connection.close()


def in_thread(app, action) -> tuple[threading.Thread, list]:
    """Run `action` in an app context on a thread; return the thread, once it waits for a row lock, and the
    list its outcome lands in."""
    outcome: list = []

    def run() -> None:
        with app.app_context():
            try:
                outcome.append(action())
            except NotFound as exc:
                outcome.append(exc)
            finally:
                db.session.remove()
    with app.app_context():
        return start_waiting_for_a_lock(run), outcome


def test_a_batch_committed_while_the_deletion_waits_is_cancelled_by_it(app, client_id, other_transaction):
    with other_transaction.cursor() as cursor:
        # What accept_batch does: hold the client row in SHARE mode, queue the batch.
        cursor.execute("SELECT id FROM clients WHERE id = %s FOR SHARE", (str(client_id),))
        cursor.execute(QUEUED_ROW, {"public_id": uuid.uuid4().hex, "client_id": str(client_id), "now": utcnow()})
    deletion, _ = in_thread(app, lambda: delete_client(client_id))
    assert deletion.is_alive()  # it waits for the batch's transaction
    other_transaction.commit()
    deletion.join(10)
    with app.app_context():
        assert db.session.scalars(db.select(OutboundMessage.state)).all() == ["cancelled"]


def test_a_batch_for_a_client_being_deleted_waits_and_is_refused(app, client_id, other_transaction):
    with other_transaction.cursor() as cursor:
        # What delete_client does first: lock the client row for update.
        cursor.execute("SELECT id FROM clients WHERE id = %s FOR UPDATE", (str(client_id),))
    batch = [BatchMessage("em-1", "ACME", "+4915112345678", "hi")]
    accepting, outcome = in_thread(app, lambda: accept_batch(client_id, batch))
    assert accepting.is_alive()
    with other_transaction.cursor() as cursor:
        cursor.execute("DELETE FROM clients WHERE id = %s", (str(client_id),))
    other_transaction.commit()
    accepting.join(10)
    assert isinstance(outcome[0], NotFound)
    with app.app_context():
        assert db.session.scalars(db.select(OutboundMessage)).all() == []
        assert db.session.get(Client, client_id) is None


def twilio_config(account_sid: str, auth_token: str):
    """Return a validated Twilio configuration."""
    return load_client_config({"customFieldValues": {"vendor": "twilio", "accountSid": account_sid,
                                                     "authToken": auth_token}})


def test_a_configuration_update_keeps_the_signing_key_of_the_account_a_concurrent_one_set(app,
                                                                                          other_transaction):
    account_a, account_b, account_c = ("AC" + digit * 32 for digit in "abc")
    with app.app_context():
        client_id = save_client(uuid.uuid4(), twilio_config(account_a, "token-a")).id
    with other_transaction.cursor() as cursor:
        # Another PUT, not committed yet: the client moves to account B (its token kept, for brevity).
        cursor.execute("UPDATE clients SET settings = %s WHERE id = %s",
                       (json.dumps({"vendor": "twilio", "accountSid": account_b,
                                    "baseUrl": "https://api.twilio.com"}), str(client_id)))
    updating, outcome = in_thread(app, lambda: save_client(client_id, twilio_config(account_c, "token-c")).id)
    other_transaction.commit()
    updating.join(10)

    with app.app_context():
        former = secret_box().open(db.session.get(Client, client_id).former_secrets)
    assert outcome == [client_id]
    # The account it moved away from is B, the one the other PUT had set, not A, which it read before.
    assert list(former) == [f"twilio:{twilio_config(account_b, 'x').account()}"]
