"""The Emarsys partner flow end to end on the embedded SQLite default (`make run`), with local fake servers."""
from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from flask_migrate import upgrade
from sqlalchemy import event, func, update
from werkzeug import Request, Response

from app import create_app
from models import Client, InboundMessageRecord, MessageState, OutboundMessage, OutboxItem, RawEvent, db
from services import vendors
from services.clock import utcnow
from services.dispatcher import Dispatcher
from services.forwarder import Forwarder
from services.retention import purge
from tests.conftest import TEST_SETTINGS
from tests.emarsys_spec import requires_spec
from tests.routes.conftest import EMARSYS_CLIENT_ID, ISSUER, PUBLIC_BASE_URL
from tests.services.test_forwarder import FakeEmarsys, TokenServer

pytestmark = [requires_spec, pytest.mark.usefixtures("fresh_sessions")]

GENESYS_PATH = "/httpapi/receiver"


class FakeGenesys:
    """A Genesys receiver: a request without a phone number is a connection test (result 1), a send is queued (0)."""

    def __init__(self, httpserver):
        self.sent: list[str] = []
        httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_handler(self.handle)
        self.url = httpserver.url_for(GENESYS_PATH)

    def handle(self, request: Request) -> Response:
        """Answer one request as Genesys does."""
        if "phone_number" not in request.form:
            return Response("result_code=1")
        self.sent.append(request.form["message_id"])
        return Response("result_code=0")


@pytest.fixture
def fresh_sessions():
    """Start and end the test without pooled vendor connections to an earlier test's server."""
    vendors.close_sessions()
    yield
    vendors.close_sessions()


@pytest.fixture
def fakes(httpserver):
    """Return the fake Genesys, token server and Emarsys, all on the one local server."""
    tokens = TokenServer(httpserver)
    yield FakeGenesys(httpserver), tokens, FakeEmarsys(httpserver, tokens)
    httpserver.check_handler_errors()


@pytest.fixture
def sqlite_apps(tmp_path, jwks_url, fakes):
    """Return a web app and a worker app, each with its own engine, on one migrated SQLite file."""
    _, tokens, emarsys = fakes
    settings = {**TEST_SETTINGS, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'sms.sqlite3'}",
                "EMARSYS_JWKS_URL": jwks_url, "EMARSYS_TOKEN_ISSUER": ISSUER,
                "EMARSYS_OAUTH_CLIENT_ID": EMARSYS_CLIENT_ID, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                "PARTNER_OAUTH_TOKEN_URL": tokens.url, "PARTNER_OAUTH_CLIENT_ID": "partner",
                "PARTNER_OAUTH_CLIENT_SECRET": "secret", "EMARSYS_API_BASE_URL": emarsys.base_url,
                "FORWARD_LINGER_MS": 0, "FORWARD_RETRY_SCHEDULE": "0s", "SEND_RETRY_DELAY_SECONDS": 0,
                "VENDOR_TIMEOUT_SECONDS": 2, "LEASE_SECONDS": 60, "DISPATCH_BATCH_SIZE": 1, "FORWARD_BATCH_SIZE": 2}
    web, worker = create_app(settings), create_app(settings)
    with web.app_context():
        upgrade()
    yield web, worker
    for app in (web, worker):
        with app.app_context():
            db.engine.dispose()


def local_path(url: str) -> str:
    """Return the path of one of our public URLs, for the test client."""
    return urlsplit(url).path


def messages(*ids: str) -> dict:
    """Return a POST /messages body of one message per Emarsys id."""
    return {"messages": [{"emarsysMessageId": em_id, "source": "ACME", "destination": "+4915112345678",
                          "message": f"Hello {em_id}"} for em_id in ids]}


def run_until_idle(app, job) -> None:
    """Run one worker job's rounds until a round does nothing."""
    with app.app_context():
        for _ in range(20):
            if not job.run_once():
                return
    raise AssertionError("the job never went idle")


def expire_leases(app) -> None:
    """End every lease at once, as if the worker holding them had been gone for LEASE_SECONDS."""
    with app.app_context():
        past = utcnow() - timedelta(seconds=1)
        db.session.execute(update(OutboundMessage).values(lease_until=past))
        db.session.execute(update(OutboxItem).where(OutboxItem.lease_until.is_not(None)).values(lease_until=past))
        db.session.commit()


def send_with_a_restart(worker) -> None:
    """Send one message, lose the worker after its next claim, and send the rest with a new one."""
    run_once = Dispatcher.from_config(worker.config, "worker-a").run_once
    with worker.app_context():
        assert run_once() == 1
        assert Dispatcher.from_config(worker.config, "worker-a").claim()[1] == 1  # then killed
    expire_leases(worker)
    run_until_idle(worker, Dispatcher.from_config(worker.config, "worker-b"))


def forward_with_a_restart(worker) -> None:
    """Lose a forwarder after it leased a batch, before posting it; forward everything with a new one."""
    with worker.app_context():
        lost = Forwarder.from_config(worker.config, "worker-a")
        [(client_id, kind), *_] = lost.ready_groups(utcnow())
        assert lost.claim(client_id, kind, utcnow()) is not None
    expire_leases(worker)
    run_until_idle(worker, Forwarder.from_config(worker.config, "worker-b"))


def test_an_emarsys_client_is_served_end_to_end_on_sqlite(sqlite_apps, fakes, auth):
    web, worker = sqlite_apps
    genesys, _, emarsys = fakes
    client, client_id = web.test_client(), uuid.uuid4()
    fields = {"vendor": "genesys", "login": "acme", "password": "pw", "baseUrl": genesys.url}

    put = client.put(f"/clients/{client_id}/configuration", headers=auth, json={"customFieldValues": fields})
    assert put.status_code == 200
    urls = put.get_json()["callbackUrls"]
    assert client.post("/testConnection", headers=auth, json={"customFieldValues": fields}).get_json() == {
        "state": "success"}
    for _ in range(2):  # Emarsys retries the batch: each message is queued once
        assert client.post(f"/clients/{client_id}/messages", headers=auth,
                           json=messages("em-1", "em-2", "em-3")).status_code == 202
    send_with_a_restart(worker)
    assert sorted(Counter(genesys.sent).values()) == [1, 1, 1]

    for vendor_id in genesys.sent:
        receipt = {"type": "receipt", "message_id": vendor_id, "message_state": "2", "result_code": "0"}
        assert client.post(local_path(urls["deliveryReports"]["url"]), data=receipt).status_code == 200
    mo = {"type": "MO", "message_id": "mo-1", "phone_number": "4915112345678", "shortcode": "12345",
          "message": "STOP"}
    assert client.post(local_path(urls["inboundMessages"]["url"]), data=mo).status_code == 200
    forward_with_a_restart(worker)

    reports = Counter((item["emarsysMessageId"], item["status"]) for call in emarsys.calls
                      if call["status"] == 202 and call["collection"] == "deliveryReports" for item in call["items"])
    assert reports == {(f"em-{n}", status): 1 for n in (1, 2, 3) for status in ("ACCEPTED", "DELIVERED")}
    assert [item["messageId"] for call in emarsys.calls if call["collection"] == "inboundMessages"
            for item in call["items"]] == ["mo-1"]

    assert client.delete(f"/clients/{client_id}/configuration", headers=auth).status_code == 204
    assert client.post(local_path(urls["deliveryReports"]["url"]), data=receipt).status_code == 404
    with worker.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(Client)) == 0
        assert Counter(db.session.scalars(db.select(OutboundMessage.state))) == {"sent": 3}


def test_retention_purges_the_flows_rows_on_sqlite(sqlite_apps, fakes, auth):
    web, worker = sqlite_apps
    genesys, _, _ = fakes
    client, client_id = web.test_client(), uuid.uuid4()
    fields = {"vendor": "genesys", "login": "acme", "password": "pw", "baseUrl": genesys.url}
    urls = client.put(f"/clients/{client_id}/configuration", headers=auth,
                      json={"customFieldValues": fields}).get_json()["callbackUrls"]
    client.post(f"/clients/{client_id}/messages", headers=auth, json=messages("em-1", "em-2"))
    run_until_idle(worker, Dispatcher.from_config(worker.config, "worker-a"))
    for vendor_id in genesys.sent:
        receipt = {"type": "receipt", "message_id": vendor_id, "message_state": "5", "result_code": "0"}
        client.post(local_path(urls["deliveryReports"]["url"]), data=receipt)
    mo = {"type": "MO", "message_id": "mo-1", "phone_number": "4915112345678", "shortcode": "12345", "message": "hi"}
    assert client.post(local_path(urls["inboundMessages"]["url"]), data=mo).status_code == 200
    run_until_idle(worker, Forwarder.from_config(worker.config, "worker-a"))

    with worker.app_context():
        assert purge(utcnow() - timedelta(days=1), batch_size=2) and count_rows() == {
            "raw_events": 5, "message_states": 2, "inbound_messages": 1, "outbox": 5, "outbound_messages": 2}
        purged = {row.table: row.rows for row in purge(utcnow() + timedelta(days=1), batch_size=2)}
        assert purged == {"status_cursors": 0, "raw_events": 5, "bounces": 0, "message_states": 2,
                          "inbound_messages": 1, "outbox": 5, "outbound_messages": 2}
        assert set(count_rows().values()) == {0}


def count_rows() -> dict[str, int]:
    """Return how many rows each table of the flow holds."""
    models = (RawEvent, MessageState, InboundMessageRecord, OutboxItem, OutboundMessage)
    return {model.__tablename__: db.session.scalar(db.select(func.count()).select_from(model)) for model in models}


def test_a_batch_queued_while_its_client_is_deleted_is_refused_or_cancelled_on_sqlite(sqlite_apps, fakes, auth):
    web, other_process = sqlite_apps
    genesys, _, _ = fakes
    client_id = uuid.uuid4()
    path = f"/clients/{client_id}/configuration"
    fields = {"vendor": "genesys", "login": "acme", "password": "pw", "baseUrl": genesys.url}
    assert web.test_client().put(path, headers=auth, json={"customFieldValues": fields}).status_code == 200
    deleted = []

    def delete_before_the_insert(conn, cursor, statement, *_args) -> None:
        # Another gunicorn worker deletes the client between the batch's read of it and its insert.
        if statement.startswith("INSERT INTO outbound_messages") and not deleted:
            deleted.append(other_process.test_client().delete(path, headers=auth).status_code)

    with web.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", delete_before_the_insert)
    try:
        status = web.test_client().post(f"/clients/{client_id}/messages", headers=auth,
                                        json=messages("em-1")).status_code
    finally:
        event.remove(engine, "before_cursor_execute", delete_before_the_insert)

    with web.app_context():
        states = list(db.session.scalars(db.select(OutboundMessage.state)))
    assert deleted == [204]
    assert (status, states) in [(404, []), (202, ["cancelled"])]
