"""Map Expertflow SMS Connector delivery notifications and received messages.

Status keys (built-in table and operator overrides share them), matched case-insensitively:
- ``"<status>"``: the status value, ``SmsStatus``, else ``MessageStatus``, else ``DeliveryStatus``
  (the connector's ActiveMQ delivery report, relayed as a form), e.g. ``"undelivered"``;
- ``"<status>:<ProviderStatusCode>"``: a status with one provider code, e.g. ``"failed:21211"``;
- ``"*:<ProviderStatusCode>"``: a provider code whatever the status, e.g. ``"*:21211"``.
The most specific key wins. The provider code is the connector's provider's own ("integer or
string"), so the built-in table names none: an operator who knows the provider declares them.
An override replaces the built-in entry with the same key and adds keys the table lacks.

``status_code`` carries ``ProviderStatusCode`` when sent and short enough to store, else the
status value (cut when too long to store); ``status_text`` carries the status value as sent. Use
``is_recognised`` to learn whether a notification's status was in the tables (to log the rest).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from mappers.params import lower_keys, optional, phone_number
from mappers.report import DeliveryReport, ErrorType, InboundMessage, Outcome, storable_status_code
from mappers.rules import (OutcomeRule, Overrides, coded_status_keys, find_rule, message_id_from,
                           required_as_spelled, required_phone_number)

VENDOR = "expertflow"
# The parameters the normalised fields come from, to name them in a fault; an inbound message's id,
# read from SmsSid or MessageSid, is named by _sms_sid as the one it was read from.
REPORT_PARAMETERS = {"vendor_message_id": "MessageSid", "recipient": "To"}
INBOUND_PARAMETERS = {"source": "From", "destination": "To"}

STATUS_KEY_PATTERN = re.compile(r"^(?:[a-z_]+|[a-z_]+:[^:\s]+|\*:[^:\s]+)$")

BUILT_IN_RULES: dict[str, OutcomeRule] = {
    "delivered": (Outcome.DELIVERED, None),
    "queued": (Outcome.ACCEPTED, None),
    "sent": (Outcome.ACCEPTED, None),
    "undelivered": (Outcome.SOFTBOUNCE, None),
    # The connector passes on Twilio's statuses, and Twilio's "failed" is its own refusal (queue
    # overflow, suspended account): nothing says the number is bad, so no hard bounce.
    "failed": (Outcome.ERROR, ErrorType.UNKNOWN),
}


def map_delivery_report(params: Mapping[str, str], received_at: datetime,
                        overrides: Overrides | None = None) -> DeliveryReport:
    """Map an Expertflow delivery notification to a normalised report."""
    fields = lower_keys(params)
    status = _raw_status(fields)
    outcome, error_type = _rule_for(fields, overrides) or (Outcome.UNKNOWN, None)
    return DeliveryReport(
        vendor_message_id=required_as_spelled(fields, "MessageSid"),
        recipient=phone_number(fields.get("to")),
        # ProviderStatusCode is any string, says the connector: one too long to store gives way to
        # the status, so that the receipt is still stored.
        status_code=storable_status_code(optional(fields, "providerstatuscode"), status),
        status_text=status,
        event_at=received_at,  # Notifications carry no event time.
        outcome=outcome,
        error_type=error_type,
    )


def map_inbound_message(params: Mapping[str, str], received_at: datetime) -> InboundMessage:
    """Map an Expertflow received message to a normalised inbound message."""
    fields = lower_keys(params)
    return InboundMessage(
        vendor_message_id=_sms_sid(fields),
        source=required_phone_number(fields, "From"),
        destination=required_phone_number(fields, "To"),
        body=fields.get("body") or "",  # Whitespace in a body is content: keep it.
        received_at=received_at,
    )


def is_recognised(params: Mapping[str, str], overrides: Overrides | None = None) -> bool:
    """Return whether the notification's status matches a table entry."""
    return _rule_for(lower_keys(params), overrides) is not None


def _rule_for(fields: Mapping[str, str], overrides: Overrides | None) -> OutcomeRule | None:
    code = (optional(fields, "providerstatuscode") or "").lower()
    return find_rule(coded_status_keys(_raw_status(fields).lower(), code), BUILT_IN_RULES, overrides)


def _raw_status(fields: Mapping[str, str]) -> str:
    # The connector documents SmsStatus on the form, MessageStatus in its schema and
    # DeliveryStatus in its ActiveMQ delivery report.
    return (optional(fields, "smsstatus") or optional(fields, "messagestatus")
            or optional(fields, "deliverystatus") or "")


def _sms_sid(fields: Mapping[str, str]) -> str:
    # A Twilio-style gateway in front of the connector may send MessageSid only.
    return message_id_from(fields, "SmsSid", "MessageSid")
