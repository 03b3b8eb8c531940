"""Map Twilio-compatible status callbacks and inbound messages.

Status keys (built-in table and operator overrides share them), matched case-insensitively:
- ``"<MessageStatus>"``, e.g. ``"failed"``;
- ``"<MessageStatus>:<ErrorCode>"``, e.g. ``"undelivered:30003"``;
- ``"*:<ErrorCode>"``: an error code whatever the status, e.g. ``"*:21610"``.
The most specific key wins: ``status:code``, then ``*:code``, then ``status``.
An override replaces the built-in entry with the same key and adds keys the table lacks.

``status_code`` carries ``ErrorCode`` as sent, else (none sent, or one too long to store)
``MessageStatus``, cut to the stored width if need be; ``status_text`` carries ``MessageStatus``
as sent. Use ``is_recognised`` to learn whether a callback's status was in the tables (to log
the rest).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from mappers.params import lower_keys, optional, phone_number
from mappers.report import DeliveryReport, ErrorType, InboundMessage, Outcome, storable_status_code
from mappers.rules import (OutcomeRule, Overrides, coded_status_keys, find_rule, message_id_from,
                           required_phone_number)

VENDOR = "twilio"
# The parameters the normalised fields come from, to name them in a fault; the message id, read
# from MessageSid or SmsSid, is named by _message_sid as the one it was read from.
REPORT_PARAMETERS = {"recipient": "To"}
INBOUND_PARAMETERS = {"source": "From", "destination": "To"}

STATUS_KEY_PATTERN = re.compile(r"^(?:[a-z_]+|[a-z_]+:\d+|\*:\d+)$")

BUILT_IN_RULES: dict[str, OutcomeRule] = {
    "delivered": (Outcome.DELIVERED, None),
    "queued": (Outcome.ACCEPTED, None),
    "accepted": (Outcome.ACCEPTED, None),
    "scheduled": (Outcome.ACCEPTED, None),
    "sending": (Outcome.ACCEPTED, None),
    "sent": (Outcome.ACCEPTED, None),
    # Handset unreachable: the number is fine, a later attempt may reach it.
    "undelivered:30003": (Outcome.SOFTBOUNCE, None),
    "undelivered": (Outcome.SOFTBOUNCE, None),
    # "failed" is Twilio's own refusal (queue overflow, suspended account, content filter): the
    # sender's fault unless a code below blames the number. As a hard bounce it would bar a good
    # number in SAP Marketing Cloud.
    "failed": (Outcome.ERROR, ErrorType.UNKNOWN),
    # These codes say the number itself cannot take messages (unknown, landline,
    # invalid, opted out, not mobile), so they are permanent whatever the status says.
    "*:30005": (Outcome.HARDBOUNCE, None),
    "*:30006": (Outcome.HARDBOUNCE, None),
    "*:21211": (Outcome.HARDBOUNCE, None),
    "*:21610": (Outcome.HARDBOUNCE, None),
    "*:21614": (Outcome.HARDBOUNCE, None),
}


def names_a_bad_number(error_code: str) -> bool:
    """Return whether a Twilio error code says the number itself cannot take messages."""
    return BUILT_IN_RULES.get(f"*:{error_code}") == (Outcome.HARDBOUNCE, None)


def map_delivery_report(params: Mapping[str, str], received_at: datetime,
                        overrides: Overrides | None = None) -> DeliveryReport:
    """Map a Twilio status callback to a normalised report."""
    fields = lower_keys(params)
    status, error_code = _status_and_error_code(fields)
    outcome, error_type = _rule_for(status, error_code, overrides) or (Outcome.UNKNOWN, None)
    return DeliveryReport(
        vendor_message_id=_message_sid(fields),
        recipient=phone_number(fields.get("to")),
        status_code=storable_status_code(error_code, _raw_status(fields)),
        status_text=_raw_status(fields),
        event_at=received_at,  # Status callbacks carry no event time.
        outcome=outcome,
        error_type=error_type,
    )


def map_inbound_message(params: Mapping[str, str], received_at: datetime) -> InboundMessage:
    """Map a Twilio inbound message webhook to a normalised inbound message."""
    fields = lower_keys(params)
    return InboundMessage(
        vendor_message_id=_message_sid(fields),
        source=required_phone_number(fields, "From"),
        destination=required_phone_number(fields, "To"),
        body=fields.get("body") or "",  # Whitespace in a body is content: keep it.
        received_at=received_at,
    )


def is_recognised(params: Mapping[str, str], overrides: Overrides | None = None) -> bool:
    """Return whether the callback's status and error code match a table entry."""
    status, error_code = _status_and_error_code(lower_keys(params))
    return _rule_for(status, error_code, overrides) is not None


def _rule_for(status: str, error_code: str, overrides: Overrides | None) -> OutcomeRule | None:
    return find_rule(coded_status_keys(status, error_code), BUILT_IN_RULES, overrides)


def _status_and_error_code(fields: Mapping[str, str]) -> tuple[str, str]:
    # Some gateways send ErrorCode "0" or "" on success; neither is an error.
    error_code = optional(fields, "errorcode") or ""
    return _raw_status(fields).lower(), "" if error_code == "0" else error_code


def _raw_status(fields: Mapping[str, str]) -> str:
    # Older Twilio-style gateways name the status SmsStatus instead of MessageStatus.
    return optional(fields, "messagestatus") or optional(fields, "smsstatus") or ""


def _message_sid(fields: Mapping[str, str]) -> str:
    # Twilio sends SmsSid alongside MessageSid; older gateways send only SmsSid.
    return message_id_from(fields, "MessageSid", "SmsSid")
