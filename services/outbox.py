"""Operate the Emarsys outbox: counts by state, the oldest waiting item, dead letters and replay."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, case, delete, exists, func, or_, update
from sqlalchemy.orm import aliased

from mappers.report import OUTCOME_RANK
from models import MessageState, OutboxItem, db
from services.clock import utcnow
from services.forwarder import DEAD, LEASED, PENDING, of_existing_client
from services.retry import parse_age

STATES = ("pending", "leased", "done", "dead")
NOT_DONE_STATES = ("pending", "leased", "dead")


@dataclass(frozen=True)
class OutboxStatus:
    """How many items are in each state, and how long the oldest undelivered one has waited."""

    counts: dict[str, int]
    oldest_pending_age: timedelta | None


@dataclass(frozen=True)
class DeadLetter:
    """One item given up on; no message body, only what an operator needs to decide on a replay."""

    id: int
    client_id: uuid.UUID
    kind: str
    message_key: str
    attempts: int
    last_error: str | None
    created_at: datetime


def outbox_status(now: datetime | None = None, count_done: bool = True) -> OutboxStatus:
    """Return the counts by state and the age of the oldest pending or leased item.

    Done items are kept for RETENTION_DAYS, millions of them: counting them reads them all.
    `flask outbox status`, run by hand, counts them; the dashboard passes `count_done=False`
    and gets no "done" count, only the other states', which ix_outbox_due's state finds.
    """
    states = STATES if count_done else NOT_DONE_STATES
    rows = db.session.execute(db.select(OutboxItem.state, func.count())
                              .where(OutboxItem.state.in_(states)).group_by(OutboxItem.state)).all()
    counts = {state: 0 for state in states} | {state: count for state, count in rows}
    oldest = db.session.scalar(db.select(func.min(OutboxItem.created_at))
                               .where(OutboxItem.state.in_((PENDING, LEASED))))
    age = None if oldest is None else max(timedelta(0), (now or utcnow()) - oldest)
    return OutboxStatus(counts=counts, oldest_pending_age=age)


def dead_letters(limit: int = 100, client_id: uuid.UUID | None = None) -> list[DeadLetter]:
    """Return up to `limit` dead letters, oldest first."""
    stmt = (db.select(OutboxItem.id, OutboxItem.client_id, OutboxItem.kind, OutboxItem.message_key,
                   OutboxItem.attempts, OutboxItem.last_error, OutboxItem.created_at)
            .where(OutboxItem.state == DEAD).order_by(OutboxItem.id).limit(limit))
    if client_id is not None:
        stmt = stmt.where(OutboxItem.client_id == client_id)
    return [DeadLetter(*row) for row in db.session.execute(stmt)]


def count_dead_letters(client_id: uuid.UUID | None = None) -> int:
    """Return how many dead letters there are, for one client or all."""
    stmt = db.select(func.count()).select_from(OutboxItem).where(OutboxItem.state == DEAD)
    if client_id is not None:
        stmt = stmt.where(OutboxItem.client_id == client_id)
    return db.session.scalar(stmt) or 0


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Return naive UTC for an ISO time ("2026-01-01T00:00", UTC if no offset) or an age ("2h", "3d")."""
    try:
        # An age has its unit: "20260101" is a date.
        return (now or utcnow()) - timedelta(seconds=parse_age(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"invalid time {text!r}: give an ISO time such as 2026-01-01T00:00 "
                         "or an age such as 2h or 3d") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.replace(tzinfo=None)


def replay_dead_letters(client_id: uuid.UUID | None = None, since: datetime | None = None,
                        now: datetime | None = None) -> int:
    """Re-queue dead letters (optionally of one client, created since a time) and commit; return how many.

    A report of a message for which a later report reached Emarsys, or is on its way, stays dead:
    sent now, it would move the message's state backwards in Emarsys. So does one of a deleted client.
    """
    now = now or utcnow()
    # A deleted client's stay dead: pending, the forwarder would drop them as never to be sent.
    stmt = update(OutboxItem).where(OutboxItem.state == DEAD, ~_superseded(), of_existing_client())
    if client_id is not None:
        stmt = stmt.where(OutboxItem.client_id == client_id)
    if since is not None:
        stmt = stmt.where(OutboxItem.created_at >= since)
    # A fresh first attempt restarts the max-age clock, else a replayed item would die at once.
    stmt = stmt.values(state=PENDING, attempts=0, next_attempt_at=now, first_attempt_at=None,
                       lease_owner=None, lease_until=None)
    replayed = db.session.execute(stmt.execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    return replayed


def discard_superseded_dead_letters(client_id: uuid.UUID | None = None) -> int:
    """Delete the dead letters a replay would never send (optionally of one client) and commit; return how many.

    Their message has a later report that reached Emarsys or is on its way, or their client was
    deleted (before deleting a client dropped its dead letters too), so Emarsys needs them no
    more; left, they would keep the dead-letter count above zero for ever.
    """
    stmt = delete(OutboxItem).where(OutboxItem.state == DEAD, or_(_superseded(), ~of_existing_client()))
    if client_id is not None:
        stmt = stmt.where(OutboxItem.client_id == client_id)
    discarded = db.session.execute(stmt.execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    return discarded


def _superseded():
    """Return the condition of an item whose message has a later report forwarded or on its way."""
    later = aliased(OutboxItem)
    # Pending or leased counts too: the message's later report would go first, this one after it.
    # Later means written later (a higher id): the order the message's state changed in, which a
    # report of a higher rank with an earlier event time does not follow.
    later_item = exists().where(later.client_id == OutboxItem.client_id, later.kind == OutboxItem.kind,
                                later.message_key == OutboxItem.message_key, later.state != DEAD,
                                later.id > OutboxItem.id)
    # The outbox's done rows are purged after RETENTION_DAYS, dead letters are not: the message's
    # state remembers the latest change it took, as the (rank, event time) it only ever moves
    # forward in (no clock of ours decides). Unless that change's own report is a dead letter too:
    # then both are replayed, in order.
    latest_is_dead = exists().where(later.client_id == OutboxItem.client_id, later.kind == OutboxItem.kind,
                                    later.message_key == OutboxItem.message_key, later.state == DEAD,
                                    _status_of(later) == MessageState.outcome,
                                    later.event_at == MessageState.event_at)
    # Both outer tables, explicitly: auto-correlation reaches only the nearest enclosing query.
    latest_is_dead = latest_is_dead.correlate(OutboxItem, MessageState)
    item_rank = _rank_of(OutboxItem)
    # A report of the same rank and time moves the state too (DELIVERED and HARDBOUNCE share one).
    state_moved_on = or_(MessageState.rank > item_rank,
                         and_(MessageState.rank == item_rank, MessageState.event_at > OutboxItem.event_at),
                         and_(MessageState.rank == item_rank, MessageState.event_at == OutboxItem.event_at,
                              MessageState.outcome != _status_of(OutboxItem)))
    later_state = exists().where(OutboxItem.kind == "delivery_report",
                                 MessageState.client_id == OutboxItem.client_id,
                                 MessageState.emarsys_message_id == OutboxItem.message_key,
                                 state_moved_on, ~latest_is_dead)
    return later_item | later_state


def _status_of(item):
    """Return the outcome a delivery report item carries (its Emarsys status)."""
    return item.payload["status"].as_string()


def _rank_of(item):
    """Return the state rank of the outcome a delivery report item carries (-1 for none)."""
    ranks = {outcome.value: rank for outcome, rank in OUTCOME_RANK.items()}
    return case(ranks, value=_status_of(item), else_=-1)
