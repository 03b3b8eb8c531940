"""Read the SAP bounce buffer page by page, as stable snapshots at flat cost per page.

SAP asks by page number. Page 0 of a (window, sourceSystem) fixes a snapshot: the newest raw
event id at that moment. Serving page N remembers where page N+1 starts (a keyset position),
so page 5,000 costs one index range scan like page 0, and a bounce that arrives while SAP pages
is left for the next pull sequence instead of shifting records between pages.

On PostgreSQL one page is one prepared statement in autocommit mode: it finds the remembered
position, reads the page, marks its records pulled and remembers where the next page starts.
Other databases (the SQLite default of `make run`) run the same steps as separate statements.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, tuple_, update

from models import Bounce, InboundMessageRecord, MessageState, RawEvent, StatusCursor, db, dialect_insert
from services.clock import utcnow
from services.prepared import driver_autocommit, prepare_once

SAP_TIME_FORMAT = "%Y%m%d%H%M%S"
# An open end of a window: every time a report can carry lies inside (end exclusive).
EARLIEST, LATEST = datetime.min, datetime.max
# The adapter's fields, in the order of the columns every page query selects.
SAP_FIELDS = ("messageId", "recipient", "statusCode", "statusText", "type", "timestamp")
SAP_COLUMNS = (Bounce.message_id, Bounce.recipient, Bounce.status_code, Bounce.status_text, Bounce.type,
               Bounce.event_at)
KEY_COLUMNS = (Bounce.event_at, Bounce.message_id, Bounce.id)

# $1 window start, $2 window end, $3 source system, $4 page, $5 now; {size} is the page size and
# {limit} one more (read to tell whether another page follows), computed in Python: `{size} + 1` in
# SQL is integer arithmetic, which overflows at the largest size the settings take (2^31 - 1).
# The size is written into the text, not passed: with a known LIMIT, PostgreSQL's generic plan
# costs what a custom one does, so after five executions it stops planning the statement anew.
# Without a remembered position the page starts at (window start, '', -1): before every record of
# the window, so one row comparison is the index scan's only start key.
PAGE_SQL = """
PREPARE {name} (timestamp, timestamp, text, bigint, timestamp) AS
WITH sequence AS (
    SELECT snapshot_seq FROM status_cursors
    WHERE window_start = $1 AND window_end = $2 AND source_system = $3 AND page = 0 AND page_size = {size}
), other_size AS (
    -- Page 0 of this sequence was served at another page size (by an instance with another
    -- STATUS_PAGE_SIZE): nothing is done here, and the caller asks again at that size.
    SELECT page_size FROM status_cursors
    WHERE window_start = $1 AND window_end = $2 AND source_system = $3 AND page = 0 AND $4 > 0
      AND page_size <> {size}
), remembered AS (
    SELECT page, snapshot_seq, after_event_at, after_message_id, after_id FROM status_cursors
    WHERE window_start = $1 AND window_end = $2 AND source_system = $3 AND page <= $4 AND $4 > 0
      -- A position holds only in the snapshot and for the page size it was found with: not one of
      -- an earlier sequence, nor one an instance with another STATUS_PAGE_SIZE remembered.
      AND page_size = {size} AND snapshot_seq = coalesce((SELECT snapshot_seq FROM sequence), snapshot_seq)
    ORDER BY page DESC LIMIT 1
), position AS (
    SELECT coalesce(r.page, 0) AS page,
           coalesce(r.snapshot_seq, (SELECT coalesce(max(id), 0) FROM raw_events)) AS snapshot_seq,
           coalesce(r.after_event_at, $1) AS after_event_at, coalesce(r.after_message_id, '') AS after_message_id,
           coalesce(r.after_id, -1) AS after_id
    FROM (SELECT) AS one LEFT JOIN remembered AS r ON true
), page_rows AS (
    SELECT id, seq, message_id, recipient, status_code, status_text, type, event_at, pulled_at,
           row_number() OVER (ORDER BY event_at, message_id, id) AS n
    FROM (SELECT * FROM bounces
          WHERE (event_at, message_id, id) > ((SELECT after_event_at FROM position),
                                              (SELECT after_message_id FROM position),
                                              (SELECT after_id FROM position))
            AND event_at < $2 AND seq <= (SELECT snapshot_seq FROM position)
            AND NOT EXISTS (SELECT FROM other_size)
          ORDER BY event_at, message_id, id
          OFFSET ($4 - (SELECT page FROM position)) * {size} LIMIT {limit}) AS window_rows
), pulled AS (
    -- Only the version served: a report that was still committing when page 0 took its snapshot
    -- may have changed the bounce since it was read, and that version is SAP's to pull later.
    UPDATE bounces SET pulled_at = $5
    WHERE (id, seq) IN (SELECT id, seq FROM page_rows WHERE n <= {size} AND pulled_at IS NULL) AND pulled_at IS NULL
), sequence_start AS (
    -- Page 0 starts a sequence: its snapshot, and the window's start as the position of page 0.
    INSERT INTO status_cursors (window_start, window_end, source_system, page, page_size, snapshot_seq, created_at)
    SELECT $1, $2, $3, 0, {size}, (SELECT snapshot_seq FROM position), $5 WHERE $4 = 0
    ON CONFLICT (window_start, window_end, source_system, page) DO UPDATE SET
        page_size = excluded.page_size, snapshot_seq = excluded.snapshot_seq, created_at = excluded.created_at
), next_position AS (
    INSERT INTO status_cursors (window_start, window_end, source_system, page, page_size, snapshot_seq,
                                after_event_at, after_message_id, after_id, created_at)
    SELECT $1, $2, $3, $4 + 1, {size}, (SELECT snapshot_seq FROM position), event_at, message_id, id, $5
    FROM page_rows WHERE n = {size} AND EXISTS (SELECT FROM page_rows WHERE n = {limit})
    ON CONFLICT (window_start, window_end, source_system, page) DO UPDATE SET
        page_size = excluded.page_size, snapshot_seq = excluded.snapshot_seq, after_event_at = excluded.after_event_at,
        after_message_id = excluded.after_message_id, after_id = excluded.after_id,
        created_at = excluded.created_at
)
SELECT message_id, recipient, status_code, status_text, type, sap_time, sequence_page_size FROM (
    SELECT n, message_id, recipient, status_code, status_text, type,
           to_char(event_at, 'YYYYMMDDHH24MISS') AS sap_time, NULL::integer AS sequence_page_size
    FROM page_rows
    UNION ALL
    SELECT 0, NULL, NULL, NULL, NULL, NULL, NULL, page_size FROM other_size
) AS answer ORDER BY n
"""


@dataclass(frozen=True)
class BouncePage:
    """One page of bounce records, rendered for SAP, and whether it is the last."""

    page: int
    last_page: bool
    status: list[dict[str, str]]


def fetch_bounce_page(start: datetime | None, end: datetime | None, page: int, page_size: int,
                      source_system: str | None = None) -> BouncePage:
    """Return page `page` of the bounces in [start, end), ordered by time then message id, and commit.

    The served bounces are marked pulled and the page's end is remembered for the next page, in
    the same transaction.
    """
    start, end = start or EARLIEST, end or LATEST
    window = (start, end, source_system or "")
    if db.session.get_bind().dialect.name == "postgresql":
        rows, page_size = _page_in_one_round_trip(window, page, page_size)
    else:
        page_size = _sequence_page_size(window, page) or page_size
        rows = _page_in_steps(window, page, page_size)
    return BouncePage(page=page, last_page=len(rows) <= page_size, status=_rendered(rows[:page_size]))


def clear_all() -> None:
    """Delete every bounce, state, inbound message and raw event (the blog's test-only `clear`)."""
    for model in (StatusCursor, Bounce, MessageState, InboundMessageRecord, RawEvent):
        db.session.execute(delete(model))
    db.session.commit()


def _rendered(rows) -> list[dict[str, str]]:
    return [dict(zip(SAP_FIELDS, row)) for row in rows]


def _page_in_one_round_trip(window: tuple[datetime, datetime, str], page: int,
                            page_size: int) -> tuple[list[tuple], int]:
    """Return the page's rows and the page size it was served at: the size its sequence's page 0 had."""
    # The SAP hot path: one statement in autocommit mode is one round trip and one commit, and
    # PostgreSQL already renders the timestamp, so Python only copies strings into the JSON.
    with db.engine.connect() as connection, driver_autocommit(connection):
        rows = _execute_page_statement(connection, window, page, page_size)
        if rows and rows[0][-1] is not None:  # page 0 had another size: a second round trip, at that size
            page_size = rows[0][-1]
            rows = _execute_page_statement(connection, window, page, page_size)
    # Sizes differing again would mean page 0 was just served anew: that sequence is over.
    return [row[:-1] for row in rows if row[-1] is None], page_size


def _execute_page_statement(connection: Connection, window: tuple[datetime, datetime, str], page: int,
                            page_size: int) -> list[tuple]:
    name = _prepared_page_statement(connection, int(page_size))
    return connection.exec_driver_sql(f"EXECUTE {name} (%s, %s, %s, %s, %s)", (*window, page, utcnow())).all()


def _prepared_page_statement(connection: Connection, page_size: int) -> str:
    """Prepare the page statement for this page size on this connection, once; return its name."""
    name = f"sms_status_page_{page_size}"
    prepare_once(connection, name, PAGE_SQL.format(name=name, size=page_size, limit=page_size + 1))
    return name


def _page_in_steps(window: tuple[datetime, datetime, str], page: int, page_size: int) -> list[tuple]:
    """Serve one page as separate statements in one transaction (databases without the one-statement path)."""
    start, end, _ = window
    cursor = _cursor_for(window, page, page_size)
    query = _window_query(start, end, cursor.snapshot_seq)
    if cursor.after_id is not None:
        query = query.where(tuple_(*KEY_COLUMNS) > (cursor.after_event_at, cursor.after_message_id, cursor.after_id))
    skip = (page - cursor.page) * page_size  # non-zero only when SAP skipped pages
    rows = db.session.execute(query.offset(skip).limit(page_size + 1)).all()
    served = rows[:page_size]
    if served and len(rows) > page_size:
        last = served[-1]
        _remember_cursor(window, page + 1, page_size, cursor.snapshot_seq,
                         after=(last.event_at, last.message_id, last.id))
    _mark_pulled(served)
    db.session.commit()
    return [_sap_row(row) for row in rows]


def _sap_row(row) -> tuple:
    return (*row[:5], sap_time(row.event_at))


def sap_time(moment: datetime) -> str:
    """Return a time as SAP reads it, yyyyMMddHHmmss: always 14 digits (strftime's %Y drops a year's zeros)."""
    return f"{moment.year:04d}{moment:%m%d%H%M%S}"


def _window_query(start: datetime, end: datetime, snapshot: int | None):
    query = (db.select(*SAP_COLUMNS, Bounce.id, Bounce.seq, Bounce.pulled_at)
             .where(Bounce.event_at >= start, Bounce.event_at < end).order_by(*KEY_COLUMNS))
    return query if snapshot is None else query.where(Bounce.seq <= snapshot)


def _cursor_for(window: tuple[datetime, datetime, str], page: int, page_size: int) -> StatusCursor:
    """Return the nearest start at or before `page` remembered in this sequence; page 0 starts a sequence."""
    if page > 0:
        same_size = (*_of_window(window), StatusCursor.page_size == page_size)
        query = db.select(StatusCursor).where(*same_size, StatusCursor.page <= page)
        sequence = db.session.scalar(db.select(StatusCursor.snapshot_seq).where(*same_size, StatusCursor.page == 0))
        if sequence is not None:
            # A position holds only in the snapshot it was found in: not one of an earlier sequence.
            query = query.where(StatusCursor.snapshot_seq == sequence)
        cursor = db.session.scalars(query.order_by(StatusCursor.page.desc()).limit(1)).first()
        if cursor is not None:
            return cursor
    snapshot = db.session.scalar(db.select(func.coalesce(func.max(RawEvent.id), 0)))
    if page == 0:
        _remember_cursor(window, 0, page_size, snapshot, after=(None, None, None))
    return StatusCursor(page=0, snapshot_seq=snapshot, after_id=None)


def _sequence_page_size(window: tuple[datetime, datetime, str], page: int) -> int | None:
    """Return the page size page 0 of this sequence was served at, for a later page (None: none known)."""
    if page == 0:
        return None
    return db.session.scalar(db.select(StatusCursor.page_size).where(*_of_window(window), StatusCursor.page == 0))


def _of_window(window: tuple[datetime, datetime, str]) -> tuple:
    return (StatusCursor.window_start == window[0], StatusCursor.window_end == window[1],
            StatusCursor.source_system == window[2])


def _remember_cursor(window: tuple[datetime, datetime, str], page: int, page_size: int, snapshot: int,
                     after: tuple) -> None:
    """Remember where `page` (of `page_size` records) starts: after the (event time, message id, id) key `after`."""
    values = dict(page_size=page_size, snapshot_seq=snapshot, after_event_at=after[0], after_message_id=after[1],
                  after_id=after[2], created_at=utcnow())
    stmt = dialect_insert(StatusCursor).values(window_start=window[0], window_end=window[1],
                                        source_system=window[2], page=page, **values)
    db.session.execute(stmt.on_conflict_do_update(
        index_elements=["window_start", "window_end", "source_system", "page"], set_=values))


# Bounces per UPDATE when marking them pulled, two parameters each (id, seq): SQLite takes at most
# 32,766 parameters a statement.
MARK_PULLED_CHUNK = 2500


def _mark_pulled(rows) -> None:
    # Only the version served (its seq): one a report stored since was not, and stays SAP's to pull.
    unpulled, now = [(row.id, row.seq) for row in rows if row.pulled_at is None], utcnow()
    for start in range(0, len(unpulled), MARK_PULLED_CHUNK):
        chunk = unpulled[start:start + MARK_PULLED_CHUNK]
        served = tuple_(Bounce.id, Bounce.seq).in_(chunk)
        db.session.execute(update(Bounce).where(served, Bounce.pulled_at.is_(None)).values(pulled_at=now)
                           .execution_options(synchronize_session=False))
