"""The dispatcher: claims due outbound messages and sends them through each client's vendor.

A claim is one short transaction: due rows (queued and due, or `sending` under a lease
that expired because its worker died) are locked with `FOR UPDATE SKIP LOCKED`, so
concurrent workers take disjoint rows, and are marked `sending` under this worker's
lease. SQLite ignores the lock clause, which is safe because SQLite has one writer.

Sends run outside any transaction, in a thread pool that never touches the database;
the calling thread records each outcome as it arrives, while other sends are in flight,
and only while the row is still leased to this worker: a worker whose lease expired
cannot overwrite the result of the worker that took the message over.

`attempts` counts the times a message was handed to a worker, so a message that kills
its worker every time still runs out of attempts. A send is started only while it can
finish (vendor timeout included) before the lease ends; later ones are handed back.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update

from logging_setup import mask_phone_numbers
from mappers.report import DeliveryReport, ErrorType, Outcome
from models import Client, OutboundMessage, db
from schemas.client_config import ClientConfig
from schemas.outbound import OutboundMessage as MessageToSend
from services.clients import callback_urls, client_config
from services.ingest import add_delivery_report, utcnow
from services.vendors import SendResult, refused, retry_later, send_message

log = logging.getLogger(__name__)

SEND_RESULT_KIND = "send_result"
FAILED_OUTCOMES = frozenset({Outcome.ERROR, Outcome.HARDBOUNCE, Outcome.SOFTBOUNCE})
_CLAIMED_COLUMNS = (OutboundMessage.id, OutboundMessage.public_id, OutboundMessage.client_id,
                    OutboundMessage.emarsys_message_id, OutboundMessage.source,
                    OutboundMessage.destination, OutboundMessage.body, OutboundMessage.attempts)


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher claims, sends and retries."""

    batch_size: int
    concurrency: int
    lease_seconds: float
    retry_delay_seconds: float
    max_attempts: int
    vendor_timeout_seconds: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DispatchSettings:
        """Read the settings from the app config; the lease must outlast one vendor call."""
        settings = cls(
            batch_size=int(config["DISPATCH_BATCH_SIZE"]), concurrency=int(config["DISPATCH_CONCURRENCY"]),
            lease_seconds=float(config["LEASE_SECONDS"]),
            retry_delay_seconds=float(config["SEND_RETRY_DELAY_SECONDS"]),
            max_attempts=int(config["SEND_MAX_ATTEMPTS"]),
            vendor_timeout_seconds=float(config["VENDOR_TIMEOUT_SECONDS"]))
        if settings.lease_seconds <= settings.vendor_timeout_seconds:
            raise ValueError("LEASE_SECONDS must be longer than VENDOR_TIMEOUT_SECONDS, or a lease "
                             "could expire during a send and another worker send the message again")
        if settings.batch_size < 1 or settings.concurrency < 1 or settings.max_attempts < 1:
            raise ValueError("DISPATCH_BATCH_SIZE, DISPATCH_CONCURRENCY and SEND_MAX_ATTEMPTS must be >= 1")
        return settings


@dataclass(frozen=True)
class ClaimedMessage:
    """One message leased to this worker, detached from any session."""

    id: int
    public_id: str
    client_id: uuid.UUID
    emarsys_message_id: str
    source: str
    destination: str
    body: str
    attempts: int


@dataclass(frozen=True)
class SendJob:
    """A claimed message with what sending it needs: its client's vendor and configuration."""

    message: ClaimedMessage
    vendor: str
    config: ClientConfig | None  # None when the stored configuration could not be read
    status_callback_url: str


class Dispatcher:
    """Claim due outbound messages and send them through each client's vendor."""

    def __init__(self, settings: DispatchSettings, owner: str):
        self.settings = settings
        self.owner = owner

    @classmethod
    def from_config(cls, config: Mapping[str, Any], owner: str) -> Dispatcher:
        """Build a dispatcher from the app config; owner names this worker in leases."""
        return cls(DispatchSettings.from_config(config), owner)

    def run_once(self) -> int:
        """Claim one batch, send it concurrently, record every outcome; return the rows claimed."""
        claimed_at = time.monotonic()
        jobs, claimed = self.claim()
        if jobs:
            # Start no send that could still be running when the lease ends.
            self._send_all(jobs, claimed_at + self.settings.lease_seconds
                           - self.settings.vendor_timeout_seconds)
        return claimed

    def claim(self) -> tuple[list[SendJob], int]:
        """Lease up to a batch of due messages and commit; return the jobs to send and the rows claimed."""
        now = utcnow()
        ids = db.session.scalars(
            db.select(OutboundMessage.id).where(_is_due(now))
            .order_by(OutboundMessage.next_attempt_at, OutboundMessage.id)
            .limit(self.settings.batch_size).with_for_update(skip_locked=True)).all()
        if not ids:
            db.session.rollback()
            return [], 0
        rows = db.session.execute(
            update(OutboundMessage).where(OutboundMessage.id.in_(ids))
            .values(state="sending", lease_owner=self.owner, attempts=OutboundMessage.attempts + 1,
                    lease_until=now + timedelta(seconds=self.settings.lease_seconds), updated_at=now)
            .returning(*_CLAIMED_COLUMNS).execution_options(synchronize_session=False)).all()
        jobs = self._jobs_for([ClaimedMessage(*row) for row in rows], now)
        db.session.commit()
        return jobs, len(rows)

    def _jobs_for(self, messages: list[ClaimedMessage], now: datetime) -> list[SendJob]:
        """Pair messages with their client's configuration, loaded once per client; cancel orphans."""
        client_ids = {message.client_id for message in messages}
        clients = {client.id: client for client in
                   db.session.scalars(db.select(Client).where(Client.id.in_(client_ids)))}
        configs = {client_id: _readable_config(client) for client_id, client in clients.items()}
        orphans = [message.id for message in messages if message.client_id not in clients]
        if orphans:
            # The client was deleted after these were queued (or while a dead worker held them).
            db.session.execute(_owned_by(self.owner, orphans).values(
                state="cancelled", lease_owner=None, lease_until=None, updated_at=now,
                last_error="client deleted before sending"))
        return [SendJob(message, clients[message.client_id].vendor, configs[message.client_id],
                        callback_urls(clients[message.client_id]).delivery_reports)
                for message in messages if message.client_id in clients]

    def _send_all(self, jobs: list[SendJob], send_deadline: float) -> None:
        """Send in a thread pool; record each outcome here, as it arrives, while others are in flight."""
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(jobs)),
                                thread_name_prefix="dispatch") as pool:
            futures = {pool.submit(self._send_before, job, send_deadline): job for job in jobs}
            for future in as_completed(futures):
                self._settle(futures[future], future.result())

    def _send_before(self, job: SendJob, send_deadline: float) -> SendResult | None:
        """Send the job in a pool thread, or return None when the deadline to start has passed."""
        return None if time.monotonic() > send_deadline else self._send(job)

    def _settle(self, job: SendJob, result: SendResult | None) -> None:
        """Record one outcome, or hand back an unsent job; a failure is left to the lease."""
        try:
            if result is None:
                self._hand_back(job.message)
            else:
                self._record(job, result)
        except Exception as exc:  # One message must not stop the batch; its lease will expire.
            db.session.rollback()
            log.error("recording message %s failed: %s", job.message.public_id, type(exc).__name__)

    def _send(self, job: SendJob) -> SendResult:
        """Call the vendor, or decide without calling it when sending cannot or must not happen."""
        message = job.message
        if message.attempts > self.settings.max_attempts:
            return retry_later("attempts", "the worker sending it was lost on the last attempt")
        if job.config is None:
            return retry_later("configuration", "the client's stored configuration cannot be read")
        try:
            return send_message(job.config, MessageToSend(message.emarsys_message_id, message.source,
                                                          message.destination, message.body),
                                our_message_id=message.public_id,
                                status_callback_url=job.status_callback_url,
                                timeout=self.settings.vendor_timeout_seconds)
        except Exception as exc:  # A sender bug must end as a retry, not as a row stuck in `sending`.
            # Only the type: an exception's text could quote the body or a credential.
            log.error("sending message %s raised %s", message.public_id, type(exc).__name__)
            return retry_later("exception", f"sending raised {type(exc).__name__}")

    def _record(self, job: SendJob, result: SendResult) -> None:
        """Store the outcome: requeue a retry while attempts remain, otherwise finish the message."""
        now, message = utcnow(), job.message
        if result.retry and message.attempts < self.settings.max_attempts:
            self._requeue(message, result, now)
            return
        if result.retry:
            result = refused(Outcome.ERROR, ErrorType.UNKNOWN, result.status_code,
                             f"gave up after {message.attempts} attempts: {result.status_text}")
        self._finish(job, result, now)

    def _requeue(self, message: ClaimedMessage, result: SendResult, now: datetime) -> None:
        """Queue the message again after the retry delay, keeping its public id."""
        updated = db.session.execute(_owned_by(self.owner, [message.id]).values(
            state="queued", lease_owner=None, lease_until=None, updated_at=now,
            next_attempt_at=now + timedelta(seconds=self.settings.retry_delay_seconds),
            last_error=f"{result.status_code}: {result.status_text}"))
        db.session.commit()
        log.info("message %s to %s: attempt %d will be retried (%s %s)%s", message.public_id,
                 mask_phone_numbers(message.destination), message.attempts, result.status_code,
                 mask_phone_numbers(result.status_text), "" if updated.rowcount else "; lease lost")

    def _finish(self, job: SendJob, result: SendResult, now: datetime) -> None:
        """Mark the row sent or failed and store the outcome as a report, in one transaction."""
        message = job.message
        if not self._complete(job, result, now):
            db.session.rollback()
            log.warning("message %s: lease lost before its outcome was stored; the new owner "
                        "records it", message.public_id)
            return
        report = DeliveryReport(
            vendor_message_id=result.vendor_message_id or message.public_id,
            recipient=message.destination, status_code=result.status_code,
            status_text=result.status_text, event_at=now, outcome=result.outcome,
            error_type=result.error_type)
        params = {"public_id": message.public_id, "attempt": message.attempts,
                  "status_code": result.status_code, "status_text": result.status_text}
        add_delivery_report(job.vendor, report, params, client_id=message.client_id,
                            emarsys_message_id=message.emarsys_message_id, kind=SEND_RESULT_KIND)
        db.session.commit()
        _log_outcome(message, result)

    def _complete(self, job: SendJob, result: SendResult, now: datetime) -> bool:
        """Write the final state if the row is still leased to this worker; say whether it was."""
        state = "failed" if result.outcome in FAILED_OUTCOMES else "sent"
        updated = db.session.execute(_owned_by(self.owner, [job.message.id]).values(
            state=state, vendor=job.vendor, vendor_message_id=result.vendor_message_id,
            lease_owner=None, lease_until=None, updated_at=now,
            last_error=None if state == "sent" else f"{result.status_code}: {result.status_text}"))
        return updated.rowcount == 1

    def _hand_back(self, message: ClaimedMessage) -> None:
        """Return an unsent message to the queue, undoing its claim's attempt."""
        db.session.execute(_owned_by(self.owner, [message.id]).values(
            state="queued", lease_owner=None, lease_until=None, updated_at=utcnow(),
            attempts=OutboundMessage.attempts - 1))
        db.session.commit()
        log.warning("message %s handed back: the lease would end before a send could finish",
                    message.public_id)


def _is_due(now: datetime):
    """Return the condition of a message a worker may claim now."""
    return or_((OutboundMessage.state == "queued") & (OutboundMessage.next_attempt_at <= now),
               (OutboundMessage.state == "sending") & (OutboundMessage.lease_until < now))


def _owned_by(owner: str, ids: list[int]):
    """Return an UPDATE of the given rows that only touches those still leased to owner."""
    return (update(OutboundMessage)
            .where(OutboundMessage.id.in_(ids), OutboundMessage.state == "sending",
                   OutboundMessage.lease_owner == owner)
            .execution_options(synchronize_session=False))


def _readable_config(client: Client) -> ClientConfig | None:
    """Return the client's decrypted configuration, or None (logged) when it cannot be read."""
    try:
        return client_config(client)
    except Exception as exc:  # e.g. CONFIG_ENCRYPTION_KEY rotated without the old key
        log.error("configuration of client %s cannot be read: %s", client.id, type(exc).__name__)
        return None


def _log_outcome(message: ClaimedMessage, result: SendResult) -> None:
    """Log a finished send without its body; the number keeps only its last four digits."""
    level = logging.INFO if result.outcome in FAILED_OUTCOMES else logging.DEBUG
    log.log(level, "message %s to %s: %s%s (%s %s)", message.public_id,
            mask_phone_numbers(message.destination), result.outcome.value,
            f"/{result.error_type.value}" if result.error_type else "", result.status_code,
            mask_phone_numbers(result.status_text))
