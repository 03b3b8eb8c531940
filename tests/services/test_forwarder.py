"""The outbox forwarder against PostgreSQL, a fake Emarsys that enforces the spec, and a token server."""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, insert, select, text, update
from werkzeug import Request, Response

from mappers.report import DeliveryReport, Outcome
from models import OutboundMessage, OutboxItem, db
from schemas.callbacks import delivery_report_item
from schemas.client_config import load_client_config
from services.clients import callback_urls, delete_client, save_client
from services.clock import utcnow
from services.emarsys_client import CallResult
from services.forwarder import REQUESTS_PER_CALL, Forwarder, claim_lock_key, emarsys_request_timeout
from services.ingest import record_delivery_report
from services.twilio_signature import compute_signature
from tests.emarsys_spec import requires_spec, validate_pointer, validate_schema
from tests.records import ensure_client

pytestmark = requires_spec

CALLBACKS = "partner-callbacks.yaml"
TOKEN_PATH = "/oauth2/token"
BASE_PATH = "/sms/partner/v1"
CALLBACK_PATH = re.compile(rf"^{BASE_PATH}/clients/([^/]+)/(deliveryReports|inboundMessages)$")
BATCH_SCHEMAS = {"deliveryReports": "DeliveryReportBatch", "inboundMessages": "InboundMessageBatch"}
CLIENT_A = uuid.UUID("39a281c7-942f-49a9-91c2-8f0dba750f7f")
CLIENT_B = uuid.UUID("5b0e6c55-2f3e-4c1e-9d8e-0a1b2c3d4e5f")
TWILIO_AUTH_TOKEN = "twilio-auth-token"


class TokenServer:
    """An OAuth token endpoint issuing numbered opaque tokens valid for an hour."""

    def __init__(self, httpserver):
        self.issued: list[str] = []
        httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(self.handle)
        self.url = httpserver.url_for(TOKEN_PATH)

    def handle(self, request: Request) -> Response:
        """Issue the next token."""
        self.issued.append(f"token-{len(self.issued) + 1}")
        body = {"access_token": self.issued[-1], "token_type": "bearer", "expires_in": 3600}
        return Response(json.dumps(body), status=200, content_type="application/json")


class FakeEmarsys:
    """Emarsys callback endpoints that check the token, validate every body and answer as queued."""

    def __init__(self, httpserver, tokens: TokenServer):
        self.tokens = tokens
        self.answers: list[Response] = []
        self.calls: list[dict] = []
        self.on_call: Callable[[], object] | None = None  # run as each call arrives
        self.lock = threading.Lock()
        httpserver.expect_request(CALLBACK_PATH, method="POST").respond_with_handler(self.handle)
        self.base_url = httpserver.url_for(BASE_PATH)

    def answer(self, status: int, body: object = b"", headers: dict | None = None) -> None:
        """Queue one answer; once the queue is empty every call gets 202."""
        data = body if isinstance(body, bytes) else json.dumps(body)
        self.answers.append(Response(data, status=status, headers=headers, content_type="application/json"))

    def handle(self, request: Request) -> Response:
        """Validate and record one callback, then answer."""
        client_id, collection = CALLBACK_PATH.match(request.path).groups()
        if self.on_call:
            self.on_call()
        body = request.get_json()
        # A body that breaks the spec raises: the forwarder sees a 500, the test a handler error.
        validate_schema(CALLBACKS, BATCH_SCHEMAS[collection], body)
        validate_pointer("common.yaml", "/components/parameters/clientIdPathParam/schema", client_id)
        with self.lock:
            if request.headers.get("Authorization") != f"Bearer {self.tokens.issued[-1]}":
                response = Response(status=401)
            else:
                response = self.answers.pop(0) if self.answers else Response(status=202)
            self.calls.append({"client_id": client_id, "collection": collection,
                               "items": body[collection], "status": response.status_code})
        return response

    def acknowledged(self) -> Counter:
        """Return how often each item was answered with 202."""
        return Counter(json.dumps(item, sort_keys=True) for call in self.calls if call["status"] == 202
                       for item in call["items"])

    def batches(self, client_id: uuid.UUID) -> list[int]:
        """Return the sizes of the batches a client's callbacks carried."""
        return [len(call["items"]) for call in self.calls if call["client_id"] == str(client_id)]


@pytest.fixture
def token_server(httpserver) -> TokenServer:
    """Return the local token server."""
    return TokenServer(httpserver)


@pytest.fixture
def emarsys(httpserver, token_server):
    """Return the local fake Emarsys, and surface any spec violation it saw."""
    yield FakeEmarsys(httpserver, token_server)
    httpserver.check_handler_errors()


@pytest.fixture
def forwarder_app(make_app, emarsys, token_server):
    """Return a factory of apps wired to the fake servers, with no linger and immediate retries."""
    def factory(**overrides):
        return make_app(**{"PARTNER_OAUTH_TOKEN_URL": token_server.url, "PARTNER_OAUTH_CLIENT_ID": "partner",
                           "PARTNER_OAUTH_CLIENT_SECRET": "secret", "EMARSYS_API_BASE_URL": emarsys.base_url,
                           "FORWARD_LINGER_MS": 0, "FORWARD_RETRY_SCHEDULE": "0s", "LEASE_SECONDS": 60,
                           **overrides})
    return factory


@pytest.fixture
def app(forwarder_app):
    """Return the service wired to the fake servers."""
    return forwarder_app()


def forwarder(app, owner: str = "worker-a") -> Forwarder:
    """Return a forwarder configured like the worker's."""
    return Forwarder.from_config(app.config, owner)


def drain(app, worker: Forwarder, rounds: int = 50) -> int:
    """Run the forwarder until a round handles nothing; return the items handled."""
    handled = 0
    with app.app_context():
        for _ in range(rounds):
            done = worker.run_once()
            if not done:
                return handled
            handled += done
    raise AssertionError("the forwarder never went idle")


def report(number: int, outcome: Outcome = Outcome.DELIVERED, at: datetime | None = None) -> DeliveryReport:
    """Return a normalised vendor report."""
    return DeliveryReport(vendor_message_id=f"v-{number}", recipient=None, status_code="2:0",
                          status_text="DELIVERED", event_at=at or datetime(2026, 1, 1, 12, 0),
                          outcome=outcome)


def seed(client_id: uuid.UUID, count: int, start: int = 0, message_key: str | None = None,
         created_at: datetime | None = None) -> None:
    """Put `count` delivery reports of a client in the outbox in one statement, as ingest would write them."""
    ensure_client(client_id)
    now = created_at or utcnow()
    rows = []
    for number in range(start, start + count):
        key = message_key or f"em-{number}"
        event_at = datetime(2026, 1, 1) + timedelta(seconds=number)
        payload = delivery_report_item(report(number, at=event_at), key)
        rows.append(dict(client_id=client_id, kind="delivery_report", message_key=key, payload=payload,
                         event_at=event_at, state="pending",
                         attempts=0, next_attempt_at=now, created_at=now))
    db.session.execute(insert(OutboxItem), rows)
    db.session.commit()


def items(**filters) -> list[OutboxItem]:
    """Return the outbox rows in id order."""
    db.session.expire_all()
    return list(db.session.scalars(select(OutboxItem).filter_by(**filters).order_by(OutboxItem.id)))


def states() -> Counter:
    """Return how many outbox rows are in each state."""
    return Counter(item.state for item in items())


def genesys_client(client_id: uuid.UUID = CLIENT_A):
    """Onboard a Genesys client and return it."""
    config = load_client_config({"customFieldValues": {"vendor": "genesys", "login": "l", "password": "p"}})
    return save_client(client_id, config)


def local_path(url: str) -> str:
    """Return the path of one of our public URLs, for the test client."""
    return urlsplit(url).path


# --- what is forwarded ------------------------------------------------------------------

def test_genesys_dr_on_a_client_callback_url_reaches_emarsys(app, emarsys, record_sent):
    client = app.test_client()
    with app.app_context():
        url = callback_urls(genesys_client()).delivery_reports
    record_sent(app, CLIENT_A, "genesys", "g-1", "em-1")
    form = {"type": "receipt", "message_id": "g-1", "message_state": "2", "result_code": "0"}

    assert client.post(local_path(url), data=form).status_code == 200
    assert drain(app, forwarder(app)) == 1

    [call] = emarsys.calls
    assert (call["client_id"], call["collection"]) == (str(CLIENT_A), "deliveryReports")
    assert [(item["emarsysMessageId"], item["status"]) for item in call["items"]] == [("em-1", "DELIVERED")]
    assert call["items"][0]["providerMessageIds"] == ["g-1"]
    with app.app_context():
        assert [(item.state, item.sent_at is not None) for item in items()] == [("done", True)]


def test_genesys_dr_for_a_partner_api_message_carries_the_emarsys_message_id(app, emarsys):
    public_id = "pub-7f3a"
    with app.app_context():
        genesys_client()
        now = utcnow()
        db.session.add(OutboundMessage(
            public_id=public_id, client_id=CLIENT_A, emarsys_message_id="em-42", source="Shop",
            destination="+4915112345", body="hello", state="sent", attempts=1, next_attempt_at=now,
            vendor="genesys", vendor_message_id=public_id, created_at=now, updated_at=now))
        db.session.commit()
        # What the dispatcher stores when the vendor accepted the message.
        accepted = DeliveryReport(public_id, "+4915112345", "202", "accepted", now, Outcome.ACCEPTED)
        record_delivery_report("genesys", accepted, {"public_id": public_id}, client_id=CLIENT_A,
                               emarsys_message_id="em-42", kind="send_result")
    form = {"type": "receipt", "message_id": public_id, "message_state": "2", "result_code": "0"}

    assert app.test_client().post("/vendors/genesys/delivery-reports", data=form).status_code == 200
    assert drain(app, forwarder(app)) == 2

    [call] = emarsys.calls
    assert call["client_id"] == str(CLIENT_A)
    assert [(item["emarsysMessageId"], item["status"]) for item in call["items"]] == [
        ("em-42", "ACCEPTED"), ("em-42", "DELIVERED")]


def test_a_higher_report_with_an_earlier_event_time_reaches_emarsys_after_the_one_it_overtook(app, emarsys):
    with app.app_context():
        genesys_client()
        now = utcnow()
        # A DELIVERED timestamped on arrival, committed after the send result the worker timed later.
        for outcome, at in [(Outcome.ACCEPTED, now), (Outcome.DELIVERED, now - timedelta(milliseconds=5))]:
            report_ = DeliveryReport("pub-1", "+4915112345", "0", outcome.value, at, outcome)
            record_delivery_report("genesys", report_, {"outcome": outcome.value}, client_id=CLIENT_A,
                                   emarsys_message_id="em-1")

    assert drain(app, forwarder(app)) == 2

    [call] = emarsys.calls
    assert [item["status"] for item in call["items"]] == ["ACCEPTED", "DELIVERED"]  # as our state changed


def test_mo_on_a_client_callback_url_reaches_inbound_messages(app, emarsys):
    with app.app_context():
        url = callback_urls(genesys_client()).inbound_messages
    form = {"type": "MO", "message_id": "mo-1", "phone_number": "436771234567", "shortcode": "12345",
            "message": "STOP"}

    assert app.test_client().post(local_path(url), data=form).status_code == 200
    assert drain(app, forwarder(app)) == 1

    [call] = emarsys.calls
    assert (call["client_id"], call["collection"]) == (str(CLIENT_A), "inboundMessages")
    [message] = call["items"]
    assert (message["messageId"], message["source"], message["destination"], message["message"]) == (
        "mo-1", "436771234567", "12345", "STOP")


def twilio_client(client_id: uuid.UUID = CLIENT_A):
    """Onboard a Twilio client and return it."""
    config = load_client_config({"customFieldValues": {
        "vendor": "twilio", "accountSid": "AC" + "0123456789abcdef" * 2, "authToken": TWILIO_AUTH_TOKEN}})
    return save_client(client_id, config)


@pytest.mark.parametrize("vendor, form", [
    ("twilio", {"MessageSid": "SM1", "From": "+436771234567", "To": "+381641234567", "Body": "STOP"}),
    # A `+` Genesys sent un-encoded arrives as a space, and is restored.
    ("genesys", {"type": "MO", "message_id": "mo-1", "phone_number": " 436771234567",
                 "shortcode": " 381641234567", "message": "STOP"}),
])
def test_mo_numbers_reach_emarsys_written_as_emarsys_writes_them(app, emarsys, vendor, form):
    with app.app_context():
        path = local_path(callback_urls(twilio_client() if vendor == "twilio" else genesys_client()).inbound_messages)
    signature = compute_signature(TWILIO_AUTH_TOKEN, app.config["PUBLIC_BASE_URL"] + path, form)

    assert app.test_client().post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code == 200
    assert drain(app, forwarder(app)) == 1

    [message] = emarsys.calls[0]["items"]
    # The contract's own example, and how Emarsys writes the numbers it sends: no `+`.
    assert (message["source"], message["destination"]) == ("436771234567", "381641234567")


def test_mo_short_codes_and_sender_names_reach_emarsys_as_sent(app, emarsys):
    with app.app_context():
        path = local_path(callback_urls(twilio_client()).inbound_messages)
    form = {"MessageSid": "SM1", "From": "+436771234567", "To": "72000", "Body": "STOP"}
    signature = compute_signature(TWILIO_AUTH_TOKEN, app.config["PUBLIC_BASE_URL"] + path, form)

    assert app.test_client().post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code == 200
    assert drain(app, forwarder(app)) == 1

    [message] = emarsys.calls[0]["items"]
    assert message["destination"] == "72000"


def test_2500_reports_leave_as_at_most_3_batches_per_client(app, emarsys):
    with app.app_context():
        seed(CLIENT_A, 2500)
        seed(CLIENT_B, 2500, start=2500)

    assert drain(app, forwarder(app)) == 5000

    for client_id in (CLIENT_A, CLIENT_B):
        sizes = emarsys.batches(client_id)
        assert len(sizes) <= 3 and max(sizes) <= 1000 and sum(sizes) == 2500
    assert len(emarsys.acknowledged()) == 5000
    assert set(emarsys.acknowledged().values()) == {1}


@pytest.mark.parametrize("due, batch_size, expected_sizes", [
    (5, 3, [3]),  # a full batch goes at once, the rest lingers
    (2, 3, []),  # a partial batch waits for the linger to pass
])
def test_a_partial_batch_lingers_and_a_full_one_goes_at_once(forwarder_app, emarsys, due, batch_size,
                                                            expected_sizes):
    app = forwarder_app(FORWARD_LINGER_MS=3_600_000, FORWARD_BATCH_SIZE=batch_size)
    with app.app_context():
        seed(CLIENT_A, due)

    drain(app, forwarder(app))

    assert emarsys.batches(CLIENT_A) == expected_sizes
    with app.app_context():
        assert states()["pending"] == due - sum(expected_sizes)


def test_a_lingering_batch_goes_once_its_oldest_item_is_old_enough(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_LINGER_MS=60_000)
    with app.app_context():
        seed(CLIENT_A, 2, created_at=utcnow() - timedelta(minutes=2))

    assert drain(app, forwarder(app)) == 2
    assert emarsys.batches(CLIENT_A) == [2]


def test_a_stopping_worker_posts_no_further_batch(app, emarsys):
    with app.app_context():
        seed(CLIENT_A, 2500)
        seed(CLIENT_B, 1000, start=5000)
    stopping = threading.Event()
    emarsys.on_call = stopping.set  # SIGTERM arrives while the first batch is posted
    worker = Forwarder.from_config(app.config, "worker-a", stopping)

    with app.app_context():
        handled = worker.run_once()

        assert [call["status"] for call in emarsys.calls] == [202]  # the one in flight is recorded
        assert handled == 1000 and states() == Counter(done=1000, pending=2500)


# --- answers of Emarsys -------------------------------------------------------------------

def test_503_three_times_then_202_delivers_once(app, emarsys):
    for _ in range(3):
        emarsys.answer(503, {"message": "busy"})
    with app.app_context():
        seed(CLIENT_A, 2)

    drain(app, forwarder(app))

    assert [call["status"] for call in emarsys.calls] == [503, 503, 503, 202]
    assert set(emarsys.acknowledged().values()) == {1} and len(emarsys.acknowledged()) == 2
    with app.app_context():
        assert [(item.state, item.attempts) for item in items()] == [("done", 3), ("done", 3)]


def test_429_retry_after_is_honoured(app, emarsys):
    emarsys.answer(429, {"message": "slow down"}, headers={"Retry-After": "120"})
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 1)
        before = utcnow()
        assert worker.run_once() == 1
        after = utcnow()
        [item] = items()
        assert item.state == "pending" and item.attempts == 1
        assert before + timedelta(seconds=120) <= item.next_attempt_at <= after + timedelta(seconds=120)
        # Not due yet: the retry schedule alone ("0s") would have resent it at once.
        assert worker.run_once() == 0
    assert len(emarsys.calls) == 1


def test_401_refreshes_the_token_and_delivers(app, emarsys, token_server):
    emarsys.answer(401)
    with app.app_context():
        seed(CLIENT_A, 1)

    assert drain(app, forwarder(app)) == 1

    assert token_server.issued == ["token-1", "token-2"]
    assert [call["status"] for call in emarsys.calls] == [401, 202]
    with app.app_context():
        assert [item.state for item in items()] == ["done"]


def test_400_naming_one_item_dead_letters_it_and_delivers_the_others(app, emarsys):
    error = {"keyword": "enum", "dataPath": ".deliveryReports[1].status", "message": "should be allowed"}
    emarsys.answer(400, {"errors": [error]})
    with app.app_context():
        seed(CLIENT_A, 3)

    drain(app, forwarder(app))

    assert [len(call["items"]) for call in emarsys.calls] == [3, 2]
    with app.app_context():
        rows = items()
        assert [row.state for row in rows] == ["done", "dead", "done"]
        assert "deliveryReports[1].status" in rows[1].last_error
        assert "should be allowed" in rows[1].last_error


@pytest.mark.parametrize("status, reason", [(403, "not authorised"), (404, "does not exist")])
def test_403_and_404_dead_letter_the_whole_batch_with_the_reason(app, emarsys, status, reason):
    emarsys.answer(status)
    with app.app_context():
        seed(CLIENT_A, 2)

    drain(app, forwarder(app))

    assert len(emarsys.calls) == 1
    with app.app_context():
        assert [(row.state, row.attempts) for row in items()] == [("dead", 1), ("dead", 1)]
        assert all(reason in row.last_error for row in items())


def test_an_item_past_the_max_age_becomes_a_dead_letter(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_MAX_AGE="1h")
    emarsys.answer(503)
    with app.app_context():
        seed(CLIENT_A, 1)
        db.session.execute(update(OutboxItem).values(first_attempt_at=utcnow() - timedelta(hours=2)))
        db.session.commit()

    drain(app, forwarder(app))

    with app.app_context():
        [row] = items()
        assert row.state == "dead" and "gave up" in row.last_error and "503" in row.last_error
    assert len(emarsys.calls) == 1


def test_an_item_within_the_max_age_keeps_its_first_attempt_time(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_RETRY_SCHEDULE="1h")
    emarsys.answer(503)
    with app.app_context():
        seed(CLIENT_A, 1)
        assert forwarder(app).run_once() == 1
        [row] = items()
        first_attempt = row.first_attempt_at
        db.session.execute(update(OutboxItem).values(next_attempt_at=utcnow()))
        db.session.commit()
        assert forwarder(app).run_once() == 1
        [row] = items()
    assert first_attempt is not None and row.first_attempt_at == first_attempt
    assert row.state == "done"


# --- event order per message --------------------------------------------------------------

def test_a_later_report_waits_while_an_earlier_one_of_its_message_is_retried(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_BATCH_SIZE=1, FORWARD_RETRY_SCHEDULE="1h")
    emarsys.answer(503)
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 2, message_key="em-1")
        assert worker.run_once() == 1  # the first report fails and waits an hour
        assert worker.run_once() == 0  # the second must not overtake it
        # The hour passes.
        db.session.execute(update(OutboxItem).where(OutboxItem.state == "pending")
                           .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    drain(app, worker)

    sent = [(call["items"][0]["providerMessageIds"][0], call["status"]) for call in emarsys.calls]
    assert sent == [("v-0", 503), ("v-0", 202), ("v-1", 202)]


def test_reports_held_back_behind_a_retry_wait_for_it_instead_of_being_looked_at_every_round(forwarder_app,
                                                                                            emarsys):
    app = forwarder_app(FORWARD_BATCH_SIZE=1, FORWARD_RETRY_SCHEDULE="1h", FORWARD_LINGER_MS=0)
    emarsys.answer(503)
    emarsys.answer(503)
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 2, message_key="em-1")
        seed(CLIENT_A, 1, start=2, message_key="em-2")
        assert worker.run_once() == 2  # em-1's first report and em-2's fail and wait an hour
        seed(CLIENT_A, 1, start=3, message_key="em-2")  # a later report of em-2 arrives meanwhile
        assert worker.run_once() == 0

        retries = {item.payload["providerMessageIds"][0]: item.next_attempt_at for item in items()}
        assert retries["v-1"] == retries["v-0"] and retries["v-3"] == retries["v-2"] > utcnow()
        assert worker.ready_groups(utcnow()) == []  # nothing to count or claim until the retry


def test_reports_held_back_behind_a_retry_do_not_fill_the_batch(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_BATCH_SIZE=2, FORWARD_RETRY_SCHEDULE="1h")
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 1, message_key="em-1")
        emarsys.answer(503)
        assert worker.run_once() == 1  # the first report of em-1 now waits an hour
        seed(CLIENT_A, 2, start=1, message_key="em-1")
        seed(CLIENT_A, 1, start=3, message_key="em-2")

        assert worker.run_once() == 1

    assert emarsys.calls[-1]["items"][0]["emarsysMessageId"] == "em-2"


def test_the_claim_probes_each_candidates_message_instead_of_collecting_every_waiting_one(app):
    # NOT IN over all of a client's waiting items is a SubPlan that outgrows work_mem in a long
    # outage and is then rescanned per candidate; NOT EXISTS is an anti join on an index.
    worker = forwarder(app)
    with app.app_context():
        query = worker._candidates(CLIENT_A, "delivery_report", utcnow())
        sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(db.session.scalars(text("EXPLAIN " + sql)))
        db.session.rollback()

    assert "SubPlan" not in plan
    assert "Anti Join" in plan


def test_the_claim_reads_open_items_in_write_order_from_its_index_not_through_the_done_ones(app):
    with app.app_context():
        # Done rows kept until retention purges them, then a backlog after an outage.
        db.session.execute(text(
            "INSERT INTO outbox (client_id, kind, message_key, payload, event_at, state, attempts, next_attempt_at,"
            " created_at) SELECT :client, 'delivery_report', 'em-' || g, '{}', now(),"
            " CASE WHEN g <= 200000 THEN 'done' ELSE 'pending' END, 0, now() - interval '1 hour', now()"
            " FROM generate_series(1, 300000) AS g"), {"client": CLIENT_A})
        db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE outbox")
        query = forwarder(app)._candidates(CLIENT_A, "delivery_report", utcnow())
        sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(db.session.scalars(text("EXPLAIN (ANALYZE, COSTS OFF) " + sql)))
        db.session.rollback()

    # Not the primary key, through 200,000 done rows to the first open one.
    assert "Index Scan using ix_outbox_open on outbox" in plan and "using pk_outbox" not in plan, plan


def test_a_claim_that_fails_for_one_client_does_not_stop_the_others(app, emarsys, caplog):
    worker = forwarder(app)
    claim = worker.claim

    def failing_for_client_a(client_id, kind, now):
        if client_id == CLIENT_A:
            db.session.execute(text("SELECT 1/0"))  # a real database fault, e.g. a statement timeout
        return claim(client_id, kind, now)

    worker.claim = failing_for_client_a
    with app.app_context():
        seed(CLIENT_A, 3, created_at=utcnow() - timedelta(hours=1))  # first in the round
        seed(CLIENT_B, 2, start=10)

        assert worker.run_once() == 2
        assert db.session.scalar(select(func.count()).where(
            OutboxItem.client_id == CLIENT_A, OutboxItem.state == "pending")) == 3

    assert [call["client_id"] for call in emarsys.calls] == [str(CLIENT_B)]
    assert any(f"client {CLIENT_A} failed: DataError" in record.getMessage() for record in caplog.records)


def wait_until_a_claim_waits_for_the_claim_lock() -> None:
    """Return once some session waits on an advisory lock; fail if none does."""
    for _ in range(3000):
        waiting = db.session.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"))
        db.session.commit()
        if waiting:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the claim never waited for the other worker's claim lock")


def test_a_claim_waits_for_another_workers_claim_so_a_later_report_cannot_overtake(app, emarsys):
    claimed: dict[str, object] = {}

    def claim_as_worker_b() -> None:
        with app.app_context():
            claimed["batch"] = forwarder(app, "worker-b").claim(CLIENT_A, "delivery_report", utcnow())

    with app.app_context():
        seed(CLIENT_A, 2, message_key="em-1")
        first_id = items()[0].id
        other = db.engine.connect()
        transaction = other.begin()
        # Worker A mid-claim: it holds the client's claim lock and has leased the earlier report.
        other.execute(select(func.pg_advisory_xact_lock(claim_lock_key(CLIENT_A, "delivery_report"))))
        other.execute(update(OutboxItem).where(OutboxItem.id == first_id).values(
            state="leased", lease_owner="worker-a", lease_until=utcnow() + timedelta(minutes=1)))
        thread = threading.Thread(target=claim_as_worker_b)
        thread.start()
        try:
            wait_until_a_claim_waits_for_the_claim_lock()
        finally:
            transaction.commit()
            other.close()
            thread.join()
        assert [(row.state, row.lease_owner) for row in items()] == [
            ("leased", "worker-a"), ("pending", None)]
    assert claimed == {"batch": None}


# --- leases and concurrent workers --------------------------------------------------------

def test_a_killed_workers_lease_expires_and_another_worker_delivers_once(app, emarsys):
    killed, survivor = forwarder(app, "worker-a"), forwarder(app, "worker-b")
    with app.app_context():
        seed(CLIENT_A, 3)
        abandoned = killed.claim(CLIENT_A, "delivery_report", utcnow())
        assert abandoned is not None and len(abandoned.items) == 3
        assert survivor.run_once() == 0  # the lease still holds
        db.session.execute(update(OutboxItem).values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert survivor.run_once() == 3
        sent_at = [row.sent_at for row in items()]
        # The killed worker wakes up and reports success: its lease is gone, nothing changes.
        late = killed.acknowledge(abandoned, CallResult("delivered", http_status=202), utcnow())
        rows = items()

    assert late == 0
    assert [row.sent_at for row in rows] == sent_at and {row.state for row in rows} == {"done"}
    assert len(emarsys.acknowledged()) == 3 and set(emarsys.acknowledged().values()) == {1}


def test_two_workers_acknowledge_each_of_5000_reports_exactly_once(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_BATCH_SIZE=250)
    with app.app_context():
        seed(CLIENT_A, 2500)
        seed(CLIENT_B, 2500, start=2500)
    start = threading.Barrier(2)
    handled: dict[str, int] = {}
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        try:
            start.wait()
            handled[owner] = drain(app, forwarder(app, owner), rounds=200)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(owner,)) for owner in ("worker-a", "worker-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(handled.values()) == 5000
    acknowledged = emarsys.acknowledged()
    assert len(acknowledged) == 5000 and set(acknowledged.values()) == {1}
    with app.app_context():
        assert states() == Counter({"done": 5000})


# --- configuration and dead-letter replay -------------------------------------------------

def test_without_partner_oauth_settings_nothing_is_sent_and_one_warning_is_logged(make_app, emarsys, caplog):
    app = make_app(PARTNER_OAUTH_TOKEN_URL=None, FORWARD_LINGER_MS=0)
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 2)
        with caplog.at_level(logging.WARNING, logger="services.forwarder"):
            assert worker.run_once() == 0
            assert worker.run_once() == 0
        assert states() == Counter({"pending": 2})
    assert len([r for r in caplog.records if "PARTNER_OAUTH" in r.getMessage()]) == 1
    assert emarsys.calls == []


def test_a_report_written_after_its_client_was_deleted_is_dropped_not_sent(app, emarsys, caplog):
    with app.app_context():
        seed(CLIENT_A, 1)
        seed(CLIENT_B, 1, start=1)
        delete_client(CLIENT_A)
        # A report whose statement saw the client just before the deletion committed.
        seed_without_client = [dict(client_id=CLIENT_A, kind="delivery_report", message_key="em-9",
                                    payload=delivery_report_item(report(9), "em-9"), event_at=utcnow(), state="pending",
                                    attempts=0, next_attempt_at=utcnow(), created_at=utcnow())]
        db.session.execute(insert(OutboxItem), seed_without_client)
        db.session.commit()

    with caplog.at_level(logging.INFO, logger="services.forwarder"):
        assert drain(app, forwarder(app)) == 1

    assert emarsys.batches(CLIENT_A) == [] and emarsys.batches(CLIENT_B) == [1]
    with app.app_context():
        assert [(row.client_id, row.state) for row in items()] == [(CLIENT_B, "done")]
    assert f"dropped 1 delivery_report item(s) of deleted client {CLIENT_A}" in caplog.text


def test_dead_letters_replayed_through_the_cli_are_delivered(app, emarsys):
    emarsys.answer(404)
    with app.app_context():
        # Client A waited longest, so its batch goes first and meets the 404.
        seed(CLIENT_A, 2, created_at=utcnow() - timedelta(minutes=1))
        seed(CLIENT_B, 1, start=2)
    drain(app, forwarder(app))
    with app.app_context():
        assert states() == Counter({"dead": 2, "done": 1})

    result = app.test_cli_runner().invoke(args=["outbox", "replay", "--client", str(CLIENT_A)])

    assert result.exit_code == 0 and "replayed 2" in result.output
    assert drain(app, forwarder(app)) == 2
    with app.app_context():
        assert states() == Counter({"done": 3})
    assert emarsys.batches(CLIENT_A) == [2, 2]


def test_a_batch_that_raises_while_sending_is_rescheduled_not_left_leased(app, emarsys):
    with app.app_context():
        seed(CLIENT_A, 1)
        # A kind this worker cannot send, as a newer version might write during a rolling deploy.
        db.session.execute(update(OutboxItem).values(kind="future_kind"))
        db.session.commit()
        assert forwarder(app).run_once() == 1
        [item] = items()
    assert (item.state, item.attempts, item.lease_owner) == ("pending", 1, None)
    assert item.last_error == "sending raised KeyError"
    assert emarsys.calls == []


@pytest.mark.parametrize("lease_seconds", [2, 8, 60, 600])
def test_all_requests_of_a_batch_end_within_three_quarters_of_its_lease(lease_seconds):
    connect, read = emarsys_request_timeout(lease_seconds)
    assert 0 < connect <= 5 and read > 0
    assert REQUESTS_PER_CALL * (connect + read) == pytest.approx(lease_seconds * 0.75)


def test_a_token_service_slower_than_the_lease_allows_posts_nothing(forwarder_app, emarsys, httpserver):
    def slow_token(request: Request) -> Response:
        time.sleep(1.0)
        return Response(json.dumps({"access_token": "late", "expires_in": 3600}), content_type="application/json")
    httpserver.expect_request("/slow-token").respond_with_handler(slow_token)
    app = forwarder_app(LEASE_SECONDS=2, PARTNER_OAUTH_TOKEN_URL=httpserver.url_for("/slow-token"))
    with app.app_context():
        seed(CLIENT_A, 1)
        forwarder(app).run_once()
        [item] = items()
    # Given up well before the 2 s lease ends, so no second worker can post the batch meanwhile.
    assert (item.state, item.attempts) == ("pending", 1)
    assert "token service" in item.last_error
    assert emarsys.calls == []
    time.sleep(1.0)  # let the slow handler finish before the next test's server starts


@pytest.fixture
def hanging_emarsys():
    """Return the base URL of an Emarsys that takes connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}{BASE_PATH}"
    listener.close()


CLIENTS = [uuid.UUID(int=number) for number in range(1, 7)]


def attempts_by_client() -> dict[uuid.UUID, int]:
    """Return the attempts each client's outbox items have had, summed."""
    db.session.expire_all()
    rows = db.session.execute(select(OutboxItem.client_id, func.sum(OutboxItem.attempts))
                              .group_by(OutboxItem.client_id)).all()
    return {client_id: attempts for client_id, attempts in rows}


def test_a_hanging_emarsys_costs_one_timeout_per_pause_not_one_per_client(forwarder_app, hanging_emarsys):
    # LEASE_SECONDS=8 gives each request 1.5 s; trying every client in turn would cost 6 of them.
    app = forwarder_app(EMARSYS_API_BASE_URL=hanging_emarsys, FORWARD_RETRY_SCHEDULE="5m", LEASE_SECONDS=8)
    worker = forwarder(app)
    with app.app_context():
        for client_id in CLIENTS:
            seed(client_id, 1)
        assert worker.run_once() == 1
        tried = attempts_by_client()
        assert sorted(tried.values()) == [0] * (len(CLIENTS) - 1) + [1]
        # Paused: the other clients' reports are neither tried nor charged an attempt.
        assert worker.run_once() == 0
        assert attempts_by_client() == tried
        [item] = items(attempts=1)
        assert item.last_error.startswith("timeout")


def test_an_unreachable_token_service_pauses_every_client(forwarder_app, emarsys, hanging_emarsys):
    token_url = hanging_emarsys.replace(BASE_PATH, TOKEN_PATH)
    app = forwarder_app(PARTNER_OAUTH_TOKEN_URL=token_url, FORWARD_RETRY_SCHEDULE="5m", LEASE_SECONDS=8)
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 1)
        seed(CLIENT_B, 1, start=1)
        assert worker.run_once() == 1
        assert worker.run_once() == 0
        assert sorted(attempts_by_client().values()) == [0, 1]
    assert emarsys.calls == []


@pytest.mark.parametrize("status", [404, 503])
def test_an_answer_even_an_error_pauses_no_other_client(forwarder_app, emarsys, status):
    emarsys.answer(status, {"message": "no"})
    app = forwarder_app(FORWARD_RETRY_SCHEDULE="5m")
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 1)
        seed(CLIENT_B, 1, start=1)
        assert worker.run_once() == 2
    assert [call["status"] for call in emarsys.calls] == [status, 202]


def test_a_fault_of_ours_on_one_clients_batch_pauses_no_other_client(forwarder_app, emarsys):
    app = forwarder_app(FORWARD_RETRY_SCHEDULE="5m")
    worker = forwarder(app)
    with app.app_context():
        seed(CLIENT_A, 1, created_at=utcnow() - timedelta(seconds=5))  # its batch goes first
        seed(CLIENT_B, 1, start=1)
        # A kind this worker cannot send: sending raises, as a bug of ours would.
        db.session.execute(update(OutboxItem).where(OutboxItem.client_id == CLIENT_A).values(kind="future_kind"))
        db.session.commit()
        assert worker.run_once() == 2
    assert [call["client_id"] for call in emarsys.calls] == [str(CLIENT_B)]


@pytest.mark.parametrize("message", ["bad value '\u0000'", "bad value '\ud800'"])
def test_a_400_whose_error_text_cannot_be_stored_still_dead_letters_the_item_once(app, emarsys, message):
    # Emarsys's texts go to the dead letter; PostgreSQL text holds no NUL and UTF-8 no lone surrogate.
    error = {"keyword": "enum", "dataPath": ".deliveryReports[0].status", "message": message}
    emarsys.answer(400, json.dumps({"errors": [error]}).encode())
    with app.app_context():
        seed(CLIENT_A, 2)

    drain(app, forwarder(app))
    with app.app_context():  # had the answer not been recorded, the lease would end and the batch go again
        db.session.execute(update(OutboxItem).where(OutboxItem.state == "leased")
                           .values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    drain(app, forwarder(app))

    assert [len(call["items"]) for call in emarsys.calls] == [2, 1]
    with app.app_context():
        rows = items()
        assert [row.state for row in rows] == ["dead", "done"]
        assert "deliveryReports[0].status" in rows[0].last_error and "bad value" in rows[0].last_error
