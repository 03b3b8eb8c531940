"""Retention: delete what has outlived RETENTION_DAYS, in short batches that never hold long locks.

What goes, per table (the cutoff is now minus the retention):
- raw_events: received before the cutoff;
- bounces: events before the cutoff, pulled by SAP, or unpulled and their message not updated since;
- message_states: no update since the cutoff, no bounce that is kept and no delivery report of the
  message still dead or on its way (a replay reads the state to keep a superseded dead letter dead);
- inbound_messages: received before the cutoff;
- outbox: delivered (`done`) items created before the cutoff. Dead letters are never purged:
  they wait for an operator's replay, however old;
- outbound_messages: finished (sent, failed, cancelled) and untouched since the cutoff;
- status_cursors: older than a day, whatever the retention (SAP pages through in seconds).
Clients are never purged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func

from models import (Bounce, InboundMessageRecord, MessageState, OutboundMessage, OutboxItem, RawEvent,
                    StatusCursor, db)
from services.clock import utcnow

log = logging.getLogger(__name__)

CURSOR_LIFETIME = timedelta(days=1)
FINISHED_OUTBOUND_STATES = ("sent", "failed", "cancelled")
PENDING, LEASED, DONE, DEAD = "pending", "leased", "done", "dead"
DELIVERY_REPORT = "delivery_report"


@dataclass(frozen=True)
class PurgeRule:
    """Which rows of one table are due, given the retention cutoff and the current time."""

    model: Any
    due: Callable[[datetime, datetime], ColumnElement[bool]]

    @property
    def table(self) -> str:
        """Return the table's name."""
        return self.model.__tablename__


@dataclass(frozen=True)
class TablePurge:
    """What a purge did (or, in a dry run, would do) to one table."""

    table: str
    rows: int
    batches: int
    finished: bool


def _bounce_due(cutoff: datetime) -> ColumnElement[bool]:
    # A report may arrive long after the event it reports: a bounce SAP has not pulled yet is
    # judged by when its message was last updated, not by the vendor's event time.
    recently_updated = exists().where(MessageState.id == Bounce.message_state_id,
                                      MessageState.updated_at >= cutoff)
    return (Bounce.event_at < cutoff) & (Bounce.pulled_at.isnot(None) | ~recently_updated)


def _message_state_due(cutoff: datetime, now: datetime) -> ColumnElement[bool]:
    # A state still carrying a kept bounce must stay: the bounce hangs off it (ON DELETE CASCADE).
    kept_bounce = exists().where(Bounce.message_state_id == MessageState.id, Bounce.event_at >= cutoff)
    return (MessageState.updated_at < cutoff) & ~kept_bounce & ~_report_not_done()


def _report_not_done() -> ColumnElement[bool]:
    """Return the condition of a message state whose message has a delivery report not yet done."""
    # Dead letters are never purged, but the later report's done row is: then only the state's
    # event time tells a replay that the dead letter is out of date (services.outbox._superseded).
    # Replayed reports count too: one may die again after its successor was sent and purged.
    # Probes ix_outbox_client_order on (client_id, message_key); a message has a handful of rows.
    return exists().where(OutboxItem.client_id == MessageState.client_id,
                          OutboxItem.message_key == MessageState.emarsys_message_id,
                          OutboxItem.kind == DELIVERY_REPORT, OutboxItem.state.in_((PENDING, LEASED, DEAD)))


# Bounces go before message states, so a state is judged on the bounces that remain.
RULES: tuple[PurgeRule, ...] = (
    PurgeRule(StatusCursor, lambda cutoff, now: StatusCursor.created_at < now - CURSOR_LIFETIME),
    PurgeRule(RawEvent, lambda cutoff, now: RawEvent.received_at < cutoff),
    PurgeRule(Bounce, lambda cutoff, now: _bounce_due(cutoff)),
    PurgeRule(MessageState, _message_state_due),
    PurgeRule(InboundMessageRecord, lambda cutoff, now: InboundMessageRecord.received_at < cutoff),
    PurgeRule(OutboxItem, lambda cutoff, now: (OutboxItem.state == DONE) & (OutboxItem.created_at < cutoff)),
    PurgeRule(OutboundMessage, lambda cutoff, now: OutboundMessage.state.in_(FINISHED_OUTBOUND_STATES)
              & (OutboundMessage.updated_at < cutoff)),
)


def purge(cutoff: datetime, batch_size: int, dry_run: bool = False, max_batches: int | None = None,
          now: datetime | None = None) -> list[TablePurge]:
    """Delete every row due at `cutoff`, table by table; a dry run only counts them."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    now = now or utcnow()
    if dry_run:
        return [count_due(rule, cutoff, now) for rule in RULES]
    return [purge_table(rule, cutoff, now, batch_size, max_batches) for rule in RULES]


def count_due(rule: PurgeRule, cutoff: datetime, now: datetime) -> TablePurge:
    """Count the rows of one table that a purge would delete."""
    rows = db.session.scalar(db.select(func.count()).select_from(rule.model).where(rule.due(cutoff, now)))
    db.session.rollback()
    return TablePurge(rule.table, rows or 0, batches=0, finished=True)


def purge_table(rule: PurgeRule, cutoff: datetime, now: datetime, batch_size: int,
                max_batches: int | None = None) -> TablePurge:
    """Delete one table's due rows, `batch_size` rows per transaction, up to `max_batches`."""
    rows = batches = 0
    while max_batches is None or batches < max_batches:
        deleted = delete_batch(rule, cutoff, now, batch_size)
        if deleted:
            rows, batches = rows + deleted, batches + 1
        if deleted < batch_size:
            return TablePurge(rule.table, rows, batches, finished=True)
    return TablePurge(rule.table, rows, batches, finished=False)


def delete_batch(rule: PurgeRule, cutoff: datetime, now: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` due rows of one table in their own short transaction."""
    table = rule.model.__table__
    # SKIP LOCKED: two worker instances purging at once split the rows instead of queueing.
    due_ids = (db.select(table.c.id).where(rule.due(cutoff, now)).limit(batch_size)
               .with_for_update(skip_locked=True))
    deleted = db.session.execute(delete(table).where(table.c.id.in_(due_ids))).rowcount
    db.session.commit()
    return deleted


class RetentionJob:
    """The worker's purge job: runs at most once per interval, a bounded amount each time."""

    def __init__(self, retention: timedelta, batch_size: int, max_batches: int, interval_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.retention = retention
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.next_run_at = float("-inf")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "RetentionJob":
        """Build the job from RETENTION_DAYS and the PURGE_* settings; ValueError if one cannot work."""
        for name in ("RETENTION_DAYS", "PURGE_BATCH_SIZE", "PURGE_MAX_BATCHES"):
            if not isinstance(config[name], int) or config[name] < 1:
                # 0 days would purge what arrived a minute ago; 0 batches would never purge at all.
                raise ValueError(f"{name} must be a whole number of at least 1, not {config[name]!r}")
        return cls(timedelta(days=config["RETENTION_DAYS"]), config["PURGE_BATCH_SIZE"],
                   config["PURGE_MAX_BATCHES"], config["PURGE_INTERVAL_SECONDS"])

    def run_once(self) -> int:
        """Purge if the interval has passed; return how many rows were deleted."""
        started = self.clock()
        if started < self.next_run_at:
            return 0
        # Set before purging: a failing database must not turn into a purge attempt every loop.
        self.next_run_at = started + self.interval_seconds
        results = purge(utcnow() - self.retention, self.batch_size, max_batches=self.max_batches)
        if not all(result.finished for result in results):
            self.next_run_at = started  # A backlog: carry on next round, after the other jobs.
        deleted = sum(result.rows for result in results)
        if deleted:
            # Counts go in fields, not the message: the phone-number mask would hide big ones.
            log.info("retention purge deleted expired rows",
                     extra={"purged_rows": {result.table: result.rows for result in results if result.rows}})
        return deleted
