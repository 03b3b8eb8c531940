"""Sending through a client's SMS vendor, and testing its credentials.

Every vendor call goes through `transport.vendor_call`: one shared session per vendor host, so
connections are pooled across messages and clients, always a timeout, public addresses only.
Neither secrets nor message bodies are ever logged.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from mappers.report import MAX_MESSAGE_ID_LENGTH, MAX_STATUS_CODE_LENGTH, ErrorType, Outcome
from schemas.client_config import GENESYS, TWILIO, ClientConfig
from schemas.outbound import OutboundMessage
from schemas.text import storable_text
from services.vendors import transport
# Re-exported: the worker's shutdown and the tests close the shared sessions through this package.
from services.vendors.transport import close_sessions, session_for  # noqa: F401

SUCCESS = "success"
FAILURE = "error"
CREDENTIAL = "credential"
TEMPORARY = "temporary"
INTEGRATION = "integration"


@dataclass(frozen=True)
class SendResult:
    """What one send attempt achieved; outcome None with retry True means try again later.

    A vendor's values are made to fit the columns that record them: a send whose result could
    not be recorded would be sent again after every lease.
    """

    outcome: Outcome | None
    error_type: ErrorType | None
    vendor_message_id: str | None
    status_code: str
    status_text: str
    retry: bool

    def __post_init__(self) -> None:
        """Make the vendor's texts storable; drop a vendor id that cannot be a message's key."""
        object.__setattr__(self, "status_code", storable_text(self.status_code)[:MAX_STATUS_CODE_LENGTH])
        object.__setattr__(self, "status_text", storable_text(self.status_text))
        vendor_id = None if self.vendor_message_id is None else str(self.vendor_message_id)  # a JSON number
        # One too long or with control characters: receipts carrying it would be refused too, so our
        # own id stays the key.
        unusable = vendor_id is not None and (len(vendor_id) > MAX_MESSAGE_ID_LENGTH
                                              or not vendor_id.isprintable())
        object.__setattr__(self, "vendor_message_id", None if unusable else vendor_id)


@dataclass(frozen=True)
class EarlierAttempt:
    """A retry's hint: an earlier attempt may have reached the vendor at or after `since` (naive UTC).

    `taken_vendor_ids` are the vendor ids recorded for other messages to the same recipient,
    which therefore cannot be this message's. `look_up_only`: no attempt is left, so a vendor
    that can look the earlier attempt up does, but sends nothing.
    """

    since: datetime
    taken_vendor_ids: frozenset[str] = frozenset()
    look_up_only: bool = False


def accepted(vendor_message_id: str | None, status_code: str, status_text: str) -> SendResult:
    """Return the result of a send the vendor took over."""
    return SendResult(Outcome.ACCEPTED, None, vendor_message_id, status_code, status_text, False)


def retry_later(status_code: str, status_text: str) -> SendResult:
    """Return the result of a send whose fate is open and that must be retried unchanged."""
    return SendResult(None, None, None, status_code, status_text, True)


def refused(outcome: Outcome, error_type: ErrorType | None, status_code: str,
            status_text: str) -> SendResult:
    """Return the result of a send the vendor refused for good."""
    return SendResult(outcome, error_type, None, status_code, status_text, False)


@dataclass(frozen=True)
class ConnectionTestResult:
    """The answer of a vendor connection test."""

    state: str
    error_type: str | None = None
    description: str | None = None

    @classmethod
    def success(cls) -> ConnectionTestResult:
        """Return a successful test."""
        return cls(SUCCESS)

    @classmethod
    def failure(cls, error_type: str, description: str) -> ConnectionTestResult:
        """Return a failed test: error_type is credential, temporary or integration."""
        return cls(FAILURE, error_type, description)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec's TestConnectionSuccessResponse or TestConnectionFailureResponse."""
        if self.state == SUCCESS:
            return {"state": SUCCESS}
        return {"state": FAILURE, "description": self.description or "", "errorType": self.error_type}


# The most requests one send makes: a Twilio retry looks for the earlier attempt's message first.
REQUESTS_PER_SEND = 2


def vendor_request_timeout(seconds: float) -> tuple[float, float]:
    """Return the (connect, read) timeouts of one vendor request, adding up to `seconds`.

    requests applies a single number to the connect and to the read each, so one request could
    take twice the vendor timeout, and a send past its lease could be sent again by another worker.
    """
    return seconds / 2, seconds / 2


def unreachable_send(vendor_name: str, failure: str) -> SendResult:
    """Return the result of a send that got no usable answer (a transport failure)."""
    if failure == transport.NOT_PUBLIC:
        # A configuration fault, not a vendor's hiccup: retrying would fail the same way.
        return refused(Outcome.ERROR, ErrorType.UNKNOWN, failure, "baseUrl is not a public address")
    return retry_later(failure, f"no usable answer from {vendor_name} ({failure})")


def unreachable_test(vendor_name: str, failure: str) -> ConnectionTestResult:
    """Return the connection test result of a request that got no usable answer."""
    if failure == transport.NOT_PUBLIC:
        return ConnectionTestResult.failure(
            INTEGRATION, "baseUrl is not a public address; the service calls only public vendor addresses")
    return ConnectionTestResult.failure(TEMPORARY, f"{vendor_name} could not be reached ({failure})")


def send_message(config: ClientConfig, message: OutboundMessage, our_message_id: str,
                 status_callback_url: str | None, timeout: float,
                 earlier_attempt: EarlierAttempt | None = None) -> SendResult:
    """Send one message through the client's vendor and classify the answer.

    `earlier_attempt` is set on a retry, whose vendor must then not send the text a second time.
    """
    return _vendor_module(config.vendor).send_message(
        config, message, our_message_id, status_callback_url, timeout, earlier_attempt)


def test_connection(config: ClientConfig, timeout: float) -> ConnectionTestResult:
    """Check the client's vendor credentials with a real, harmless vendor request."""
    return _vendor_module(config.vendor).test_connection(config, timeout)


# pytest would otherwise collect the function above as a test wherever it is imported.
test_connection.__test__ = False  # type: ignore[attr-defined]


def _vendor_module(vendor: str) -> ModuleType:
    # Imported here because the vendor modules import this package's result types.
    from services.vendors import genesys, twilio

    modules = {GENESYS: genesys, TWILIO: twilio}
    if vendor not in modules:
        raise ValueError(f"unsupported vendor {vendor!r}")
    return modules[vendor]
