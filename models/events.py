"""The append-only audit trail of every accepted vendor request."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from mappers.report import MAX_MESSAGE_ID_LENGTH, MAX_VENDOR_NAME_LENGTH
from models import BigId, db


class RawEvent(db.Model):
    """One accepted vendor request, exactly as it arrived."""

    __tablename__ = "raw_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    vendor: Mapped[str] = mapped_column(String(MAX_VENDOR_NAME_LENGTH))
    kind: Mapped[str] = mapped_column(String(20))
    client_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    vendor_message_id: Mapped[str | None] = mapped_column(String(MAX_MESSAGE_ID_LENGTH), index=True)
    # Hash of vendor, kind, client and parameters: a redelivered request stores nothing new.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The outcome the report was mapped to (None for inbound messages): the dashboard counts by it.
    outcome: Mapped[str | None] = mapped_column(String(12))
    received_at: Mapped[datetime] = mapped_column(index=True)
