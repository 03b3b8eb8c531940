"""SAP Digital Interconnect status notifications (the SAP bounce blog's `set` call)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from mappers.params import lower_keys, phone_number, required
from mappers.report import DeliveryReport, MappingError, Outcome
from mappers.rules import OutcomeRule, Overrides, find_rule, required_as_spelled

VENDOR = "sapdi"
# The parameters the normalised fields come from, to name them in a fault.
REPORT_PARAMETERS = {"vendor_message_id": "orderID", "recipient": "msisdn", "status_code": "status"}

# The only code SAP Digital Interconnect regards as temporary.
TEMPORARY_CODE = "0XDBF3"
# The blog: a status without an error code reports a successful delivery; any other code
# not listed here is permanent.
_BUILT_IN_RULES: dict[str, OutcomeRule] = {
    "": (Outcome.DELIVERED, None),
    TEMPORARY_CODE.lower(): (Outcome.SOFTBOUNCE, None),
}

_STATUS = re.compile(r"^(0x[0-9a-f]{4})(?![0-9a-z])\s*(.*)$", re.IGNORECASE | re.DOTALL)
_MSISDN = re.compile(r"^\+?[0-9]{3,20}$")


def map_delivery_report(params: Mapping[str, str], received_at: datetime,
                        overrides: Overrides | None = None) -> DeliveryReport:
    """Map one `orderID/time/date/msisdn/status` notification to a normalised report."""
    values = lower_keys(params)
    order_id = required_as_spelled(values, "orderID")
    event_at = parse_event_time(required(values, "date"), required(values, "time"))
    raw_msisdn = values.get("msisdn", "")
    recipient = repair_msisdn(raw_msisdn)
    status = required(values, "status")
    if not raw_msisdn.lstrip().startswith("+") and recipient.startswith("+"):
        # The vendor left every `+` un-encoded; unstripped, a status may begin with the number.
        status = restore_plus(values["status"], recipient)
    status_code, status_text = split_status(status)
    outcome, error_type = _rule(status_code, overrides)
    return DeliveryReport(vendor_message_id=order_id, recipient=recipient, status_code=status_code,
                          status_text=status_text, event_at=event_at, outcome=outcome, error_type=error_type)


def parse_event_time(date: str, time: str) -> datetime:
    """Combine `DDMMYYYY` and `HHMMSS` into a naive UTC datetime."""
    if not re.fullmatch(r"[0-9]{8}", date):
        raise MappingError("date", "must be DDMMYYYY")
    if not re.fullmatch(r"[0-9]{6}", time):
        raise MappingError("time", "must be HHMMSS")
    # Fixed-width digits: slicing is exact, and several times cheaper than strptime per receipt.
    try:
        day = datetime(int(date[4:]), int(date[2:4]), int(date[:2]))
    except ValueError:
        raise MappingError("date", f"{date!r} is not a calendar date") from None
    try:
        return day.replace(hour=int(time[:2]), minute=int(time[2:4]), second=int(time[4:]))
    except ValueError:
        raise MappingError("time", f"{time!r} is not a time of day") from None


def repair_msisdn(raw: str) -> str:
    """Return the phone number, restoring a `+` that arrived un-encoded (decoded as a space)."""
    value = phone_number(raw)
    if value is None:
        raise MappingError("msisdn", "is required")
    if not _MSISDN.fullmatch(value):
        raise MappingError("msisdn", "must be a phone number: digits with an optional leading +")
    return value


def restore_plus(status: str, number: str) -> str:
    """Restore the `+` before the number in a status whose un-encoded `+` was decoded as a space."""
    # The space stands where the `+` stood: after a space or quote (or first), right before the digits.
    return re.sub(rf"(?<![^\s'\"])\s(?={re.escape(number[1:])}(?![0-9]))", "+", status)


def split_status(raw: str) -> tuple[str, str]:
    """Split `'0x4503 text'` into (`0x4503`, `text`); a status without a code yields ("", text)."""
    value = _strip_quotes(raw.strip())
    match = _STATUS.match(value)
    if not match:
        return "", value
    return match.group(1), _strip_quotes(match.group(2).strip())


def _strip_quotes(value: str) -> str:
    for quote in ("'", '"'):
        if len(value) >= 2 and value.startswith(quote) and value.endswith(quote):
            return value[1:-1].strip()
    return value.strip(" '\"")


def _rule(status_code: str, overrides: Overrides | None) -> OutcomeRule:
    """Return the outcome of a code (`""` for a success report); override keys are codes such as `0x4503`."""
    permanent = (Outcome.HARDBOUNCE, None)
    return find_rule([status_code.lower()], _BUILT_IN_RULES, overrides) or permanent
