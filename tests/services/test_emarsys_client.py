"""Emarsys callback client against real local Emarsys and token servers that enforce the spec."""
from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from werkzeug import Request, Response

from services.emarsys_client import CallResult, EmarsysClient, item_index
from services.oauth import OAuthTokenProvider
from tests.emarsys_spec import SpecMismatch, requires_spec, validate_pointer, validate_schema
from tests.trickling_server import json_answer, serve_trickling

pytestmark = requires_spec

CALLBACKS = "partner-callbacks.yaml"
CLIENT_ID = "39a281c7-942f-49a9-91c2-8f0dba750f7f"
TOKEN_PATH = "/oauth2/token"
BASE_PATH = "/sms/partner/v1"
BATCH_SCHEMAS = {"deliveryReports": "DeliveryReportBatch", "inboundMessages": "InboundMessageBatch"}
PRIVATE_TEXT = "do-not-log-this-message-body"


def delivered_report(number: int = 0) -> dict:
    """Return a valid DELIVERED DeliveryReport."""
    return {"emarsysMessageId": f"emarsys-{number}", "receivedAt": "2024-05-01T12:00:00Z",
            "status": "DELIVERED", "details": {"providerStatus": "DELIVRD", "providerCode": "000"},
            "providerMessageIds": [f"vendor-{number}"]}


def error_report(number: int = 0) -> dict:
    """Return a valid ERROR DeliveryReport."""
    return {"emarsysMessageId": f"emarsys-{number}", "receivedAt": "2024-05-01T12:00:01Z",
            "status": "ERROR", "errorType": "AUTHENTICATION",
            "details": {"providerStatus": "REJECTD", "providerCode": "401"}}


def inbound_message(number: int = 0) -> dict:
    """Return a valid InboundMessage."""
    return {"messageId": f"mo-{number}", "source": "436771234567", "destination": "381641234567",
            "message": PRIVATE_TEXT, "receivedAt": "2024-05-01T12:00:02Z"}


class TokenServer:
    """An OAuth token endpoint issuing numbered opaque tokens valid for an hour."""

    def __init__(self, httpserver):
        self.issued: list[str] = []
        self.outage_status: int | None = None  # the status every token request gets while set
        httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(self.handle)
        self.url = httpserver.url_for(TOKEN_PATH)

    def handle(self, request: Request) -> Response:
        """Issue the next token, or fail while an outage is simulated."""
        if self.outage_status is not None:
            return Response('{"error": "unavailable"}', status=self.outage_status)
        self.issued.append(f"token-{len(self.issued) + 1}")
        body = {"access_token": self.issued[-1], "token_type": "bearer", "expires_in": 3600}
        return Response(json.dumps(body), status=200, content_type="application/json")


class FakeEmarsys:
    """Emarsys callback endpoints that check tokens and validate every body against the spec."""

    def __init__(self, httpserver, tokens: TokenServer):
        self.tokens = tokens
        self.revoked: set[str] = set()
        self.reject_all_tokens = False
        self.answers: list[Response] = []
        self.received: list[dict] = []
        for collection in BATCH_SCHEMAS:
            httpserver.expect_request(f"{BASE_PATH}/clients/{CLIENT_ID}/{collection}",
                                      method="POST").respond_with_handler(self.handle)
        self.base_url = httpserver.url_for(BASE_PATH)

    def answer(self, status: int, body: object = b"", headers: dict | None = None) -> None:
        """Queue one answer; once the queue is empty every call gets 202."""
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        content_type = "application/json" if not isinstance(body, (bytes, str)) else "text/plain"
        self.answers.append(Response(data, status=status, headers=headers, content_type=content_type))

    def handle(self, request: Request) -> Response:
        """Record and validate one callback, then answer as queued."""
        collection = request.path.rsplit("/", 1)[-1]
        body = request.get_json()
        self.received.append({"collection": collection, "body": body,
                              "authorization": request.headers.get("Authorization")})
        # A body that breaks the spec raises here: the client sees a 500, the test a handler error.
        validate_schema(CALLBACKS, BATCH_SCHEMAS[collection], body)
        validate_pointer("common.yaml", "/components/parameters/clientIdPathParam/schema",
                         request.path.split("/")[-2])
        if not self._authorised(request.headers.get("Authorization", "")):
            return Response(status=401)
        return self.answers.pop(0) if self.answers else Response(status=202)

    def _authorised(self, header: str) -> bool:
        """Return whether the bearer token was issued by the token server and not revoked."""
        token = header.removeprefix("Bearer ")
        return (header.startswith("Bearer ") and token in self.tokens.issued
                and token not in self.revoked and not self.reject_all_tokens)


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
def client(emarsys, token_server) -> EmarsysClient:
    """Return a client wired to the local servers."""
    tokens = OAuthTokenProvider(token_server.url, "partner-client", "partner-secret")
    # A generous read timeout: the fake validates every item of a 1000-item batch against the spec.
    return EmarsysClient(emarsys.base_url, tokens, timeout=(5, 30))


def closed_port_url() -> tuple[socket.socket, str]:
    """Return a bound, non-listening socket (keep it open) and a URL that is refused."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder, f"http://127.0.0.1:{holder.getsockname()[1]}{BASE_PATH}"


# --- the spec helper itself ---------------------------------------------------------------

@pytest.mark.parametrize("schema_name, instance", [
    ("DeliveryReportBatch", {"deliveryReports": []}),
    ("DeliveryReportBatch", {"deliveryReports": [{**delivered_report(), "status": "ERROR"}]}),
    ("DeliveryReportBatch", {"deliveryReports": [{**delivered_report(), "receivedAt": "yesterday"}]}),
    ("DeliveryReportBatch", {"deliveryReports": [delivered_report()] * 1001}),
    ("InboundMessageBatch", {"inboundMessages": [{"messageId": "mo-1", "source": "4367"}]}),
    ("InboundMessageBatch", {"messages": [inbound_message()]}),
])
def test_spec_helper_rejects_invalid_instances(schema_name, instance):
    with pytest.raises(SpecMismatch):
        validate_schema(CALLBACKS, schema_name, instance)


@pytest.mark.parametrize("file_name, schema_name, instance", [
    (CALLBACKS, "DeliveryReportBatch", {"deliveryReports": [delivered_report(), error_report(1)]}),
    (CALLBACKS, "InboundMessageBatch", {"inboundMessages": [inbound_message()]}),
    ("common.yaml", "InvalidFormatErrorBatch", {"errors": [{"message": "bad", "dataPath": ".x[0]"}]}),
    ("partner-service.yaml", "OutboundMessageBatchGlobalError",
     {"globalError": {"errorType": "partner", "isErrorTransient": True}}),
])
def test_spec_helper_accepts_valid_instances_from_any_file(file_name, schema_name, instance):
    validate_schema(file_name, schema_name, instance)


def test_spec_helper_refuses_the_unvalidatable_oneof():
    with pytest.raises(ValueError, match="OutboundMessageBatchGlobalError"):
        validate_schema("partner-service.yaml", "OutboundMessageBatchError", {"globalError": {}})


def test_spec_helper_names_unknown_schemas():
    with pytest.raises(LookupError):
        validate_schema(CALLBACKS, "NoSuchSchema", {})


# --- successful delivery and the token ----------------------------------------------------

def test_delivery_reports_are_posted_as_a_spec_valid_batch(client, emarsys, token_server):
    reports = [delivered_report(0), error_report(1)]

    result = client.send_delivery_reports(CLIENT_ID, reports)

    assert result == CallResult("delivered", reason="HTTP 202", http_status=202)
    assert emarsys.received == [{"collection": "deliveryReports", "body": {"deliveryReports": reports},
                                 "authorization": "Bearer token-1"}]


def test_inbound_messages_are_posted_as_a_spec_valid_batch(client, emarsys):
    messages = [inbound_message(0), inbound_message(1)]

    result = client.send_inbound_messages(CLIENT_ID, messages)

    assert result.kind == "delivered"
    assert emarsys.received[0]["collection"] == "inboundMessages"
    assert emarsys.received[0]["body"] == {"inboundMessages": messages}


def test_token_is_reused_across_calls(client, emarsys, token_server):
    for number in range(3):
        assert client.send_delivery_reports(CLIENT_ID, [delivered_report(number)]).kind == "delivered"

    assert token_server.issued == ["token-1"]
    assert [call["authorization"] for call in emarsys.received] == ["Bearer token-1"] * 3


def test_a_netrc_entry_neither_replaces_the_bearer_token_nor_reaches_emarsys(client, emarsys, tmp_path,
                                                                           monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert result.kind == "delivered"
    assert [call["authorization"] for call in emarsys.received] == ["Bearer token-1"]


def test_401_fetches_a_new_token_once_and_retries(client, emarsys, token_server):
    client.send_delivery_reports(CLIENT_ID, [delivered_report(0)])
    emarsys.revoked.add("token-1")

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report(1)])

    assert result.kind == "delivered"
    assert token_server.issued == ["token-1", "token-2"]
    assert [call["authorization"] for call in emarsys.received[1:]] == ["Bearer token-1",
                                                                         "Bearer token-2"]


def test_second_401_is_a_retry_without_further_attempts(client, emarsys, token_server):
    emarsys.reject_all_tokens = True

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status) == ("retry", 401)
    assert "401" in result.reason
    assert len(emarsys.received) == 2
    assert len(token_server.issued) == 2


def test_token_service_outage_is_a_retry_and_sends_nothing(client, emarsys, token_server):
    token_server.outage_status = 503

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    # The 503 is the token endpoint's, named in the reason; http_status is only ever Emarsys's answer.
    assert (result.kind, result.http_status) == ("retry", None)
    assert "token service" in result.reason and "503" in result.reason
    assert emarsys.received == []


def test_a_token_service_400_is_logged_as_such_not_as_emarsys_refusing_items(client, emarsys, token_server,
                                                                             caplog):
    token_server.outage_status = 400

    with caplog.at_level(logging.WARNING, logger="services.emarsys_client"):
        client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert "token service answered HTTP 400" in caplog.text
    assert "item(s) named" not in caplog.text


# --- retryable answers --------------------------------------------------------------------

@pytest.mark.parametrize("headers, retry_after", [
    ({"Retry-After": "120"}, 120.0),
    ({"Retry-After": "0"}, 0.0),
    ({}, None),
    ({"Retry-After": "later please"}, None),
])
def test_429_is_a_retry_honouring_retry_after_seconds(client, emarsys, headers, retry_after):
    emarsys.answer(429, headers=headers)

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status, result.retry_after) == ("retry", 429, retry_after)


def test_429_honours_retry_after_http_date(client, emarsys):
    retry_at = datetime.now(timezone.utc) + timedelta(hours=1)
    emarsys.answer(429, headers={"Retry-After": format_datetime(retry_at, usegmt=True)})

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert result.kind == "retry"
    # The HTTP date has whole seconds and the call took a moment, so allow a generous window.
    assert 3000 < result.retry_after <= 3600


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retries(client, emarsys, status):
    emarsys.answer(status, {"message": "Unable to process"})

    result = client.send_inbound_messages(CLIENT_ID, [inbound_message()])

    assert (result.kind, result.http_status, result.retry_after) == ("retry", status, None)


def test_503_with_retry_after_passes_it_on(client, emarsys):
    emarsys.answer(503, headers={"Retry-After": "30"})

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.retry_after) == ("retry", 30.0)


@pytest.mark.parametrize("status, headers", [
    (409, {}),
    (302, {"Location": f"{BASE_PATH}/elsewhere"}),
])
def test_unexpected_answers_are_retries_and_redirects_are_not_followed(
        client, emarsys, httpserver, status, headers):
    httpserver.expect_request(f"{BASE_PATH}/elsewhere").respond_with_data("", status=202)
    emarsys.answer(status, headers=headers)

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status) == ("retry", status)
    assert not any(request.path.endswith("/elsewhere") for request, _ in httpserver.log)


def test_timeout_is_a_retry(httpserver, token_server):
    release = threading.Event()

    def stalled(request: Request) -> Response:
        release.wait(5)
        return Response(status=202)

    httpserver.expect_request(f"{BASE_PATH}/clients/{CLIENT_ID}/deliveryReports").respond_with_handler(
        stalled)
    tokens = OAuthTokenProvider(token_server.url, "partner-client", "partner-secret")
    client = EmarsysClient(httpserver.url_for(BASE_PATH), tokens, timeout=(2, 0.2))
    try:
        result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])
    finally:
        release.set()

    assert result.kind == "retry"
    assert result.reason.startswith("timeout")


@pytest.mark.parametrize("trickle", ["body", "head"])
def test_trickling_answer_ends_by_the_whole_call_deadline_as_a_retry(token_server, trickle):
    # Each byte comes within the 0.5 s read timeout; the whole answer would take about 10 s.
    answer = json_answer(json.dumps({"accepted": "x" * 200}).encode(), trickle=trickle)
    url = serve_trickling([answer], gap=0.05, path=BASE_PATH)
    tokens = OAuthTokenProvider(token_server.url, "partner-client", "partner-secret")

    result = EmarsysClient(url, tokens, timeout=(0.5, 0.5)).send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.unreachable) == ("retry", True)
    assert result.reason == "timeout: Timeout"


def test_connection_refused_is_a_retry(token_server):
    holder, url = closed_port_url()
    with holder:
        tokens = OAuthTokenProvider(token_server.url, "partner-client", "partner-secret")

        result = EmarsysClient(url, tokens).send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status) == ("retry", None)
    assert result.reason.startswith("network error")


# --- invalid format and permanent refusals ------------------------------------------------

def invalid_format_body(*data_paths: str) -> dict:
    """Return a spec-valid InvalidFormatErrorBatch naming the given dataPaths."""
    body = {"errors": [{"keyword": "enum", "dataPath": path, "params": {},
                        "message": f"problem at {path}"} for path in data_paths]}
    validate_schema("common.yaml", "InvalidFormatErrorBatch", body)
    assert body["errors"], "the schema does not require errors; the fixture must provide them"
    return body


@pytest.mark.parametrize("data_path", [
    ".deliveryReports[3]",
    "deliveryReports[3].status",
    ".deliveryReports[3].details.providerCode",
    "/deliveryReports/3",
    "/deliveryReports/3/status",
    "['deliveryReports'][3]",
])
def test_400_naming_an_item_maps_its_data_path_to_the_index(client, emarsys, data_path):
    emarsys.answer(400, invalid_format_body(data_path))
    reports = [delivered_report(number) for number in range(5)]

    result = client.send_delivery_reports(CLIENT_ID, reports)

    assert (result.kind, result.http_status) == ("item_errors", 400)
    assert result.item_errors == {3: f"{data_path}: problem at {data_path}"}


def test_400_collects_every_error_per_item(client, emarsys):
    emarsys.answer(400, invalid_format_body(".inboundMessages[0].source", ".inboundMessages[2]",
                                            ".inboundMessages[0].destination"))

    result = client.send_inbound_messages(CLIENT_ID, [inbound_message(n) for n in range(3)])

    assert result.kind == "item_errors"
    assert sorted(result.item_errors) == [0, 2]
    assert ".inboundMessages[0].source" in result.item_errors[0]
    assert ".inboundMessages[0].destination" in result.item_errors[0]


@pytest.mark.parametrize("data_paths", [
    ("",),
    (".deliveryReports",),
    (".deliveryReports[1]", ".deliveryReports[7]"),
    (".inboundMessages[0]",),
    (".deliveryReportsExtra[0]",),
])
def test_400_with_an_error_naming_no_item_rejects_the_batch(client, emarsys, data_paths):
    emarsys.answer(400, invalid_format_body(*data_paths))

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report(n) for n in range(2)])

    assert (result.kind, result.http_status, result.item_errors) == ("rejected", 400, {})
    assert result.reason.startswith("HTTP 400")


@pytest.mark.parametrize("body", ["Bad Request", {"errors": []}, {"message": "bad"}, ["x"]])
def test_400_without_an_invalid_format_body_rejects_the_batch(client, emarsys, body):
    emarsys.answer(400, body)

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status) == ("rejected", 400)
    assert "InvalidFormatErrorBatch" in result.reason


@pytest.mark.parametrize("status, reason_part", [(403, "not authorised"), (404, "does not exist")])
def test_403_and_404_reject_the_batch_with_a_reason(client, emarsys, status, reason_part):
    emarsys.answer(status)

    result = client.send_delivery_reports(CLIENT_ID, [delivered_report()])

    assert (result.kind, result.http_status) == ("rejected", status)
    assert reason_part in result.reason


@pytest.mark.parametrize("size", [0, 1001])
def test_batches_outside_1_to_1000_items_are_refused_before_sending(client, emarsys, size):
    with pytest.raises(ValueError):
        client.send_delivery_reports(CLIENT_ID, [delivered_report(n) for n in range(size)])

    assert emarsys.received == []


def test_a_full_batch_of_1000_is_sent(client, emarsys):
    result = client.send_delivery_reports(CLIENT_ID, [delivered_report(n) for n in range(1000)])

    assert result.kind == "delivered"
    assert len(emarsys.received[0]["body"]["deliveryReports"]) == 1000


@pytest.mark.parametrize("data_path, size, index", [
    (".deliveryReports[0]", 1, 0),
    ("#/deliveryReports/12/status", 13, 12),
    (".deliveryReports[13]", 13, None),
    (".deliveryReports[x]", 13, None),
    ("deliveryReports", 13, None),
])
def test_item_index_reads_data_paths(data_path, size, index):
    assert item_index(data_path, "deliveryReports", size) == index


# --- privacy --------------------------------------------------------------------------------

def test_tokens_and_message_bodies_are_never_logged(client, emarsys, token_server, caplog):
    caplog.set_level(logging.DEBUG)
    echoing = invalid_format_body(".inboundMessages[0].message", "")
    for error in echoing["errors"]:
        error["message"] = f"'{PRIVATE_TEXT}' is not allowed"
    emarsys.answer(400, echoing)
    emarsys.answer(400, {"errors": [echoing["errors"][0]]})
    emarsys.answer(503)

    for _ in range(4):
        client.send_inbound_messages(CLIENT_ID, [inbound_message()])
    emarsys.reject_all_tokens = True
    client.send_inbound_messages(CLIENT_ID, [inbound_message()])

    assert caplog.records, "the client is expected to log each call"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert PRIVATE_TEXT not in logged
    assert not any(token in logged for token in token_server.issued)
