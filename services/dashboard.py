"""Queries behind the operator dashboard; every value it returns is safe to show (masked, no secrets)."""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_

from logging_setup import mask_digits, mask_phone_numbers
from mappers.params import TEXT_PARAMETERS
from mappers.registry import VendorAdapter
from mappers.report import PERMANENT, TEMPORARY, Outcome
from models import Bounce, MessageState, OutboundMessage, OutboxItem, RawEvent, db
from services.charts import StackedBars
from services.clock import utcnow
from services.forwarder import DONE
from services.outbox import outbox_status

CHART_HOURS = 24
HISTORY_LIMIT = 100
# Bottom to top of each stacked bar: the good news first, the failures on top where they show.
OUTCOME_ORDER = [Outcome.DELIVERED, Outcome.ACCEPTED, Outcome.UNKNOWN, Outcome.SOFTBOUNCE,
                 Outcome.HARDBOUNCE, Outcome.ERROR]
OUTCOME_COLOURS = {"DELIVERED": "#2e7d32", "ACCEPTED": "#90caf9", "UNKNOWN": "#9e9e9e",
                   "SOFTBOUNCE": "#f9a825", "HARDBOUNCE": "#c62828", "ERROR": "#6a1b9a"}
# WaId: Twilio's WhatsApp sender, the whole number without its "+" (and named like an id).
PHONE_KEYS = {"to", "from", "msisdn", "recipient", "destination", "source", "phone_number", "waid"}
# Message content under numbered names: Genesys MMS `mms_attachment[0].content`, Twilio `MediaUrl0`.
BODY_KEY = re.compile(r"(^|[._\]])content$|^mediaurl\d*$", re.IGNORECASE)
SECRET_KEY = re.compile(r"pass|secret|token|signature|auth|apikey|api_key|credential", re.IGNORECASE)
ID_KEY = re.compile(r"id$", re.IGNORECASE)
# SAP Digital Interconnect's date=01122026 and time=101500 are digit runs, but no phone's.
TIME_KEY = re.compile(r"(date|time|stamp|_at)$", re.IGNORECASE)


@dataclass(frozen=True)
class ForwardingHealth:
    """How well reports flow to Emarsys."""

    depth: int
    oldest_pending_age: timedelta | None
    last_success: datetime | None
    dead_letters: int


@dataclass(frozen=True)
class MessageHistory:
    """Everything stored about one message id, as rows of display-safe values."""

    message_id: str
    identifiers: list[str]
    raw_events: list[dict[str, Any]]
    states: list[dict[str, Any]]
    bounces: list[dict[str, Any]]
    outbound: list[dict[str, Any]]
    forwarding: list[dict[str, Any]]

    @property
    def found(self) -> bool:
        """Tell whether anything at all is stored about the message."""
        return any((self.raw_events, self.states, self.bounces, self.outbound, self.forwarding))


def mask_phone(value: str | None) -> str:
    """Replace every digit but the last four with `*`."""
    return mask_digits(value) if value else ""


def safe_text(value: str | None) -> str:
    """Return free text with phone-number-like runs masked."""
    return mask_phone_numbers(value or "")


def safe_params(params: dict[str, Any] | None, adapter: VendorAdapter | None = None) -> dict[str, str]:
    """Return vendor parameters with secrets and bodies hidden and phone numbers masked.

    Besides the usual names, those the vendor's adapter declares (a mapping file's body,
    sender, destination and recipient parameters) are hidden or masked too.
    """
    body_keys = adapter.body_parameters if adapter else TEXT_PARAMETERS
    phone_keys = PHONE_KEYS | (adapter.phone_parameters if adapter else frozenset())
    shown = {}
    for key, value in (params or {}).items():
        text, name = str(value), str(key).lower()
        if SECRET_KEY.search(name):
            shown[key] = "[hidden]"
        elif name in body_keys or BODY_KEY.search(name):
            shown[key] = f"[{len(text)} characters hidden]"
        elif name in phone_keys:
            shown[key] = mask_phone(text)
        elif (ID_KEY.search(name) or TIME_KEY.search(name)) and not text.lstrip().startswith("+"):
            # Ids are what the operator searches by, and times what he reads; some are long digit
            # runs. One that starts with "+" is a phone number (a sender_id, a subscriberId).
            shown[key] = text
        else:
            shown[key] = safe_text(text)
    return shown


def chart_start(now: datetime, hours: int = CHART_HOURS) -> datetime:
    """Return the start of the first hourly bucket of a chart that ends with the current hour."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)


def reports_per_hour(vendor: str | None, now: datetime | None = None,
                     hours: int = CHART_HOURS) -> dict[datetime, dict[str, int]]:
    """Count delivery reports by the hour they arrived and their outcome, for one vendor or all."""
    start = chart_start(now or utcnow(), hours)
    hour = _hour_of(RawEvent.received_at)
    stmt = (db.select(hour, RawEvent.outcome, func.count())
            # Vendors' reports only: the dispatcher's own send results are raw events too.
            .where(RawEvent.received_at >= start, RawEvent.outcome.is_not(None),
                   RawEvent.kind == "delivery_report")
            .group_by(hour, RawEvent.outcome))
    if vendor:
        stmt = stmt.where(RawEvent.vendor == vendor)
    counts: dict[datetime, dict[str, int]] = {start + timedelta(hours=n): {} for n in range(hours)}
    for bucket, outcome, count in db.session.execute(stmt):
        bucket = datetime.fromisoformat(bucket) if isinstance(bucket, str) else bucket
        counts.setdefault(bucket, {})[outcome] = count
    return counts


def report_chart(counts: dict[datetime, dict[str, int]], vendor: str | None) -> StackedBars:
    """Turn hourly counts into a stacked bar chart, one series per outcome."""
    hours = sorted(counts)
    series = {outcome.value: [counts[hour].get(outcome.value, 0) for hour in hours] for outcome in OUTCOME_ORDER}
    title = f"Reports per hour, last {len(hours)} h (UTC), {vendor or 'all vendors'}"
    return StackedBars(title=title, categories=[f"{hour:%H}:00" for hour in hours], series=series,
                       colours=OUTCOME_COLOURS)


def chart_vendors(known: Iterable[str], now: datetime | None = None) -> list[str]:
    """Return the configured vendors and every vendor with reports in the chart's window."""
    since = chart_start(now or utcnow())
    seen = db.session.scalars(db.select(RawEvent.vendor).where(RawEvent.received_at >= since).distinct())
    return sorted(set(known) | set(seen))


def waiting_bounces() -> dict[str, int]:
    """Count the bounces SAP has not pulled yet, by type."""
    # Both conditions of ix_bounces_waiting, so that the count reads only that index.
    rows = db.session.execute(db.select(Bounce.type, func.count())
                              .where(Bounce.pulled_at.is_(None), Bounce.type.in_([PERMANENT, TEMPORARY]))
                              .group_by(Bounce.type))
    return {PERMANENT: 0, TEMPORARY: 0} | {bounce_type: count for bounce_type, count in rows}


def forwarding_health(now: datetime | None = None) -> ForwardingHealth:
    """Return outbox depth, oldest waiting age, last successful forward and dead letters."""
    status = outbox_status(now, count_done=False)
    # Only a done item has a sent_at: the condition lets ix_outbox_sent answer from its last entry.
    last_success = db.session.scalar(db.select(func.max(OutboxItem.sent_at)).where(OutboxItem.state == DONE))
    return ForwardingHealth(depth=status.counts["pending"] + status.counts["leased"],
                            oldest_pending_age=status.oldest_pending_age, last_success=last_success,
                            dead_letters=status.counts["dead"])


def message_history(message_id: str, vendors: Mapping[str, VendorAdapter] | None = None) -> MessageHistory:
    """Return the whole stored history of a message, found by any id it is known by.

    `vendors` (the vendor registry) tells which parameters of each vendor's raw events to hide.
    """
    keys = _SearchKeys.read()
    identifiers = _related_identifiers(message_id, keys)
    states = _rows(db.select(MessageState).where(keys.states_matching(identifiers)).order_by(MessageState.id))
    return MessageHistory(
        message_id=message_id, identifiers=sorted(identifiers),
        raw_events=[_raw_event_view(event, (vendors or {}).get(event.vendor)) for event in _rows(
            db.select(RawEvent).where(RawEvent.vendor_message_id.in_(identifiers)).order_by(RawEvent.id))],
        states=[_state_view(state) for state in states],
        # A bounce's message_id is its state's vendor_message_id, so its state is among those found.
        bounces=[_bounce_view(bounce) for bounce in _rows(
            db.select(Bounce).where(Bounce.message_state_id.in_([state.id for state in states]))
            .order_by(Bounce.id))],
        outbound=[_outbound_view(message) for message in _rows(
            db.select(OutboundMessage).where(keys.outbound_matching(identifiers)).order_by(OutboundMessage.id))],
        forwarding=[_forwarding_view(item) for item in _rows(
            db.select(OutboxItem).where(keys.outbox_matching(identifiers)).order_by(OutboxItem.id))],
    )


@dataclass(frozen=True)
class _SearchKeys:
    """The values leading the composite indexes a search probes: the few vendors and clients stored.

    message_states is unique on (vendor, vendor_message_id), outbound_messages on (client_id,
    emarsys_message_id) and the outbox is ordered on (client_id, message_key): naming every vendor
    or client turns a lookup by the second column into one index probe per pair, where the second
    column alone would read the table whole. Cheaper than more indexes every receipt must update.
    """

    vendors: list[str]
    outbound_clients: list[uuid.UUID]
    outbox_clients: list[uuid.UUID]

    @classmethod
    def read(cls) -> "_SearchKeys":
        """Read the stored vendors and clients, one index probe each."""
        return cls(vendors=_distinct(MessageState.vendor), outbound_clients=_distinct(OutboundMessage.client_id),
                   outbox_clients=_distinct(OutboxItem.client_id))

    def states_matching(self, identifiers: set[str]) -> ColumnElement[bool]:
        """Return the condition of the message states known by any of these ids."""
        return or_(and_(MessageState.vendor.in_(self.vendors), MessageState.vendor_message_id.in_(identifiers)),
                   MessageState.emarsys_message_id.in_(identifiers))

    def outbound_matching(self, identifiers: set[str]) -> ColumnElement[bool]:
        """Return the condition of the campaign messages known by any of these ids."""
        return or_(OutboundMessage.public_id.in_(identifiers), OutboundMessage.vendor_message_id.in_(identifiers),
                   and_(OutboundMessage.client_id.in_(self.outbound_clients),
                        OutboundMessage.emarsys_message_id.in_(identifiers)))

    def outbox_matching(self, identifiers: set[str]) -> ColumnElement[bool]:
        """Return the condition of the outbox items keyed by any of these ids."""
        return and_(OutboxItem.client_id.in_(self.outbox_clients), OutboxItem.message_key.in_(identifiers))


def _distinct(column: ColumnElement) -> list:
    # A loose index scan: each step asks the index on `column` for the next greater value, so a
    # handful of vendors or clients cost a handful of probes however many rows they have.
    # ORDER BY ... LIMIT 1, not min(): PostgreSQL has no min() of a uuid.
    first = db.select(column).where(column.is_not(None)).order_by(column).limit(1).scalar_subquery()
    found = db.select(first.label("value")).cte("found", recursive=True)
    following = (db.select(column).where(column > found.c.value).order_by(column).limit(1).scalar_subquery())
    found = found.union_all(db.select(following).where(found.c.value.is_not(None)))
    return list(db.session.scalars(db.select(found.c.value).where(found.c.value.is_not(None))))


def _hour_of(column: ColumnElement) -> ColumnElement:
    if db.session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _rows(stmt) -> list:
    return list(db.session.scalars(stmt.limit(HISTORY_LIMIT)))


def _related_identifiers(message_id: str, keys: _SearchKeys) -> set[str]:
    # A message is known by its Emarsys id, our public id and the vendor's id; outbox rows are keyed
    # by the Emarsys id (or the vendor's id without one), so collect every alias before looking.
    identifiers = {message_id}
    for _ in range(2):
        for message in _rows(db.select(OutboundMessage).where(keys.outbound_matching(identifiers))):
            identifiers |= {message.emarsys_message_id, message.public_id, message.vendor_message_id}
        for state in _rows(db.select(MessageState).where(keys.states_matching(identifiers))):
            identifiers |= {state.vendor_message_id, state.emarsys_message_id}
        identifiers.discard(None)
    return identifiers


def _client(client_id: uuid.UUID | None) -> str:
    return str(client_id) if client_id else ""


def _raw_event_view(event: RawEvent, adapter: VendorAdapter | None) -> dict[str, Any]:
    return {"received_at": event.received_at, "vendor": event.vendor, "kind": event.kind,
            "client_id": _client(event.client_id), "vendor_message_id": event.vendor_message_id,
            "params": safe_params(event.params, adapter)}


def _state_view(state: MessageState) -> dict[str, Any]:
    return {"vendor": state.vendor, "vendor_message_id": state.vendor_message_id,
            "emarsys_message_id": state.emarsys_message_id or "", "client_id": _client(state.client_id),
            "recipient": mask_phone(state.recipient), "outcome": state.outcome,
            "error_type": state.error_type or "", "status_code": safe_text(state.status_code),
            "status_text": safe_text(state.status_text), "event_at": state.event_at,
            "updated_at": state.updated_at}


def _bounce_view(bounce: Bounce) -> dict[str, Any]:
    return {"message_id": bounce.message_id, "type": bounce.type, "recipient": mask_phone(bounce.recipient),
            "status_code": safe_text(bounce.status_code), "status_text": safe_text(bounce.status_text),
            "event_at": bounce.event_at, "pulled_at": bounce.pulled_at}


def _outbound_view(message: OutboundMessage) -> dict[str, Any]:
    # The body is the customer's campaign text: never shown.
    return {"public_id": message.public_id, "emarsys_message_id": message.emarsys_message_id,
            "client_id": _client(message.client_id), "destination": mask_phone(message.destination),
            "state": message.state, "attempts": message.attempts, "vendor": message.vendor or "",
            "vendor_message_id": message.vendor_message_id or "", "last_error": safe_text(message.last_error),
            "created_at": message.created_at, "updated_at": message.updated_at}


def _forwarding_view(item: OutboxItem) -> dict[str, Any]:
    return {"id": item.id, "kind": item.kind, "message_key": item.message_key, "state": item.state,
            "attempts": item.attempts, "event_at": item.event_at, "last_error": safe_text(item.last_error),
            "sent_at": item.sent_at, "created_at": item.created_at}
