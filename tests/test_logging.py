"""Logs: one JSON object per line on stdout, with request context; no secrets, tokens or texts; masked phones."""
from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import datetime
from urllib.parse import urlsplit

import pytest

from logging_setup import mask_phone_numbers
from tests.routes.conftest import (EMARSYS_CLIENT_ID, GENESYS_FIELDS, ISSUER, PUBLIC_BASE_URL,  # noqa: F401
                                   jwks_url, make_token, signing_key)

CONTEXT_KEYS = {"time", "level", "request_id", "route", "client_id", "vendor"}
GENESYS_DR = {"type": "receipt", "message_id": "g-1", "message_state": "2", "result_code": "0"}
PHONE = "+4915112345678"
HIDDEN_PART, KEPT_PART = "491511234", "5678"


def log_lines(captured: str) -> list[dict]:
    """Parse captured stdout, failing unless every line is one JSON object."""
    return [json.loads(line) for line in captured.splitlines()]


def request_lines(lines: list[dict]) -> list[dict]:
    """Return the per-request lines."""
    return [line for line in lines if line["name"] == "sms_status.request"]


@pytest.fixture
def debug_request_lines():
    """Emit the request lines logged at DEBUG (stored vendor receipts) for the test."""
    request_logger = logging.getLogger("sms_status.request")
    request_logger.setLevel(logging.DEBUG)
    yield
    request_logger.setLevel(logging.NOTSET)


@pytest.fixture
def partner_setup(make_app, jwks_url: str):  # noqa: F811
    """Return a factory of the partner-configured service, to be called once stdout is captured."""
    return lambda: make_app(EMARSYS_JWKS_URL=jwks_url, EMARSYS_TOKEN_ISSUER=ISSUER,
                            EMARSYS_OAUTH_CLIENT_ID=EMARSYS_CLIENT_ID, PUBLIC_BASE_URL=PUBLIC_BASE_URL)


@pytest.mark.parametrize("headers, expected_id", [
    ({"X-Vcap-Request-Id": "vcap-1"}, "vcap-1"),
    ({"X-Request-Id": "req-2"}, "req-2"),
    ({"X-Vcap-Request-Id": "vcap-3", "X-Request-Id": "req-3"}, "vcap-3"),
    ({"X-Request-Id": "r" * 200}, "r" * 128),
    ({"X-Request-Id": "req\x7f"}, None),
    ({"X-Request-Id": "réq"}, None),
    ({}, None),
])
def test_request_log_line_is_one_json_object_with_the_request_context(make_app, capsys, headers, expected_id):
    client = make_app().test_client()
    response = client.post("/vendors/genesys/delivery-reports", data={"type": "receipt"}, headers=headers)
    assert response.status_code == 400
    [line] = request_lines(log_lines(capsys.readouterr().out))
    assert CONTEXT_KEYS <= set(line)
    assert (line["level"], line["route"], line["vendor"], line["status"]) == (
        "INFO", "/vendors/<vendor>/delivery-reports", "genesys", 400)
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    if expected_id is None:
        assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
    else:
        assert line["request_id"] == expected_id
    assert response.headers["X-Request-Id"] == line["request_id"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/vendors/genesys/delivery-reports?type=receipt&message_id=n-1&message_state=2"),
    ("POST", "/vendors/<script>/delivery-reports"),  # a JSON error quoting the caller's input
    ("GET", "/no/such/page"),
    ("GET", "/health"),
])
def test_every_answer_forbids_content_sniffing(make_app, method, path):
    response = make_app().test_client().open(path, method=method)

    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_requests_refused_before_any_view_still_carry_a_request_id(make_app, capsys):
    client = make_app().test_client()
    for response in (client.get("/no/such/path"), client.delete("/api/v1/notifications/set")):
        assert response.status_code in (404, 405)
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    lines = request_lines(log_lines(capsys.readouterr().out))
    assert [line["status"] for line in lines] == [404, 405]
    assert len({line["request_id"] for line in lines}) == 2


@pytest.mark.parametrize("suffix, route", [
    ("/delivery-report", "/vendors/genesys/clients/<token>/delivery-report"),
    # A callback URL pasted with what followed it: the token's segment carries more than the token.
    (" ", "/vendors/genesys/clients/<token> "),
    (".", "/vendors/genesys/clients/<token>."),
    ("\u200b", "/vendors/genesys/clients/<token>\u200b"),
    ("\"/delivery-report", "/vendors/genesys/clients/<token>\"/delivery-report"),
])
def test_an_unmatched_path_is_logged_without_a_token_it_carries(make_app, capsys, suffix, route):
    token = "Zm9vYmFyYmF6cXV4LXNlY3JldC10b2tlbi0xMjM0NQ"
    client = make_app().test_client()
    assert client.post(f"/vendors/genesys/clients/{token}{suffix}").status_code == 404
    output = capsys.readouterr().out
    [line] = request_lines(log_lines(output))
    assert line["route"] == route
    assert token not in output


def test_a_token_in_the_vendor_segment_is_not_logged(make_app, capsys):
    token = "Zm9vYmFyYmF6cXV4LXNlY3JldC10b2tlbi0xMjM0NQ"
    assert make_app().test_client().post(f"/vendors/{token}/delivery-reports").status_code == 404
    output = capsys.readouterr().out
    [line] = request_lines(log_lines(output))
    assert (line["route"], line["vendor"]) == ("/vendors/<vendor>/delivery-reports", "<token>")
    assert token not in output


def test_partner_request_lines_carry_the_client_id(partner_setup, make_token, capsys):  # noqa: F811
    client, client_id = partner_setup().test_client(), uuid.uuid4()
    response = client.put(f"/clients/{client_id}/configuration", json={"customFieldValues": GENESYS_FIELDS},
                          headers={"Authorization": f"Bearer {make_token()}"})
    assert response.status_code == 200
    [line] = request_lines(log_lines(capsys.readouterr().out))
    assert (line["route"], line["client_id"]) == ("/clients/<client_id>/configuration", str(client_id))


def test_secrets_tokens_and_message_bodies_never_appear_in_logs(partner_setup, make_token, capsys,  # noqa: F811
                                                                 debug_request_lines):
    client, client_id, bearer = partner_setup().test_client(), uuid.uuid4(), make_token()
    auth = {"Authorization": f"Bearer {bearer}"}
    body_text, mo_text = "Your secret code is kiwi-banana", "Please call me back about kiwi-mango"
    put = client.put(f"/clients/{client_id}/configuration", json={"customFieldValues": GENESYS_FIELDS},
                     headers=auth)
    urls = put.get_json()["callbackUrls"]
    callback_token = urlsplit(urls["deliveryReports"]["url"]).path.split("/")[-2]
    posted = client.post(f"/clients/{client_id}/messages", headers=auth, json={"messages": [
        {"emarsysMessageId": "em-1", "source": "ACME", "destination": PHONE, "message": body_text}]})
    mo = {"type": "MO", "message_id": "mo-1", "phone_number": PHONE.lstrip("+"), "shortcode": "12345",
          "message": mo_text}
    received = client.post(urlsplit(urls["inboundMessages"]["url"]).path, data=mo)
    wrong_login = client.post("/testConnection", headers={"Authorization": "Bearer not-a-real-token"},
                              json={"customFieldValues": GENESYS_FIELDS})
    assert (put.status_code, posted.status_code, received.status_code, wrong_login.status_code) == (
        200, 202, 200, 401)
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert len(request_lines(log_lines(captured.out))) == 4
    for secret in (GENESYS_FIELDS["password"], bearer, "not-a-real-token", callback_token, body_text, mo_text,
                   HIDDEN_PART):
        assert secret not in logged


def log_a_phone_number(app, client) -> None:
    """Log a phone number in a message, inside a request."""
    with app.test_request_context("/"):
        app.logger.warning("sending to %s failed", PHONE)


def log_an_exception_quoting_a_phone_number(app, client) -> None:
    """Log an exception whose text holds a phone number."""
    try:
        raise ValueError(f"vendor refused {PHONE}")
    except ValueError:
        logging.getLogger("services.dispatcher").exception("send failed")


def request_an_unknown_path_with_a_phone_number(app, client) -> None:
    """Ask for a path no route matches, holding a phone number."""
    assert client.get(f"/nowhere/{PHONE.lstrip('+')}").status_code == 404


def request_an_unknown_vendor_named_by_a_phone_number(app, client) -> None:
    """Push a receipt to a vendor segment no vendor has, holding a phone number."""
    assert client.post(f"/vendors/{PHONE}/delivery-reports").status_code == 404


def request_a_partner_client_id_holding_a_phone_number(app, client) -> None:
    """Ask for a partner client id that is no UUID but a phone number, without a token."""
    assert client.get(f"/clients/{PHONE}/configuration").status_code in (401, 403, 503)


@pytest.mark.parametrize("emit", [log_a_phone_number, log_an_exception_quoting_a_phone_number,
                                  request_an_unknown_path_with_a_phone_number,
                                  request_an_unknown_vendor_named_by_a_phone_number,
                                  request_a_partner_client_id_holding_a_phone_number])
def test_phone_numbers_are_masked_except_the_last_four_digits(make_app, capsys, emit):
    app = make_app()
    emit(app, app.test_client())
    out = capsys.readouterr().out
    assert log_lines(out)
    assert HIDDEN_PART not in out
    assert f"*{KEPT_PART}" in out


def test_lines_outside_requests_are_json_with_empty_context(make_app, capsys):
    make_app()
    logging.getLogger("services.worker").info("round done")
    [line] = log_lines(capsys.readouterr().out)
    assert line["message"] == "round done"
    assert {key: line[key] for key in ("request_id", "route", "client_id", "vendor")} == dict.fromkeys(
        ("request_id", "route", "client_id", "vendor"))


def test_health_probes_do_not_fill_the_log(make_app, capsys):
    client = make_app().test_client()
    assert client.get("/health").status_code == 200
    assert request_lines(log_lines(capsys.readouterr().out)) == []


def test_stored_vendor_receipts_are_logged_at_debug_only(make_app, capsys, debug_request_lines):
    client = make_app().test_client()
    response = client.post("/vendors/genesys/delivery-reports", data=GENESYS_DR)
    assert response.status_code == 200
    [line] = request_lines(log_lines(capsys.readouterr().out))
    assert (line["level"], line["status"], line["vendor"]) == ("DEBUG", 200, "genesys")
    assert response.headers["X-Request-Id"] == line["request_id"]


def test_stored_vendor_receipts_do_not_fill_the_log(make_app, capsys):
    client = make_app().test_client()
    assert client.post("/vendors/genesys/delivery-reports", data=GENESYS_DR).status_code == 200
    assert request_lines(log_lines(capsys.readouterr().out)) == []


@pytest.mark.parametrize("text, masked", [
    ("to +4915112345678", "to +*********5678"),
    ("to 491701234567 now", "to ********4567 now"),
    # Numbers as people write them, in groups.
    ("undeliverable to +49 151 1234 5678", "undeliverable to +** *** **** 5678"),
    ("call 0151-1234-5678", "call ****-****-5678"),
    ("call (0151) 1234567", "call (****) ***4567"),
    ("call 0151/12345678", "call ****/****5678"),
    ("+49 (0)151 1234567", "+** (*)*** ***4567"),
    # Not phone numbers: left as they are.
    ("[01/Dec/2026 16:14:29]", "[01/Dec/2026 16:14:29]"),
    ("at 2026-12-01 12:00", "at 2026-12-01 12:00"),
    ("valid for 3599.999 s", "valid for 3599.999 s"),
    ("status 30003, 0x4503, 8:6", "status 30003, 0x4503, 8:6"),
    ("client 12345678-1234-1234-1234-123456789012", "client 12345678-1234-1234-1234-123456789012"),
    ("sid SM0123456789abcdef", "sid SM0123456789abcdef"),
    ("0 1 2", "0 1 2"),
])
def test_phone_numbers_are_recognised_in_any_common_grouping(text, masked):
    assert mask_phone_numbers(text) == masked
