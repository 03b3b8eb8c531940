"""Emarsys clients, the campaign messages they hand over, and the forwarding outbox."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from models import BigId, db
from schemas.client_config import ACCOUNT_FINGERPRINT_LENGTH

OPEN_ITEMS = "state IN ('pending', 'leased')"
DONE_ITEMS = "state = 'done'"
HAS_VENDOR_ID = "vendor_message_id IS NOT NULL"


class Client(db.Model):
    """One Emarsys client onboarded to the partner service, with its vendor settings."""

    __tablename__ = "clients"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    vendor: Mapped[str] = mapped_column(String(20))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # non-secret custom fields
    secrets: Mapped[str] = mapped_column(Text)  # Fernet token of the secret custom fields
    # Fernet token of {"<vendor>:<account>": signing secrets} of accounts the client moved away from:
    # their late callbacks are still signed with them (services.clients.callback_signing_keys).
    former_secrets: Mapped[str | None] = mapped_column(Text)
    callback_token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OutboundMessage(db.Model):
    """One campaign message Emarsys handed over, and its journey to the vendor."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        UniqueConstraint("client_id", "emarsys_message_id"),
        Index("ix_outbound_messages_due", "state", "next_attempt_at"),
        # The dashboard's search by the vendor's id; queued messages have none yet.
        Index("ix_outbound_messages_vendor_message_id", "vendor_message_id",
              postgresql_where=text(HAS_VENDOR_ID), sqlite_where=text(HAS_VENDOR_ID)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Our id at the vendor (Genesys message_id): stable across retries, so a resend is recognised.
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    client_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    emarsys_message_id: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))  # queued, sending, sent, failed, cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    # The vendor and account (ClientConfig.account) of the last attempt started.
    vendor: Mapped[str | None] = mapped_column(String(40))
    vendor_account: Mapped[str | None] = mapped_column(String(ACCOUNT_FINGERPRINT_LENGTH))
    vendor_message_id: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OutboxItem(db.Model):
    """One delivery report or inbound message waiting to be forwarded to Emarsys."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        Index("ix_outbox_client_order", "client_id", "message_key", "event_at", "id"),
        # Claims read one client's open items in write order; done rows pile up until retention.
        Index("ix_outbox_open", "client_id", "kind", "id",
              postgresql_where=text(OPEN_ITEMS), sqlite_where=text(OPEN_ITEMS)),
        # The dashboard's last successful forward; a receipt's new item, still pending, costs no entry.
        Index("ix_outbox_sent", "sent_at", postgresql_where=text(DONE_ITEMS), sqlite_where=text(DONE_ITEMS)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(20))  # delivery_report, inbound_message
    message_key: Mapped[str] = mapped_column(String(120))  # reports of one message keep event order
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending, leased, done, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    # When a worker first took the item; the retry policy's max age counts from here.
    first_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
