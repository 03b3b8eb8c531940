"""The normalised vocabulary every vendor report is mapped into."""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


class Outcome(str, enum.Enum):
    """Delivery outcome, in Emarsys's DeliveryReport vocabulary."""

    ACCEPTED = "ACCEPTED"
    DELIVERED = "DELIVERED"
    SOFTBOUNCE = "SOFTBOUNCE"
    HARDBOUNCE = "HARDBOUNCE"
    UNKNOWN = "UNKNOWN"
    ERROR = "ERROR"


class ErrorType(str, enum.Enum):
    """Why a message ended in ERROR, in Emarsys's vocabulary."""

    AUTHENTICATION = "AUTHENTICATION"
    INVALID_SENDER_ID = "INVALID_SENDER_ID"
    INSUFFICIENT_CREDIT = "INSUFFICIENT_CREDIT"
    UNKNOWN = "UNKNOWN"


PERMANENT = "Permanent"
TEMPORARY = "Temporary"

# A state never moves to a lower rank; equal ranks let the newer event win.
OUTCOME_RANK = {
    Outcome.ACCEPTED: 1,
    Outcome.UNKNOWN: 1,
    Outcome.SOFTBOUNCE: 2,
    Outcome.ERROR: 2,
    Outcome.DELIVERED: 3,
    Outcome.HARDBOUNCE: 3,
}


# The longest values the stores keep (models use these widths); a longer one is refused with 400
# rather than failing in PostgreSQL after the request was read.
MAX_MESSAGE_ID_LENGTH = 100
MAX_PHONE_NUMBER_LENGTH = 64
MAX_STATUS_CODE_LENGTH = 40
MAX_VENDOR_NAME_LENGTH = 40


class MappingError(ValueError):
    """A vendor request cannot be mapped: names the parameter and the fault."""

    def __init__(self, field: str, fault: str):
        super().__init__(f"{field}: {fault}")
        self.field = field
        self.fault = fault

    def renamed(self, parameter_names: Mapping[str, str]) -> MappingError:
        """Return this error under the vendor's own name for the field, if it has one."""
        name = parameter_names.get(self.field)
        return self if name is None else MappingError(name, self.fault)


@dataclass(frozen=True)
class DeliveryReport:
    """One vendor delivery report, normalised. Times are naive UTC."""

    vendor_message_id: str
    recipient: str | None
    status_code: str
    status_text: str
    event_at: datetime
    outcome: Outcome
    error_type: ErrorType | None = None

    def __post_init__(self) -> None:
        check_lengths({"vendor_message_id": (self.vendor_message_id, MAX_MESSAGE_ID_LENGTH),
                       "recipient": (self.recipient, MAX_PHONE_NUMBER_LENGTH),
                       "status_code": (self.status_code, MAX_STATUS_CODE_LENGTH)})

    @property
    def bounce_type(self) -> str | None:
        """Return the SAP bounce type this outcome implies, or None."""
        return bounce_type_for(self.outcome)


@dataclass(frozen=True)
class InboundMessage:
    """One mobile-originated message, normalised. Times are naive UTC."""

    vendor_message_id: str
    source: str
    destination: str
    body: str
    received_at: datetime

    def __post_init__(self) -> None:
        check_lengths({"vendor_message_id": (self.vendor_message_id, MAX_MESSAGE_ID_LENGTH),
                       "source": (self.source, MAX_PHONE_NUMBER_LENGTH),
                       "destination": (self.destination, MAX_PHONE_NUMBER_LENGTH)})


def check_lengths(values: dict[str, tuple[str | None, int]]) -> None:
    """Raise MappingError for the first value longer than its store keeps."""
    for field, (value, limit) in values.items():
        if value is not None and len(value) > limit:
            raise MappingError(field, f"must be at most {limit} characters")


def storable_status_code(*candidates: str | None) -> str:
    """Return the first candidate the store keeps whole, else the last one cut to fit."""
    # Refused with 400, a status would be resent for ever and never stored: cut, it is stored (as
    # UNKNOWN, unless a table knows it) and the status text keeps it whole.
    for candidate in candidates:
        if candidate and len(candidate) <= MAX_STATUS_CODE_LENGTH:
            return candidate
    return (candidates[-1] or "")[:MAX_STATUS_CODE_LENGTH]


def bounce_type_for(outcome: Outcome) -> str | None:
    """Return `Permanent`, `Temporary` or None for an outcome."""
    if outcome is Outcome.HARDBOUNCE:
        return PERMANENT
    if outcome in (Outcome.SOFTBOUNCE, Outcome.ERROR):
        # Errors are not the recipient's fault: never mark the number permanently bad.
        return TEMPORARY
    return None
