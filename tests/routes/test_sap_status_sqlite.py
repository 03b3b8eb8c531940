"""SAP paging on the embedded SQLite default: the step-by-step path keeps the stable-paging guarantees."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask_migrate import upgrade

from app import create_app
from models import Bounce, db
from tests.routes.test_sap_status import WINDOW, push_bounce


@pytest.fixture
def sqlite_app(tmp_path):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'sms.sqlite3'}",
                      "SAP_STATUS_USERNAME": None, "SAP_STATUS_PASSWORD": None, "STATUS_PAGE_SIZE": 100})
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()


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
