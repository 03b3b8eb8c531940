"""Twilio Programmable Messaging: sending and the credential check, with Basic auth."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from mappers.report import ErrorType, Outcome
from mappers.twilio import names_a_bad_number
from schemas.client_config import ClientConfig
from schemas.outbound import OutboundMessage
from services.vendors import (CREDENTIAL, INTEGRATION, TEMPORARY, ConnectionTestResult, EarlierAttempt,
                              SendResult, accepted, refused, retry_later, unreachable_send, unreachable_test,
                              vendor_request_timeout)
from services.vendors.transport import NOT_PUBLIC, VendorAnswer, vendor_call


API_VERSION = "2010-04-01"
# Twilio error codes that blame the sender: invalid From, From not SMS-capable, From not owned.
SENDER_ERROR_CODES = {"21212", "21606", "21659"}
_NAMES_SENDER = re.compile(r"\bFrom\b|MessagingServiceSid")
MAX_STATUS_TEXT = 200
# A sender of this many digits or more is a phone number; fewer is a short code.
MIN_NUMBER_DIGITS = 7
# How far Twilio's clock may run behind ours when a message it created is looked for.
CLOCK_SKEW = timedelta(minutes=5)
# The newest messages to the recipient that are searched for an earlier attempt's message.
LOOKUP_PAGE_SIZE = 100


def send_message(config: ClientConfig, message: OutboundMessage, our_message_id: str,
                 status_callback_url: str | None, timeout: float,
                 earlier_attempt: EarlierAttempt | None = None) -> SendResult:
    """Create one Twilio message; its status callbacks go to status_callback_url.

    Twilio has no idempotency key, so a retry first looks for the message an earlier attempt
    may have created and adopts it rather than sending the text twice.
    """
    form = {"To": "+" + message.destination.lstrip("+"), "Body": message.body}
    if config.fields.get("messagingServiceSid"):
        form["MessagingServiceSid"] = config.fields["messagingServiceSid"]
    else:
        form["From"] = twilio_sender(message.source)
    if status_callback_url:
        form["StatusCallback"] = status_callback_url
    result = None if earlier_attempt is None else _earlier_attempt(config, form, earlier_attempt, timeout)
    if result is None and earlier_attempt is not None and earlier_attempt.look_up_only:
        result = retry_later("attempts", "no earlier attempt found at Twilio, and no attempt is left")
    if result is None:
        result = _classify_send(_request(config, "POST", "/Messages.json", timeout, data=form))
    return result


def twilio_sender(source: str) -> str:
    """Return the From Twilio takes for an Emarsys source: a phone number in E.164, else as it is."""
    # Emarsys writes numbers without their '+' ('436771234567'); Twilio refuses those (21212) and
    # stores the ones it takes in E.164, which a retry's look-up compares. Short codes (up to six
    # digits) and alphanumeric sender ids stay as they are.
    digits = source.removeprefix("+")
    is_number = digits.isascii() and digits.isdigit() and len(digits) >= MIN_NUMBER_DIGITS
    return "+" + digits if is_number else source


def _earlier_attempt(config: ClientConfig, form: dict[str, str], earlier: EarlierAttempt,
                     timeout: float) -> SendResult | None:
    """Return the earlier attempt's message as accepted, a retry if Twilio cannot say, or None."""
    answer = _request(config, "GET", "/Messages.json", timeout,
                      params={"To": form["To"], "PageSize": str(LOOKUP_PAGE_SIZE)})
    if answer == NOT_PUBLIC:
        return unreachable_send("Twilio", answer)
    if isinstance(answer, str) or answer.status_code == 429 or answer.status_code >= 500:
        # Sending now could send the text twice; the next attempt asks again.
        status = answer if isinstance(answer, str) else f"http_{answer.status_code}"
        return retry_later(f"lookup_{status}", "Twilio could not tell whether an earlier attempt was sent")
    if not answer.ok:
        return _classify_send(answer)  # refused for good (credentials, account): so would a send be
    messages = _json_object(answer).get("messages")
    earliest = earlier.since.replace(tzinfo=timezone.utc) - CLOCK_SKEW
    candidates = [candidate for candidate in (messages if isinstance(messages, list) else [])
                  if _is_same_message(candidate, form) and _created_at(candidate) >= earliest
                  and str(candidate["sid"]) not in earlier.taken_vendor_ids]
    if not candidates:
        return None
    oldest = min(candidates, key=_created_at)
    return accepted(str(oldest["sid"]), "found", str(oldest.get("status") or "accepted"))


def _is_same_message(candidate: Any, form: dict[str, str]) -> bool:
    if not isinstance(candidate, dict) or not candidate.get("sid"):
        return False
    if candidate.get("direction", "outbound-api") != "outbound-api":
        return False
    if candidate.get("to") != form["To"] or candidate.get("body") != form["Body"]:
        return False
    if "MessagingServiceSid" in form:
        return candidate.get("messaging_service_sid") == form["MessagingServiceSid"]
    return candidate.get("from") == form["From"]


def _created_at(candidate: dict[str, Any]) -> datetime:
    # Twilio writes RFC 2822 dates; an unreadable one never matches.
    try:
        created = parsedate_to_datetime(str(candidate.get("date_created")))
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def test_connection(config: ClientConfig, timeout: float) -> ConnectionTestResult:
    """Fetch the account resource with the client's credentials."""
    answer = _request(config, "GET", ".json", timeout)
    if isinstance(answer, str):
        return unreachable_test("Twilio", answer)
    status = answer.status_code
    if status == 200:
        return ConnectionTestResult.success()
    if status in (401, 403):
        return ConnectionTestResult.failure(CREDENTIAL, "Twilio refused the account SID and auth token")
    if status >= 500 or status == 429:
        return ConnectionTestResult.failure(TEMPORARY, f"Twilio answered HTTP {status}, try again later")
    return ConnectionTestResult.failure(
        INTEGRATION, f"unexpected Twilio answer (HTTP {status}); check baseUrl and accountSid")


def _request(config: ClientConfig, method: str, suffix: str, timeout: float,
             **kwargs: Any) -> VendorAnswer | str:
    """Call the account's resource; return the answer, or why none was had (see transport.vendor_call)."""
    account_sid = config.fields["accountSid"]
    url = f"{config.fields['baseUrl'].rstrip('/')}/{API_VERSION}/Accounts/{account_sid}{suffix}"
    # As UTF-8 bytes: requests would encode str credentials as Latin-1 and crash on anything else.
    credentials = (account_sid.encode(), config.fields["authToken"].encode("utf-8", "surrogatepass"))
    return vendor_call(method, url, vendor_request_timeout(timeout), auth=credentials, **kwargs)


def _classify_send(answer: VendorAnswer | str) -> SendResult:
    if isinstance(answer, str):
        return unreachable_send("Twilio", answer)
    status = answer.status_code
    if status >= 500 or status == 429:
        return retry_later(f"http_{status}", f"Twilio answered HTTP {status}")
    error = _json_object(answer)
    if answer.ok:
        return accepted(error.get("sid"), str(status), str(error.get("status") or "accepted"))
    code = str(error.get("code") or f"http_{status}")
    text = str(error.get("message") or f"Twilio answered HTTP {status}")[:MAX_STATUS_TEXT]
    if status == 401:
        return refused(Outcome.ERROR, ErrorType.AUTHENTICATION, code, text)
    # Most 400s fault our request (body too long, trial account, region not enabled): only a code
    # that says the number cannot take messages may bar it in SAP Marketing Cloud. The code is read
    # before the text: a STOP'd number's text names the sender ("From/To pair violates a blacklist rule").
    if status == 400 and names_a_bad_number(code):
        return refused(Outcome.HARDBOUNCE, None, code, text)
    if status == 400 and _names_sender(error):
        return refused(Outcome.ERROR, ErrorType.INVALID_SENDER_ID, code, text)
    return refused(Outcome.ERROR, ErrorType.UNKNOWN, code, text)


def _names_sender(error: dict[str, Any]) -> bool:
    return str(error.get("code")) in SENDER_ERROR_CODES or bool(
        _NAMES_SENDER.search(str(error.get("message") or "")))


def _json_object(answer: VendorAnswer) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
