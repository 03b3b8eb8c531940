"""Read the SAP bounce buffer page by page, as stable snapshots at flat cost per page.

SAP asks by page number. Page 0 of a (window, sourceSystem) fixes a snapshot: the newest raw
event id at that moment. Serving page N remembers where page N+1 starts (a keyset position),
so page 5,000 costs one index range scan like page 0, and a bounce that arrives while SAP pages
is left for the next pull sequence instead of shifting records between pages.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, tuple_, update

from models import Bounce, InboundMessageRecord, MessageState, RawEvent, StatusCursor, db, dialect_insert
from services.ingest import utcnow

SAP_TIME_FORMAT = "%Y%m%d%H%M%S"
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(9999, 12, 31)


@dataclass(frozen=True)
class BouncePage:
    """One page of bounce records, rendered for SAP, and whether it is the last."""

    page: int
    last_page: bool
    status: list[dict[str, str]]


def fetch_bounce_page(start: datetime | None, end: datetime | None, page: int, page_size: int | None,
                      source_system: str | None = None) -> BouncePage:
    """Return page `page` of the bounces in [start, end), ordered by time then message id.

    A `page_size` of None returns the whole window as one last page.
    """
    start, end = start or EARLIEST, end or LATEST
    if page_size is None:
        records = list(db.session.scalars(_window_query(start, end, snapshot=None)))
        return _served(page, True, records)
    window = (start, end, source_system or "")
    cursor = _cursor_for(window, page)
    query = _window_query(start, end, cursor.snapshot_seq)
    if cursor.after_id is not None:
        query = query.where(tuple_(Bounce.event_at, Bounce.message_id, Bounce.id)
                            > (cursor.after_event_at, cursor.after_message_id, cursor.after_id))
    skip = (page - cursor.page) * page_size  # non-zero only when SAP skipped pages
    rows = list(db.session.scalars(query.offset(skip).limit(page_size + 1)))
    records, last_page = rows[:page_size], len(rows) <= page_size
    if records and not last_page:
        _remember_cursor(window, page + 1, cursor.snapshot_seq, records[-1])
    return _served(page, last_page, records)


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
    for model in (StatusCursor, Bounce, MessageState, InboundMessageRecord, RawEvent):
        db.session.execute(delete(model))
    db.session.commit()


def _window_query(start: datetime, end: datetime, snapshot: int | None):
    query = (db.select(Bounce).where(Bounce.event_at >= start, Bounce.event_at < end)
             .order_by(Bounce.event_at, Bounce.message_id, Bounce.id))
    return query if snapshot is None else query.where(Bounce.seq <= snapshot)


def _cursor_for(window: tuple[datetime, datetime, str], page: int) -> StatusCursor:
    """Return the nearest remembered start at or before `page`; page 0 takes a new snapshot."""
    if page > 0:
        cursor = db.session.scalars(
            db.select(StatusCursor)
            .where(StatusCursor.window_start == window[0], StatusCursor.window_end == window[1],
                   StatusCursor.source_system == window[2], StatusCursor.page <= page)
            .order_by(StatusCursor.page.desc()).limit(1)).first()
        if cursor is not None:
            return cursor
    snapshot = db.session.scalar(db.select(func.coalesce(func.max(RawEvent.id), 0)))
    return StatusCursor(page=0, snapshot_seq=snapshot, after_id=None)


def _remember_cursor(window: tuple[datetime, datetime, str], page: int, snapshot: int, last: Bounce) -> None:
    values = dict(snapshot_seq=snapshot, after_event_at=last.event_at, after_message_id=last.message_id,
                  after_id=last.id, created_at=utcnow())
    stmt = dialect_insert(StatusCursor).values(window_start=window[0], window_end=window[1],
                                        source_system=window[2], page=page, **values)
    db.session.execute(stmt.on_conflict_do_update(
        index_elements=["window_start", "window_end", "source_system", "page"], set_=values))


def _served(page: int, last_page: bool, records: list[Bounce]) -> BouncePage:
    # Render before the commit: afterwards every record would be expired and reloaded one by one.
    served = BouncePage(page=page, last_page=last_page, status=[bounce_to_sap(record) for record in records])
    unpulled = [record.id for record in records if record.pulled_at is None]
    if unpulled:
        db.session.execute(update(Bounce).where(Bounce.id.in_(unpulled)).values(pulled_at=utcnow())
                           .execution_options(synchronize_session=False))
    db.session.commit()
    return served
