"""Read the SAP bounce buffer page by page."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, update

from models import Bounce, InboundMessageRecord, MessageState, RawEvent, db
from services.ingest import utcnow

SAP_TIME_FORMAT = "%Y%m%d%H%M%S"


@dataclass(frozen=True)
class BouncePage:
    """One page of bounce records and whether it is the last."""

    page: int
    last_page: bool
    records: list[Bounce]


def fetch_bounce_page(start: datetime | None, end: datetime | None, page: int,
                      page_size: int | None) -> BouncePage:
    """Return page `page` of the bounces in [start, end), ordered by time then message id.

    A `page_size` of None returns the whole window as one last page.
    """
    query = db.select(Bounce).order_by(Bounce.event_at, Bounce.message_id, Bounce.id)
    if start is not None:
        query = query.where(Bounce.event_at >= start)
    if end is not None:
        query = query.where(Bounce.event_at < end)
    if page_size is None:
        records = list(db.session.scalars(query))
        last_page = True
    else:
        # One extra row tells whether another page follows, without a COUNT(*).
        rows = list(db.session.scalars(query.offset(page * page_size).limit(page_size + 1)))
        records, last_page = rows[:page_size], len(rows) <= page_size
    _mark_pulled(records)
    db.session.commit()
    return BouncePage(page=page, last_page=last_page, records=records)


def bounce_to_sap(bounce: Bounce) -> dict[str, str]:
    """Render one bounce as the generic text message adapter expects it."""
    return {
        "messageId": bounce.message_id,
        "recipient": bounce.recipient,
        "statusCode": bounce.status_code,
        "statusText": bounce.status_text,
        "type": bounce.type,
        "timestamp": bounce.event_at.strftime(SAP_TIME_FORMAT),
    }


def clear_all() -> None:
    """Delete every bounce, state, inbound message and raw event (the blog's test-only `clear`)."""
    for model in (Bounce, MessageState, InboundMessageRecord, RawEvent):
        db.session.execute(delete(model))
    db.session.commit()


def _mark_pulled(records: list[Bounce]) -> None:
    unpulled = [record.id for record in records if record.pulled_at is None]
    if unpulled:
        db.session.execute(update(Bounce).where(Bounce.id.in_(unpulled)).values(pulled_at=utcnow()))
