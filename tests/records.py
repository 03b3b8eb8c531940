"""Rows the tests store directly, where going through the API would be beside the point."""
from __future__ import annotations

import uuid

from models import Client, db
from services.clock import utcnow


def insert_client(client_id: uuid.UUID, vendor: str = "genesys") -> None:
    """Store a bare client row, in the app context, so that its messages' reports are forwarded."""
    now = utcnow()
    db.session.add(Client(id=client_id, vendor=vendor, settings={}, secrets="never opened",
                          callback_token=uuid.uuid4().hex, created_at=now, updated_at=now))
    db.session.commit()


def ensure_client(client_id: uuid.UUID) -> None:
    """Store a bare client row unless one of that id exists, for outbox items written directly."""
    if db.session.get(Client, client_id) is None:
        insert_client(client_id)
