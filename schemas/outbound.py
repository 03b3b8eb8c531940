"""Validation of `POST /clients/{clientId}/messages` bodies, following the spec's 400 rules.

A fault of the payload as a whole answers `globalError`; faults of single messages
answer `messageSpecificErrors` with one entry per bad message, and nothing of the
batch is accepted. Each entry's errorContext holds the message's `index` in the
batch and its first fault (`field`, `fault`), checked in the order
emarsysMessageId, source, destination, message.

A bad message without a usable emarsysMessageId (absent, empty, not a string, or the
item is not an object) cannot be named by its id, and an entry under an id Emarsys
never sent could not be matched, so it fails the payload: `globalError` with its
`index` and `field`. An id of spaces is an id; one refused for what it holds (too
long, NUL) still names its message. A repeated emarsysMessageId makes every
occurrence after the first a bad message.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from errors import ServiceError
from schemas.text import no_nul_characters

MAX_BATCH_SIZE = 1000
# The message id column's width; a sender (source) longer than 32 characters no SMS network carries.
MAX_MESSAGE_ID_LENGTH = 100
MAX_SOURCE_LENGTH = 32
FIELD_ORDER = ("emarsysMessageId", "source", "destination", "message")
EMARSYS = "emarsys"
CLIENT = "client"


@dataclass(frozen=True)
class OutboundMessage:
    """One valid outbound message of a batch."""

    emarsys_message_id: str
    source: str
    destination: str
    body: str


class OutboundBatchError(ServiceError):
    """A batch the spec says to refuse with 400; the body is the spec's OutboundMessageBatchError."""

    status_code = 400
    error = "invalid_outbound_batch"

    def __init__(self, message: str, body: dict[str, Any]):
        super().__init__(message, body=body)


def payload_error(fault: str, **context: Any) -> OutboundBatchError:
    """Return the globalError for a payload-level fault, errorType emarsys."""
    return _global_error(EMARSYS, {"fault": fault, **context})


def client_error(description: str) -> OutboundBatchError:
    """Return the globalError for a client whose setup cannot send, errorType client."""
    return _global_error(CLIENT, {"description": description})


def _global_error(error_type: str, context: dict[str, Any]) -> OutboundBatchError:
    body = {"globalError": {"errorType": error_type, "isErrorTransient": False,
                            "errorContext": context}}
    return OutboundBatchError(f"outbound batch refused ({error_type})", body)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("is empty")


def _unicode(value: str) -> None:
    # A lone surrogate (JSON allows "\udc00") cannot be stored in PostgreSQL nor sent to a vendor.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("contains a lone surrogate, not valid Unicode text") from None


def _text(*validators: Any, blank: bool = False) -> fields.String:
    presence = validate.Length(min=1, error="is empty") if blank else _not_blank
    return fields.String(required=True, validate=[presence, no_nul_characters, _unicode, *validators],
                         error_messages={"required": "is missing", "null": "is missing", "invalid": "must be a string"})


class OutboundMessageSchema(Schema):
    """Validate one message of an outbound batch."""

    class Meta:
        unknown = EXCLUDE

    # The contract asks only for one character: an id of spaces is Emarsys's to choose.
    emarsysMessageId = _text(validate.Length(
        max=MAX_MESSAGE_ID_LENGTH, error="is longer than {max} characters"), blank=True)
    source = _text(validate.Length(max=MAX_SOURCE_LENGTH, error="is longer than {max} characters"))
    # International format: digits only, 6 to 15 of them, optionally after one '+'.
    destination = _text(validate.Regexp(
        r"^\+?[0-9]{6,15}\Z", error="is not an international number (6 to 15 digits, optional leading +)"))
    message = _text()


_MESSAGE_SCHEMA = OutboundMessageSchema(many=True)


def load_outbound_batch_json(raw: bytes | str) -> list[OutboundMessage]:
    """Parse and validate a raw request body, or raise OutboundBatchError."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise payload_error("the body is not valid JSON") from None
    except RecursionError:
        raise payload_error("the body is not valid JSON: it is nested too deeply") from None
    return load_outbound_batch(body)


def load_outbound_batch(body: object) -> list[OutboundMessage]:
    """Validate a parsed batch body and return its messages, or raise OutboundBatchError."""
    items = _message_items(body)
    try:
        loaded = _MESSAGE_SCHEMA.load(items)
        field_faults: dict[int, dict[str, list[str]]] = {}
    except ValidationError as exc:
        loaded, field_faults = [], exc.messages
    errors = _message_errors(items, field_faults)
    if errors:
        raise OutboundBatchError(f"{len(errors)} invalid message(s) in the batch",
                                 {"messageSpecificErrors": errors})
    return [OutboundMessage(emarsys_message_id=item["emarsysMessageId"],
                            source=item["source"].strip(),
                            destination=item["destination"],
                            body=item["message"]) for item in loaded]


def _message_items(body: object) -> list[Any]:
    if not isinstance(body, dict):
        raise payload_error("the body is not a JSON object")
    if "messages" not in body:
        raise payload_error("the body has no messages property")
    items = body["messages"]
    if not isinstance(items, list):
        raise payload_error("messages is not an array")
    if not items:
        raise payload_error("messages is empty; a batch holds 1 to 1000 messages", count=0)
    if len(items) > MAX_BATCH_SIZE:
        raise payload_error("messages holds more than 1000 messages", count=len(items),
                            maxItems=MAX_BATCH_SIZE)
    return items


def _message_errors(items: list[Any], field_faults: dict[int, Any]) -> list[dict[str, Any]]:
    first_index_of: dict[str, int] = {}
    errors = []
    for index, item in enumerate(items):
        faults = field_faults.get(index, {})
        message_id = _usable_id(item, faults)
        if message_id is not None and message_id in first_index_of:
            faults = {"emarsysMessageId": [
                f"repeats the emarsysMessageId of messages[{first_index_of[message_id]}]"], **faults}
        elif message_id is not None:
            first_index_of[message_id] = index
        reported_id = _reported_id(item)
        if faults and reported_id is None:
            raise _unidentifiable(index, faults)
        if faults:
            errors.append(_message_error(index, reported_id, faults))
    return errors


def _unidentifiable(index: int, faults: dict[str, Any]) -> OutboundBatchError:
    # Reported under an id Emarsys never sent, the message could not be matched, and Emarsys
    # would resend it with the whole batch for ever: the payload as a whole is at fault.
    field, fault = _named_fault(index, faults)
    return payload_error(f"{field} {fault}; a message without a usable emarsysMessageId cannot be "
                         "failed alone", index=index, field=field)


def _usable_id(item: Any, faults: dict[str, Any]) -> str | None:
    if not isinstance(item, dict) or "emarsysMessageId" in faults:
        return None
    return item["emarsysMessageId"]


def _reported_id(item: Any) -> str | None:
    # Any id the message carries names it, even one refused as too long: Emarsys then fails
    # that message alone and retries the others.
    message_id = item.get("emarsysMessageId") if isinstance(item, dict) else None
    return message_id if isinstance(message_id, str) and message_id else None


def _message_error(index: int, message_id: str, faults: dict[str, Any]) -> dict[str, Any]:
    field, fault = _named_fault(index, faults)
    return {"emarsysMessageId": message_id, "errorType": EMARSYS, "isErrorTransient": False,
            "errorContext": {"index": index, "field": field, "fault": fault}}


def _named_fault(index: int, faults: dict[str, Any]) -> tuple[str, str]:
    if "_schema" in faults:  # marshmallow's key for a non-object item
        return f"messages[{index}]", "is not a JSON object"
    return _first_fault(faults)


def _first_fault(faults: dict[str, Any]) -> tuple[str, str]:
    for field in FIELD_ORDER:
        if field in faults:
            return field, faults[field][0]
    field, messages = next(iter(faults.items()))
    return field, str(messages[0])
