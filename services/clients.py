"""Emarsys clients: onboarding data, encrypted secrets and callback tokens."""
from __future__ import annotations

import logging
import re
import secrets
import uuid
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import delete, exists, update
from sqlalchemy.exc import IntegrityError

from errors import NotFound
from models import Client, MessageState, OutboundMessage, OutboxItem, db
from schemas.client_config import ClientConfig
from services.clock import utcnow
from services.crypto import SecretBox, UndecryptableSecrets
from services.forwarder import DEAD, LEASED, PENDING

log = logging.getLogger(__name__)

# secrets.token_urlsafe(32): 43 URL-safe base64 characters; the column's 64 leave room to lengthen it.
CALLBACK_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,64}")
# The signing keys of at most this many former accounts are kept per client.
MAX_FORMER_ACCOUNTS = 5
# The spec's clientId is `format: uuid`: the canonical hyphenated form only, any letter case.
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.IGNORECASE)


@dataclass(frozen=True)
class CallbackUrls:
    """The URLs a client configures at its vendor."""

    delivery_reports: str
    inbound_messages: str

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Render as the spec's ClientCallbackUrls."""
        return {"deliveryReports": {"url": self.delivery_reports}, "inboundMessages": {"url": self.inbound_messages}}


def parse_client_id(raw: str) -> uuid.UUID | None:
    """Return the clientId path segment as a UUID, or None when it is not a canonical UUID."""
    return uuid.UUID(raw) if _CANONICAL_UUID.match(raw) else None


def secret_box() -> SecretBox:
    """Return the app's encryption box for client secrets."""
    return current_app.extensions["secret_box"]()


def save_client(client_id: uuid.UUID, config: ClientConfig) -> Client:
    """Create or update a client and commit; an update keeps its callback token."""
    try:
        client = _store_client(client_id, config)
    except IntegrityError:
        # A concurrent request created this client first: this one updates it instead.
        db.session.rollback()
        client = _store_client(client_id, config)
    log.info("client %s configured: %s", client_id, config.redacted())
    return client


def _store_client(client_id: uuid.UUID, config: ClientConfig) -> Client:
    now = utcnow()
    secret_values = {k: v for k, v in config.fields.items() if k in config.secret_field_names}
    plain_values = {k: v for k, v in config.fields.items() if k not in config.secret_field_names}
    sealed = secret_box().seal(secret_values)
    # Locked: a concurrent PUT must not compute the former signing keys from the same old row.
    client = db.session.get(Client, client_id, with_for_update=FOR_UPDATE, populate_existing=True)
    if client is None:
        # 256 bits from the OS CSPRNG: unguessable, and it never leaves our URLs.
        client = Client(id=client_id, callback_token=secrets.token_urlsafe(32), created_at=now)
        db.session.add(client)
    else:
        client.former_secrets = _former_secrets_after(client, config)
    client.vendor, client.settings, client.secrets, client.updated_at = config.vendor, plain_values, sealed, now
    db.session.commit()
    return client


def _former_secrets_after(client: Client, config: ClientConfig) -> str | None:
    """Return the client's former signing keys once it is moved to `config`, sealed (None if none).

    When the account changes (another vendor, another Twilio account), the old one's late callbacks
    are still signed with its key: it is kept. The current account's never is: rotated, it is gone.
    """
    box = secret_box()
    try:
        former = box.open(client.former_secrets) if client.former_secrets else {}
        old = client_config(client)
    except UndecryptableSecrets:  # a PUT is how a client with unreadable secrets is repaired
        log.warning("client %s: former signing keys cannot be read and are dropped", client.id)
        return None
    old_account, new_account = _account_key(old), _account_key(config)
    if old.signing_secrets() and old_account != new_account:
        former.pop(old_account, None)  # moved to the end: the newest are kept
        former[old_account] = old.signing_secrets()
    former.pop(new_account, None)
    for account in list(former)[:-MAX_FORMER_ACCOUNTS]:
        del former[account]
    return box.seal(former) if former else None


def _account_key(config: ClientConfig) -> str:
    return f"{config.vendor}:{config.account()}"


def callback_signing_keys(client: Client, vendor: str) -> list[str]:
    """Return the keys a vendor's callback for the client may be signed with: its current account's, then former ones."""
    keys = list(client_config(client).signing_secrets().values()) if client.vendor == vendor else []
    former = secret_box().open(client.former_secrets) if client.former_secrets else {}
    return keys + [key for account, signing in former.items() if account.startswith(f"{vendor}:")
                   for key in signing.values()]


def get_client(client_id: uuid.UUID, lock: dict[str, bool] | None = None) -> Client:
    """Return a client or raise NotFound; `lock` takes its row lock (SQLAlchemy's with_for_update)."""
    client = db.session.get(Client, client_id, with_for_update=lock)
    if client is None:
        raise NotFound(f"client {client_id} is not configured", field="clientId")
    return client


def client_by_token(token: str) -> Client:
    """Return the client a callback token belongs to, or raise NotFound."""
    # Anything not shaped like a token (a NUL, a 10 kB path segment) is unknown without a query.
    if not CALLBACK_TOKEN_SHAPE.fullmatch(token):
        raise NotFound("unknown callback URL", field="token")
    client = db.session.scalars(db.select(Client).where(Client.callback_token == token)).first()
    if client is None:
        raise NotFound("unknown callback URL", field="token")
    return client


def client_for_callback(vendor: str, token: str) -> Client:
    """Return the client of a callback URL, or raise NotFound unless the client sends, or sent, through the vendor.

    A client that moved to another vendor keeps its token: the old vendor's URL still takes the
    late reports of the messages sent through it (as long as retention keeps those messages).
    """
    client = client_by_token(token)
    if client.vendor != vendor and not _has_sent_through(client.id, vendor):
        # Same answer as an unknown token: the URL does not reveal that the token exists.
        raise NotFound("unknown callback URL", field="token")
    return client


def _has_sent_through(client_id: uuid.UUID, vendor: str) -> bool:
    # A message state of the client's under that vendor: a send result recorded, or a report taken.
    return db.session.scalar(db.select(exists().where(MessageState.client_id == client_id,
                                                      MessageState.vendor == vendor)))


# A batch being queued holds its client's row in SHARE mode until it commits, and a deletion
# locks the row for update before anything else: so every message a 202 answered is either
# queued before the deletion looks (and cancelled by it) or refused with 404 after it.
FOR_SHARE = {"read": True}
FOR_UPDATE = {"read": False}


def delete_client(client_id: uuid.UUID) -> None:
    """Delete a client, cancel its unsent messages, drop its unforwarded reports and dead letters, and commit."""
    client = get_client(client_id, lock=FOR_UPDATE)
    now = utcnow()
    # A message being sent is cancelled too: if its worker dies, no other may claim it later and send
    # it under the configuration of a client given this id again. A worker still sending it then
    # records nothing for it (its row is no longer its to record), and Emarsys hears nothing more.
    db.session.execute(update(OutboundMessage)
                       .where(OutboundMessage.client_id == client_id,
                              OutboundMessage.state.in_(("queued", "sending")))
                       .values(state="cancelled", updated_at=now, lease_owner=None, lease_until=None))
    # Emarsys would answer them 404: they would only pile up as dead letters. The dead letters go
    # too: no replay could deliver them, and they would hold the dead-letter count up for ever.
    db.session.execute(delete(OutboxItem)
                       .where(OutboxItem.client_id == client_id, OutboxItem.state.in_((PENDING, LEASED, DEAD))))
    db.session.delete(client)
    db.session.commit()
    log.info("client %s deleted", client_id)


def reseal_secrets() -> tuple[int, list[uuid.UUID]]:
    """Encrypt every client's secrets anew with the first key and commit; return how many, and those no key opens.

    After it, the keys after the first decrypt nothing stored and can be dropped from CONFIG_ENCRYPTION_KEY.
    """
    box, resealed, unreadable = secret_box(), 0, []
    # Locked: a concurrent PUT must not seal with the old key list in between.
    for client in db.session.scalars(db.select(Client).order_by(Client.id).with_for_update()):
        try:
            client.secrets = box.reseal(client.secrets)
            client.former_secrets = box.reseal(client.former_secrets) if client.former_secrets else None
            resealed += 1
        except UndecryptableSecrets:
            unreadable.append(client.id)
            db.session.expire(client)  # neither column changes: it stays as it was
    db.session.commit()
    log.info("secrets of %d client(s) resealed with the first encryption key; %d unreadable", resealed, len(unreadable))
    return resealed, unreadable


def client_config(client: Client) -> ClientConfig:
    """Return a client's full configuration, secrets decrypted."""
    secret_values = secret_box().open(client.secrets)
    return ClientConfig(vendor=client.vendor, fields={**client.settings, **secret_values},
                        secret_field_names=frozenset(secret_values))


def callback_urls(client: Client) -> CallbackUrls:
    """Return the client's absolute callback URLs under PUBLIC_BASE_URL."""
    base = f"{current_app.config['PUBLIC_BASE_URL']}/vendors/{client.vendor}/clients/{client.callback_token}"
    return CallbackUrls(delivery_reports=f"{base}/delivery-reports", inbound_messages=f"{base}/inbound-messages")
