"""The embedded SQLite default serves the whole bounce flow with no database server."""
from __future__ import annotations

import sqlite3

from app import create_app
from config import load_config
from models import db


def test_default_database_is_an_sqlite_file_under_instance():
    url = load_config({})["SQLALCHEMY_DATABASE_URI"]
    assert url.startswith("sqlite:///") and url.endswith("instance/sms-status.sqlite3")


def test_push_and_pull_end_to_end_on_sqlite(sqlite_app):
    client = sqlite_app.test_client()
    query = "orderID=77&time=080000&date=02012018&msisdn=+4915112345&status='0xDBF3 absent subscriber'"
    assert client.get("/api/v1/notifications/set?" + query).status_code == 200
    assert client.get("/api/v1/notifications/set?" + query).get_json()["duplicate"] is True
    body = client.get("/status?startTimeUTC=20180102000000&endTimeUTC=20180103000000&page=0").get_json()
    assert body["lastPage"] is True
    assert [(r["messageId"], r["recipient"], r["type"], r["timestamp"]) for r in body["status"]] == [
        ("77", "+4915112345", "Temporary", "20180102080000")]


def test_a_receipt_is_stored_while_a_long_read_is_open_on_the_file(sqlite_app):
    # A reader mid-transaction (an SAP page, a metrics scrape in another process) must not hold the
    # vendor's write until the busy timeout: in WAL mode readers and the writer do not block.
    reader = sqlite3.connect(sqlite_app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"),
                             isolation_level=None, timeout=0)
    try:
        reader.execute("BEGIN")
        before = reader.execute("SELECT count(*) FROM raw_events").fetchone()
        response = sqlite_app.test_client().get(
            "/api/v1/notifications/set?orderID=78&time=080000&date=02012018&msisdn=%2B4915112345&status='0x4503'")
        assert reader.execute("SELECT count(*) FROM raw_events").fetchone() == before  # its snapshot
    finally:
        reader.close()
    assert response.status_code == 200
    with sqlite_app.app_context():
        assert db.session.scalar(db.text("PRAGMA journal_mode")) == "wal"
        assert db.session.scalar(db.text("SELECT count(*) FROM raw_events")) == before[0] + 1


def genesys(client, message_id: str, state: str, result_code: str = "0"):
    form = {"type": "receipt", "message_id": message_id, "message_state": state, "result_code": result_code}
    assert client.post("/vendors/genesys/delivery-reports", data=form).status_code == 200


def test_state_rules_hold_on_the_sqlite_path_too(sqlite_app):
    client = sqlite_app.test_client()
    genesys(client, "late", "2")
    genesys(client, "late", "1")        # a late ACCEPTED after DELIVERED changes nothing
    genesys(client, "retry", "3")
    genesys(client, "retry", "2")       # DELIVERED after SOFTBOUNCE withdraws the unpulled bounce
    genesys(client, "hard", "5", "1")
    genesys(client, "hard", "5", "1")   # a redelivery stores nothing new
    body = client.get("/status?startTimeUTC=20000101000000&endTimeUTC=21000101000000").get_json()
    assert [(r["messageId"], r["type"]) for r in body["status"]] == [("hard", "Permanent")]
    with sqlite_app.app_context():
        from models import MessageState, RawEvent
        outcomes = dict(db.session.execute(db.select(MessageState.vendor_message_id, MessageState.outcome)).all())
        assert outcomes == {"late": "DELIVERED", "retry": "DELIVERED", "hard": "HARDBOUNCE"}
        assert len(db.session.scalars(db.select(RawEvent)).all()) == 5


def test_a_sqlite_file_that_cannot_be_opened_stops_the_migration_in_one_line(tmp_path):
    missing = tmp_path / "no-such-directory" / "sms.sqlite3"
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{missing}"})

    with app.app_context():  # as `flask` pushes one for every command
        result = app.test_cli_runner().invoke(args=["db-upgrade-locked"])
        db.engine.dispose()

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: database unreachable: unable to open database file: {missing}"]
