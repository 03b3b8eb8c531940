"""The PostgreSQL report statement against the Python definitions it mirrors."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from mappers.report import DeliveryReport, ErrorType, InboundMessage, Outcome
from models import Bounce, MessageState, OutboxItem, RawEvent, db
from schemas.callbacks import delivery_report_item
from schemas.client_config import load_client_config
from services import ingest
from services.clients import save_client
from services.clock import utcnow
from services.ingest import ReportToAdd, add_send_results, record_delivery_report, record_inbound_message
from tests.concurrency import post_in_thread, start_waiting_for_a_lock
from tests.records import insert_client

CLIENT = uuid.UUID("0b7c9a3e-5d2f-4c1a-9e8b-7f6a5d4c3b2a")


@pytest.mark.parametrize("outcome, error_type", [
    (Outcome.DELIVERED, None),
    (Outcome.ACCEPTED, None),
    (Outcome.SOFTBOUNCE, None),
    (Outcome.HARDBOUNCE, None),
    (Outcome.UNKNOWN, None),
    (Outcome.ERROR, ErrorType.INVALID_SENDER_ID),
    (Outcome.ERROR, None),
])
def test_the_outbox_item_the_statement_builds_is_the_python_delivery_report_item(app, outcome, error_type):
    report = DeliveryReport(vendor_message_id="v-1", recipient="+4915112345678", status_code="8:6",
                            status_text='rejected "by carrier" – Grüße', outcome=outcome, error_type=error_type,
                            event_at=datetime(2026, 12, 1, 9, 30, 15, 987654))
    with app.app_context():
        assert db.engine.dialect.name == "postgresql"
        insert_client(CLIENT)
        record_delivery_report("genesys", report, {"message_id": "v-1"}, CLIENT, "em-42")
        [item] = db.session.scalars(db.select(OutboxItem)).all()
        assert (item.client_id, item.kind, item.message_key) == (CLIENT, "delivery_report", "em-42")
        assert item.payload == delivery_report_item(report, "em-42")


@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
def test_an_inbound_message_taken_from_an_open_url_is_forwarded_with_its_first_arrival_time(request, app_fixture):
    first = datetime(2026, 12, 1, 9, 30)
    message = InboundMessage(vendor_message_id="mo-1", source="4915100", destination="12345", body="STOP",
                             received_at=first)
    with request.getfixturevalue(app_fixture).app_context():
        insert_client(CLIENT)
        record_inbound_message("genesys", message, {"message_id": "mo-1"})
        # The vendor's account is moved to the client's URL and delivers the message again, later.
        record_inbound_message("genesys", replace(message, received_at=first + timedelta(hours=2)),
                               {"message_id": "mo-1", "retry": "1"}, CLIENT)
        [item] = db.session.scalars(db.select(OutboxItem)).all()
        assert (item.client_id, item.payload["receivedAt"], item.event_at) == (CLIENT, "2026-12-01T09:30:00Z", first)


@pytest.mark.parametrize("app_fixture, dialect", [("app", "postgresql"), ("sqlite_app", "sqlite")])
def test_a_client_report_without_its_emarsys_message_id_is_not_forwarded(request, app_fixture, dialect):
    report = DeliveryReport(vendor_message_id="v-1", recipient=None, status_code="2:0", status_text="delivered",
                            outcome=Outcome.DELIVERED, event_at=datetime(2026, 12, 1, 9, 30))
    with request.getfixturevalue(app_fixture).app_context():
        assert db.engine.dialect.name == dialect
        result = record_delivery_report("genesys", report, {"message_id": "v-1"}, CLIENT, None)
        assert result.applied
        assert db.session.scalars(db.select(OutboxItem)).all() == []

@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
@pytest.mark.parametrize("client_id, bounces", [(None, 1), (CLIENT, 0)])
def test_only_a_message_sent_outside_emarsys_becomes_an_sap_bounce(request, app_fixture, client_id, bounces):
    report = DeliveryReport(vendor_message_id="v-1", recipient="+4915112345678", status_code="5:1",
                            status_text="absent", outcome=Outcome.HARDBOUNCE, event_at=datetime(2026, 12, 1, 9, 30))
    with request.getfixturevalue(app_fixture).app_context():
        result = record_delivery_report("genesys", report, {"message_id": "v-1"}, client_id, "em-42")
        assert result.applied
        assert len(db.session.scalars(db.select(Bounce)).all()) == bounces


@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
def test_a_redelivery_in_other_bytes_with_its_own_event_time_is_neither_forwarded_nor_served_again(request, app_fixture):
    delivered = DeliveryReport(vendor_message_id="v-1", recipient="+4915112345678", status_code="2:0",
                               status_text="delivered", outcome=Outcome.DELIVERED, event_at=datetime(2026, 12, 1, 9))
    bounced = DeliveryReport(vendor_message_id="v-2", recipient="+4915112345678", status_code="5:1",
                             status_text="absent", outcome=Outcome.HARDBOUNCE, event_at=datetime(2026, 12, 1, 9))
    with request.getfixturevalue(app_fixture).app_context():
        insert_client(CLIENT)
        record_delivery_report("genesys", delivered, {"message_id": "v-1"}, CLIENT, "em-42")
        record_delivery_report("genesys", bounced, {"message_id": "v-2"})
        pulled_at = datetime(2026, 12, 1, 10)
        db.session.execute(db.update(Bounce).values(pulled_at=pulled_at))
        db.session.commit()
        [version] = db.session.scalars(db.select(Bounce.seq)).all()

        for report, params in ((delivered, {"MESSAGE_ID": "v-1"}), (bounced, {"message_id": "v-2", "retry": "1"})):
            result = record_delivery_report("genesys", report, params, CLIENT if report is delivered else None,
                                            "em-42" if report is delivered else None)
            assert (result.duplicate, result.applied) == (False, False)

        assert len(db.session.scalars(db.select(RawEvent)).all()) == 4
        assert len(db.session.scalars(db.select(OutboxItem)).all()) == 1
        assert db.session.execute(db.select(Bounce.seq, Bounce.pulled_at)).all() == [(version, pulled_at)]


@pytest.mark.parametrize("app_fixture", ["app", "sqlite_app"])
@pytest.mark.parametrize("later_outcome, later_error", [
    (Outcome.SOFTBOUNCE, None), (Outcome.HARDBOUNCE, None), (Outcome.ERROR, ErrorType.UNKNOWN)])
def test_a_bounce_stored_before_the_message_was_known_as_a_clients_is_withdrawn(request, app_fixture,
                                                                                 later_outcome, later_error):
    early = DeliveryReport(vendor_message_id="v-1", recipient="+4915112345678", status_code="3:0",
                           status_text="queue full", outcome=Outcome.SOFTBOUNCE, event_at=datetime(2026, 12, 1, 9))
    later = DeliveryReport(vendor_message_id="v-1", recipient=None, status_code="x", status_text="later",
                           outcome=later_outcome, error_type=later_error, event_at=datetime(2026, 12, 1, 10))
    with request.getfixturevalue(app_fixture).app_context():
        record_delivery_report("genesys", early, {"message_id": "v-1"})  # the open URL: no client known
        assert len(db.session.scalars(db.select(Bounce)).all()) == 1

        assert record_delivery_report("genesys", later, {"message_id": "v-1", "n": "2"}, CLIENT, "em-42").applied

        assert db.session.scalars(db.select(Bounce)).all() == []


@pytest.mark.parametrize("outcome", [Outcome.DELIVERED, Outcome.HARDBOUNCE])
def test_the_report_statement_looks_rows_up_by_index_not_by_scanning_tables(app, outcome):
    # A plan, not a timing. A prepared statement keeps the generic plan it made on its sixth run,
    # when the tables may still be empty; a join planned then as a scan of every bounce made each
    # later receipt cost in proportion to the table (caught by the ingest benchmark).
    report = DeliveryReport(vendor_message_id="new-1", recipient="+4915112345678", status_code="2",
                            status_text="x", outcome=outcome, event_at=datetime(2026, 12, 1, 9))
    parameters = ingest._report_parameters("genesys", report, {"message_id": "new-1"}, None, None,
                                           "delivery_report", datetime(2026, 12, 1))
    with app.app_context():
        connection = db.engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET plan_cache_mode = force_generic_plan")
                cursor.execute(ingest.PREPARE_REPORT_SQL)
                cursor.execute("EXPLAIN (COSTS OFF) " + ingest.EXECUTE_REPORT_SQL, parameters)
                plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            connection.rollback()
            connection.close()
    assert "Seq Scan" not in plan, plan
    # Nor a whole index read with a filter: every index scan is a lookup by its condition.
    lines = plan.splitlines()
    scans = [number for number, line in enumerate(lines) if "Index Scan" in line or "Index Only Scan" in line]
    assert all("Index Cond" in lines[number + 1] for number in scans), plan


def test_a_send_result_racing_an_open_url_bounce_leaves_no_bounce_for_sap(app, client):
    # The vendor's bounce commits while the send result (of an Emarsys client's message) waits
    # for the same state: SAP must not be served it.
    with app.app_context():
        client_id = save_client(uuid.uuid4(), load_client_config({"customFieldValues": {
            "vendor": "genesys", "login": "acme", "password": "pw", "baseUrl": "http://127.0.0.1:9"}})).id
    receipt = {"type": "receipt", "message_id": "g-race", "result_code": "0"}
    assert client.post("/vendors/genesys/delivery-reports", data={**receipt, "message_state": "1"}).status_code == 200
    answers: list[int] = []

    def record_send_result() -> None:
        """Record a final ERROR send result, as the dispatcher does, in its own transaction."""
        report = DeliveryReport(vendor_message_id="g-race", recipient="+36301234567", status_code="99",
                                status_text="refused", event_at=utcnow() + timedelta(seconds=5),
                                outcome=Outcome.ERROR, error_type=ErrorType.UNKNOWN)
        with app.app_context():
            add_send_results([ReportToAdd("genesys", report, {"public_id": "g-race"}, client_id=client_id,
                                          emarsys_message_id="em-race", kind="send_result")])
            db.session.commit()

    with app.app_context(), db.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM message_states WHERE vendor_message_id = 'g-race' FOR UPDATE"))
        threads = [post_in_thread(app, "/vendors/genesys/delivery-reports", {**receipt, "message_state": "3"},
                                  answers),
                   start_waiting_for_a_lock(record_send_result)]
        holder.commit()
    for thread in threads:
        thread.join(10)

    assert answers == [200]
    with app.app_context():
        assert db.session.scalars(db.select(MessageState.client_id)).all() == [client_id]
        assert db.session.scalars(db.select(Bounce)).all() == []
    assert client.get("/status?startTimeUTC=20000101000000&endTimeUTC=21000101000000").get_json()["status"] == []
