"""Accept validated outbound batches from Emarsys: check the client can send, then queue."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, exists, update

from errors import NotFound
from models import Client, OutboundMessage, db, dialect_insert
from schemas.client_config import CUSTOM_FIELD_VALUES, VENDORS, ClientConfig, InvalidClientConfig, load_client_config
from schemas.outbound import OutboundMessage as BatchMessage
from schemas.outbound import client_error
from services.clients import FOR_SHARE, client_config, get_client
from services.clock import utcnow
from services.crypto import UndecryptableSecrets

log = logging.getLogger(__name__)

QUEUED = "queued"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class AcceptedBatch:
    """What accepting one batch did."""

    received: int
    queued: int


def accept_batch(client_id: uuid.UUID, messages: list[BatchMessage]) -> AcceptedBatch:
    """Queue a validated batch for a client that can send, in one transaction, and commit.

    Raises NotFound for an unknown client and the spec's globalError (errorType client)
    when the stored configuration can no longer send.
    """
    client = get_client(client_id, lock=FOR_SHARE)
    sendable_config(client)
    queued = queue_messages(client.id, messages)
    log.info("client %s: batch of %d accepted, %d queued", client_id, len(messages), queued)
    return AcceptedBatch(received=len(messages), queued=queued)


def sendable_config(client: Client) -> ClientConfig:
    """Return the client's configuration, or raise the client globalError when it cannot send."""
    try:
        config = client_config(client)
    except UndecryptableSecrets:
        raise client_error("the stored vendor credentials cannot be decrypted; "
                           "configure the client again") from None
    if config.vendor not in VENDORS:
        raise client_error(f"the stored vendor {config.vendor!r} is not supported")
    try:
        # Rules may have tightened since onboarding: what passes now is what the sender needs.
        load_client_config({CUSTOM_FIELD_VALUES: config.fields})
    except InvalidClientConfig as exc:
        raise client_error(f"the stored configuration is no longer valid: {exc.errors[0]['description']}") from None
    return config


def queue_messages(client_id: uuid.UUID, messages: list[BatchMessage]) -> int:
    """Insert the messages as queued in one statement and commit; return how many were new.

    An emarsysMessageId this client already handed over is skipped by the unique
    (client_id, emarsys_message_id) constraint, so a re-sent batch is never sent twice;
    only one cancelled unsent (its client was deleted meanwhile) is queued again.
    """
    now = utcnow()
    rows = [{
        "public_id": uuid.uuid4().hex, "client_id": client_id,
        "emarsys_message_id": message.emarsys_message_id, "source": message.source,
        "destination": message.destination, "body": message.body, "state": QUEUED, "attempts": 0,
        "next_attempt_at": now, "created_at": now, "updated_at": now,
    } for message in messages]
    # Rows go as parameters of one cached statement (executemany with RETURNING), rather than a
    # 1000-row VALUES clause that SQLAlchemy would compile afresh for every batch.
    stmt = (dialect_insert(OutboundMessage)
            .on_conflict_do_nothing(index_elements=["client_id", "emarsys_message_id"])
            .returning(OutboundMessage.id))
    queued = len(db.session.execute(stmt, rows).all())
    if queued < len(rows):
        queued += _requeue_cancelled(client_id, [message.emarsys_message_id for message in messages], now)
    _require_client_still_configured(client_id)
    db.session.commit()
    return queued


def _require_client_still_configured(client_id: uuid.UUID) -> None:
    """Roll back and raise NotFound if the client was deleted since it was read."""
    # SQLite has no row locks: the FOR SHARE read of the client locked nothing, and a deletion may
    # have committed since. From the insert on this transaction holds SQLite's one write lock, so a
    # deletion either shows here or waits for this commit and then cancels what it queued.
    if db.session.scalar(db.select(exists().where(Client.id == client_id))):
        return
    db.session.rollback()
    raise NotFound(f"client {client_id} is not configured", field="clientId")


def _requeue_cancelled(client_id: uuid.UUID, emarsys_message_ids: list[str], now: datetime) -> int:
    # A message cancelled because its client was deleted, handed over again after the client is
    # configured again, is queued again (under its old public id). One attempted before may have
    # reached the vendor (a retry was pending): it keeps one attempt, so that its next send is a
    # retry, which looks for that earlier attempt instead of sending twice. A separate statement,
    # run only when the batch met known ids: an upsert would cost every batch 4x.
    return db.session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.client_id == client_id, OutboundMessage.emarsys_message_id.in_(emarsys_message_ids),
               OutboundMessage.state == CANCELLED)
        .values(state=QUEUED, attempts=case((OutboundMessage.attempts > 0, 1), else_=0), next_attempt_at=now,
                updated_at=now, last_error=None, lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)).rowcount
