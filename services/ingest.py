"""Store vendor reports: raw event, never-backwards state and bounce record, in one transaction."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import Connection, delete, literal, or_, tuple_

from mappers.report import OUTCOME_RANK, DeliveryReport, ErrorType, InboundMessage, Outcome
from models import Bounce, Client, InboundMessageRecord, MessageState, OutboxItem, RawEvent, db, dialect_insert
from schemas.callbacks import delivery_report_item, inbound_message_item
from services.clock import utcnow
from services.metrics import count_report
from services.prepared import prepare_once
from services.thread_connections import ThreadConnections

log = logging.getLogger(__name__)

# The report statement is prepared once per connection: PostgreSQL then skips parsing and planning
# a five-CTE statement on every receipt. Parameter types are declared so none is guessed.
REPORT_PARAMETER_TYPES = {
    "vendor": "text", "kind": "text", "client_id": "text", "vmid": "text", "fingerprint": "text",
    "params": "text", "now": "timestamp", "emid": "text", "recipient": "text", "outcome": "text",
    "error_type": "text", "rank": "smallint", "status_code": "text", "status_text": "text",
    "event_at": "timestamp", "bounce_type": "text",
}
PREPARED_NAME = "sms_record_report"
REPORT_CONNECTIONS = "report_connections"


def _prepare_statement() -> str:
    positions = {name: index for index, name in enumerate(REPORT_PARAMETER_TYPES, start=1)}
    named = Path(__file__).with_name("ingest_pg.sql").read_text()
    body = re.sub(r"(?<![:\w]):([a-z_]+)", lambda match: f"${positions[match.group(1)]}", named)
    return f"PREPARE {PREPARED_NAME} ({', '.join(REPORT_PARAMETER_TYPES.values())}) AS {body}"


PREPARE_REPORT_SQL = _prepare_statement()
# Each receipt is a transaction of its own, at REPEATABLE READ: when another receipt of the same
# message commits first, the statement fails on the state row and is retried on a fresh snapshot
# (ThreadConnections.fetch_one). Under READ COMMITTED it would go on with its old snapshot, and
# its bounce withdrawal would miss the bounce that receipt wrote (a DELIVERED message left with a
# bounce served to SAP).
REPORT_CONNECTION_SETUP_SQL = ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                               + PREPARE_REPORT_SQL)
EXECUTE_REPORT_SQL = f"EXECUTE {PREPARED_NAME} ({', '.join(['%s'] * len(REPORT_PARAMETER_TYPES))})"


@dataclass(frozen=True)
class IngestResult:
    """What storing one vendor request did."""

    duplicate: bool
    applied: bool
    message_state_id: int | None = None


def record_delivery_report(vendor: str, report: DeliveryReport, params: dict[str, Any],
                           client_id: uuid.UUID | None = None, emarsys_message_id: str | None = None,
                           kind: str = "delivery_report") -> IngestResult:
    """Store one delivery report in its own transaction; a redelivered request changes nothing.

    The raw event, the state, the bounce record and, for a message of an Emarsys client, the
    outbox row that forwards it are written in one transaction. On PostgreSQL that is one
    statement: the vendor hot path costs one round trip.
    """
    if db.engine.dialect.name == "postgresql":
        return count_report(vendor, report.outcome, _record_in_one_round_trip(
            vendor, report, params, client_id, emarsys_message_id, kind, utcnow()))
    result = add_delivery_report(vendor, report, params, client_id, emarsys_message_id, kind)
    db.session.commit()
    return count_report(vendor, report.outcome, result)


def add_delivery_report(vendor: str, report: DeliveryReport, params: dict[str, Any],
                        client_id: uuid.UUID | None = None, emarsys_message_id: str | None = None,
                        kind: str = "delivery_report") -> IngestResult:
    """Add one delivery report to the caller's transaction, which the caller commits."""
    now = utcnow()
    if db.session.get_bind().dialect.name == "postgresql":
        return _execute_prepared(db.session.connection(), _report_parameters(
            vendor, report, params, client_id, emarsys_message_id, kind, now))
    event_id = _insert_raw_event(vendor, kind, params, client_id, report.vendor_message_id, now,
                                 report.outcome.value)
    if event_id is None:
        return IngestResult(duplicate=True, applied=False)
    state = _upsert_state(vendor, report, client_id, emarsys_message_id, now)
    if state is not None:
        if state.client_id is None:
            _sync_bounce(state.id, report, event_id)
        else:
            _withdraw_bounces([state.id])  # an Emarsys client's message: SAP is never served its bounce
        if (state.client_id is not None and state.emarsys_message_id is not None
                and db.session.get(Client, state.client_id) is not None):
            # As in ingest_pg.sql: an unknown Emarsys id waits for the send result (_adopt_early_reports),
            # and a deleted client's reports are not forwarded (Emarsys would answer 404).
            enqueue_forward(state.client_id, "delivery_report", state.emarsys_message_id,
                            delivery_report_item(report, state.emarsys_message_id), report.event_at, now)
    return IngestResult(duplicate=False, applied=state is not None,
                        message_state_id=state.id if state is not None else None)


def record_inbound_message(vendor: str, message: InboundMessage, params: dict[str, str],
                           client_id: uuid.UUID | None = None) -> IngestResult:
    """Store one inbound message once per (vendor, vendor message id) and commit.

    A message first stored from an open URL, then sent to a client's callback URL, becomes that
    client's and is forwarded: the vendor account was moved to the client's URLs meanwhile.
    """
    now = utcnow()
    _insert_raw_event(vendor, "inbound_message", params, client_id, message.vendor_message_id, now)
    stmt = dialect_insert(InboundMessageRecord).values(
        vendor=vendor, vendor_message_id=message.vendor_message_id, client_id=client_id,
        source=message.source, destination=message.destination, body=message.body,
        received_at=message.received_at,
    )
    stored = InboundMessageRecord.__table__.c
    stmt = stmt.on_conflict_do_update(
        index_elements=["vendor", "vendor_message_id"], set_={"client_id": stmt.excluded.client_id},
        where=stored.client_id.is_(None) & stmt.excluded.client_id.isnot(None))
    # The stored row's time: a message taken from an open URL arrived when it was first stored.
    inserted, received_at = db.session.execute(
        stmt.returning(InboundMessageRecord.id, InboundMessageRecord.received_at)).one_or_none() or (None, None)
    if inserted is not None and client_id is not None:
        first_arrival = replace(message, received_at=received_at)
        enqueue_forward(client_id, "inbound_message", message.vendor_message_id,
                        inbound_message_item(first_arrival), received_at, now)
    db.session.commit()
    if inserted is not None and client_id is None:
        _warn_unforwarded(vendor, message)
    return IngestResult(duplicate=inserted is None, applied=inserted is not None)


def _warn_unforwarded(vendor: str, message: InboundMessage) -> None:
    """Log that an inbound message from an open URL reaches no one (its vendor answer's line is DEBUG)."""
    # SAP Marketing Cloud takes no inbound messages, and only a client's callback URL ties one to an
    # Emarsys client: unlogged, a client's replies (STOP) sent to the open URL would vanish unseen.
    log.warning("inbound message %s from %s arrived on the open URL: stored, tied to no Emarsys client, "
                "so not forwarded (a client's vendor must use its callback URL)",
                message.vendor_message_id, vendor)


def fingerprint(vendor: str, kind: str, client_id: uuid.UUID | None, params: dict[str, Any]) -> str:
    """Return a stable hash that identifies a redelivery of the same request."""
    canonical = json.dumps([vendor, kind, str(client_id or ""), sorted(params.items())], default=str,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _insert_raw_event(vendor, kind, params, client_id, vendor_message_id, now, outcome=None) -> int | None:
    stmt = dialect_insert(RawEvent).values(
        vendor=vendor, kind=kind, client_id=client_id, vendor_message_id=vendor_message_id, outcome=outcome,
        fingerprint=fingerprint(vendor, kind, client_id, params), params=params, received_at=now,
    ).on_conflict_do_nothing(index_elements=["fingerprint"])
    return db.session.execute(stmt.returning(RawEvent.id)).scalar()


def _record_in_one_round_trip(vendor, report, params, client_id, emarsys_message_id, kind, now) -> IngestResult:
    # The vendor hot path: one statement in autocommit mode is one round trip and one commit.
    parameters = _report_parameters(vendor, report, params, client_id, emarsys_message_id, kind, now)
    event_id, state_id = report_connections().fetch_one(EXECUTE_REPORT_SQL, parameters)
    return IngestResult(duplicate=event_id is None, applied=state_id is not None, message_state_id=state_id)


def report_connections() -> ThreadConnections:
    """Return the app's per-thread connections that have the report statement prepared."""
    connections = current_app.extensions.get(REPORT_CONNECTIONS)
    if connections is None:
        connections = current_app.extensions.setdefault(
            REPORT_CONNECTIONS, ThreadConnections(db.engine, REPORT_CONNECTION_SETUP_SQL))
    return connections


def _execute_prepared(connection: Connection, parameters: tuple) -> IngestResult:
    # Through SQLAlchemy, not the raw cursor: a dropped connection then becomes a 503 and
    # invalidates the pool, as on every other path.
    prepare_once(connection, PREPARED_NAME, PREPARE_REPORT_SQL)
    event_id, state_id = connection.exec_driver_sql(EXECUTE_REPORT_SQL, parameters).one()
    return IngestResult(duplicate=event_id is None, applied=state_id is not None, message_state_id=state_id)


def _report_parameters(vendor, report, params, client_id, emarsys_message_id, kind, now) -> tuple:
    # In the order of REPORT_PARAMETER_TYPES, the prepared statement's parameters.
    values = {
        "vendor": vendor, "kind": kind, "client_id": str(client_id) if client_id else None,
        "vmid": report.vendor_message_id, "fingerprint": fingerprint(vendor, kind, client_id, params),
        "params": json.dumps(params, default=str), "now": now, "emid": emarsys_message_id,
        "recipient": report.recipient, "outcome": report.outcome.value,
        "error_type": report.error_type.value if report.error_type else None,
        "rank": OUTCOME_RANK[report.outcome], "status_code": report.status_code,
        "status_text": report.status_text, "event_at": report.event_at, "bounce_type": report.bounce_type,
    }
    return tuple(values[name] for name in REPORT_PARAMETER_TYPES)


def enqueue_forward(client_id: uuid.UUID, kind: str, message_key: str, payload: dict[str, Any],
                    event_at: datetime, now: datetime) -> None:
    """Add one item to the Emarsys outbox, inside the caller's transaction."""
    db.session.execute(dialect_insert(OutboxItem).values(
        client_id=client_id, kind=kind, message_key=message_key[:120], payload=payload, event_at=event_at,
        state="pending", attempts=0, next_attempt_at=now, created_at=now))


def _upsert_state(vendor: str, report: DeliveryReport, client_id, emarsys_message_id, now):
    rank = OUTCOME_RANK[report.outcome]
    stmt = dialect_insert(MessageState).values(
        vendor=vendor, vendor_message_id=report.vendor_message_id, client_id=client_id,
        emarsys_message_id=emarsys_message_id,
        recipient=report.recipient, outcome=report.outcome.value,
        error_type=report.error_type.value if report.error_type else None, rank=rank,
        status_code=report.status_code, status_text=report.status_text,
        event_at=report.event_at, updated_at=now,
    )
    current = MessageState.__table__.c
    stmt = stmt.on_conflict_do_update(
        index_elements=["vendor", "vendor_message_id"],
        set_={
            "recipient": db.func.coalesce(stmt.excluded.recipient, current.recipient),
            "client_id": db.func.coalesce(current.client_id, stmt.excluded.client_id),
            "emarsys_message_id": db.func.coalesce(current.emarsys_message_id, stmt.excluded.emarsys_message_id),
            **{name: stmt.excluded[name] for name in
               ("outcome", "error_type", "rank", "status_code", "status_text", "event_at", "updated_at")},
        },
        # Never backwards: a lower rank is ignored; an equal rank needs a newer-or-equal event. And a
        # report through one client's callback URL never changes another client's message.
        where=((stmt.excluded.rank > current.rank)
               | ((stmt.excluded.rank == current.rank) & (stmt.excluded.event_at >= current.event_at)))
        & (stmt.excluded.client_id.is_(None) | current.client_id.is_(None)
           | (stmt.excluded.client_id == current.client_id))
        & _says_something_new(stmt.excluded, current),
    )
    returning = stmt.returning(MessageState.id, MessageState.client_id, MessageState.emarsys_message_id)
    return db.session.execute(returning).first()


def _withdraw_bounces(state_ids) -> None:
    # Of the given states (ids, or a select of them), unless SAP already has them: what SAP pulled
    # stays as it was served.
    db.session.execute(delete(Bounce).where(Bounce.message_state_id.in_(state_ids), Bounce.pulled_at.is_(None)))


def _says_something_new(excluded, current):
    # As in ingest_pg.sql: a redelivery in other bytes is kept as a raw event only.
    changed = [excluded[name].is_distinct_from(current[name])
               for name in ("outcome", "error_type", "status_code", "status_text", "event_at")]
    filled = [current[name].is_(None) & excluded[name].isnot(None)
              for name in ("client_id", "emarsys_message_id")]
    recipient = excluded.recipient.isnot(None) & excluded.recipient.is_distinct_from(current.recipient)
    return or_(*changed, *filled, recipient)


def _sync_bounce(state_id: int, report: DeliveryReport, event_id: int) -> None:
    if report.bounce_type is None:
        _withdraw_bounces([state_id])  # the retry worked
        return
    recipient = db.select(MessageState.recipient).where(MessageState.id == state_id).scalar_subquery()
    values = dict(message_id=report.vendor_message_id, status_code=report.status_code,
                  status_text=report.status_text, type=report.bounce_type, event_at=report.event_at,
                  seq=event_id)
    stmt = dialect_insert(Bounce).values(message_state_id=state_id, pulled_at=None,
                                         recipient=db.func.coalesce(recipient, literal("")), **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["message_state_id"],
        set_={**{name: stmt.excluded[name] for name in (*values, "recipient")}, "pulled_at": None},
    )
    db.session.execute(stmt)


# Reports sent in one round trip by add_delivery_reports; 16 parameters each keeps a page well
# within what PostgreSQL parses at once.
REPORTS_PER_ROUND_TRIP = 100


@dataclass(frozen=True)
class ReportToAdd:
    """The arguments of one add_delivery_report call, for add_delivery_reports."""

    vendor: str
    report: DeliveryReport
    params: dict[str, Any]
    client_id: uuid.UUID | None = None
    emarsys_message_id: str | None = None
    kind: str = "delivery_report"


def add_send_results(reports: list[ReportToAdd]) -> None:
    """Add the dispatcher's send results to the caller's transaction, then tie earlier vendor reports to them.

    In this order: a vendor report committed before the send results' statement is tied by
    _adopt_early_reports; one arriving after it waits for the caller's commit on the state the
    statement wrote, and then finds the ids there.
    """
    add_delivery_reports(reports)
    _adopt_early_reports(reports)
    _withdraw_bounces_of_client_messages(reports)


def _withdraw_bounces_of_client_messages(reports: list[ReportToAdd]) -> None:
    # At READ COMMITTED the send results' statement withdraws bounces as of its own snapshot: one
    # written by a vendor report that committed while the statement waited for the state is missed.
    # The states are locked now, so a statement of its own sees every bounce they will ever get.
    keys = [(item.vendor, item.report.vendor_message_id) for item in reports if item.client_id]
    if not keys:
        return
    # This also withdraws the bounces of the states _adopt_early_reports has just tied to a client.
    _withdraw_bounces(db.select(MessageState.id).where(
        tuple_(MessageState.vendor, MessageState.vendor_message_id).in_(keys),
        MessageState.client_id.is_not(None)))


def _adopt_early_reports(reports: list[ReportToAdd]) -> None:
    """Tie each state a vendor report created before its send result to the message's client.

    A vendor may report on a message before the dispatcher has recorded that it sent it. That
    state then lacks the client and the Emarsys message id, and the send result cannot add them
    because a state never moves backwards. So, in the caller's transaction and after the send
    results were added, such a state takes both from its send result and the outcome it already
    has is forwarded to Emarsys.
    """
    by_key = {(item.vendor, item.report.vendor_message_id): item for item in reports if item.client_id}
    if not by_key:
        return
    states = db.session.scalars(
        db.select(MessageState)
        .where(tuple_(MessageState.vendor, MessageState.vendor_message_id).in_(list(by_key)),
               or_(MessageState.client_id.is_(None), MessageState.emarsys_message_id.is_(None)))
        .with_for_update().execution_options(populate_existing=True))
    now = utcnow()
    for state in states:
        item = by_key[(state.vendor, state.vendor_message_id)]
        if state.client_id not in (None, item.client_id):
            continue  # another client's message: a report through its URL never changes this one
        state.client_id = state.client_id or item.client_id
        state.emarsys_message_id = state.emarsys_message_id or item.emarsys_message_id
        if state.emarsys_message_id is not None:
            enqueue_forward(state.client_id, "delivery_report", state.emarsys_message_id,
                            delivery_report_item(_current_report(state), state.emarsys_message_id),
                            state.event_at, now)
    db.session.flush()


def _current_report(state: MessageState) -> DeliveryReport:
    return DeliveryReport(
        vendor_message_id=state.vendor_message_id, recipient=state.recipient, status_code=state.status_code,
        status_text=state.status_text, event_at=state.event_at, outcome=Outcome(state.outcome),
        error_type=ErrorType(state.error_type) if state.error_type else None)


def add_delivery_reports(reports: list[ReportToAdd]) -> None:
    """Add many delivery reports to the caller's transaction, as add_delivery_report adds each.

    On PostgreSQL every report runs the same prepared statement, in order, with up to
    REPORTS_PER_ROUND_TRIP of them sent in one round trip; what each did is not returned.
    """
    if db.session.get_bind().dialect.name != "postgresql":
        for item in reports:
            add_delivery_report(item.vendor, item.report, item.params, item.client_id,
                                item.emarsys_message_id, item.kind)
        return
    connection, now = db.session.connection(), utcnow()
    prepare_once(connection, PREPARED_NAME, PREPARE_REPORT_SQL)
    for start in range(0, len(reports), REPORTS_PER_ROUND_TRIP):
        page = reports[start:start + REPORTS_PER_ROUND_TRIP]
        parameters = [_report_parameters(item.vendor, item.report, item.params, item.client_id,
                                         item.emarsys_message_id, item.kind, now) for item in page]
        # One string of EXECUTEs: psycopg2 sends it as one simple query, i.e. one round trip,
        # and SQLAlchemy still turns a dropped connection into its disconnect handling.
        connection.exec_driver_sql(";".join([EXECUTE_REPORT_SQL] * len(page)),
                                   tuple(value for row in parameters for value in row)).close()
