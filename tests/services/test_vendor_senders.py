"""Tests of the Genesys and Twilio senders and connection tests against fake vendor servers."""
from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from datetime import datetime

import pytest
from werkzeug import Request, Response

from mappers.report import ErrorType, Outcome
from schemas.client_config import ClientConfig, load_client_config
from schemas.outbound import OutboundMessage
from services import vendors
from tests.emarsys_spec import requires_spec, validate_schema

GENESYS_PATH = "/httpapi/receiver"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2
TWILIO_MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
TWILIO_ACCOUNT = f"/2010-04-01/Accounts/{ACCOUNT_SID}.json"
PASSWORD = "genesys-pa55word"
AUTH_TOKEN = "twilio-auth-t0ken"
BODY = "Your one-time code is 424242"
MESSAGE = OutboundMessage("emarsys-1", "ACME", "+36301234567", BODY)
TIMEOUT = 5.0
TINY_TIMEOUT = 0.05
SLOW_SECONDS = 0.5

# No pooled connection to an earlier test's server (tests/services/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_sessions")


def genesys_config(base_url: str, **fields: str) -> ClientConfig:
    """Return a validated Genesys configuration pointing at base_url."""
    return load_client_config({"customFieldValues": {
        "vendor": "genesys", "login": "acme", "password": PASSWORD, "baseUrl": base_url, **fields}})


def twilio_config(base_url: str, **fields: str) -> ClientConfig:
    """Return a validated Twilio configuration pointing at base_url."""
    return load_client_config({"customFieldValues": {
        "vendor": "twilio", "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN,
        "baseUrl": base_url, **fields}})


def closed_port_url() -> str:
    """Return a loopback URL on which nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/httpapi/receiver"


def slow_handler(request: Request) -> Response:
    """Answer only after the client's tiny timeout has passed."""
    time.sleep(SLOW_SECONDS)
    return Response("result_code=0")


@pytest.fixture
def slow_vendor(httpserver):
    """Yield the fake server; afterwards wait out its slow handler so no request lands in the next test."""
    yield httpserver
    time.sleep(SLOW_SECONDS * 2)
    httpserver.clear_log()


def sent_form(httpserver) -> dict[str, str]:
    """Return the form of the only request the fake server received."""
    assert len(httpserver.log) == 1
    return dict(httpserver.log[0][0].form)


def send_genesys(httpserver, answer: str, status: int = 200, **fields: str) -> vendors.SendResult:
    """Send MESSAGE through a fake Genesys answering `answer`."""
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data(answer, status=status)
    config = genesys_config(httpserver.url_for(GENESYS_PATH), **fields)
    return vendors.send_message(config, MESSAGE, "our-42", None, TIMEOUT)


def send_twilio(httpserver, answer: dict, status: int, **fields: str) -> vendors.SendResult:
    """Send MESSAGE through a fake Twilio answering `answer` with `status`."""
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json(answer, status=status)
    config = twilio_config(httpserver.url_for("/"), **fields)
    return vendors.send_message(config, MESSAGE, "our-42", "https://partner.example/dr/tok", TIMEOUT)


def basic_auth(user: str, password: str) -> str:
    """Return the Authorization header value for Basic credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("answer, outcome, error_type", [
    ("result_code=0", Outcome.ACCEPTED, None),
    ("result_code=7", Outcome.ACCEPTED, None),
    ("result_code=2", Outcome.ERROR, ErrorType.AUTHENTICATION),
    ("result_code=4", Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ("result_code=5", Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ("result_code=1", Outcome.ERROR, ErrorType.UNKNOWN),
    ("result_code=3", Outcome.ERROR, ErrorType.UNKNOWN),
    ("result_code=8", Outcome.ERROR, ErrorType.UNKNOWN),
    ("result_code=42", Outcome.ERROR, ErrorType.UNKNOWN),
    ("result_code=0\r\n", Outcome.ACCEPTED, None),
])
def test_genesys_result_code_decides_the_outcome(httpserver, answer, outcome, error_type):
    result = send_genesys(httpserver, answer)

    assert (result.outcome, result.error_type, result.retry) == (outcome, error_type, False)


def test_a_twilio_sid_sent_as_a_json_number_is_kept_as_text(httpserver):
    result = send_twilio(httpserver, {"sid": 12345, "status": "queued"}, 201)

    assert (result.outcome, result.vendor_message_id) == (Outcome.ACCEPTED, "12345")


@pytest.mark.parametrize("answer, status, status_code", [
    ("result_code=6", 200, "6"),
    ("result_code=98", 200, "98"),
    # "Any other error": the guide's samples say to try again; the unchanged message_id makes it safe.
    ("result_code=99", 200, "99"),
    # A body cut short or not Genesys's: the message may have been taken, and a resend is answered 7.
    ("<html>oops</html>", 200, "unparsable"),
    ("", 200, "unparsable"),
    ("result_code=abc", 200, "unparsable"),
    ("", 500, "http_500"),
    ("", 503, "http_503"),
    ("", 429, "http_429"),
    # Genesys's guide: any answer outside 2xx means "The request failed. Please try again in some time."
    ("<html>proxy error</html>", 400, "http_400"),
    ("<html>proxy error</html>", 403, "http_403"),
    ("", 404, "http_404"),
    ("", 408, "http_408"),
    ("result_code=2", 401, "http_401"),
])
def test_genesys_transient_answers_are_retried(httpserver, answer, status, status_code):
    result = send_genesys(httpserver, answer, status=status)

    assert (result.outcome, result.retry, result.status_code) == (None, True, status_code)


def test_genesys_accepted_send_uses_our_message_id_as_vendor_id(httpserver):
    result = send_genesys(httpserver, "result_code=0")

    assert (result.vendor_message_id, result.status_code) == ("our-42", "0")


def test_genesys_form_carries_every_mt_field(httpserver):
    send_genesys(httpserver, "result_code=0")

    assert sent_form(httpserver) == {
        "login": "acme", "password": PASSWORD, "phone_number": "36301234567", "sender": "ACME",
        "message": BODY, "message_id": "our-42", "receipt": "TRUE"}


def test_genesys_configured_sender_and_priority_are_sent(httpserver):
    send_genesys(httpserver, "result_code=0", sender="12345", priority="INTERACTIVE")

    form = sent_form(httpserver)
    assert (form["sender"], form["priority"]) == ("12345", "INTERACTIVE")


def test_genesys_retry_reuses_the_message_id_and_duplicate_counts_as_sent(httpserver):
    httpserver.expect_ordered_request(GENESYS_PATH).respond_with_data("", status=502)
    httpserver.expect_ordered_request(GENESYS_PATH).respond_with_data("result_code=7")
    config = genesys_config(httpserver.url_for(GENESYS_PATH))

    first = vendors.send_message(config, MESSAGE, "our-42", None, TIMEOUT)
    second = vendors.send_message(config, MESSAGE, "our-42", None, TIMEOUT)

    assert (first.retry, second.outcome) == (True, Outcome.ACCEPTED)
    assert [entry[0].form["message_id"] for entry in httpserver.log] == ["our-42", "our-42"]


def test_genesys_timeout_is_retried(httpserver, slow_vendor):
    httpserver.expect_request(GENESYS_PATH).respond_with_handler(slow_handler)
    config = genesys_config(httpserver.url_for(GENESYS_PATH))

    result = vendors.send_message(config, MESSAGE, "our-42", None, TINY_TIMEOUT)

    assert (result.outcome, result.retry, result.status_code) == (None, True, "timeout")


def test_genesys_unreachable_host_is_retried():
    result = vendors.send_message(genesys_config(closed_port_url()), MESSAGE, "our-42", None, TIMEOUT)

    assert (result.outcome, result.retry, result.status_code) == (None, True, "network")


def test_twilio_created_message_records_the_sid(httpserver):
    result = send_twilio(httpserver, {"sid": "SM123", "status": "queued"}, 201)

    assert (result.outcome, result.vendor_message_id, result.retry) == (Outcome.ACCEPTED, "SM123", False)


def test_twilio_request_uses_basic_auth_and_the_e164_form(httpserver):
    send_twilio(httpserver, {"sid": "SM123"}, 201)

    request = httpserver.log[0][0]
    assert request.headers["Authorization"] == basic_auth(ACCOUNT_SID, AUTH_TOKEN)
    assert dict(request.form) == {"To": "+36301234567", "From": "ACME", "Body": BODY,
                                  "StatusCallback": "https://partner.example/dr/tok"}


@pytest.mark.parametrize("source, sent_from", [
    ("436771234567", "+436771234567"),  # the contract's own example sender: a number without its '+'
    ("+436771234567", "+436771234567"),
    ("12345", "12345"),  # a short code
    ("123456", "123456"),
    ("ACME", "ACME"),
    ("ACME 2024", "ACME 2024"),
    ("٤٣٦٧٧١٢٣٤٥٦٧", "٤٣٦٧٧١٢٣٤٥٦٧"),  # digits of another script are no phone number to Twilio
])
def test_twilio_gets_a_numeric_sender_in_e164(httpserver, source, sent_from):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json({"sid": "SM1"}, status=201)
    message = OutboundMessage(MESSAGE.emarsys_message_id, source, MESSAGE.destination, MESSAGE.body)

    vendors.send_message(twilio_config(httpserver.url_for("/")), message, "our-42", None, TIMEOUT)

    assert sent_form(httpserver)["From"] == sent_from


def test_twilio_messaging_service_replaces_from(httpserver):
    send_twilio(httpserver, {"sid": "SM123"}, 201, messagingServiceSid=SERVICE_SID)

    form = sent_form(httpserver)
    assert form["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in form


def test_twilio_without_callback_url_sends_no_status_callback(httpserver):
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json({"sid": "SM1"}, status=201)
    config = twilio_config(httpserver.url_for("/"))

    vendors.send_message(config, OutboundMessage("e", "ACME", "36301234567", BODY), "our-1", None, TIMEOUT)

    form = sent_form(httpserver)
    assert "StatusCallback" not in form
    assert form["To"] == "+36301234567"


@pytest.mark.parametrize("answer, status, outcome, error_type", [
    ({"code": 20003, "message": "Authenticate"}, 401, Outcome.ERROR, ErrorType.AUTHENTICATION),
    ({"code": 21212, "message": "Invalid sender"}, 400, Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ({"code": 21606, "message": "Not capable"}, 400, Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ({"code": 21659, "message": "Not owned"}, 400, Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ({"code": 21999, "message": "The 'From' number is bad"}, 400, Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    ({"code": 21211, "message": "The 'To' number is not valid"}, 400, Outcome.HARDBOUNCE, None),
    # Twilio's own text for a recipient who replied STOP names the sender too.
    ({"code": 21610, "message": "The message From/To pair violates a blacklist rule."}, 400, Outcome.HARDBOUNCE,
     None),
    ({"code": 21614, "message": "'To' number is not a valid mobile number"}, 400, Outcome.HARDBOUNCE, None),
    # A 400 faults our request unless its code says the number is bad: no hard bounce bars it.
    ({}, 400, Outcome.ERROR, ErrorType.UNKNOWN),
    ({"code": 21617, "message": "The concatenated message body exceeds the 1600 character limit"}, 400,
     Outcome.ERROR, ErrorType.UNKNOWN),
    ({"code": 21608, "message": "The 'to' phone number provided is not yet verified for this account."}, 400,
     Outcome.ERROR, ErrorType.UNKNOWN),
    ({"code": 21408, "message": "Permission to send an SMS has not been enabled for the region indicated by "
                                "the 'To' number: +36301234567."}, 400, Outcome.ERROR, ErrorType.UNKNOWN),
    ({"code": 30005, "message": "Unknown destination handset"}, 400, Outcome.HARDBOUNCE, None),
    ({"code": 20404, "message": "Not found"}, 404, Outcome.ERROR, ErrorType.UNKNOWN),
])
def test_twilio_refusals_are_classified(httpserver, answer, status, outcome, error_type):
    result = send_twilio(httpserver, answer, status)

    assert (result.outcome, result.error_type, result.retry) == (outcome, error_type, False)


def test_twilio_refusal_keeps_the_error_code_and_text(httpserver):
    result = send_twilio(httpserver, {"code": 21211, "message": "The 'To' number is not valid"}, 400)

    assert (result.status_code, result.status_text) == ("21211", "The 'To' number is not valid")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_twilio_throttling_and_server_errors_are_retried(httpserver, status):
    result = send_twilio(httpserver, {"code": 20429, "message": "busy"}, status)

    assert (result.outcome, result.retry, result.status_code) == (None, True, f"http_{status}")


def test_twilio_timeout_is_retried(httpserver, slow_vendor):
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_handler(slow_handler)

    result = vendors.send_message(twilio_config(httpserver.url_for("/")), MESSAGE, "our-1", None,
                                  TINY_TIMEOUT)

    assert (result.retry, result.status_code) == (True, "timeout")


# When the earlier attempt of the retries below could first have reached Twilio.
RECEIVED = datetime(2026, 12, 1, 10, 0, 0)
EARLIER_ATTEMPT = {"sid": "SM-earlier", "status": "sent", "direction": "outbound-api", "to": "+36301234567",
                   "from": "ACME", "messaging_service_sid": None, "body": BODY,
                   "date_created": "Tue, 01 Dec 2026 10:00:03 +0000"}


def retry_twilio(httpserver, listed: list[dict] | None, list_status: int = 200, taken: frozenset[str] = frozenset(),
                 **fields: str) -> vendors.SendResult:
    """Retry MESSAGE through a fake Twilio that lists `listed` for the recipient and creates SM-new."""
    httpserver.expect_request(TWILIO_MESSAGES, method="GET").respond_with_json(
        {"messages": listed or []}, status=list_status)
    httpserver.expect_request(TWILIO_MESSAGES, method="POST").respond_with_json({"sid": "SM-new"}, status=201)
    config = twilio_config(httpserver.url_for("/"), **fields)
    return vendors.send_message(config, MESSAGE, "our-42", None, TIMEOUT, vendors.EarlierAttempt(RECEIVED, taken))


def methods_called(httpserver) -> list[str]:
    """Return the HTTP methods the fake server received, in order."""
    return [request.method for request, _ in httpserver.log]


def test_twilio_retry_adopts_the_message_an_earlier_attempt_created(httpserver):
    result = retry_twilio(httpserver, [EARLIER_ATTEMPT])

    assert (result.outcome, result.vendor_message_id, result.retry) == (Outcome.ACCEPTED, "SM-earlier", False)
    assert methods_called(httpserver) == ["GET"]
    assert httpserver.log[0][0].args.to_dict() == {"To": "+36301234567", "PageSize": "100"}


def test_twilio_retry_adopts_the_oldest_of_several_matches(httpserver):
    later = {**EARLIER_ATTEMPT, "sid": "SM-later", "date_created": "Tue, 01 Dec 2026 10:07:00 +0000"}

    assert retry_twilio(httpserver, [later, EARLIER_ATTEMPT]).vendor_message_id == "SM-earlier"


@pytest.mark.parametrize("change", [
    {"body": "another text"},
    {"from": "OTHER"},
    {"to": "+36309999999"},
    {"direction": "inbound"},
    {"sid": None},
    {"date_created": "Tue, 01 Dec 2026 09:54:59 +0000"},  # before the message reached us, less the skew
    {"date_created": "not a date"},
])
def test_twilio_retry_sends_when_no_listed_message_is_the_earlier_attempt(httpserver, change):
    result = retry_twilio(httpserver, [{**EARLIER_ATTEMPT, **change}])

    assert (result.vendor_message_id, methods_called(httpserver)) == ("SM-new", ["GET", "POST"])


def test_twilio_retry_never_adopts_a_message_recorded_for_another(httpserver):
    result = retry_twilio(httpserver, [EARLIER_ATTEMPT], taken=frozenset({"SM-earlier"}))

    assert (result.vendor_message_id, methods_called(httpserver)) == ("SM-new", ["GET", "POST"])


def test_twilio_retry_within_the_clock_skew_still_finds_the_earlier_attempt(httpserver):
    early = {**EARLIER_ATTEMPT, "date_created": "Tue, 01 Dec 2026 09:56:00 +0000"}

    assert retry_twilio(httpserver, [early]).vendor_message_id == "SM-earlier"


def test_twilio_retry_through_a_messaging_service_matches_the_service(httpserver):
    listed = [{**EARLIER_ATTEMPT, "from": "+15550001111", "messaging_service_sid": "MG-other"},
              {**EARLIER_ATTEMPT, "sid": "SM-service", "from": "+15550002222", "messaging_service_sid": SERVICE_SID}]

    assert retry_twilio(httpserver, listed, messagingServiceSid=SERVICE_SID).vendor_message_id == "SM-service"


def test_twilio_retry_whose_lookup_is_refused_for_its_credentials_fails_without_sending(httpserver):
    result = retry_twilio(httpserver, [], list_status=401)

    assert (result.outcome, result.error_type, result.retry) == (Outcome.ERROR, ErrorType.AUTHENTICATION, False)
    assert methods_called(httpserver) == ["GET"]


@pytest.mark.parametrize("list_status", [429, 500, 503])
def test_twilio_retry_that_cannot_look_is_retried_without_sending(httpserver, list_status):
    result = retry_twilio(httpserver, [], list_status=list_status)

    assert (result.outcome, result.retry, result.status_code) == (None, True, f"lookup_http_{list_status}")
    assert methods_called(httpserver) == ["GET"]


def test_a_vendor_request_answering_slower_than_half_the_timeout_is_given_up(httpserver, slow_vendor):
    # requests applies one number to the connect and to the read each; the halves keep the
    # whole request within the vendor timeout (slow_handler answers after SLOW_SECONDS).
    httpserver.expect_request(GENESYS_PATH).respond_with_handler(slow_handler)
    config = genesys_config(httpserver.url_for(GENESYS_PATH))

    result = vendors.send_message(config, MESSAGE, "our-42", None, SLOW_SECONDS * 1.5)

    assert (result.retry, result.status_code) == (True, "timeout")


def test_twilio_first_attempt_sends_without_looking(httpserver):
    send_twilio(httpserver, {"sid": "SM123"}, 201)

    assert methods_called(httpserver) == ["POST"]


@requires_spec
@pytest.mark.parametrize("answer, status, expected", [
    ("result_code=1", 200, {"state": "success"}),
    ("result_code=2", 200, {"state": "error", "errorType": "credential"}),
    ("result_code=98", 200, {"state": "error", "errorType": "temporary"}),
    ("", 502, {"state": "error", "errorType": "temporary"}),
    ("result_code=0", 200, {"state": "error", "errorType": "integration"}),
    ("result_code=99", 200, {"state": "error", "errorType": "temporary"}),  # "try again", its samples say
    ("result_code=²", 200, {"state": "error", "errorType": "integration"}),
    ("<html>login</html>", 200, {"state": "error", "errorType": "integration"}),
    ("", 404, {"state": "error", "errorType": "integration"}),
])
def test_genesys_connection_test_reads_the_result_code(httpserver, answer, status, expected):
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data(answer, status=status)

    result = vendors.test_connection(genesys_config(httpserver.url_for(GENESYS_PATH)), TIMEOUT)

    assert_connection_result(result, expected)


def test_genesys_connection_test_sends_credentials_but_no_phone_number(httpserver):
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data("result_code=1")

    vendors.test_connection(genesys_config(httpserver.url_for(GENESYS_PATH)), TIMEOUT)

    form = sent_form(httpserver)
    assert (form["login"], form["password"]) == ("acme", PASSWORD)
    assert "phone_number" not in form


@requires_spec
@pytest.mark.parametrize("status, expected", [
    (200, {"state": "success"}),
    (401, {"state": "error", "errorType": "credential"}),
    (403, {"state": "error", "errorType": "credential"}),
    (500, {"state": "error", "errorType": "temporary"}),
    (503, {"state": "error", "errorType": "temporary"}),
    (404, {"state": "error", "errorType": "integration"}),
    (400, {"state": "error", "errorType": "integration"}),
])
def test_twilio_connection_test_fetches_the_account(httpserver, status, expected):
    httpserver.expect_request(
        TWILIO_ACCOUNT, method="GET", headers={"Authorization": basic_auth(ACCOUNT_SID, AUTH_TOKEN)},
    ).respond_with_json({"sid": ACCOUNT_SID, "status": "active"}, status=status)

    result = vendors.test_connection(twilio_config(httpserver.url_for("/")), TIMEOUT)

    assert_connection_result(result, expected)


@requires_spec
@pytest.mark.parametrize("make_config", [genesys_config, twilio_config])
def test_connection_test_timeout_is_temporary(httpserver, slow_vendor, make_config):
    for path in ("/slow", "/slow" + TWILIO_ACCOUNT):
        httpserver.expect_request(path).respond_with_handler(slow_handler)

    result = vendors.test_connection(make_config(httpserver.url_for("/slow")), TINY_TIMEOUT)

    assert_connection_result(result, {"state": "error", "errorType": "temporary"})


@requires_spec
@pytest.mark.parametrize("make_config", [genesys_config, twilio_config])
def test_connection_test_unreachable_host_is_temporary(make_config):
    result = vendors.test_connection(make_config(closed_port_url()), TIMEOUT)

    assert_connection_result(result, {"state": "error", "errorType": "temporary"})


def assert_connection_result(result: vendors.ConnectionTestResult, expected: dict) -> None:
    """Check a connection test answer against the spec and the expected state and errorType."""
    answer = result.to_dict()
    if answer["state"] == "success":
        validate_schema("partner-service.yaml", "TestConnectionSuccessResponse", answer)
        assert answer == expected
        return
    validate_schema("partner-service.yaml", "TestConnectionFailureResponse", answer)
    assert answer["description"]
    assert {"state": answer["state"], "errorType": answer["errorType"]} == expected


def test_secrets_and_bodies_are_never_logged(httpserver, caplog):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request(GENESYS_PATH).respond_with_data("result_code=2")
    httpserver.expect_request(TWILIO_MESSAGES).respond_with_json({"code": 20003}, status=401)

    vendors.send_message(genesys_config(httpserver.url_for(GENESYS_PATH)), MESSAGE, "g-1", None, TIMEOUT)
    vendors.send_message(twilio_config(httpserver.url_for("/")), MESSAGE, "t-1", None, TIMEOUT)
    vendors.test_connection(genesys_config(closed_port_url()), TIMEOUT)

    assert "vendor request failed: ConnectionError" in caplog.text  # the log was captured
    for secret in (PASSWORD, AUTH_TOKEN, BODY):
        assert secret not in caplog.text


def test_session_is_shared_per_vendor_host_and_port():
    first = vendors.session_for("https://api.twilio.com/2010-04-01/Accounts/x.json")

    assert vendors.session_for("https://API.twilio.com/other") is first
    assert vendors.session_for("https://api.twilio.com:8443/other") is not first
    assert vendors.session_for("http://api.twilio.com/other") is not first


def test_concurrent_callers_get_one_session_per_host():
    found = []
    barrier = threading.Barrier(16)

    def fetch() -> None:
        """Ask for the session at the same moment as every other thread."""
        barrier.wait()
        found.append(vendors.session_for("https://smsc.example.com/httpapi/receiver"))

    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(found) == 16
    assert len({id(session) for session in found}) == 1


def test_shared_session_keeps_no_vendor_cookies(httpserver):
    httpserver.expect_request(GENESYS_PATH).respond_with_data(
        "result_code=0", headers={"Set-Cookie": "SESSION=client-a; Path=/"})
    config = genesys_config(httpserver.url_for(GENESYS_PATH))

    vendors.send_message(config, MESSAGE, "our-1", None, TIMEOUT)
    vendors.send_message(config, MESSAGE, "our-2", None, TIMEOUT)

    assert [entry[0].headers.get("Cookie") for entry in httpserver.log] == [None, None]


def test_as_many_sends_in_flight_as_the_dispatcher_runs_reuse_pooled_connections(httpserver, caplog):
    httpserver.expect_request("/ping").respond_with_data("ok")
    session = vendors.session_for(httpserver.url_for("/ping"))
    in_flight = 16  # DISPATCH_CONCURRENCY's default
    barrier = threading.Barrier(in_flight)

    def call() -> None:
        barrier.wait(timeout=TIMEOUT)
        session.get(httpserver.url_for("/ping"), timeout=TIMEOUT).close()

    threads = [threading.Thread(target=call) for _ in range(in_flight)]
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2 * TIMEOUT)
    assert len(httpserver.log) == in_flight
    assert not [record for record in caplog.records if "pool is full" in record.getMessage()]
