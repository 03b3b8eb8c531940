"""Map Genesys SMS Aggregation delivery receipts (DR) and mobile-originated messages (MO).

Status keys (built-in table and operator overrides share them):
- ``"<state>"``: a ``message_state``, e.g. ``"8"``;
- ``"<state>:<result_code>"``: a state with one result code, e.g. ``"8:6"``;
- ``"*:<result_code>"``: a result code whatever the state, e.g. ``"*:2"``.
The most specific key wins: ``state:result_code``, then ``*:result_code``, then ``state``.
A ``*:<result_code>`` key applies only to a failure state (3, 4, 5, 7, 8): Genesys details
failures with the result code, so it never turns an en-route, accepted or delivered message
(nor one in a state Genesys does not document) into a bounce. An override replaces the
built-in entry with the same key and adds keys the table lacks.

``status_code`` carries the raw values as ``"<state>:<result_code>"`` (``"<state>"`` when
no result code was sent or the pair is too long to store; a state too long to store is cut);
``status_text`` is a short label of the state and, in a failure state, of a result code other
than 0, e.g. ``"rejected: throttled, resubmit"``: SAP Marketing Cloud shows it as the bounce
reason, and ignores the code. Use ``is_recognised`` to learn whether a report's status was in
the tables (to log the rest).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from mappers.params import lower_keys, optional, required
from mappers.report import DeliveryReport, ErrorType, InboundMessage, MappingError, Outcome, storable_status_code
from mappers.rules import OutcomeRule, Overrides, coded_status_keys, find_rule, required_phone_number

VENDOR = "genesys"

STATUS_KEY_PATTERN = re.compile(r"^(?:\d+|\d+:\d+|\*:\d+)$")

BUILT_IN_RULES: dict[str, OutcomeRule] = {
    "1": (Outcome.ACCEPTED, None),
    "2": (Outcome.DELIVERED, None),
    "3": (Outcome.SOFTBOUNCE, None),
    # A message an aggregator deleted was never tried on the handset: nothing says the
    # number is bad, so it must stay a temporary bounce that a resend can clear.
    "4": (Outcome.SOFTBOUNCE, None),
    "5": (Outcome.HARDBOUNCE, None),
    "6": (Outcome.ACCEPTED, None),
    "7": (Outcome.UNKNOWN, None),
    "8": (Outcome.HARDBOUNCE, None),
    "*:2": (Outcome.ERROR, ErrorType.AUTHENTICATION),
    # We send no carrier, so Genesys chose the route itself: the route is at fault, not the number
    # (as in the MT answer, services.vendors.genesys).
    "*:3": (Outcome.ERROR, ErrorType.UNKNOWN),
    "*:4": (Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    "*:5": (Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    # "Please resubmit" and "Try again": whatever the state, the sender's account or Genesys is at
    # fault, not the number. A soft bounce would count against each recipient of a throttled
    # campaign in Emarsys; an error tells the marketer (and is a Temporary bounce for SAP).
    "*:6": (Outcome.ERROR, ErrorType.UNKNOWN),
    "*:98": (Outcome.ERROR, ErrorType.UNKNOWN),
    # A duplicate message_id is a resend of a message Genesys already has (the sender retries
    # with the same id); that message's own receipts tell its fate, so this one says no more
    # than accepted, which never overrides them.
    "*:7": (Outcome.ACCEPTED, None),
    # Our message was too long: the sender's fault, never the recipient's.
    "*:8": (Outcome.ERROR, ErrorType.UNKNOWN),
    # Rejected for a reason Genesys does not name: nothing says the number is bad.
    "8:99": (Outcome.ERROR, ErrorType.UNKNOWN),
}
# The states a result code details ("in the case of failures"): in any other state, known or
# not, it changes neither the outcome nor the status text.
FAILURE_STATES = frozenset({"3", "4", "5", "7", "8"})

STATE_LABELS = {
    "1": "en route",
    "2": "delivered",
    "3": "expired",
    "4": "deleted by aggregator",
    "5": "undeliverable",
    "6": "accepted by aggregator",
    "7": "unknown",
    "8": "rejected",
}

RESULT_LABELS = {
    "1": "rejected upstream, check number and carrier",
    "2": "authentication failed",
    "3": "carrier invalid",
    "4": "alphanumeric sender not permitted on carrier",
    "5": "sender not allowed on carrier",
    "6": "throttled, resubmit",
    "7": "duplicate message",
    "8": "message body too long",
    "98": "Genesys internal error, try again",
    "99": "unmapped error",
}

RECEIPT_TYPE = "receipt"
MO_TYPE = "MO"
# The parameters the normalised fields come from, to name them in a fault.
REPORT_PARAMETERS = {"vendor_message_id": "message_id"}
INBOUND_PARAMETERS = {"vendor_message_id": "message_id", "source": "phone_number", "destination": "shortcode"}


def map_delivery_report(params: Mapping[str, str], received_at: datetime,
                        overrides: Overrides | None = None) -> DeliveryReport:
    """Map a Genesys delivery receipt to a normalised report."""
    fields = lower_keys(params)
    _expect_type(fields, RECEIPT_TYPE)
    state, result_code = _state_and_result_code(fields)
    outcome, error_type = _rule_for(state, result_code, overrides) or (Outcome.UNKNOWN, None)
    return DeliveryReport(
        vendor_message_id=required(fields, "message_id"),
        recipient=None,  # Genesys receipts do not repeat the phone number.
        status_code=storable_status_code(f"{state}:{result_code}" if result_code else None, state),
        status_text=_status_text(state, result_code),
        event_at=received_at,
        outcome=outcome,
        error_type=error_type,
    )


def map_inbound_message(params: Mapping[str, str], received_at: datetime) -> InboundMessage:
    """Map a Genesys mobile-originated message to a normalised inbound message."""
    fields = lower_keys(params)
    _expect_type(fields, MO_TYPE)
    return InboundMessage(
        vendor_message_id=required(fields, "message_id"),
        source=required_phone_number(fields, "phone_number"),
        destination=required_phone_number(fields, "shortcode"),
        body=fields.get("message") or "",  # Whitespace in a body is content: keep it.
        received_at=received_at,
    )


def is_recognised(params: Mapping[str, str], overrides: Overrides | None = None) -> bool:
    """Return whether the receipt's state and result code match a table entry."""
    state, result_code = _state_and_result_code(lower_keys(params))
    return _rule_for(state, result_code, overrides) is not None


def is_inbound(params: Mapping[str, str]) -> bool:
    """Return whether the request is an MO (``type=MO``) rather than a receipt."""
    return _request_type(params) == MO_TYPE.lower()


def is_receipt(params: Mapping[str, str]) -> bool:
    """Return whether the request is a delivery receipt (``type=receipt``) rather than an MO."""
    return _request_type(params) == RECEIPT_TYPE.lower()


def _request_type(params: Mapping[str, str]) -> str:
    return (optional(lower_keys(params), "type") or "").lower()


def _rule_for(state: str, result_code: str, overrides: Overrides | None) -> OutcomeRule | None:
    keys = coded_status_keys(state, result_code)
    if state not in FAILURE_STATES:
        keys = [key for key in keys if not key.startswith("*:")]
    return find_rule(keys, BUILT_IN_RULES, overrides)


def _status_text(state: str, result_code: str) -> str:
    label = STATE_LABELS.get(state, f"message_state {state or '(none)'}")
    if result_code in ("", "0") or state not in FAILURE_STATES:
        return label
    return f"{label}: {RESULT_LABELS.get(result_code, f'result_code {result_code}')}"


def _state_and_result_code(fields: Mapping[str, str]) -> tuple[str, str]:
    return read_code(optional(fields, "message_state")), read_code(optional(fields, "result_code"))


MAX_CODE_DIGITS = 9


def read_code(value: str | None) -> str:
    """Return a state or result code as the status keys spell it: "08" and "8" are one code."""
    # Anything else is kept as sent, so it can be logged.
    # isascii: "²".isdigit() is true, and int() refuses it; past MAX_CODE_DIGITS, int() costs
    # more and past 4,300 digits refuses too, and no code is that long.
    if value and value.isascii() and value.isdigit() and len(value) <= MAX_CODE_DIGITS:
        return str(int(value))
    return value or ""


def _expect_type(fields: Mapping[str, str], expected: str) -> None:
    sent = optional(fields, "type")
    if sent is not None and sent.lower() != expected.lower():
        raise MappingError("type", f"is {sent!r}, this endpoint takes {expected!r}")
