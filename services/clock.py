"""The service's one notion of now: naive UTC, the form every table stores."""
from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Return the current time as naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
