"""The dispatcher: claims due outbound messages and sends them through each client's vendor.

A claim is one short transaction: due rows (queued and due, or `sending` under a lease
that expired because its worker died) are locked with `FOR UPDATE SKIP LOCKED`, so
concurrent workers take disjoint rows, and are marked `sending` under this worker's
lease. SQLite ignores the lock clause, which is safe because SQLite has one writer.

Sends run outside any transaction, in a thread pool that never touches the database.
While other sends are in flight, the calling thread records the outcomes that have
arrived since it last looked, together: one transaction of a few set-based statements
(row updates, then every report through the same prepared statement as vendor reports),
so recording costs per chunk, not per message, and a result waits for at most one chunk.
Rows change only while still leased to this worker: a worker whose lease expired
cannot overwrite the result of the worker that took the message over.

`attempts` counts the times a message was handed to a worker, so a message that kills
its worker every time still runs out of attempts. A send is started only while it can
finish (each of its requests within the vendor timeout) before the lease ends; later ones
are handed back.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, column, or_, tuple_, update, values

from logging_setup import mask_phone_numbers
from mappers.report import DeliveryReport, ErrorType, Outcome
from models import Client, OutboundMessage, db
from schemas.client_config import ClientConfig
from schemas.outbound import OutboundMessage as MessageToSend
from services.clients import callback_urls, client_config
from services.clock import utcnow
from services.ingest import ReportToAdd, add_send_results
from services.vendors import (REQUESTS_PER_SEND, EarlierAttempt, SendResult, refused, retry_later,
                             send_message)

log = logging.getLogger(__name__)

SEND_RESULT_KIND = "send_result"
# How long the outcomes of sends that finish close together wait to be recorded together.
GATHER_SECONDS = 0.02
FAILED_OUTCOMES = frozenset({Outcome.ERROR, Outcome.HARDBOUNCE, Outcome.SOFTBOUNCE})
# The lease time kept for recording a send, as a share of the send's longest duration.
RECORDING_SHARE = 0.25
_CLAIMED_COLUMNS = (OutboundMessage.id, OutboundMessage.public_id, OutboundMessage.client_id,
                    OutboundMessage.emarsys_message_id, OutboundMessage.source,
                    OutboundMessage.destination, OutboundMessage.body, OutboundMessage.attempts,
                    OutboundMessage.created_at, OutboundMessage.vendor, OutboundMessage.vendor_account)


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher claims, sends and retries."""

    batch_size: int
    concurrency: int
    lease_seconds: float
    retry_delay_seconds: float
    max_attempts: int
    vendor_timeout_seconds: float

    @property
    def send_seconds(self) -> float:
        """Return the lease time one send needs: its requests (each within the vendor timeout), then recording.

        A send that ended just as its lease did could not be recorded before another worker took
        the message and sent it again: a quarter on top leaves time to record it.
        """
        return REQUESTS_PER_SEND * self.vendor_timeout_seconds * (1 + RECORDING_SHARE)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DispatchSettings:
        """Read the settings from the app config; the lease must outlast one vendor call."""
        settings = cls(
            batch_size=int(config["DISPATCH_BATCH_SIZE"]), concurrency=int(config["DISPATCH_CONCURRENCY"]),
            lease_seconds=float(config["LEASE_SECONDS"]),
            retry_delay_seconds=float(config["SEND_RETRY_DELAY_SECONDS"]),
            max_attempts=int(config["SEND_MAX_ATTEMPTS"]),
            vendor_timeout_seconds=float(config["VENDOR_TIMEOUT_SECONDS"]))
        if settings.lease_seconds <= settings.send_seconds:
            raise ValueError(f"LEASE_SECONDS must be longer than {settings.send_seconds:g} s, "
                             f"{REQUESTS_PER_SEND * (1 + RECORDING_SHARE):g} x VENDOR_TIMEOUT_SECONDS (a send's "
                             "requests and recording it), or a lease could expire before a send is "
                             "recorded and another worker send the message again")
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
    created_at: datetime
    last_vendor: str | None  # the vendor of the last attempt started, None before the first
    last_account: str | None  # its account (ClientConfig.account), None if not known


@dataclass(frozen=True)
class SendJob:
    """A claimed message with what sending it needs: its client's vendor and configuration."""

    message: ClaimedMessage
    vendor: str
    config: ClientConfig | None  # None when the stored configuration could not be read
    status_callback_url: str
    earlier_attempt: EarlierAttempt | None = None  # set when an earlier send may have reached the vendor

    @property
    def account(self) -> str | None:
        """Return the vendor account this job is sent through, None when the configuration cannot be read."""
        return None if self.config is None else self.config.account()


# A finished send and its result; None when it was never started (handed back).
SendOutcome = tuple[SendJob, SendResult | None]


class Dispatcher:
    """Claim due outbound messages and send them through each client's vendor."""

    def __init__(self, settings: DispatchSettings, owner: str, stopping: threading.Event | None = None):
        self.settings = settings
        self.owner = owner
        self.stopping = stopping or threading.Event()  # set: start no more sends, hand them back

    @classmethod
    def from_config(cls, config: Mapping[str, Any], owner: str,
                    stopping: threading.Event | None = None) -> Dispatcher:
        """Build a dispatcher from the app config; owner names this worker in leases."""
        return cls(DispatchSettings.from_config(config), owner, stopping)

    def run_once(self) -> int:
        """Claim one batch, send it concurrently, record every outcome; return the rows claimed."""
        claimed_at = time.monotonic()
        jobs, claimed = self.claim()
        if jobs:
            # Start no send that could still be running when the lease ends.
            self._send_all(jobs, claimed_at + self.settings.lease_seconds - self.settings.send_seconds)
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
            # Still due: on SQLite the SELECT above locks nothing, and another worker may have
            # claimed some of these rows since.
            update(OutboundMessage).where(OutboundMessage.id.in_(ids), _is_due(now))
            .values(state="sending", lease_owner=self.owner, attempts=OutboundMessage.attempts + 1,
                    lease_until=now + timedelta(seconds=self.settings.lease_seconds), updated_at=now)
            .returning(*_CLAIMED_COLUMNS).execution_options(synchronize_session=False)).all()
        jobs = self._jobs_for([ClaimedMessage(*row) for row in rows], now)
        self._record_vendors(jobs)
        db.session.commit()
        return jobs, len(rows)

    def _record_vendors(self, jobs: list[SendJob]) -> None:
        """Record the vendor each job will be sent through, before it is sent.

        A worker lost mid-send records no outcome: its retry must still see which vendor account
        the lost attempt may have reached, or a client moved since would send the SMS again elsewhere.
        """
        ids_by_route: dict[tuple[str, str | None], list[int]] = {}
        for job in jobs:
            route = (job.vendor, job.account)
            last_route = (job.message.last_vendor, job.message.last_account)
            # An unreadable configuration sends nothing: the account recorded stays for the retry.
            if job.account is not None and last_route != route and not _moved_since_an_attempt(job):
                ids_by_route.setdefault(route, []).append(job.message.id)
        for (vendor, account), ids in ids_by_route.items():
            db.session.execute(_owned_by(self.owner, ids).values(vendor=vendor, vendor_account=account))

    def _jobs_for(self, messages: list[ClaimedMessage], now: datetime) -> list[SendJob]:
        """Pair messages with their client's configuration, loaded once per client; cancel orphans."""
        client_ids = {message.client_id for message in messages}
        clients = {client.id: client for client in
                   db.session.scalars(db.select(Client).where(Client.id.in_(client_ids)))}
        configs = {client_id: _readable_config(client) for client_id, client in clients.items()}
        # The client was deleted after these were queued (or while a dead worker held them).
        self._cancel([message for message in messages if message.client_id not in clients], now,
                     "client deleted before sending")
        earlier_attempts = _earlier_attempts(messages)
        return [SendJob(message, clients[message.client_id].vendor, configs[message.client_id],
                        callback_urls(clients[message.client_id]).delivery_reports,
                        earlier_attempts.get(message.id))
                for message in messages if message.client_id in clients]

    def _send_all(self, jobs: list[SendJob], send_deadline: float) -> None:
        """Send in a thread pool; while sends are in flight, record those that have finished."""
        lanes, after_lane = _lanes(jobs)
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(jobs)),
                                thread_name_prefix="dispatch") as pool:
            pending = {pool.submit(self._send_lane, lane, send_deadline): lane for lane in lanes}
            while pending:
                wait(pending, return_when=FIRST_COMPLETED)
                # Let the sends in flight with it finish too: recording costs per chunk, so a
                # chunk of a whole round of sends leaves the pool threads more of the CPU.
                done, _ = wait(pending, timeout=GATHER_SECONDS)
                for future in done:
                    # A recipient's first sends go once its retries have looked (see _lanes).
                    for job in after_lane.pop(_recipient(pending.pop(future)[0]), []):
                        pending[pool.submit(self._send_lane, [job], send_deadline)] = [job]
                self._settle_all([outcome for future in done for outcome in future.result()])

    def _send_lane(self, lane: list[SendJob], send_deadline: float) -> list[SendOutcome]:
        """Send the lane's jobs one after another; a retry never takes a vendor id an earlier one got."""
        outcomes: list[SendOutcome] = []
        taken: set[str] = set()
        for job in lane:
            if job.earlier_attempt is not None and taken:
                job = replace(job, earlier_attempt=replace(
                    job.earlier_attempt, taken_vendor_ids=job.earlier_attempt.taken_vendor_ids | taken))
            result = self._send_before(job, send_deadline)
            if result is not None and result.vendor_message_id:
                taken.add(result.vendor_message_id)
            outcomes.append((job, result))
        return outcomes

    def _send_before(self, job: SendJob, send_deadline: float) -> SendResult | None:
        """Send the job in a pool thread; None (hand it back) past the deadline to start, or when stopping."""
        return None if time.monotonic() > send_deadline or self.stopping.is_set() else self._send(job)

    def _settle_all(self, outcomes: list[SendOutcome]) -> None:
        """Record a chunk of outcomes in one transaction, or one by one if the chunk fails."""
        try:
            self._record_all(outcomes)
        except Exception as exc:
            db.session.rollback()
            if len(outcomes) == 1:  # One message must not stop the batch; its lease will expire.
                log.error("recording message %s failed: %s", outcomes[0][0].message.public_id,
                          type(exc).__name__)
                return
            log.warning("recording %d outcomes together failed (%s); recording them one by one",
                        len(outcomes), type(exc).__name__)
            for outcome in outcomes:
                self._settle_all([outcome])

    def _send(self, job: SendJob) -> SendResult:
        """Call the vendor, or decide without calling it when sending cannot or must not happen."""
        message, earlier_attempt = job.message, job.earlier_attempt
        if message.attempts > self.settings.max_attempts and not self._final_resend(job):
            # One look-up only, like the one resend: a message whose result cannot be recorded
            # must still run out of attempts.
            if (earlier_attempt is None or job.vendor not in LOOK_UP_VENDORS or job.config is None
                    or message.attempts > self.settings.max_attempts + 1):
                return retry_later("attempts", "the worker sending it was lost on the last attempt")
            # The lost attempt may have reached Twilio: adopt what it sent, but send nothing more.
            earlier_attempt = replace(earlier_attempt, look_up_only=True)
        if job.config is None:
            return retry_later("configuration", "the client's stored configuration cannot be read")
        if _moved_since_an_attempt(job):
            return _moved_elsewhere(message.last_vendor, job.vendor)
        try:
            return send_message(job.config, MessageToSend(message.emarsys_message_id, message.source,
                                                          message.destination, message.body),
                                our_message_id=message.public_id,
                                status_callback_url=job.status_callback_url,
                                timeout=self.settings.vendor_timeout_seconds,
                                earlier_attempt=earlier_attempt)
        except Exception as exc:  # A sender bug must end as a retry, not as a row stuck in `sending`.
            # Only the type: an exception's text could quote the body or a credential.
            log.error("sending message %s raised %s", message.public_id, type(exc).__name__)
            return retry_later("exception", f"sending raised {type(exc).__name__}")

    def _final_resend(self, job: SendJob) -> bool:
        """Tell whether the job is the one resend a resend-safe vendor gets after a lost last attempt."""
        # Only one: a message whose send kills its worker every time must still run out of attempts.
        return job.vendor in RESEND_SAFE_VENDORS and job.message.attempts == self.settings.max_attempts + 1

    def _record_all(self, outcomes: list[SendOutcome]) -> None:
        """Hand back, requeue or finish each message of the chunk, in one transaction.

        Only rows still leased to this worker change, and only for those is a report written:
        a worker whose lease expired cannot overwrite the result of the one that took over.
        A message whose client was deleted while it was sent is no longer this worker's: DELETE
        cancelled it (services.clients.delete_client), so nothing is recorded or forwarded for it.
        """
        now = utcnow()
        hand_backs, retries, finals = [], [], []
        for job, result in sorted(outcomes, key=lambda outcome: outcome[0].message.id):
            if result is None:
                hand_backs.append(job.message)
            elif result.retry and job.message.attempts < self.settings.max_attempts:
                retries.append((job, result))
            else:
                finals.append((job, self._final(job.message, result)))
        self._hand_back(hand_backs, now)
        requeued = self._requeue(retries, now)
        finished = self._finish(finals, now)
        db.session.commit()
        _log_recorded(hand_backs, retries, requeued, finals, finished)

    def _final(self, message: ClaimedMessage, result: SendResult) -> SendResult:
        """Return the outcome to store for good: a retry without attempts left becomes an error."""
        if not result.retry:
            return result
        return refused(Outcome.ERROR, ErrorType.UNKNOWN, result.status_code,
                       f"gave up after {message.attempts} attempts: {result.status_text}")

    def _cancel(self, messages: list[ClaimedMessage], now: datetime, reason: str) -> None:
        """Cancel messages of a deleted client that are still leased to this worker."""
        if messages:
            db.session.execute(_owned_by(self.owner, [message.id for message in messages]).values(
                state="cancelled", lease_owner=None, lease_until=None, updated_at=now, last_error=reason))

    def _hand_back(self, messages: list[ClaimedMessage], now: datetime) -> None:
        """Return unsent messages to the queue, undoing their claim's attempt."""
        if messages:
            db.session.execute(_owned_by(self.owner, [message.id for message in messages]).values(
                state="queued", lease_owner=None, lease_until=None, updated_at=now,
                attempts=OutboundMessage.attempts - 1))

    def _requeue(self, retries: list[tuple[SendJob, SendResult]], now: datetime) -> set[int]:
        """Queue messages again after the retry delay, keeping their public ids; return those requeued.

        The vendor account of the attempt, recorded when it was claimed, stays: a retry through
        another could send the SMS twice.
        """
        if not retries:
            return set()
        errors = _rows("id", "last_error", rows=[
            (job.message.id, f"{result.status_code}: {result.status_text}") for job, result in retries])
        return self._update_owned(errors, state="queued", lease_owner=None, lease_until=None,
                                  updated_at=now, last_error=errors.c.last_error,
                                  next_attempt_at=now + timedelta(seconds=self.settings.retry_delay_seconds))

    def _finish(self, finals: list[tuple[SendJob, SendResult]], now: datetime) -> set[int]:
        """Mark rows sent or failed and store each outcome as a report; return the rows finished."""
        if not finals:
            return set()
        outcomes = _rows("id", "state", "vendor", "vendor_message_id", "last_error", rows=[
            (job.message.id, _row_state(result), job.vendor, result.vendor_message_id,
             None if _row_state(result) == "sent" else f"{result.status_code}: {result.status_text}")
            for job, result in finals])
        finished = self._update_owned(
            outcomes, state=outcomes.c.state, vendor=outcomes.c.vendor,
            vendor_message_id=outcomes.c.vendor_message_id, last_error=outcomes.c.last_error,
            lease_owner=None, lease_until=None, updated_at=now)
        reports = [_report(job, result, now) for job, result in finals if job.message.id in finished]
        add_send_results(reports)
        return finished

    def _update_owned(self, rows, **values) -> set[int]:
        """Update the rows joined to `rows` that are still leased to this worker; return their ids."""
        return set(db.session.scalars(
            update(OutboundMessage)
            .where(OutboundMessage.id == rows.c.id, OutboundMessage.state == "sending",
                   OutboundMessage.lease_owner == self.owner)
            .values(**values).returning(OutboundMessage.id)
            .execution_options(synchronize_session=False)))


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


# Vendors whose retry looks for the message an earlier attempt may have created (Twilio has no
# idempotency key; Genesys gets the same message_id on every attempt and needs no look-up).
LOOK_UP_VENDORS = frozenset({"twilio"})
# Vendors that recognise a resend by its message_id (Genesys answers 7, "duplicate"): a message
# whose worker was lost on its last attempt is sent once more, which cannot reach the phone twice.
RESEND_SAFE_VENDORS = frozenset({"genesys"})


def _lanes(jobs: list[SendJob]) -> tuple[list[list[SendJob]], dict[tuple[uuid.UUID, str], list[SendJob]]]:
    """Group the jobs into lanes, each sent one job after another, and the jobs to send after a lane.

    A Twilio retry adopts the oldest vendor message with its text that no other message has. Not
    yet recorded, an id adopted or created in this batch would still look free: so a recipient's
    retries look one after another in one lane, each told the ids the earlier ones got, and its
    first sends go (in parallel) once that lane is done, where no look-up of the batch can mistake
    them for its own. Every other job is a lane of its own.
    """
    lanes: dict[tuple[uuid.UUID, str], list[SendJob]] = {}
    for job in jobs:
        if job.earlier_attempt is not None and job.vendor in LOOK_UP_VENDORS:
            lanes.setdefault(_recipient(job), []).append(job)
    after_lane: dict[tuple[uuid.UUID, str], list[SendJob]] = {}
    alone = []
    for job in jobs:
        if _recipient(job) not in lanes:
            alone.append([job])
        elif job.earlier_attempt is None or job.vendor not in LOOK_UP_VENDORS:
            after_lane.setdefault(_recipient(job), []).append(job)
    return [*lanes.values(), *alone], after_lane


def _recipient(job: SendJob) -> tuple[uuid.UUID, str]:
    """Return the client and number a job sends to."""
    return job.message.client_id, _phone_digits(job.message.destination)


def _phone_digits(destination: str) -> str:
    """Return a destination's digits: '+36301234567' and '36301234567' are one phone to a vendor."""
    return destination.lstrip("+")


def _moved_since_an_attempt(job: SendJob) -> bool:
    """Tell whether the client moved to another vendor account since an attempt that may have reached it."""
    message = job.message
    if job.earlier_attempt is None or message.last_vendor is None:  # None: claimed before it was recorded
        return False
    return message.last_vendor != job.vendor or (
        job.account is not None and message.last_account not in (None, job.account))


def _moved_elsewhere(old_vendor: str, new_vendor: str) -> SendResult:
    """Return the failure of a retry whose client moved to another vendor or account since its attempt."""
    # The new account cannot tell whether the old one delivered it: sent again, it could reach the
    # phone twice.
    if old_vendor == new_vendor:
        return refused(Outcome.ERROR, ErrorType.UNKNOWN, "account changed",
                       f"the client moved to another {new_vendor} account after an attempt that may have "
                       "reached the old one; not sent again")
    return refused(Outcome.ERROR, ErrorType.UNKNOWN, "vendor changed",
                   f"the client moved from {old_vendor} to {new_vendor} after an attempt that may have "
                   f"reached {old_vendor}; not sent again")


def _earlier_attempts(messages: list[ClaimedMessage]) -> dict[int, EarlierAttempt]:
    """Return the retry hint of each message an earlier send may already have delivered to its vendor."""
    # A hand-back undoes its attempt, so a second attempt means a send may have started before.
    retried = [message for message in messages if message.attempts > 1]
    if not retried:
        return {}
    # Both spellings of each number: Emarsys may write one number with or without its '+'.
    recipients = {(message.client_id, spelling) for message in retried
                  for spelling in (_phone_digits(message.destination), "+" + _phone_digits(message.destination))}
    # A vendor message the earlier attempt may have created is newer than the message itself,
    # so only ids recorded since then (with an hour's margin for clock skew) can be mistaken for it.
    taken = db.session.execute(
        db.select(OutboundMessage.client_id, OutboundMessage.destination, OutboundMessage.vendor_message_id)
        .where(tuple_(OutboundMessage.client_id, OutboundMessage.destination).in_(list(recipients)),
               OutboundMessage.vendor_message_id.is_not(None),
               OutboundMessage.updated_at >= min(message.created_at for message in retried) - timedelta(hours=1)))
    taken_by_recipient: dict[tuple[uuid.UUID, str], set[str]] = {}
    for client_id, destination, vendor_message_id in taken:
        taken_by_recipient.setdefault((client_id, _phone_digits(destination)), set()).add(vendor_message_id)
    return {message.id: EarlierAttempt(message.created_at, frozenset(
                taken_by_recipient.get((message.client_id, _phone_digits(message.destination)), ())))
            for message in retried}


def _readable_config(client: Client) -> ClientConfig | None:
    """Return the client's decrypted configuration, or None (logged) when it cannot be read."""
    try:
        return client_config(client)
    except Exception as exc:  # e.g. CONFIG_ENCRYPTION_KEY rotated without the old key
        log.error("configuration of client %s cannot be read: %s", client.id, type(exc).__name__)
        return None


def _rows(*names: str, rows: list[tuple]):
    """Return rows as a VALUES CTE with the given columns (the first an integer id) to join an UPDATE to."""
    columns = [column(names[0], OutboundMessage.id.type), *(column(name, String) for name in names[1:])]
    return values(*columns, name="v").data(rows).cte("v")


def _row_state(result: SendResult) -> str:
    """Return the final row state of a message with this outcome."""
    return "failed" if result.outcome in FAILED_OUTCOMES else "sent"


def _report(job: SendJob, result: SendResult, now: datetime) -> ReportToAdd:
    """Return the outcome of a send as the delivery report that records it."""
    message = job.message
    report = DeliveryReport(
        vendor_message_id=result.vendor_message_id or message.public_id,
        recipient=message.destination, status_code=result.status_code,
        status_text=result.status_text, event_at=now, outcome=result.outcome,
        error_type=result.error_type)
    params = {"public_id": message.public_id, "attempt": message.attempts,
              "status_code": result.status_code, "status_text": result.status_text}
    return ReportToAdd(job.vendor, report, params, client_id=message.client_id,
                       emarsys_message_id=message.emarsys_message_id, kind=SEND_RESULT_KIND)


def _log_recorded(hand_backs: list[ClaimedMessage], retries: list[tuple[SendJob, SendResult]],
                  requeued: set[int], finals: list[tuple[SendJob, SendResult]], finished: set[int]) -> None:
    """Log what a committed chunk did, message by message."""
    if hand_backs:
        log.warning("%d message(s) handed back unsent: the worker is stopping, or their lease would end "
                    "before a send could finish: %s", len(hand_backs),
                    ", ".join(message.public_id for message in hand_backs))
    for message, result in ((job.message, result) for job, result in retries):
        log.info("message %s to %s: attempt %d will be retried (%s %s)%s", message.public_id,
                 mask_phone_numbers(message.destination), message.attempts, result.status_code,
                 mask_phone_numbers(result.status_text), "" if message.id in requeued else "; lease lost")
    for job, result in finals:
        if job.message.id in finished:
            _log_outcome(job.message, result)
        else:
            log.warning("message %s: no longer leased to this worker when its outcome came (its lease "
                        "ended, or its client was deleted and it was cancelled); outcome %s %s not stored",
                        job.message.public_id, result.outcome.value, result.status_code)


def _log_outcome(message: ClaimedMessage, result: SendResult) -> None:
    """Log a finished send without its body; the number keeps only its last four digits."""
    level = logging.INFO if result.outcome in FAILED_OUTCOMES else logging.DEBUG
    if not log.isEnabledFor(level):  # masking every number of a batch costs more than the log call
        return
    log.log(level, "message %s to %s: %s%s (%s %s)", message.public_id,
            mask_phone_numbers(message.destination), result.outcome.value,
            f"/{result.error_type.value}" if result.error_type else "", result.status_code,
            mask_phone_numbers(result.status_text))
