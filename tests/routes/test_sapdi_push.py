"""The SAP Digital Interconnect push endpoint, against PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import func

from models import Bounce, MessageState, RawEvent, db

STATUS = "'0x4503 Message 1 of the order 1636010434 at destination of +49123456789 is out of coverage'"


def push(client, query: str):
    return client.get("/api/v1/notifications/set?" + query)


def count(model) -> int:
    return db.session.scalar(db.select(func.count()).select_from(model))


def test_bounce_is_committed_and_answered_200(app, client):
    response = push(client, f"orderid=123456789&time=155423&date=14032018&msisdn=+49123456789&status={STATUS}")
    assert response.status_code == 200
    with app.app_context():
        bounce = db.session.scalars(db.select(Bounce)).one()
        assert (bounce.message_id, bounce.recipient, bounce.status_code, bounce.type) == (
            "123456789", "+49123456789", "0x4503", "Permanent")
        assert bounce.status_text.startswith("Message 1 of the order")
        assert count(RawEvent) == 1


def test_the_blogs_notification_is_served_as_the_blog_shows_it(client):
    # The blog's request, `+` signs un-encoded, and the record its expected response shows.
    push(client, f"orderid=1636010434&time=103504&date=24042018&msisdn=+49123456789&status={STATUS}")
    served = client.get("/status?startTimeUTC=20180424000000&endTimeUTC=20180425000000&page=0").get_json()
    assert served["status"] == [{
        "messageId": "1636010434", "recipient": "+49123456789", "statusCode": "0x4503",
        "statusText": "Message 1 of the order 1636010434 at destination of +49123456789 is out of coverage",
        "type": "Permanent", "timestamp": "20180424103504"}]


def test_raw_event_keeps_the_vendor_parameters(app, client):
    push(client, "orderID=9&time=101010&date=01012020&msisdn=%2B4912345&status='0xDBF3 absent'")
    with app.app_context():
        event = db.session.scalars(db.select(RawEvent)).one()
        assert event.vendor == "sapdi"
        assert event.params["orderID"] == "9"
        assert event.params["status"] == "'0xDBF3 absent'"


def test_success_report_is_accepted_and_is_not_a_bounce(app, client):
    response = push(client, "orderID=7&time=101010&date=01012020&msisdn=4912345&status=Delivered")
    assert response.status_code == 200
    with app.app_context():
        assert count(Bounce) == 0
        assert db.session.scalars(db.select(MessageState)).one().outcome == "DELIVERED"


def test_repeated_notification_stores_nothing_new(app, client):
    query = "orderID=5&time=101010&date=01012020&msisdn=4912345&status='0x4503 gone'"
    assert push(client, query).status_code == 200
    second = push(client, query)
    assert second.status_code == 200
    assert second.get_json()["duplicate"] is True
    with app.app_context():
        assert (count(RawEvent), count(MessageState), count(Bounce)) == (1, 1, 1)


def test_the_same_notification_in_other_bytes_leaves_a_pulled_bounce_pulled(app, client):
    push(client, "orderID=5&time=101010&date=01012020&msisdn=%2B4912345&status='0x4503 gone'")
    with app.app_context():
        db.session.execute(db.update(Bounce).values(pulled_at=db.func.now()))
        db.session.commit()

    again = push(client, "ORDERID=5&TIME=101010&Date=01012020&msisdn=+4912345&status='0x4503 gone'")

    assert (again.status_code, again.get_json()["duplicate"]) == (200, False)
    with app.app_context():
        assert count(RawEvent) == 2  # both kept for audit
        assert db.session.scalars(db.select(Bounce.pulled_at)).one() is not None


def test_later_status_updates_the_record(app, client):
    push(client, "orderID=5&time=101010&date=01012020&msisdn=4912345&status='0xDBF3 absent'")
    push(client, "orderID=5&time=111010&date=01012020&msisdn=4912345&status='0x4503 gone'")
    with app.app_context():
        bounce = db.session.scalars(db.select(Bounce)).one()
        assert (bounce.status_code, bounce.type, bounce.event_at.hour) == ("0x4503", "Permanent", 11)


@pytest.mark.parametrize("query, field", [
    ("time=101010&date=01012020&msisdn=4912345&status=x", "orderID"),
    ("orderID=&time=101010&date=01012020&msisdn=4912345&status=x", "orderID"),
    ("orderID=1&time=101010&date=31022020&msisdn=4912345&status=x", "date"),
    ("orderID=1&time=991010&date=01012020&msisdn=4912345&status=x", "time"),
    ("orderID=1&date=01012020&msisdn=4912345&status=x", "time"),
    ("orderID=1&time=101010&date=01012020&status=x", "msisdn"),
    ("orderID=1&time=101010&date=01012020&msisdn=4912345", "status"),
])
def test_bad_parameters_get_400_naming_the_field_and_store_nothing(app, client, query, field):
    response = push(client, query)
    assert response.status_code == 400
    assert response.get_json()["field"] == field
    with app.app_context():
        assert (count(RawEvent), count(MessageState), count(Bounce)) == (0, 0, 0)
