"""SAP paging on the embedded SQLite default: the step-by-step path keeps the stable-paging guarantees."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from sqlalchemy import event, insert

from models import Bounce, MessageState, RawEvent, db
from tests.routes.test_sap_status import (WINDOW, page_3_after_the_page_size_changed, page_after_a_restart,
                                          pages_alternating_between_page_sizes, push_bounce)

STOCK_SQLITE_VARIABLE_LIMIT = 32766


def test_pages_are_a_stable_snapshot_on_sqlite(sqlite_app):
    client = sqlite_app.test_client()
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(250):
        push_bounce(client, f"old{i:03d}", start + timedelta(minutes=i))
    served, last = [], []
    for page in range(3):
        body = client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1").get_json()
        served += [r["messageId"] for r in body["status"]]
        last.append(body["lastPage"])
        push_bounce(client, f"new{page}", start + timedelta(minutes=1, seconds=30))
    assert served == [f"old{i:03d}" for i in range(250)] and last == [False, False, True]
    again = client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1").get_json()["status"]
    assert [r["messageId"] for r in again[:5]] == ["old000", "old001", "new0", "new1", "new2"]


def test_served_records_are_marked_pulled_on_sqlite(sqlite_app):
    client = sqlite_app.test_client()
    for i in range(120):
        push_bounce(client, f"m{i:03d}", datetime(2018, 1, 1) + timedelta(minutes=i))
    body = client.get(f"/status?{WINDOW}&page=2").get_json()
    assert [r["messageId"] for r in body["status"]] == [] and body["lastPage"] is True
    assert client.get(f"/status?{WINDOW}&page=1").get_json()["status"][-1]["timestamp"] == "20180101015900"
    with sqlite_app.app_context():
        pulled = db.session.scalars(db.select(Bounce.message_id).where(Bounce.pulled_at.is_not(None))).all()
    assert sorted(pulled) == [f"m{i:03d}" for i in range(100, 120)]


def add_bounces(count: int, start: datetime) -> None:
    """Insert `count` bounce records and their states directly, in one transaction.

    Their raw events are stood for by the last one alone: a pull sequence's snapshot is the newest raw event id.
    """
    db.session.add(RawEvent(id=count, vendor="sapdi", kind="delivery_report", fingerprint="bulk", params={},
                            received_at=start))
    states = [dict(id=i + 1, vendor="sapdi", vendor_message_id=f"m{i:06d}", outcome="HARDBOUNCE", rank=3,
                   status_code="0x4503", status_text="failed", event_at=start, updated_at=start)
              for i in range(count)]
    db.session.execute(insert(MessageState), states)
    db.session.execute(insert(Bounce), [
        dict(message_state_id=i + 1, message_id=f"m{i:06d}", recipient="+49123456789", status_code="0x4503",
             status_text="failed", type="Permanent", event_at=start + timedelta(seconds=i), seq=i + 1)
        for i in range(count)])
    db.session.commit()


def test_get_without_parameters_marks_more_bounces_pulled_than_one_sqlite_statement_takes(sqlite_app):
    sqlite_app.config["STATUS_GET_ALL_LIMIT"] = 40000
    with sqlite_app.app_context():
        add_bounces(33000, datetime(2018, 1, 1))
        # A stock SQLite build takes at most 32,766 parameters a statement (some distributions raise it).
        event.listen(db.engine, "connect", lambda connection, _: connection.setlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, STOCK_SQLITE_VARIABLE_LIMIT))
        db.engine.dispose()
    body = sqlite_app.test_client().get("/api/v1/notifications/get").get_json()
    assert (len(body["status"]), body["lastPage"]) == (33000, True)
    with sqlite_app.app_context():
        unpulled = db.session.scalar(db.select(db.func.count()).where(Bounce.pulled_at.is_(None)))
    assert unpulled == 0


def test_a_time_before_year_1000_is_rendered_in_14_digits_on_sqlite(sqlite_app):
    client = sqlite_app.test_client()
    push_bounce(client, "edge", datetime(999, 1, 1, 12, 0))
    for path in ("/api/v1/notifications/get", "/status?startTimeUTC=00010101000000&page=0"):
        assert [record["timestamp"] for record in client.get(path).get_json()["status"]] == ["09990101120000"]


def test_a_new_page_0_sets_aside_the_positions_of_an_earlier_snapshot_on_sqlite(sqlite_app):
    page_two = page_after_a_restart(sqlite_app.test_client())
    assert [r["messageId"] for r in page_two["status"]][-50:] == [f"z{i:03d}" for i in range(50)]
    assert page_two["lastPage"] is False


def version_stored_while_a_page_is_marked_pulled(app, path: str) -> tuple[list[str], tuple]:
    """Serve a page while a newer version of its one bounce is stored just before the marking; return both.

    PostgreSQL's one statement is held to it by test_page_0_marks_pulled_only_the_version_it_served.

    The codes served, and the stored bounce's (status code, pulled_at) afterwards.
    """
    client = app.test_client()
    push_bounce(client, "a", datetime(2018, 1, 1, 1))

    def store_a_newer_version(connection, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("UPDATE BOUNCES SET PULLED_AT"):
            cursor.execute("UPDATE bounces SET status_code = '0x4504', seq = seq + 1")

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", store_a_newer_version)
    try:
        served = [record["statusCode"] for record in client.get(path).get_json()["status"]]
    finally:
        event.remove(engine, "before_cursor_execute", store_a_newer_version)
    with app.app_context():
        return served, tuple(db.session.execute(db.select(Bounce.status_code, Bounce.pulled_at)).one())


def test_a_page_marks_pulled_only_the_version_it_served_on_sqlite(sqlite_app):
    served, stored = version_stored_while_a_page_is_marked_pulled(sqlite_app, f"/status?{WINDOW}&page=0")

    assert (served, stored) == (["0x4503"], ("0x4504", None))


def test_positions_found_at_another_page_size_are_not_used_on_sqlite(sqlite_app):
    client = sqlite_app.test_client()

    class SmallerPages:
        """The same app, asked with STATUS_PAGE_SIZE 50."""

        def get(self, path: str):
            """Ask at 50 a page."""
            sqlite_app.config["STATUS_PAGE_SIZE"] = 50
            return client.get(path)

    ids = page_3_after_the_page_size_changed(client, SmallerPages())
    assert ids == [f"m{i:03d}" for i in range(150, 200)]


class PageSizeClient:
    """The SQLite app's test client, asking at its own STATUS_PAGE_SIZE, as one instance would."""

    def __init__(self, app, page_size: int):
        self.app, self.page_size, self.client = app, page_size, app.test_client()

    def get(self, path: str):
        """Ask with this instance's page size."""
        self.app.config["STATUS_PAGE_SIZE"] = self.page_size
        return self.client.get(path)


def test_a_sequence_keeps_its_page_size_across_instances_that_differ_on_sqlite(sqlite_app):
    served, last = pages_alternating_between_page_sizes(PageSizeClient(sqlite_app, 100),
                                                        PageSizeClient(sqlite_app, 50))

    assert served == [f"m{i:03d}" for i in range(250)]
    assert last == [False, False, True, True]
