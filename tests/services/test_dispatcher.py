"""Tests of the dispatcher against PostgreSQL and fake Genesys and Twilio servers on loopback."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import urlsplit

import pytest
import sqlalchemy
from cryptography.fernet import Fernet
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mappers.report import Outcome
from models import Bounce, Client, MessageState, OutboundMessage, OutboxItem, RawEvent, db
from schemas.client_config import load_client_config
from services import vendors
from services.clients import callback_urls, delete_client, get_client, save_client
from services.clock import utcnow
from services.dispatcher import Dispatcher
from tests.concurrency import lock_waiters

GENESYS_PATH = "/httpapi/receiver"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TWILIO_MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
PASSWORD = "genesys-pa55word"
AUTH_TOKEN = "twilio-auth-t0ken"
BODY = "Your one-time code is 424242"
DESTINATION = "+36301234567"
FAST_RETRIES = {"SEND_RETRY_DELAY_SECONDS": 0, "VENDOR_TIMEOUT_SECONDS": 5}

# No pooled connection to an earlier test's server (tests/services/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_sessions")


@pytest.fixture
def settings() -> dict:
    """Return config overrides; a test parametrizes `settings` to change them."""
    return {}


@pytest.fixture
def app_context(make_app, settings):
    """Return an app inside an app context, with fast retries and the test's settings."""
    app = make_app(**{**FAST_RETRIES, **settings})
    with app.app_context():
        yield app


def genesys_client(base_url: str, client_id: uuid.UUID | None = None, **fields: str) -> uuid.UUID:
    """Onboard a Genesys client whose vendor is the fake server (or reconfigure this one); return its id."""
    config = load_client_config({"customFieldValues": {
        "vendor": "genesys", "login": "acme", "password": PASSWORD, "baseUrl": base_url, **fields}})
    return save_client(client_id or uuid.uuid4(), config).id


def twilio_client(base_url: str, client_id: uuid.UUID | None = None) -> uuid.UUID:
    """Onboard a Twilio client whose vendor is the fake server (or move this client to it); return its id."""
    config = load_client_config({"customFieldValues": {
        "vendor": "twilio", "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN, "baseUrl": base_url}})
    return save_client(client_id or uuid.uuid4(), config).id


def queue_messages(client_id: uuid.UUID, count: int = 1, destination: str = DESTINATION) -> list[str]:
    """Queue `count` due messages for a client and commit; return their public ids."""
    now = utcnow()
    rows = [OutboundMessage(public_id=uuid.uuid4().hex, client_id=client_id,
                            emarsys_message_id=f"emarsys-{uuid.uuid4().hex[:12]}", source="ACME",
                            destination=destination, body=BODY, state="queued", attempts=0,
                            next_attempt_at=now, created_at=now, updated_at=now)
            for _ in range(count)]
    db.session.add_all(rows)
    db.session.commit()
    return [row.public_id for row in rows]


def message(public_id: str) -> OutboundMessage:
    """Return the committed state of one outbound message."""
    db.session.rollback()
    return db.session.scalars(db.select(OutboundMessage).where(OutboundMessage.public_id == public_id)).one()


def message_state(vendor: str, vendor_message_id: str) -> MessageState | None:
    """Return the normalised delivery state of one vendor message, if any."""
    db.session.rollback()
    return db.session.scalars(db.select(MessageState).where(
        MessageState.vendor == vendor, MessageState.vendor_message_id == vendor_message_id)).one_or_none()


def forwarded_statuses(emarsys_message_id: str) -> list[str]:
    """Return the statuses queued for Emarsys about one message, oldest first."""
    items = db.session.scalars(db.select(OutboxItem).where(OutboxItem.message_key == emarsys_message_id)
                               .order_by(OutboxItem.id))
    return [item.payload["status"] for item in items]


def dispatcher(app, owner: str = "worker-a") -> Dispatcher:
    """Return a dispatcher configured from the app."""
    return Dispatcher.from_config(app.config, owner)


def sent_message_ids(httpserver) -> list[str]:
    """Return the Genesys message_id of every request the fake server received."""
    return [entry[0].form["message_id"] for entry in httpserver.log]


GENESYS_OUTCOMES = [
    # result_code, row state, outcome, error type
    (0, "sent", "ACCEPTED", None),
    (7, "sent", "ACCEPTED", None),
    (2, "failed", "ERROR", "AUTHENTICATION"),
    (4, "failed", "ERROR", "INVALID_SENDER_ID"),
    (1, "failed", "ERROR", "UNKNOWN"),  # our request's fault: never a hard bounce of the number
    (8, "failed", "ERROR", "UNKNOWN"),  # the body is too long
]


@pytest.mark.parametrize("result_code, row_state, outcome, error_type", GENESYS_OUTCOMES)
def test_genesys_result_becomes_row_state_and_report(app_context, httpserver, result_code, row_state,
                                                     outcome, error_type):
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data(f"result_code={result_code}")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)

    assert dispatcher(app_context).run_once() == 1

    row = message(public_id)
    assert (row.state, row.vendor, row.lease_owner, row.lease_until) == (row_state, "genesys", None, None)
    assert row.vendor_message_id == (public_id if row_state == "sent" else None)
    state = message_state("genesys", public_id)
    assert (state.outcome, state.error_type, state.status_code) == (outcome, error_type, str(result_code))
    assert (state.client_id, state.emarsys_message_id) == (client_id, row.emarsys_message_id)
    assert forwarded_statuses(row.emarsys_message_id) == [outcome]


def test_genesys_request_carries_the_message_and_our_id(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data("result_code=0")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))

    dispatcher(app_context).run_once()

    form = dict(httpserver.log[0][0].form)
    assert form == {"login": "acme", "password": PASSWORD, "phone_number": DESTINATION.lstrip("+"),
                    "sender": "ACME", "message": BODY, "message_id": public_id, "receipt": "TRUE"}


TWILIO_OUTCOMES = [
    # HTTP status, JSON answer, row state, outcome, error type
    (201, {"sid": "SM" + "1" * 32, "status": "queued"}, "sent", "ACCEPTED", None),
    (401, {"code": 20003, "message": "Authenticate"}, "failed", "ERROR", "AUTHENTICATION"),
    (400, {"code": 21212, "message": "The 'From' number is not valid"}, "failed", "ERROR",
     "INVALID_SENDER_ID"),
]


@pytest.mark.parametrize("http_status, answer, row_state, outcome, error_type", TWILIO_OUTCOMES)
def test_twilio_answer_becomes_row_state_and_report(app_context, httpserver, http_status, answer,
                                                    row_state, outcome, error_type):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json(answer, status=http_status)
    client_id = twilio_client(httpserver.url_for("/"))
    [public_id] = queue_messages(client_id)

    assert dispatcher(app_context).run_once() == 1

    row = message(public_id)
    report_key = answer.get("sid", public_id)
    assert (row.state, row.vendor, row.vendor_message_id) == (row_state, "twilio", answer.get("sid"))
    state = message_state("twilio", report_key)
    assert (state.outcome, state.error_type) == (outcome, error_type)
    assert (state.client_id, state.emarsys_message_id) == (client_id, row.emarsys_message_id)


def test_twilio_request_asks_for_status_callbacks_at_the_client_url(app_context, httpserver):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json(
        {"sid": "SM" + "2" * 32}, status=201)
    client_id = twilio_client(httpserver.url_for("/"))
    queue_messages(client_id)

    dispatcher(app_context).run_once()

    request = httpserver.log[0][0]
    assert dict(request.form) == {"To": DESTINATION, "From": "ACME", "Body": BODY,
                                  "StatusCallback": callback_urls(get_client(client_id)).delivery_reports}
    assert request.authorization.username == ACCOUNT_SID


@pytest.mark.parametrize("http_status, answer, row_state, outcome, status_code", [
    (201, {"sid": "SM" + "9" * 200, "status": "queued"}, "sent", "ACCEPTED", "201"),
    (400, {"code": 2 ** 200, "message": "odd gateway"}, "failed", "ERROR", str(2 ** 200)[:40]),
])
def test_a_vendor_value_too_long_to_store_is_recorded_not_sent_again(app_context, httpserver, http_status,
                                                                     answer, row_state, outcome, status_code):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json(answer, status=http_status)
    [public_id] = queue_messages(twilio_client(httpserver.url_for("/")))

    dispatcher(app_context).run_once()

    assert message(public_id).state == row_state
    # The oversized sid cannot be the message's key, so our own id is.
    state = message_state("twilio", public_id)
    assert (state.outcome, state.status_code) == (outcome, status_code)
    assert len(httpserver.log) == 1


def test_retry_then_success_keeps_the_message_id(app_context, httpserver):
    httpserver.expect_ordered_request(GENESYS_PATH).respond_with_data("result_code=6")
    httpserver.expect_ordered_request(GENESYS_PATH).respond_with_data("result_code=0")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    worker = dispatcher(app_context)

    worker.run_once()
    after_retry = message(public_id)
    assert (after_retry.state, after_retry.attempts, after_retry.lease_owner) == ("queued", 1, None)
    assert message_state("genesys", public_id) is None
    worker.run_once()

    assert (message(public_id).state, message(public_id).attempts) == ("sent", 2)
    assert sent_message_ids(httpserver) == [public_id, public_id]
    assert message_state("genesys", public_id).outcome == "ACCEPTED"


class FakeTwilio:
    """A fake Twilio that keeps the messages it creates and lists them newest first.

    `late_seconds` delays the answer to the first create (the message exists meanwhile);
    `refuse_next` makes the next create answer 503 without creating anything; `lookup_seconds`
    delays every list.
    """

    def __init__(self, late_seconds: float = 0.0):
        self.late_seconds = late_seconds
        self.refuse_next = False
        self.lookup_seconds = 0.0
        self.created: list[dict] = []
        self.first_answered = threading.Event()

    def handle(self, request: Request) -> Response:
        """Create a message on POST, list them on GET."""
        if request.method == "GET":
            time.sleep(self.lookup_seconds)
            return Response(json.dumps({"messages": self.created[::-1]}), mimetype="application/json")
        if self.refuse_next:
            self.refuse_next = False
            return Response(json.dumps({"code": 20503, "message": "busy"}), status=503, mimetype="application/json")
        created = {"sid": f"SM{len(self.created):032d}", "status": "queued", "direction": "outbound-api",
                   "to": request.form["To"], "from": request.form["From"], "body": request.form["Body"],
                   "messaging_service_sid": None, "date_created": format_datetime(datetime.now(timezone.utc))}
        self.created.append(created)
        if len(self.created) == 1:
            time.sleep(self.late_seconds)
            self.first_answered.set()
        return Response(json.dumps(created), status=201, mimetype="application/json")


def http_methods(httpserver) -> list[str]:
    """Return the HTTP method of every request the fake server received, in order."""
    return [request.method for request, _ in httpserver.log]


@pytest.mark.parametrize("settings", [dict(VENDOR_TIMEOUT_SECONDS=0.2)])
def test_twilio_send_whose_answer_was_lost_is_not_sent_twice(app_context, httpserver):
    twilio = FakeTwilio(late_seconds=0.6)
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    [public_id] = queue_messages(twilio_client(httpserver.url_for("/")))
    worker = dispatcher(app_context)

    worker.run_once()
    assert message(public_id).state == "queued"  # no answer: retried
    assert twilio.first_answered.wait(5)
    worker.run_once()

    assert http_methods(httpserver) == ["POST", "GET"]
    row = message(public_id)
    assert (row.state, row.vendor_message_id) == ("sent", twilio.created[0]["sid"])
    assert forwarded_statuses(row.emarsys_message_id) == ["ACCEPTED"]


@pytest.mark.parametrize("http_status, answer", [
    (201, {"sid": "SM" + "1" * 32, "status": "queued\u0000"}),
    (400, {"code": 21999, "message": "odd\u0000gateway"}),
    (201, {"sid": "SM\u0000" + "1" * 32, "status": "queued"}),
    (201, {"sid": "SM" + "1" * 32, "status": "queued\ud800"}),  # a lone surrogate: no UTF-8 for it
    (400, {"code": 21999, "message": "odd\udc00gateway"}),
])
def test_a_vendor_answer_with_a_nul_or_a_lone_surrogate_is_recorded_not_left_sending(app_context, httpserver, http_status, answer):
    # A Twilio-compatible baseUrl is the client's to choose: its answers may hold what PostgreSQL cannot.
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json(answer, status=http_status)
    [public_id] = queue_messages(twilio_client(httpserver.url_for("/")))

    dispatcher(app_context).run_once()

    row = message(public_id)
    assert row.state == ("sent" if http_status == 201 else "failed")
    assert "\x00" not in (row.vendor_message_id or "") + (row.last_error or "")


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=2)])
def test_a_twilio_message_whose_look_up_was_lost_too_runs_out_of_attempts(app_context, httpserver):
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    [public_id] = queue_messages(twilio_client(httpserver.url_for("/")))
    # Both attempts and then the look-up for the last of them: each claim's worker dies unrecorded.
    for round_number in range(3):
        dispatcher(app_context, f"dead-worker-{round_number}").claim()
        db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert http_methods(httpserver) == []  # the one look-up was had: no second one, and no send
    assert message(public_id).state == "failed"


def test_twilio_retry_does_not_take_the_same_text_sent_as_another_message(app_context, httpserver):
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    client_id = twilio_client(httpserver.url_for("/"))
    worker = dispatcher(app_context)
    [first] = queue_messages(client_id)
    worker.run_once()
    [second] = queue_messages(client_id)  # the same text to the same number
    twilio.refuse_next = True
    worker.run_once()

    worker.run_once()

    assert http_methods(httpserver) == ["POST", "POST", "GET", "POST"]
    assert [message(first).vendor_message_id, message(second).vendor_message_id] == [
        created["sid"] for created in twilio.created]


@pytest.mark.parametrize("settings", [dict(SEND_RETRY_DELAY_SECONDS=3600)])
def test_a_twilio_retry_does_not_adopt_the_message_sent_to_its_number_written_with_a_plus(app_context,
                                                                                         httpserver):
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    client_id = twilio_client(httpserver.url_for("/"))
    worker = dispatcher(app_context)
    [retried] = queue_messages(client_id, destination=DESTINATION.lstrip("+"))
    twilio.refuse_next = True
    worker.run_once()  # a 503: nothing created, retried in an hour
    [other] = queue_messages(client_id, destination=DESTINATION)  # the same phone, to Twilio
    worker.run_once()
    db.session.execute(sqlalchemy.update(OutboundMessage).where(OutboundMessage.public_id == retried)
                       .values(next_attempt_at=utcnow()))
    db.session.commit()

    worker.run_once()

    assert http_methods(httpserver) == ["POST", "POST", "GET", "POST"]
    assert [message(other).vendor_message_id, message(retried).vendor_message_id] == [
        created["sid"] for created in twilio.created]


def test_two_retries_of_the_same_text_to_one_number_adopt_one_twilio_message_each(app_context, httpserver):
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    client_id = twilio_client(httpserver.url_for("/"))
    # Two contacts sharing a number get the same campaign text; a worker died after sending both.
    first, second = queue_messages(client_id, count=2)
    dispatcher(app_context, "dead-worker").claim()
    for _ in (first, second):
        twilio.handle(Request.from_values(method="POST", data={"To": DESTINATION, "From": "ACME", "Body": BODY}))
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert http_methods(httpserver) == ["GET", "GET"]
    assert sorted([message(first).vendor_message_id, message(second).vendor_message_id]) == [
        created["sid"] for created in twilio.created]


@pytest.fixture
def threaded_httpserver():
    """Return a started local HTTP server that answers concurrent requests concurrently, as Twilio does."""
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


def test_a_twilio_retry_does_not_take_a_text_sent_in_its_own_batch(app_context, threaded_httpserver):
    httpserver = threaded_httpserver
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    client_id = twilio_client(httpserver.url_for("/"))
    worker = dispatcher(app_context)
    [retried] = queue_messages(client_id)
    twilio.refuse_next = True
    worker.run_once()  # 503: nothing was created, the message is retried
    [new] = queue_messages(client_id)  # the same text to the same number, first sent in the same batch
    twilio.lookup_seconds = 0.3  # a new message created meanwhile would be in the look-up's answer

    worker.run_once()

    assert http_methods(httpserver) == ["POST", "GET", "POST", "POST"]
    assert [message(retried).vendor_message_id, message(new).vendor_message_id] == [
        created["sid"] for created in twilio.created]


@pytest.mark.parametrize("settings", [dict(SEND_RETRY_DELAY_SECONDS=3600)])
def test_retry_waits_for_the_retry_delay(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=98")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    worker = dispatcher(app_context)

    worker.run_once()

    assert worker.run_once() == 0
    assert message(public_id).next_attempt_at > utcnow() + timedelta(minutes=59)
    assert len(httpserver.log) == 1


def test_a_retry_after_the_client_moved_to_another_vendor_fails_instead_of_sending_twice(app_context,
                                                                                          httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=98")  # try again later
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context).run_once()
    assert (message(public_id).state, message(public_id).vendor) == ("queued", "genesys")
    twilio_client(httpserver.url_for("/"), client_id)  # a PUT with another vendor

    dispatcher(app_context).run_once()

    assert message(public_id).state == "failed"
    assert not any(TWILIO_MESSAGES in request.path for request, _ in httpserver.log)
    state = db.session.scalars(db.select(MessageState).where(MessageState.vendor == "twilio")).one()
    assert (state.outcome, state.error_type, state.status_code) == ("ERROR", "UNKNOWN", "vendor changed")


@pytest.mark.parametrize("new_fields, refused", [
    (dict(login="another-login"), True),
    (dict(baseUrl_path="/another-genesys"), True),
    (dict(sender="ACME2", password="rotated"), False),  # the same account: Genesys sees the message_id
])
def test_a_retry_after_the_client_moved_to_another_genesys_account_fails_instead_of_sending_twice(
        app_context, httpserver, new_fields, refused):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=98")  # try again later
    httpserver.expect_request("/another-genesys").respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context).run_once()
    path = new_fields.pop("baseUrl_path", GENESYS_PATH)
    genesys_client(httpserver.url_for(path), client_id, **new_fields)

    dispatcher(app_context).run_once()

    row = message(public_id)
    if refused:
        assert len(httpserver.log) == 1
        assert (row.state, row.last_error.split(":")[0]) == ("failed", "account changed")
        assert message_state("genesys", public_id).status_code == "account changed"
    else:
        assert len(httpserver.log) == 2 and row.state == "queued"  # retried through the same account


def test_a_twilio_retry_after_the_client_moved_to_another_twilio_account_fails(app_context, httpserver):
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_data("", status=503)
    client_id = twilio_client(httpserver.url_for("/"))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context).run_once()
    save_client(client_id, load_client_config({"customFieldValues": {
        "vendor": "twilio", "accountSid": "AC" + "b" * 32, "authToken": AUTH_TOKEN,
        "baseUrl": httpserver.url_for("/")}}))

    dispatcher(app_context).run_once()

    assert http_methods(httpserver) == ["POST"]  # neither looked up nor sent in the other account
    assert (message(public_id).state, message(public_id).last_error.split(":")[0]) == ("failed",
                                                                                      "account changed")


@pytest.mark.parametrize("settings", [dict(DISPATCH_CONCURRENCY=1)])
def test_a_stopping_worker_starts_no_further_send_and_hands_the_rest_back(app_context, httpserver):
    stopping = threading.Event()

    def answer_and_stop(request: Request) -> Response:
        stopping.set()  # SIGTERM arrives while the first message is sent
        return Response("result_code=0")

    httpserver.expect_request(GENESYS_PATH).respond_with_handler(answer_and_stop)
    public_ids = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), count=5)

    Dispatcher.from_config(app_context.config, "worker-a", stopping).run_once()

    assert len(httpserver.log) == 1
    rows = sorted((message(public_id).state, message(public_id).attempts) for public_id in public_ids)
    assert rows == [("queued", 0)] * 4 + [("sent", 1)]


def test_a_worker_lost_mid_send_leaves_its_vendor_for_the_retry(app_context, httpserver):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json({"sid": "SM" + "3" * 32},
                                                                                status=201)
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context, "dead-worker").claim()  # its first attempt; then the worker dies
    assert message(public_id).vendor == "genesys"
    twilio_client(httpserver.url_for("/"), client_id)  # a PUT with another vendor
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert httpserver.log == []  # the lost Genesys attempt may have reached the phone
    assert (message(public_id).state, message(public_id).last_error) == (
        "failed", "vendor changed: the client moved from genesys to twilio after an attempt that may have "
        "reached genesys; not sent again")


def test_a_first_send_after_the_client_moved_goes_through_the_new_vendor(app_context, httpserver):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json({"sid": "SM" + "3" * 32},
                                                                                status=201)
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    twilio_client(httpserver.url_for("/"), client_id)  # a PUT with another vendor

    dispatcher(app_context).run_once()

    assert (message(public_id).state, message(public_id).vendor) == ("sent", "twilio")


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=3)])
def test_retries_exhausted_fail_with_unknown_error(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=6")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    worker = dispatcher(app_context)

    handled = [worker.run_once() for _ in range(4)]

    assert handled == [1, 1, 1, 0]
    assert sent_message_ids(httpserver) == [public_id] * 3
    row = message(public_id)
    assert (row.state, row.attempts) == ("failed", 3)
    state = message_state("genesys", public_id)
    assert (state.outcome, state.error_type, state.emarsys_message_id) == ("ERROR", "UNKNOWN",
                                                                            row.emarsys_message_id)


def test_vendor_server_error_is_retried(app_context, httpserver):
    [public_id] = queue_messages(genesys_client(httpserver.url_for("/nothing-here")))
    httpserver.expect_request("/nothing-here").respond_with_data("", status=503)

    dispatcher(app_context).run_once()

    row = message(public_id)
    assert (row.state, row.attempts, row.last_error) == ("queued", 1, "http_503: Genesys answered HTTP 503")


def test_later_genesys_report_updates_the_client_message(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context).run_once()

    answer = app_context.test_client().post("/vendors/genesys/delivery-reports", data={
        "type": "receipt", "message_id": public_id, "message_state": "2", "result_code": "0"})

    assert answer.status_code == 200
    row = message(public_id)
    state = message_state("genesys", public_id)
    assert (state.outcome, state.client_id, state.emarsys_message_id) == ("DELIVERED", client_id,
                                                                          row.emarsys_message_id)
    assert forwarded_statuses(row.emarsys_message_id) == ["ACCEPTED", "DELIVERED"]


@pytest.mark.parametrize("state, outcome", [("2", "DELIVERED"), ("5", "HARDBOUNCE")])
@pytest.mark.parametrize("url", ["unscoped", "client"])
def test_a_report_that_came_before_its_send_result_reaches_emarsys_under_its_id(app_context, httpserver,
                                                                                state, outcome, url):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    path = ("/vendors/genesys/delivery-reports" if url == "unscoped"
            else urlsplit(callback_urls(get_client(client_id)).delivery_reports).path)
    # The vendor's receipt arrives before the dispatcher records the send.
    answer = app_context.test_client().post(path, data={
        "type": "receipt", "message_id": public_id, "message_state": state, "result_code": "1"})
    assert answer.status_code == 200
    assert db.session.scalars(db.select(OutboxItem)).all() == []  # its Emarsys id is not known yet
    dispatcher(app_context).run_once()

    row = message(public_id)
    reported = message_state("genesys", public_id)
    assert (reported.outcome, reported.client_id, reported.emarsys_message_id) == (
        outcome, client_id, row.emarsys_message_id)
    assert forwarded_statuses(row.emarsys_message_id) == [outcome]
    assert forwarded_statuses(public_id) == []
    assert db.session.scalars(db.select(Bounce)).all() == []  # Emarsys's message: never SAP's bounce


def receipt_waits_or_ends(thread: threading.Thread) -> None:
    """Return once the receipt's thread has ended or waits on a row lock; fail after 10 s."""
    for _ in range(1000):
        if not thread.is_alive() or lock_waiters():
            return
        time.sleep(0.01)
    raise AssertionError("the receipt neither ended nor waited for a lock")


def test_a_receipt_arriving_while_the_send_result_is_recorded_reaches_emarsys(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    path = urlsplit(callback_urls(get_client(client_id)).delivery_reports).path
    answers: list[int] = []

    def deliver_receipt() -> None:
        """Post the vendor's DELIVERED receipt from another web thread."""
        with app_context.app_context():
            answer = app_context.test_client().post(path, data={
                "type": "receipt", "message_id": public_id, "message_state": "2", "result_code": "0"})
            answers.append(answer.status_code)

    # The receipt comes in the middle of the recording transaction, after its first statement.
    run_once_starting_after(app_context, threading.Thread(target=deliver_receipt),
                            lambda statement: "message_states" in statement or "sms_record_report" in statement)

    row = message(public_id)
    assert answers == [200]
    assert message_state("genesys", public_id).emarsys_message_id == row.emarsys_message_id
    assert forwarded_statuses(row.emarsys_message_id)[-1] == "DELIVERED"


def test_a_state_already_tied_to_its_client_is_left_to_the_send_result(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    # An ACCEPTED receipt that came first loses to the later send result, which forwards itself.
    app_context.test_client().post("/vendors/genesys/delivery-reports", data={
        "type": "receipt", "message_id": public_id, "message_state": "6", "result_code": "0"})
    dispatcher(app_context).run_once()

    row = message(public_id)
    assert message_state("genesys", public_id).emarsys_message_id == row.emarsys_message_id
    assert forwarded_statuses(row.emarsys_message_id) == ["ACCEPTED"]


def drain_with_two_workers(app_context) -> Counter[str]:
    """Run two dispatchers in threads until neither finds work; return how many each handled.

    Fails if either thread raised: the other would drain the queue alone, and the test pass untested.
    """
    handled: Counter[str] = Counter()
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def drain(owner: str) -> None:
        try:
            worker = dispatcher(app_context, owner)
            start.wait()
            with app_context.app_context():
                while count := worker.run_once():
                    handled[owner] += count
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(owner,)) for owner in ("worker-a", "worker-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return handled


@pytest.mark.parametrize("settings", [dict(DISPATCH_BATCH_SIZE=25, DISPATCH_CONCURRENCY=8)])
def test_two_workers_never_send_a_message_twice(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    public_ids = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 500)
    handled = drain_with_two_workers(app_context)

    assert Counter(sent_message_ids(httpserver)) == Counter(public_ids)
    assert sum(handled.values()) == 500
    db.session.rollback()
    states = db.session.execute(db.select(OutboundMessage.state, db.func.count())
                                .group_by(OutboundMessage.state)).all()
    assert dict(states) == {"sent": 500}


@pytest.mark.parametrize("settings", [dict(LEASE_SECONDS=1.5, VENDOR_TIMEOUT_SECONDS=0.5)])
def test_messages_of_a_dead_worker_are_sent_after_its_lease_expires(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    public_ids = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 5)
    jobs, claimed = dispatcher(app_context, "dead-worker").claim()  # ...and never sends them
    survivor = dispatcher(app_context, "worker-b")

    assert (len(jobs), claimed) == (5, 5)
    assert survivor.run_once() == 0
    wait_until_leases_expire()
    assert survivor.run_once() == 5

    assert Counter(sent_message_ids(httpserver)) == Counter(public_ids)
    rows = [message(public_id) for public_id in public_ids]
    assert {(row.state, row.attempts, row.lease_owner) for row in rows} == {("sent", 2, None)}


def wait_until_leases_expire() -> None:
    """Sleep in short steps until no message is under a live lease."""
    while True:
        db.session.rollback()
        latest = db.session.scalar(db.select(db.func.max(OutboundMessage.lease_until)))
        if latest is None or latest < utcnow():
            return
        time.sleep(0.05)


@pytest.mark.parametrize("settings", [dict(LEASE_SECONDS=1.5, VENDOR_TIMEOUT_SECONDS=0.5)])
def test_late_result_of_a_worker_that_lost_its_lease_is_ignored(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    slow_worker = dispatcher(app_context, "slow-worker")
    [job], _ = slow_worker.claim()
    wait_until_leases_expire()
    dispatcher(app_context, "worker-b").run_once()

    slow_worker._record_all([(job, vendors.refused(Outcome.HARDBOUNCE, None, "1", "request invalid"))])

    row = message(public_id)
    assert (row.state, row.attempts) == ("sent", 2)
    assert message_state("genesys", public_id).outcome == "ACCEPTED"


@pytest.mark.parametrize("settings", [dict(DISPATCH_CONCURRENCY=1, LEASE_SECONDS=5.5,
                                           VENDOR_TIMEOUT_SECONDS=2.0)])
def test_send_that_could_outlive_the_lease_is_handed_back(app_context, httpserver):
    def slow_genesys(request: Request) -> Response:
        # Within its 1 s read timeout, but longer than the 0.5 s the lease leaves for starting
        # sends: 5.5 s less two requests of 2 s and a quarter of those for recording.
        time.sleep(0.7)
        return Response("result_code=0")

    httpserver.expect_request(GENESYS_PATH).respond_with_handler(slow_genesys)
    first, second = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 2)

    assert dispatcher(app_context).run_once() == 2

    assert len(httpserver.log) == 1
    sent, handed_back = sorted((message(first), message(second)), key=lambda row: row.state != "sent")
    assert (sent.state, handed_back.state) == ("sent", "queued")
    assert (handed_back.attempts, handed_back.lease_owner) == (0, None)


def test_messages_of_a_deleted_client_are_never_sent(app_context, httpserver):
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    delete_client(client_id)

    assert dispatcher(app_context).run_once() == 0
    assert message(public_id).state == "cancelled"
    assert httpserver.log == []


@pytest.mark.parametrize("settings", [dict(LEASE_SECONDS=1.5, VENDOR_TIMEOUT_SECONDS=0.5)])
def test_claimed_message_of_a_client_deleted_meanwhile_is_cancelled(app_context, httpserver):
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context, "dead-worker").claim()
    delete_client(client_id)  # cancels the message the dead worker held
    wait_until_leases_expire()

    assert dispatcher(app_context, "worker-b").run_once() == 0

    row = message(public_id)
    assert (row.state, row.lease_owner) == ("cancelled", None)
    assert httpserver.log == []


def genesys_deleting_its_client(app, client_ids: list[uuid.UUID], first_answer: str):
    """Return a Genesys handler that deletes the client (DELETE answered 204) during the first send."""
    deleted = threading.Event()

    def genesys(request: Request) -> Response:
        """Delete the client while the first send is in flight, as Emarsys may; accept later sends."""
        if deleted.is_set():
            return Response("result_code=0")
        deleted.set()
        with app.app_context():
            delete_client(client_ids[0])
        return Response(first_answer)
    return genesys


def send_while_deleting_the_client(app, httpserver, first_answer: str) -> tuple[uuid.UUID, str]:
    """Queue one message and send it once while its client is deleted; return the client and message ids."""
    client_ids: list[uuid.UUID] = []
    httpserver.expect_request(GENESYS_PATH).respond_with_handler(
        genesys_deleting_its_client(app, client_ids, first_answer))
    client_ids.append(genesys_client(httpserver.url_for(GENESYS_PATH)))
    [public_id] = queue_messages(client_ids[0])
    dispatcher(app).run_once()
    return client_ids[0], public_id


def test_a_send_that_ends_in_a_retry_after_its_client_was_deleted_is_cancelled(app_context, httpserver):
    client_id, public_id = send_while_deleting_the_client(app_context, httpserver, "result_code=98")
    # Configured again under the same clientId before the retry would be due: DELETE cancelled it.
    save_client(client_id, get_client_config(httpserver))
    dispatcher(app_context).run_once()

    row = message(public_id)
    assert (row.state, row.lease_owner) == ("cancelled", None)
    assert sent_message_ids(httpserver) == [public_id]


def test_a_send_result_after_its_client_was_deleted_is_not_forwarded(app_context, httpserver):
    _, public_id = send_while_deleting_the_client(app_context, httpserver, "result_code=0")

    # DELETE cancelled the message while it was being sent; its result is no longer this worker's.
    assert message(public_id).state == "cancelled"
    # Emarsys would answer 404 for the deleted client: the report would only become a dead letter.
    assert db.session.scalars(db.select(OutboxItem)).all() == []


def test_a_client_deleted_while_its_send_is_recorded_cancels_the_retry(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=98")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)

    def delete_the_client() -> None:
        """Delete the client from another web thread (DELETE /clients/{id}/configuration)."""
        with app_context.app_context():
            delete_client(client_id)

    # DELETE comes after the retry is queued again, before the recording commits.
    run_once_starting_after(app_context, threading.Thread(target=delete_the_client),
                            lambda statement: statement.lstrip().startswith("WITH")
                            and "UPDATE outbound_messages" in statement)

    row = message(public_id)
    assert (row.state, row.lease_owner) == ("cancelled", None)


def run_once_starting_after(app_context, thread: threading.Thread, cue) -> None:
    """Run the dispatcher once, starting `thread` after the first statement `cue` picks (a race's cue).

    The dispatcher goes on once the thread has ended or waits on a row lock; the thread is then
    waited for.
    """
    def start_on_cue(conn, cursor, statement, *_args) -> None:
        if cue(statement) and thread.ident is None:
            thread.start()
            receipt_waits_or_ends(thread)

    sqlalchemy.event.listen(db.engine, "after_cursor_execute", start_on_cue)
    try:
        dispatcher(app_context).run_once()
    finally:
        sqlalchemy.event.remove(db.engine, "after_cursor_execute", start_on_cue)
    thread.join(10)


def get_client_config(httpserver):
    """Return the Genesys configuration genesys_client onboards, to configure a client again."""
    return load_client_config({"customFieldValues": {
        "vendor": "genesys", "login": "acme", "password": PASSWORD, "baseUrl": httpserver.url_for(GENESYS_PATH)}})


def test_send_results_are_stored_as_raw_events(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))

    dispatcher(app_context).run_once()

    event = db.session.scalars(db.select(RawEvent)).one()
    assert (event.kind, event.vendor_message_id) == ("send_result", public_id)
    assert event.params == {"public_id": public_id, "attempt": 1, "status_code": "0", "status_text": "queued"}


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=2)])
@pytest.mark.parametrize("answer", ["result_code=6", "result_code=2", "result_code=0"])
def test_logs_name_no_secret_body_or_full_number(app_context, httpserver, caplog, answer):
    httpserver.expect_request(GENESYS_PATH).respond_with_data(answer)
    queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    worker = dispatcher(app_context)

    with caplog.at_level(logging.DEBUG, logger="services.dispatcher"):
        worker.run_once()
        worker.run_once()

    lines = [record.getMessage() for record in caplog.records if record.name == "services.dispatcher"]
    assert lines and all(f"to +{'*' * 7}4567" in line for line in lines)
    for secret in (PASSWORD, BODY, DESTINATION, DESTINATION.lstrip("+")):
        assert not any(secret in line for line in lines)


@pytest.mark.parametrize("override, fault", [
    ({"LEASE_SECONDS": 5, "VENDOR_TIMEOUT_SECONDS": 5}, "LEASE_SECONDS"),
    # A Twilio retry makes two requests of up to VENDOR_TIMEOUT_SECONDS each.
    ({"LEASE_SECONDS": 20, "VENDOR_TIMEOUT_SECONDS": 10}, "LEASE_SECONDS"),
    # ... and recording the send needs time inside the lease too.
    ({"LEASE_SECONDS": 24, "VENDOR_TIMEOUT_SECONDS": 10}, "LEASE_SECONDS"),
    ({"DISPATCH_CONCURRENCY": 0}, "DISPATCH_CONCURRENCY"),
])
def test_unsafe_settings_are_refused(app_context, override, fault):
    with pytest.raises(ValueError, match=fault):
        Dispatcher.from_config({**app_context.config, **override}, "worker-a")


def rows_per(model, column) -> Counter:
    """Return how many committed rows of the model there are per value of the column."""
    db.session.rollback()
    return Counter(db.session.scalars(db.select(column).select_from(model)))


@pytest.mark.parametrize("settings", [dict(DISPATCH_CONCURRENCY=9)])
def test_a_batch_of_mixed_outcomes_ends_each_message_in_its_state_with_one_report(app_context, httpserver):
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    public_ids = queue_messages(client_id, 9)
    codes = dict(zip(public_ids, [0, 1, 6] * 3))  # sent, failed for good, retried
    httpserver.expect_request(GENESYS_PATH).respond_with_handler(
        lambda request: Response(f"result_code={codes[request.form['message_id']]}"))
    worker = dispatcher(app_context)

    assert worker.run_once() == 9

    rows = {public_id: message(public_id) for public_id in public_ids}
    expected = {0: ("sent", "ACCEPTED"), 1: ("failed", "ERROR"), 6: ("queued", None)}
    for public_id, row in rows.items():
        state, outcome = expected[codes[public_id]]
        assert (row.state, row.attempts, row.lease_owner) == (state, 1, None)
        reported = message_state("genesys", public_id)
        assert (reported.outcome if reported else None) == outcome
        assert forwarded_statuses(row.emarsys_message_id) == ([outcome] if outcome else [])
    finished = [public_id for public_id in public_ids if codes[public_id] != 6]
    assert rows_per(RawEvent, RawEvent.vendor_message_id) == Counter(finished)
    assert sum(rows_per(Bounce, Bounce.message_id).values()) == 0  # Emarsys hears of them, not SAP

    codes.update({public_id: 0 for public_id, code in codes.items() if code == 6})
    assert worker.run_once() == 3  # the retries, now accepted: one more report each, no other

    assert Counter(sent_message_ids(httpserver)) == Counter(public_ids + public_ids[2::3])
    assert rows_per(RawEvent, RawEvent.vendor_message_id) == Counter(public_ids)
    assert rows_per(OutboxItem, OutboxItem.message_key) == Counter(
        rows[public_id].emarsys_message_id for public_id in public_ids)
    assert {message(public_id).state for public_id in public_ids[2::3]} == {"sent"}


@pytest.mark.parametrize("settings", [dict(LEASE_SECONDS=1.5, VENDOR_TIMEOUT_SECONDS=0.5)])
def test_a_chunk_changes_only_the_rows_still_leased_to_its_worker(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    first, second, third = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 3)
    slow_worker = dispatcher(app_context, "slow-worker")
    jobs, _ = slow_worker.claim()
    wait_until_leases_expire()
    taker = Dispatcher.from_config({**app_context.config, "DISPATCH_BATCH_SIZE": 1}, "worker-b")
    assert taker.run_once() == 1  # takes over the first message only
    by_id = {job.message.public_id: job for job in jobs}

    slow_worker._record_all([
        (by_id[first], vendors.refused(Outcome.HARDBOUNCE, None, "1", "request invalid")),
        (by_id[second], vendors.refused(Outcome.HARDBOUNCE, None, "1", "request invalid")),
        (by_id[third], None)])

    assert (message(first).state, message(first).attempts) == ("sent", 2)
    assert message_state("genesys", first).outcome == "ACCEPTED"
    assert (message(second).state, message_state("genesys", second).outcome) == ("failed", "HARDBOUNCE")
    assert (message(third).state, message(third).attempts, message(third).lease_owner) == ("queued", 0, None)
    assert message_state("genesys", third) is None
    assert rows_per(RawEvent, RawEvent.vendor_message_id) == Counter([first, second])


def test_an_outcome_that_cannot_be_stored_does_not_lose_the_rest_of_its_chunk(app_context, httpserver,
                                                                            caplog):
    public_ids = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 3)
    worker = dispatcher(app_context)
    jobs, _ = worker.claim()
    unstorable = vendors.refused(Outcome.ERROR, None, "99", "vendor text")
    # SendResult removes a NUL; put one back, standing for any fault that keeps one row from being stored.
    object.__setattr__(unstorable, "status_text", "vendor text with a NUL \x00 byte")
    fine = vendors.accepted(None, "0", "queued")

    with caplog.at_level(logging.WARNING, logger="services.dispatcher"):
        worker._settle_all([(jobs[0], fine), (jobs[1], unstorable), (jobs[2], fine)])

    sent, unstored, also_sent = (job.message.public_id for job in jobs)
    assert {public_id: message(public_id).state for public_id in public_ids} == {
        sent: "sent", unstored: "sending", also_sent: "sent"}  # the bad one is left to its lease
    assert rows_per(RawEvent, RawEvent.vendor_message_id) == Counter([sent, also_sent])
    assert any("one by one" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("settings", [dict(DISPATCH_BATCH_SIZE=40, DISPATCH_CONCURRENCY=16)])
def test_two_workers_recording_in_chunks_send_and_report_each_message_once(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    public_ids = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)), 400)
    drain_with_two_workers(app_context)

    assert Counter(sent_message_ids(httpserver)) == Counter(public_ids)
    assert rows_per(RawEvent, RawEvent.vendor_message_id) == Counter(public_ids)
    assert rows_per(MessageState, MessageState.vendor_message_id) == Counter(public_ids)
    assert sum(rows_per(OutboxItem, OutboxItem.message_key).values()) == 400
    assert rows_per(OutboundMessage, OutboundMessage.state) == Counter({"sent": 400})


class ConcurrencyProbe:
    """Wrap a fake vendor's handler: every create takes `seconds`, and the most at once is counted."""

    def __init__(self, handle, seconds: float = 0.2):
        self.handle_inner, self.seconds = handle, seconds
        self.in_flight = self.most_at_once = 0
        self.lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        """Answer as the wrapped handler does, after `seconds`, counting the creates in flight."""
        if request.method == "GET":
            return self.handle_inner(request)
        with self.lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight -= 1
        return self.handle_inner(request)


@pytest.mark.parametrize("vendor", ["twilio", "genesys"])
def test_a_retry_to_a_number_does_not_make_its_first_sends_go_one_by_one(app_context, threaded_httpserver, vendor):
    fake = FakeTwilio() if vendor == "twilio" else None
    probe = ConcurrencyProbe(fake.handle if fake else lambda request: Response("result_code=0"))
    path = TWILIO_MESSAGES if vendor == "twilio" else GENESYS_PATH
    threaded_httpserver.expect_request(path).respond_with_handler(probe.handle)
    base_url = threaded_httpserver.url_for("/" if vendor == "twilio" else GENESYS_PATH)
    client_id = twilio_client(base_url) if vendor == "twilio" else genesys_client(base_url)
    queue_messages(client_id)
    dispatcher(app_context, "dead-worker").claim()  # its attempt may have reached the vendor: a retry
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    queue_messages(client_id, count=4)  # first sends to the same number

    dispatcher(app_context, "worker-b").run_once()

    assert probe.most_at_once >= 2
    assert {message.state for message in db.session.scalars(db.select(OutboundMessage))} == {"sent"}


def test_a_client_deleted_and_configured_again_during_a_send_does_not_get_its_retry(app_context, httpserver):
    client_ids = []

    def genesys(request: Request) -> Response:
        """Answer "try again" to the first send, after the client was deleted and configured again."""
        if len(httpserver.log) == 0:
            with app_context.app_context():
                delete_client(client_ids[0])
                save_client(client_ids[0], get_client_config(httpserver))
                db.session.remove()
            return Response("result_code=98")
        return Response("result_code=0")

    httpserver.expect_request(GENESYS_PATH).respond_with_handler(genesys)
    client_ids.append(genesys_client(httpserver.url_for(GENESYS_PATH)))
    [public_id] = queue_messages(client_ids[0])

    dispatcher(app_context).run_once()
    dispatcher(app_context).run_once()

    assert (message(public_id).state, sent_message_ids(httpserver)) == ("cancelled", [public_id])


def test_a_message_a_dead_worker_held_while_its_client_was_deleted_is_not_sent_for_a_new_client(
        app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=0")
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context, "dead-worker").claim()  # leased; the worker dies before its lease ends
    delete_client(client_id)
    save_client(client_id, get_client_config(httpserver))  # a new client with the same id
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert (message(public_id).state, sent_message_ids(httpserver)) == ("cancelled", [])


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=1)])
def test_a_worker_lost_on_the_last_attempt_leaves_a_genesys_resend_with_the_same_message_id(app_context,
                                                                                             httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=7")  # it did get through
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    dispatcher(app_context, "dead-worker").claim()  # its one attempt; then the worker dies
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert sent_message_ids(httpserver) == [public_id]  # Genesys tells a resend by its message_id
    assert (message(public_id).state, message(public_id).attempts) == ("sent", 2)


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=1)])
def test_a_genesys_message_whose_worker_keeps_dying_still_runs_out_of_attempts(app_context, httpserver):
    [public_id] = queue_messages(genesys_client(httpserver.url_for(GENESYS_PATH)))
    for _ in range(2):  # its one attempt, then the one resend: each kills its worker
        dispatcher(app_context, "dead-worker").claim()
        db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    assert httpserver.log == []
    assert (message(public_id).state, message(public_id).attempts) == ("failed", 3)


def test_an_unreadable_configuration_keeps_the_account_recorded_for_the_next_retry(app_context, httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=98")  # try again later
    client_id = genesys_client(httpserver.url_for(GENESYS_PATH))
    [public_id] = queue_messages(client_id)
    dispatcher(app_context).run_once()  # reached login "acme"
    account = message(public_id).vendor_account
    unreadable = Fernet(Fernet.generate_key()).encrypt(b"{}").decode()  # CONFIG_ENCRYPTION_KEY rotated away
    db.session.execute(sqlalchemy.update(Client).values(secrets=unreadable))
    db.session.execute(sqlalchemy.update(OutboundMessage).values(next_attempt_at=utcnow()))
    db.session.commit()
    dispatcher(app_context).run_once()  # the key is gone: nothing is sent
    assert (message(public_id).state, message(public_id).vendor_account) == ("queued", account)
    genesys_client(httpserver.url_for(GENESYS_PATH), client_id, login="another-login")  # the repairing PUT
    db.session.execute(sqlalchemy.update(OutboundMessage).values(next_attempt_at=utcnow()))
    db.session.commit()

    dispatcher(app_context).run_once()

    assert len(httpserver.log) == 1 and message(public_id).last_error.startswith("account changed")


@pytest.mark.parametrize("settings", [dict(SEND_MAX_ATTEMPTS=1)])
@pytest.mark.parametrize("reached_twilio", [True, False])
def test_a_worker_lost_on_the_last_attempt_leaves_a_twilio_look_up_not_a_send(app_context, httpserver,
                                                                               reached_twilio):
    twilio = FakeTwilio()
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(twilio.handle)
    [public_id] = queue_messages(twilio_client(httpserver.url_for("/")))
    dispatcher(app_context, "dead-worker").claim()  # its one attempt; then the worker dies
    if reached_twilio:
        twilio.handle(Request.from_values(method="POST", data={"To": DESTINATION, "From": "ACME", "Body": BODY}))
    db.session.execute(sqlalchemy.update(OutboundMessage).values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()

    dispatcher(app_context, "worker-b").run_once()

    row = message(public_id)
    assert http_methods(httpserver) == ["GET"]  # looked up, never sent again
    if reached_twilio:
        assert (row.state, row.vendor_message_id) == ("sent", twilio.created[0]["sid"])
        assert forwarded_statuses(row.emarsys_message_id) == ["ACCEPTED"]
    else:
        assert (row.state, forwarded_statuses(row.emarsys_message_id)) == ("failed", ["ERROR"])
