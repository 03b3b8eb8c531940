"""Forward outbox items to Emarsys: leased per-client batches, sent outside any transaction, retried.

One round (`run_once`) finds the clients whose due items are ready (a full batch, or the oldest
one has lingered FORWARD_LINGER_MS), claims up to FORWARD_BATCH_SIZE items per client and kind
with FOR UPDATE SKIP LOCKED, leases them to this worker and commits. It then posts each batch
and records the answer with set-based updates guarded by `lease_owner = me`, so a worker whose
lease expired and was taken over cannot mark anything twice.

Reports of one message go out in the order they changed its state (outbox id order: each row is
written under the lock of the state it records; a state never moves backwards, while a report of
a higher rank can carry an earlier event time): a message with a report that waits (for a retry,
or leased to a worker) has no report claimed, and claims of one client and kind are serialised
by a transaction-scoped advisory lock so that no claim sees another's half-done work.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, delete, exists, func, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased

from models import Client, OutboxItem, db
from services.clock import utcnow
from services.emarsys_client import MAX_BATCH_SIZE, CallResult, EmarsysClient
from services.metrics import record_emarsys_call
from services.oauth import OAuthTokenProvider
from services.retry import RetryPolicy

log = logging.getLogger(__name__)

PENDING, LEASED, DONE, DEAD = "pending", "leased", "done", "dead"
DELIVERY_REPORT, INBOUND_MESSAGE = "delivery_report", "inbound_message"
SENDERS: dict[str, Callable[[EmarsysClient, str, list[dict]], CallResult]] = {
    DELIVERY_REPORT: EmarsysClient.send_delivery_reports,
    INBOUND_MESSAGE: EmarsysClient.send_inbound_messages,
}
RELEASED = {"lease_owner": None, "lease_until": None}
MAX_ROUNDS_PER_RUN = 10
# The longest the forwarder holds off after Emarsys was unreachable: then one batch probes it again.
MAX_PAUSE_SECONDS = 300.0


@dataclass(frozen=True)
class LeasedItem:
    """One outbox item this worker holds a lease on."""

    id: int
    payload: dict[str, Any]
    attempts: int
    first_attempt_at: datetime


@dataclass(frozen=True)
class Batch:
    """Leased items of one client and kind, in the order they were written: one call to Emarsys."""

    client_id: uuid.UUID
    kind: str
    items: list[LeasedItem]

    @property
    def ids(self) -> list[int]:
        """Return the outbox ids of the batch."""
        return [item.id for item in self.items]


def is_due(item: Any, now: datetime) -> ColumnElement[bool]:
    """Return the condition of an item that may be claimed now (new, retry due, or lease expired)."""
    return or_(and_(item.state == PENDING, item.next_attempt_at <= now),
               and_(item.state == LEASED, item.lease_until < now))


def is_waiting(item: Any, now: datetime) -> ColumnElement[bool]:
    """Return the condition of an unfinished item that may not be claimed now (retry later, or leased)."""
    return or_(and_(item.state == PENDING, item.next_attempt_at > now),
               and_(item.state == LEASED, item.lease_until >= now))


def _defer_held_back(client_id: uuid.UUID, kind: str, now: datetime) -> None:
    """Make the due items held back behind a report of their message waiting for a retry due with that retry.

    Due, they would be counted ready, and looked at by a claim that cannot take them, in every
    round until then: a long Emarsys outage holds back hundreds of thousands. Those held back by
    a leased report are left due: the lease ends in seconds.
    """
    waiting = aliased(OutboxItem)
    retry_at = (db.select(func.max(waiting.next_attempt_at))
                .where(waiting.client_id == OutboxItem.client_id, waiting.kind == OutboxItem.kind,
                       waiting.message_key == OutboxItem.message_key, waiting.state == PENDING,
                       waiting.next_attempt_at > now)
                .scalar_subquery())
    db.session.execute(
        update(OutboxItem)
        .where(OutboxItem.client_id == client_id, OutboxItem.kind == kind, OutboxItem.state == PENDING,
               OutboxItem.next_attempt_at <= now, retry_at.is_not(None))
        .values(next_attempt_at=retry_at).execution_options(synchronize_session=False))


def of_existing_client() -> ColumnElement[bool]:
    """Return the condition of an outbox item whose client still exists."""
    return exists().where(Client.id == OutboxItem.client_id)


def drop_items_of_deleted_client(client_id: uuid.UUID, kind: str) -> int:
    """Delete the open items of a client that no longer exists; return how many."""
    # Deleting a client drops its open items, but a report whose statement read the client just
    # before the deletion committed is written after it. Emarsys would answer it 404 (a dead
    # letter); the deletion meant it never to be sent.
    stmt = (delete(OutboxItem)
            .where(OutboxItem.client_id == client_id, OutboxItem.kind == kind,
                   OutboxItem.state.in_((PENDING, LEASED)), ~of_existing_client())
            .execution_options(synchronize_session=False))
    dropped = db.session.execute(stmt).rowcount
    if dropped:
        log.info("dropped %d %s item(s) of deleted client %s", dropped, kind, client_id)
    return dropped


def claim_lock_key(client_id: uuid.UUID, kind: str) -> int:
    """Return the PostgreSQL advisory lock key that serialises claims of one client and kind."""
    digest = hashlib.blake2b(f"outbox-claim:{client_id}:{kind}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_claims_of(client_id: uuid.UUID, kind: str) -> None:
    """Wait until no other worker is claiming this client's items; held until the claim commits.

    SKIP LOCKED alone could hand us a message's later report while another worker's uncommitted
    claim holds the earlier one. Claims are short and sends happen after commit, so workers still
    send batches of one client in parallel.
    """
    # SQLite has a single writer, and the lease update below re-checks that items are still due.
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(db.select(func.pg_advisory_xact_lock(claim_lock_key(client_id, kind))))


# The most HTTP requests one batch can make: a token fetch and a post, twice when a 401 refreshes.
REQUESTS_PER_CALL = 4


def emarsys_request_timeout(lease_seconds: float) -> tuple[float, float]:
    """Return the (connect, read) timeouts that end all of a batch's requests within 3/4 of its lease.

    Past its lease another worker may claim the batch and post it too: Emarsys would get it twice.
    """
    per_request = lease_seconds * 0.75 / REQUESTS_PER_CALL
    connect = min(5.0, per_request / 3)
    return connect, per_request - connect


class Forwarder:
    """Move due outbox items to Emarsys in leased batches; one instance per worker."""

    def __init__(self, emarsys: EmarsysClient | None, policy: RetryPolicy, owner: str,
                 batch_size: int = MAX_BATCH_SIZE, linger_seconds: float = 1.0,
                 lease_seconds: float = 60, stopping: threading.Event | None = None):
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"FORWARD_BATCH_SIZE must be 1 to {MAX_BATCH_SIZE}, not {batch_size!r}")
        self.emarsys = emarsys
        self.policy = policy
        self.owner = owner
        self.batch_size = batch_size
        self.linger = timedelta(seconds=linger_seconds)
        self.lease = timedelta(seconds=lease_seconds)
        self._warned_unconfigured = False
        self._paused_until = 0.0  # time.monotonic(); see _pause_if_unreachable
        self.stopping = stopping or threading.Event()  # set: post no further batch this round

    @classmethod
    def from_config(cls, config: Mapping, owner: str, stopping: threading.Event | None = None) -> Forwarder:
        """Build a forwarder from the app config; without partner OAuth settings it sends nothing."""
        policy = RetryPolicy.from_config(config["FORWARD_RETRY_SCHEDULE"], config["FORWARD_MAX_AGE"])
        credentials = [config.get(name) for name in
                       ("PARTNER_OAUTH_TOKEN_URL", "PARTNER_OAUTH_CLIENT_ID", "PARTNER_OAUTH_CLIENT_SECRET")]
        emarsys = None
        if all(credentials):
            timeout = emarsys_request_timeout(config["LEASE_SECONDS"])
            emarsys = EmarsysClient(config["EMARSYS_API_BASE_URL"],
                                    OAuthTokenProvider(*credentials, timeout=timeout), timeout=timeout)
        return cls(emarsys, policy, owner, batch_size=int(config.get("FORWARD_BATCH_SIZE", MAX_BATCH_SIZE)),
                   linger_seconds=config["FORWARD_LINGER_MS"] / 1000, lease_seconds=config["LEASE_SECONDS"],
                   stopping=stopping)

    def run_once(self) -> int:
        """Forward due batches, round-robin over ready clients and kinds; return the items handled."""
        if self.emarsys is None:
            self._warn_unconfigured()
            return 0
        if self._is_paused():
            return 0
        handled, groups = 0, self.ready_groups(utcnow())
        # A client with a backlog keeps its turn while its batches are full, for a bounded number
        # of rounds, so the worker's other jobs still run.
        for _ in range(MAX_ROUNDS_PER_RUN):
            sizes = {}
            for group in groups:
                if self._is_paused() or self.stopping.is_set():
                    return handled + sum(sizes.values())
                sizes[group] = self._forward_isolated(*group)
            handled += sum(sizes.values())
            groups = [group for group, size in sizes.items() if size == self.batch_size]
            if not groups:
                break
        return handled

    def _is_paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _pause_if_unreachable(self, result: CallResult) -> None:
        """Hold off every client's batches for the retry schedule's first delay when Emarsys did not answer.

        Emarsys is one host: when it hangs until the timeout, trying each client in turn would cost
        a timeout per client per round, and an attempt of each, to learn the same thing. An answer,
        even a 503, comes fast and is about one batch, so it pauses nothing.
        """
        if result.unreachable:
            self._paused_until = time.monotonic() + min(self.policy.delay_for(1, None), MAX_PAUSE_SECONDS)

    def _warn_unconfigured(self) -> None:
        """Log, once per forwarder, that nothing is forwarded without partner OAuth settings."""
        if not self._warned_unconfigured:
            log.warning("PARTNER_OAUTH_TOKEN_URL/CLIENT_ID/CLIENT_SECRET are not set: reports "
                        "stay in the outbox until they are")
            self._warned_unconfigured = True

    def _forward_isolated(self, client_id: uuid.UUID, kind: str) -> int:
        """Forward one batch of a client and kind; a database fault skips it for this round only."""
        try:
            return self._forward(client_id, kind)
        except SQLAlchemyError as exc:
            # One client's claim failing (e.g. a statement timeout) must not stop the others'.
            db.session.rollback()
            log.error("forwarding %s items of client %s failed: %s; the other clients go on", kind,
                      client_id, type(exc).__name__)
            return 0

    def _forward(self, client_id: uuid.UUID, kind: str) -> int:
        """Claim, send and acknowledge one batch of a client and kind; return its size."""
        batch = self.claim(client_id, kind, utcnow())
        if batch is None:
            return 0
        result = self.send(batch)
        self.acknowledge(batch, result, utcnow())
        self._pause_if_unreachable(result)
        return len(batch.items)

    def ready_groups(self, now: datetime) -> list[tuple[uuid.UUID, str]]:
        """Return the (client, kind) pairs with a full batch due or a due item older than the linger."""
        stmt = (db.select(OutboxItem.client_id, OutboxItem.kind, func.count(), func.min(OutboxItem.created_at),
                          of_existing_client())
                .where(is_due(OutboxItem, now)).group_by(OutboxItem.client_id, OutboxItem.kind))
        rows = db.session.execute(stmt).all()
        for client_id, kind, *_, has_client in rows:
            if not has_client:
                drop_items_of_deleted_client(client_id, kind)
        db.session.commit()
        ready = [(oldest, client_id, kind) for client_id, kind, due_count, oldest, has_client in rows
                 if has_client and (due_count >= self.batch_size or oldest <= now - self.linger)]
        # The longest-waiting client goes first, so no client starves behind a busy one.
        return [(client_id, kind) for _, client_id, kind in sorted(ready, key=lambda row: row[0])]

    def claim(self, client_id: uuid.UUID, kind: str, now: datetime) -> Batch | None:
        """Lease up to a batch of one client's due items, keeping per-message order, and commit."""
        lock_claims_of(client_id, kind)
        candidates = db.session.execute(self._candidates(client_id, kind, now)).all()
        if len(candidates) < self.batch_size and not self._lingered(candidates, now):
            _defer_held_back(client_id, kind, now)
            db.session.commit()
            return None
        ids = [row.id for row in candidates]
        rows = db.session.execute(
            update(OutboxItem).where(OutboxItem.id.in_(ids), is_due(OutboxItem, now))
            .values(state=LEASED, lease_owner=self.owner, lease_until=now + self.lease,
                    first_attempt_at=func.coalesce(OutboxItem.first_attempt_at, now))
            .returning(OutboxItem.id, OutboxItem.event_at, OutboxItem.payload, OutboxItem.attempts,
                       OutboxItem.first_attempt_at)).all()
        db.session.commit()
        if not rows:
            return None
        ordered = sorted(rows, key=lambda row: row.id)
        return Batch(client_id, kind, [LeasedItem(row.id, row.payload, row.attempts, row.first_attempt_at)
                                       for row in ordered])

    def _candidates(self, client_id: uuid.UUID, kind: str, now: datetime):
        """Return the locking select of due items whose message has no report waiting for a retry or lease."""
        # Excluding the whole message keeps its order: its later reports wait for the earlier one.
        # A correlated NOT EXISTS is one index probe per candidate (ix_outbox_client_order); a NOT IN
        # over every waiting item of the client outgrows work_mem in a long Emarsys outage and is
        # then rescanned for each candidate (hours at 1.5M waiting items).
        waiting = aliased(OutboxItem)
        message_waits = exists().where(
            waiting.client_id == client_id, waiting.message_key == OutboxItem.message_key,
            waiting.kind == kind, is_waiting(waiting, now))
        return (db.select(OutboxItem.id, OutboxItem.created_at)
                .where(OutboxItem.client_id == client_id, OutboxItem.kind == kind,
                       OutboxItem.state.in_((PENDING, LEASED)), is_due(OutboxItem, now), ~message_waits)
                .order_by(OutboxItem.id).limit(self.batch_size)
                .with_for_update(skip_locked=True, of=OutboxItem))

    def _lingered(self, candidates: list[Row], now: datetime) -> bool:
        """Return whether a partial batch has waited long enough: its oldest item is past the linger."""
        return bool(candidates) and min(row.created_at for row in candidates) <= now - self.linger

    def send(self, batch: Batch) -> CallResult:
        """Post one batch to Emarsys, outside any database transaction; a fault of ours is a retry."""
        assert self.emarsys is not None, "send needs partner OAuth settings"
        payloads = [item.payload for item in batch.items]
        try:
            return SENDERS[batch.kind](self.emarsys, str(batch.client_id), payloads)
        except Exception as exc:  # Unhandled, it would leave the batch leased, retried and never aged out.
            # Only the type: an exception's text could quote a payload or a credential.
            log.error("forwarding %d %s item(s) of client %s raised %s", len(payloads), batch.kind,
                      batch.client_id, type(exc).__name__)
            return CallResult("retry", reason=f"sending raised {type(exc).__name__}")

    def acknowledge(self, batch: Batch, result: CallResult, now: datetime) -> int:
        """Record Emarsys's answer for the items this worker still leases, commit, return rows changed."""
        if result.kind == "delivered":
            changed = self._mark(batch.ids, state=DONE, sent_at=now)
        elif result.kind == "retry":
            changed = self._reschedule(batch.items, result, now)
        elif result.kind == "item_errors":
            changed = self._dead_letter_named(batch.items, result.item_errors, now)
        else:
            changed = self._mark(batch.ids, state=DEAD, attempts=OutboxItem.attempts + 1,
                                 last_error=result.reason)
        record_emarsys_call(batch.kind, result.kind)
        db.session.commit()
        return changed

    def _mark(self, ids: list[int], **values: Any) -> int:
        """Update the given items that are still leased to this worker, releasing the lease."""
        if not ids:
            return 0
        stmt = (update(OutboxItem)
                .where(OutboxItem.id.in_(ids), OutboxItem.state == LEASED,
                       OutboxItem.lease_owner == self.owner)
                .values(**RELEASED, **values).execution_options(synchronize_session=False))
        return db.session.execute(stmt).rowcount

    def _reschedule(self, items: list[LeasedItem], result: CallResult, now: datetime) -> int:
        """Schedule the next attempt per the retry policy; items past the max age become dead letters."""
        exhausted = {item.id for item in items if self.policy.is_exhausted(item.first_attempt_at, now)}
        changed = self._mark(list(exhausted), state=DEAD, attempts=OutboxItem.attempts + 1,
                             last_error=f"gave up after retrying: {result.reason}"[:500])
        by_attempts: dict[int, list[int]] = {}
        for item in items:
            if item.id not in exhausted:
                by_attempts.setdefault(item.attempts + 1, []).append(item.id)
        for attempts, ids in by_attempts.items():
            delay = self.policy.delay_for(attempts, result.retry_after)
            changed += self._mark(ids, state=PENDING, attempts=attempts, last_error=result.reason,
                                  next_attempt_at=now + timedelta(seconds=delay))
        return changed

    def _dead_letter_named(self, items: list[LeasedItem], item_errors: dict[int, str], now: datetime) -> int:
        """Dead-letter the items Emarsys named; the others go back for an immediate resend."""
        changed = 0
        for index, error in item_errors.items():
            changed += self._mark([items[index].id], state=DEAD, attempts=OutboxItem.attempts + 1,
                                  last_error=error)
        rest = [item.id for index, item in enumerate(items) if index not in item_errors]
        return changed + self._mark(rest, state=PENDING, next_attempt_at=now)
