"""Genesys SMS Aggregation HTTP API: MT sending and the credential check.

Genesys answers HTTP 200 with a body `result_code=N`. Our own message id is sent as
`message_id`, unchanged across retries, so a retry of a send that did reach Genesys
answers 7 (duplicate) instead of sending twice; Genesys DRs echo that id back, so it
is also the vendor message id.
"""
from __future__ import annotations

import uuid
from urllib.parse import parse_qs

from mappers.genesys import RESULT_LABELS
from mappers.report import ErrorType, Outcome
from schemas.client_config import ClientConfig
from schemas.outbound import OutboundMessage
from services.vendors import (CREDENTIAL, INTEGRATION, TEMPORARY, ConnectionTestResult, EarlierAttempt,
                              SendResult, accepted, refused, retry_later, unreachable_send, unreachable_test,
                              vendor_request_timeout)
from services.vendors.transport import VendorAnswer, vendor_call


ACCEPTED_CODES = {0: "queued", 7: "duplicate message_id, already accepted"}
# Retrying is safe whatever the answer: the unchanged message_id makes Genesys answer 7 to a
# resend of a message it took. 99 is "any other error", which its guide's samples say to try again.
RETRY_CODES = {6: "throttled", 98: "internal server error", 99: "any other error"}
# Every refusal is of our request, not of the number: none is a hard bounce, which would bar the
# number in SAP Marketing Cloud. The texts are the receipts' (mappers.genesys.RESULT_LABELS).
REFUSED_CODES: dict[int, tuple[Outcome, ErrorType | None]] = {
    1: (Outcome.ERROR, ErrorType.UNKNOWN),  # a required parameter is missing
    2: (Outcome.ERROR, ErrorType.AUTHENTICATION),
    3: (Outcome.ERROR, ErrorType.UNKNOWN),  # no carrier known for the number's route
    4: (Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    5: (Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    8: (Outcome.ERROR, ErrorType.UNKNOWN),  # the body is too long for the account
}
CONNECTION_TEST_OK = 1  # "request invalid": the credentials passed, the missing number did not
CONNECTION_TEST_BAD_CREDENTIALS = 2


def send_message(config: ClientConfig, message: OutboundMessage, our_message_id: str,
                 status_callback_url: str | None, timeout: float,
                 earlier_attempt: EarlierAttempt | None = None) -> SendResult:
    """Send one MT; Genesys posts DRs to the account's configured URL, not a per-message one.

    A retry needs no lookup (`earlier_attempt` is unused): the unchanged message_id makes
    Genesys answer a resend as a duplicate.
    """
    form = {
        **_credentials(config),
        "phone_number": message.destination.lstrip("+"),
        "sender": config.fields.get("sender") or message.source,
        "message": message.body,
        "message_id": our_message_id,
        "receipt": "TRUE",
    }
    if config.fields.get("priority"):
        form["priority"] = config.fields["priority"]
    return _classify_send(_post(config, form, timeout), our_message_id)


def test_connection(config: ClientConfig, timeout: float) -> ConnectionTestResult:
    """Post a request without phone_number: result 1 proves the credentials, 2 refutes them."""
    form = {**_credentials(config), "message": "connection test", "receipt": "FALSE",
            "message_id": f"connection-test-{uuid.uuid4()}"}
    answer = _post(config, form, timeout)
    if isinstance(answer, str):
        return unreachable_test("Genesys", answer)
    if answer.status_code >= 500 or answer.status_code == 429:
        return ConnectionTestResult.failure(TEMPORARY, f"Genesys answered HTTP {answer.status_code}")
    code = parse_result_code(answer.text) if answer.ok else None
    return _connection_result(answer.status_code, code)


def _connection_result(http_status: int, code: int | None) -> ConnectionTestResult:
    if code == CONNECTION_TEST_OK:
        return ConnectionTestResult.success()
    if code == CONNECTION_TEST_BAD_CREDENTIALS:
        return ConnectionTestResult.failure(CREDENTIAL, "Genesys refused the login and password")
    if code in RETRY_CODES:
        return ConnectionTestResult.failure(TEMPORARY, f"Genesys is {RETRY_CODES[code]}, try again later")
    answer = f"result_code={code}" if code is not None else f"HTTP {http_status}"
    return ConnectionTestResult.failure(
        INTEGRATION, f"unexpected Genesys answer ({answer}); check baseUrl and the account setup")


def parse_result_code(body: str) -> int | None:
    """Return N from a `result_code=N` body, or None when the body is anything else."""
    values = parse_qs(body.strip()).get("result_code")
    if not values or not (values[0].strip().isascii() and values[0].strip().isdigit()):
        return None
    return int(values[0])


def _credentials(config: ClientConfig) -> dict[str, str]:
    return {"login": config.fields["login"], "password": config.fields["password"]}


def _post(config: ClientConfig, form: dict[str, str], timeout: float) -> VendorAnswer | str:
    """Post the form; return the answer, or why none was had (see transport.vendor_call)."""
    return vendor_call("POST", config.fields["baseUrl"], vendor_request_timeout(timeout), data=form,
                       headers={"Accept": "text/plain"})


def _classify_send(answer: VendorAnswer | str, our_message_id: str) -> SendResult:
    if isinstance(answer, str):
        # The request may have reached Genesys: a retry reuses message_id, so no double send.
        return unreachable_send("Genesys", answer)
    if 300 <= answer.status_code < 400:
        # A redirect is not followed (see transport): the same URL would redirect every attempt.
        return refused(Outcome.ERROR, ErrorType.UNKNOWN, f"http_{answer.status_code}",
                       f"Genesys answered HTTP {answer.status_code}")
    if not answer.ok:
        # Genesys refuses with HTTP 200 and a result_code; its guide says of any other answer "The
        # request failed. Please try again in some time." (a proxy's 403, 404 or 408, say).
        return retry_later(f"http_{answer.status_code}", f"Genesys answered HTTP {answer.status_code}")
    return _classify_result_code(parse_result_code(answer.text), our_message_id)


def _classify_result_code(code: int | None, our_message_id: str) -> SendResult:
    if code is None:  # e.g. a body cut short: the message may have been taken, and a resend is safe
        return retry_later("unparsable", "Genesys answered without a result_code")
    if code in ACCEPTED_CODES:
        return accepted(our_message_id, str(code), ACCEPTED_CODES[code])
    if code in RETRY_CODES:
        return retry_later(str(code), RETRY_CODES[code])
    outcome, error_type = REFUSED_CODES.get(code, (Outcome.ERROR, ErrorType.UNKNOWN))
    return refused(outcome, error_type, str(code), RESULT_LABELS.get(str(code), "undocumented result code"))
