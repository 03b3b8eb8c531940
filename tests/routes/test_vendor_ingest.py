"""Every vendor's delivery reports and inbound messages, end to end against PostgreSQL."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, text

from errors import StartupError
from models import InboundMessageRecord, MessageState, RawEvent, db
from services.twilio_signature import compute_signature
from tests.concurrency import post_in_thread

ALL_TIME = "/status?startTimeUTC=20000101000000&endTimeUTC=21000101000000&page=0"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MAPPINGS = Path(__file__).resolve().parents[2] / "vendor-mappings.example.yaml"


def count(model) -> int:
    return db.session.scalar(db.select(func.count()).select_from(model))


def state_of(vendor: str, message_id: str) -> MessageState:
    return db.session.scalars(db.select(MessageState).filter_by(vendor=vendor, vendor_message_id=message_id)).one()


def genesys_dr(client, message_id="g-1", state="2", result_code="0", **extra):
    form = {"type": "receipt", "message_id": message_id, "message_state": state, "result_code": result_code, **extra}
    return client.post("/vendors/genesys/delivery-reports", data=form)


# (vendor, method, delivery-report params, expected outcome, expected SAP type or None)
BOUNCES = [
    ("genesys", "post", {"type": "receipt", "message_id": "g-5", "message_state": "5", "result_code": "1"},
     "HARDBOUNCE", "Permanent"),
    ("genesys", "post", {"type": "receipt", "message_id": "g-3", "message_state": "3", "result_code": "0"},
     "SOFTBOUNCE", "Temporary"),
    ("twilio", "post", {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "21211",
                        "To": "+4915112345", "From": "+1555"}, "HARDBOUNCE", "Permanent"),
    ("twilio", "post", {"MessageSid": "SM3", "MessageStatus": "failed", "ErrorCode": "30001",
                        "To": "+4915112345"}, "ERROR", "Temporary"),
    ("twilio", "post", {"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": "30003",
                        "To": "+4915112345"}, "SOFTBOUNCE", "Temporary"),
    ("expertflow", "post", {"MessageSid": "EF1", "SmsStatus": "failed"}, "ERROR", "Temporary"),
    ("expertflow", "post", {"MessageSid": "EF2", "MessageStatus": "undelivered"}, "SOFTBOUNCE", "Temporary"),
    ("sapdi", "get", {"orderID": "S1", "date": "01012020", "time": "101010", "msisdn": "+4915112345",
                      "status": "'0xDBF3 absent'"}, "SOFTBOUNCE", "Temporary"),
]


@pytest.mark.parametrize("vendor, method, params, outcome, bounce_type", BOUNCES)
def test_each_vendor_bounce_appears_in_status_with_its_type(app, client, vendor, method, params, outcome,
                                                           bounce_type):
    url = f"/vendors/{vendor}/delivery-reports"
    response = client.get(url, query_string=params) if method == "get" else client.post(url, data=params)
    assert response.status_code == 200
    message_id = params.get("message_id") or params.get("MessageSid") or params.get("orderID")
    records = client.get(ALL_TIME).get_json()["status"]
    assert [(r["messageId"], r["type"]) for r in records] == [(message_id, bounce_type)]
    with app.app_context():
        assert state_of(vendor, message_id).outcome == outcome


@pytest.mark.parametrize("vendor, message_id, params, outcome", [
    ("genesys", "g", {"type": "receipt", "message_id": "g", "message_state": "2", "result_code": "0"}, "DELIVERED"),
    ("genesys", "g", {"type": "receipt", "message_id": "g", "message_state": "6", "result_code": "0"}, "ACCEPTED"),
    ("twilio", "SM", {"MessageSid": "SM", "MessageStatus": "delivered"}, "DELIVERED"),
    ("twilio", "SM", {"MessageSid": "SM", "MessageStatus": "queued"}, "ACCEPTED"),
    ("expertflow", "EF", {"MessageSid": "EF", "SmsStatus": "sent"}, "ACCEPTED"),
    ("genesys", "g", {"type": "receipt", "message_id": "g", "message_state": "7", "result_code": "0"}, "UNKNOWN"),
    ("twilio", "SM", {"MessageSid": "SM", "MessageStatus": "canceled", "To": "+4915112345"}, "UNKNOWN"),
])
def test_non_bounce_outcomes_are_stored_but_not_pulled(app, client, vendor, message_id, params, outcome):
    assert client.post(f"/vendors/{vendor}/delivery-reports", data=params).status_code == 200
    with app.app_context():
        assert state_of(vendor, message_id).outcome == outcome
    assert client.get(ALL_TIME).get_json()["status"] == []


def test_an_error_is_a_temporary_bounce_never_a_permanent_one(client):
    genesys_dr(client, "g-err", state="8", result_code="4")
    assert [r["type"] for r in client.get(ALL_TIME).get_json()["status"]] == ["Temporary"]


def test_genesys_error_keeps_the_error_type(app, client):
    genesys_dr(client, "g-auth", state="8", result_code="2")
    with app.app_context():
        state = state_of("genesys", "g-auth")
        assert (state.outcome, state.error_type) == ("ERROR", "AUTHENTICATION")


def test_genesys_dr_delivered_twice_is_acknowledged_and_stored_once(app, client):
    assert genesys_dr(client, "dup").status_code == 200
    assert genesys_dr(client, "dup").status_code == 200
    with app.app_context():
        assert (count(RawEvent), count(MessageState)) == (1, 1)


@pytest.mark.parametrize("vendor, params, expected", [
    ("genesys", {"type": "MO", "message_id": "mo-1", "shortcode": "12345", "phone_number": "4915112345",
                 "carrier": "7", "message": "STOP"}, ("4915112345", "12345", "STOP")),
    ("twilio", {"MessageSid": "SMmo", "From": "+4915112345", "To": "+1555", "Body": "Hi there"},
     ("+4915112345", "+1555", "Hi there")),
    ("expertflow", {"SmsSid": "EFmo", "From": "+4915112345", "To": "8080", "Body": "Grüße"},
     ("+4915112345", "8080", "Grüße")),
])
def test_inbound_message_is_stored_once(app, client, vendor, params, expected):
    for _ in range(2):
        assert client.post(f"/vendors/{vendor}/inbound-messages", data=params).status_code == 200
    with app.app_context():
        stored = db.session.scalars(db.select(InboundMessageRecord)).one()
        assert (stored.vendor, stored.source, stored.destination, stored.body) == (vendor, *expected)


def test_an_inbound_message_tied_to_no_client_is_stored_and_logged_as_not_forwarded(app, client, caplog):
    caplog.set_level("WARNING")
    params = {"type": "MO", "message_id": "mo-open", "shortcode": "12345", "phone_number": "4915112345678",
              "message": "STOP"}
    for _ in range(2):  # the vendor's retry is a duplicate: one line, not one a push
        assert client.post("/vendors/genesys/inbound-messages", data=params).status_code == 200

    with app.app_context():
        assert db.session.scalars(db.select(InboundMessageRecord.client_id)).all() == [None]
    [line] = [record for record in caplog.records if "mo-open" in record.getMessage()]
    assert line.levelname == "WARNING"
    assert "not forwarded" in line.getMessage() and "genesys" in line.getMessage()
    assert "STOP" not in line.getMessage() and "4915112345678" not in line.getMessage()


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("body, content_type", [
    (b"message=Gr%FC%DFe", f"{FORM}; charset=ISO-8859-1"),
    (b"message=Gr%FC%DFe", FORM),
    (b"message=Gr\xfc\xdfe", FORM),
    (b"message=Gr%C3%BC%C3%9Fe", FORM),
    (b"message=Gr%C3%BC%C3%9Fe", "multipart/form-data; boundary=x"),
    (b"message=%00G%00r%00%FC%00%DF%00e", f"{FORM}; charset=UCS-2"),  # the ids beside it stay ASCII
])
def test_inbound_text_in_odd_encodings_is_stored_as_sent(app, client, body, content_type):
    fields = b"type=MO&message_id=mo-enc&shortcode=12345&phone_number=4915112345&" + body
    if content_type.startswith("multipart"):
        parts = [part.split(b"=", 1) for part in fields.split(b"&")]
        fields = b"".join(b'--x\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name, value)
                          for name, value in parts).replace(b"Gr%C3%BC%C3%9Fe", "Grüße".encode()) + b"--x--\r\n"
    response = client.post("/vendors/genesys/inbound-messages", data=fields, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        stored = db.session.scalars(db.select(InboundMessageRecord)).one()
        assert (stored.vendor_message_id, stored.source, stored.body) == ("mo-enc", "4915112345", "Grüße")


def test_query_string_and_form_are_merged_with_the_form_winning(app, client):
    response = client.post("/vendors/genesys/delivery-reports?message_id=g-query&message_state=5&result_code=1",
                           data={"type": "receipt", "message_state": "2"})
    assert response.status_code == 200
    with app.app_context():
        assert state_of("genesys", "g-query").outcome == "DELIVERED"


@pytest.mark.parametrize("settings", [dict(MAX_CONTENT_LENGTH=1024), dict(MAX_VENDOR_REQUEST_BYTES=1024)])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data"])
def test_body_over_the_size_limit_is_a_json_413_and_stores_nothing(make_app, settings, content_type):
    app = make_app(**settings)
    response = app.test_client().post("/vendors/genesys/delivery-reports", content_type=content_type,
                                      data={"type": "receipt", "message_id": "g-big", "message": "x" * 2048})
    assert response.status_code == 413 and response.get_json()["error"] == "request_entity_too_large"
    with app.app_context():
        assert count(RawEvent) == 0


@pytest.mark.parametrize("text_bytes, status", [(6_000, 200), (100_000, 413)])
def test_an_open_vendor_url_takes_an_sms_not_megabytes_by_default(client, text_bytes, status):
    receipt = {"type": "receipt", "message_id": "g-size", "message_state": "2", "text": "x" * text_bytes}
    response = client.post("/vendors/genesys/delivery-reports", data=receipt)
    assert response.status_code == status


def test_late_accepted_after_delivered_changes_nothing(app, client):
    genesys_dr(client, "ooo", state="2")
    genesys_dr(client, "ooo", state="1")
    with app.app_context():
        assert state_of("genesys", "ooo").outcome == "DELIVERED"


def test_late_accepted_after_hardbounce_keeps_the_bounce(client):
    genesys_dr(client, "hb", state="5", result_code="1")
    genesys_dr(client, "hb", state="6")
    assert [r["type"] for r in client.get(ALL_TIME).get_json()["status"]] == ["Permanent"]


def test_delivered_after_softbounce_withdraws_an_unpulled_bounce(client):
    genesys_dr(client, "retry", state="3")
    genesys_dr(client, "retry", state="2")
    assert client.get(ALL_TIME).get_json()["status"] == []


def test_delivered_after_a_pulled_softbounce_leaves_what_sap_has(client):
    genesys_dr(client, "pulled", state="3")
    assert len(client.get(ALL_TIME).get_json()["status"]) == 1
    genesys_dr(client, "pulled", state="2")
    assert [r["messageId"] for r in client.get(ALL_TIME).get_json()["status"]] == ["pulled"]


def test_recipient_comes_from_what_is_already_known(app, client):
    client.post("/vendors/twilio/delivery-reports", data={"MessageSid": "SMr", "MessageStatus": "sent",
                                                          "To": "+4915100000"})
    client.post("/vendors/twilio/delivery-reports", data={"MessageSid": "SMr", "MessageStatus": "failed"})
    assert [r["recipient"] for r in client.get(ALL_TIME).get_json()["status"]] == ["+4915100000"]


def test_unknown_status_is_stored_as_unknown_with_a_warning(app, client, caplog):
    caplog.set_level("WARNING")
    response = genesys_dr(client, "odd", state="42")
    assert response.status_code == 200
    with app.app_context():
        assert state_of("genesys", "odd").outcome == "UNKNOWN"
    assert any("unrecognised status" in r.getMessage() and "42" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("vendor, path, params, field", [
    ("genesys", "delivery-reports", {"type": "receipt", "message_state": "2"}, "message_id"),
    ("twilio", "delivery-reports", {"MessageStatus": "delivered"}, "MessageSid"),
    ("expertflow", "delivery-reports", {"SmsStatus": "delivered"}, "MessageSid"),
    ("genesys", "inbound-messages", {"type": "MO", "phone_number": "49151", "message": "x"}, "message_id"),
])
def test_missing_message_id_gets_400_naming_the_field(app, client, vendor, path, params, field):
    response = client.post(f"/vendors/{vendor}/{path}", data=params)
    assert response.status_code == 400
    assert response.get_json()["field"].lower() == field.lower()
    with app.app_context():
        assert (count(RawEvent), count(MessageState), count(InboundMessageRecord)) == (0, 0, 0)


@pytest.mark.parametrize("path, params, field", [
    ("delivery-reports", {"type": "receipt", "message_id": "g" * 101, "message_state": "2"}, "message_id"),
    ("inbound-messages", {"type": "MO", "message_id": "mo-1", "shortcode": "1", "phone_number": "4" * 65,
                          "message": "x"}, "phone_number"),
])
def test_values_longer_than_the_store_keeps_get_400_and_store_nothing(app, client, path, params, field):
    response = client.post(f"/vendors/genesys/{path}", data=params)
    assert response.status_code == 400
    assert response.get_json()["field"] == field and "at most" in response.get_json()["message"]
    with app.app_context():
        assert (count(RawEvent), count(MessageState), count(InboundMessageRecord)) == (0, 0, 0)


def test_unknown_vendor_is_404_with_json(client):
    response = client.post("/vendors/nosuch/delivery-reports", data={"id": "1"})
    assert response.status_code == 404 and response.get_json()["field"] == "vendor"


def test_twilio_signature_accepted_and_rejected(make_app):
    client = make_app(TWILIO_AUTH_TOKEN="tw-secret", PUBLIC_BASE_URL="https://sms.example.com").test_client()
    form = {"MessageSid": "SMsig", "MessageStatus": "delivered", "To": "+4915112345"}
    url = "https://sms.example.com/vendors/twilio/delivery-reports"
    good = compute_signature("tw-secret", url, form)
    assert client.post("/vendors/twilio/delivery-reports", data=form,
                       headers={"X-Twilio-Signature": good}).status_code == 200
    tampered = {**form, "MessageStatus": "failed"}
    rejected = client.post("/vendors/twilio/delivery-reports", data=tampered, headers={"X-Twilio-Signature": good})
    missing = client.post("/vendors/twilio/inbound-messages", data={"MessageSid": "x", "From": "1", "To": "2",
                                                                    "Body": "b"})
    assert (rejected.status_code, missing.status_code) == (403, 403)


TWILIO_SIGNED_URL = "https://sms.example.com/vendors/twilio/delivery-reports"
HARD_BOUNCE_FORM = {"MessageSid": "SMcs", "MessageStatus": "undelivered", "ErrorCode": "30005", "To": "+4915112345"}


@pytest.mark.parametrize("content_type, body", [
    # The signed values as multipart, the error code in a charset that reads it as another code.
    ("multipart/form-data; boundary=x",
     b"".join(b'--x\r\nContent-Disposition: form-data; name="%s"\r\n%s\r\n%s\r\n'
              % (name.encode(), b"Content-Type: text/plain; charset=cp500\r\n" if name == "ErrorCode" else b"",
                 value.encode()) for name, value in HARD_BOUNCE_FORM.items()) + b"--x--\r\n"),
    ("application/x-www-form-urlencoded; charset=cp500", urlencode(HARD_BOUNCE_FORM).encode()),
    ("application/x-www-form-urlencoded; charset=punycode", urlencode(HARD_BOUNCE_FORM).encode()),
    ("application/x-www-form-urlencoded", urlencode(HARD_BOUNCE_FORM).encode() + b"&x=\xc3\xa4"),  # raw bytes
    ("application/x-www-form-urlencoded", urlencode(HARD_BOUNCE_FORM).encode() + b"&x=%E9"),  # not UTF-8
])
def test_a_signed_body_is_read_only_as_utf8_url_encoded(app, make_app, content_type, body):
    client = make_app(TWILIO_AUTH_TOKEN="tw-secret", PUBLIC_BASE_URL="https://sms.example.com").test_client()
    signature = compute_signature("tw-secret", TWILIO_SIGNED_URL, HARD_BOUNCE_FORM)

    response = client.post("/vendors/twilio/delivery-reports", data=body, content_type=content_type,
                           headers={"X-Twilio-Signature": signature})

    assert response.status_code == 400 and response.get_json()["field"] == "Content-Type"
    with app.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(RawEvent)) == 0


def test_a_signed_body_may_declare_utf8(app, make_app):
    client = make_app(TWILIO_AUTH_TOKEN="tw-secret", PUBLIC_BASE_URL="https://sms.example.com").test_client()
    form = {**HARD_BOUNCE_FORM, "Body": "Grüße"}
    response = client.post("/vendors/twilio/delivery-reports", data=urlencode(form).encode(),
                           content_type="application/x-www-form-urlencoded; charset=UTF-8",
                           headers={"X-Twilio-Signature": compute_signature("tw-secret", TWILIO_SIGNED_URL, form)})
    assert response.status_code == 200, response.get_json()


def test_a_signed_url_is_the_query_string_exactly_as_sent(make_app):
    client = make_app(TWILIO_AUTH_TOKEN="tw-secret", PUBLIC_BASE_URL="https://sms.example.com").test_client()
    path = "/vendors/twilio/delivery-reports?MessageSid=SMq&MessageStatus=delivered&To=%2B4915112345"
    signature = compute_signature("tw-secret", "https://sms.example.com" + path, {})
    raw = client.get("/vendors/twilio/delivery-reports", headers={"X-Twilio-Signature": signature},
                     environ_overrides={"QUERY_STRING": "MessageSid=SMq&x=\xe9"})
    appended = client.get(path + "??", headers={"X-Twilio-Signature": signature})
    assert (raw.status_code, raw.get_json()["field"]) == (400, "query string")
    assert appended.status_code == 403
    assert client.get(path, headers={"X-Twilio-Signature": signature}).status_code == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_twilio_signature_covers_every_body_value_read(make_app, method):
    body = b"MessageStatus=undelivered&ErrorCode=30005"  # a body on a GET callback too, unsigned
    client = make_app(TWILIO_AUTH_TOKEN="tw-secret", PUBLIC_BASE_URL="https://sms.example.com").test_client()
    path = "/vendors/twilio/delivery-reports?MessageSid=SMget&MessageStatus=delivered&To=%2B4915112345"
    url_only = compute_signature("tw-secret", "https://sms.example.com" + path, {})
    response = client.open(path, method=method, data=body, content_type="application/x-www-form-urlencoded",
                           headers={"X-Twilio-Signature": url_only})
    assert response.status_code == 403
    assert client.get(path, headers={"X-Twilio-Signature": url_only}).status_code == 200


@pytest.fixture
def mapping_file(tmp_path):
    path = tmp_path / "vendor-mappings.yaml"
    shutil.copy(EXAMPLE_MAPPINGS, path)
    return path


def test_mapping_file_adds_a_vendor(make_app, mapping_file):
    app = make_app(VENDOR_MAPPINGS_FILE=str(mapping_file))
    client = app.test_client()
    response = client.get("/vendors/mymsp/delivery-reports", query_string={
        "messageId": "msp-1", "status": "1200", "mobileNumber": "+4915112345", "statusText": "failed",
        "statusTime": "20240102030405123"})
    assert response.status_code == 200
    assert [(r["messageId"], r["type"], r["timestamp"]) for r in client.get(ALL_TIME).get_json()["status"]] == [
        ("msp-1", "Temporary", "20240102030405")]  # "failed": the message could not be sent
    inbound = client.get("/vendors/mymsp/inbound-messages", query_string={
        "messageId": "in-1", "originator": "+4915112345", "recipient": "4711", "text": "YES"})
    assert inbound.status_code == 200


def test_a_local_event_time_is_pulled_by_sap_as_utc(make_app, mapping_file):
    mapping_file.write_text(mapping_file.read_text().replace("timezone: UTC", "timezone: Europe/Stockholm"))
    client = make_app(VENDOR_MAPPINGS_FILE=str(mapping_file)).test_client()
    response = client.get("/vendors/mymsp/delivery-reports", query_string={
        "messageId": "msp-tz", "status": "1200", "statusTime": "20240702140405123"})  # 14:04 CEST
    assert response.status_code == 200
    # SAP's windows are UTC: 14:00-15:00 (the local time) is empty, 12:00-13:00 holds the report.
    local_window = client.get("/status?startTimeUTC=20240702140000&endTimeUTC=20240702150000&page=0")
    utc_window = client.get("/status?startTimeUTC=20240702120000&endTimeUTC=20240702130000&page=0")
    assert local_window.get_json()["status"] == []
    assert [(r["messageId"], r["timestamp"]) for r in utc_window.get_json()["status"]] == [
        ("msp-tz", "20240702120405")]


def test_mapping_file_overrides_a_built_in_code(make_app, mapping_file):
    client = make_app(VENDOR_MAPPINGS_FILE=str(mapping_file)).test_client()
    genesys_dr(client, "ov", state="8", result_code="1")
    assert [r["type"] for r in client.get(ALL_TIME).get_json()["status"]] == ["Temporary"]


def test_malformed_mapping_file_stops_start_up_naming_file_and_fault(make_app, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("vendors:\n  acme:\n    parameters: {message_id: id, status_code: s}\n"
                    "    outcomes: {'1': DELIVERD}\n")
    with pytest.raises(StartupError) as error:
        make_app(VENDOR_MAPPINGS_FILE=str(path))
    assert "broken.yaml" in str(error.value) and "DELIVERD" in str(error.value)


@pytest.mark.parametrize("text, fault", [
    ("vendors:\n  acme:\n    parameters: {message_id: id, status_code: s}\n    outcomes: {'1': DELIVERD}\n",
     "DELIVERD"),
    ("vendors:\n  acme:\n    parameters: {message_id: id, status_code: s, event_time: t}\n"
     "    time_format: '%Y%m%d%H%M%S'\n    timezone: Europe/Stockhom\n    outcomes: {'1': DELIVERED}\n",
     "vendors.acme.timezone: unknown time zone 'Europe/Stockhom'"),
])
def test_a_flask_command_with_a_malformed_mapping_file_fails_in_one_line(tmp_path, text, fault):
    # The manifest starts with `flask --app app db-upgrade-locked`: an operator reads this line.
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VCAP_", "PRODUCTION"))}
    env.update(VENDOR_MAPPINGS_FILE=str(path), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "routes"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: VENDOR_MAPPINGS_FILE ") and "broken.yaml" in line and fault in line


@pytest.mark.parametrize("bounce", [{"MessageStatus": "undelivered", "ErrorCode": "30003"},
                                    {"MessageStatus": "undelivered", "ErrorCode": "30005"}])
def test_a_delivery_racing_a_bounce_of_its_message_leaves_no_bounce(app, client, bounce):
    # The bounce commits while the delivery waits for the same state: the delivery's statement
    # must see that bounce to withdraw it, not run on the snapshot it started with.
    message = {"MessageSid": "SMrace", "To": "+4915112345678"}
    assert client.post("/vendors/twilio/delivery-reports", data={**message, "MessageStatus": "sent"}).status_code == 200
    answers: list[int] = []
    with app.app_context(), db.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM message_states WHERE vendor_message_id = 'SMrace' FOR UPDATE"))
        threads = [post_in_thread(app, "/vendors/twilio/delivery-reports", {**message, **bounce}, answers),
                   post_in_thread(app, "/vendors/twilio/delivery-reports",
                                  {**message, "MessageStatus": "delivered"}, answers)]
        holder.commit()
    for thread in threads:
        thread.join(10)

    assert answers == [200, 200]
    with app.app_context():
        assert state_of("twilio", "SMrace").outcome == "DELIVERED"
    assert client.get(ALL_TIME).get_json()["status"] == []


def test_a_receipt_redelivered_many_times_at_once_is_stored_once(app):
    # Each copy but the first meets the first's rows after its own snapshot: it is retried, and
    # then finds itself a duplicate.
    form = {"type": "receipt", "message_id": "g-burst", "message_state": "5", "result_code": "1"}
    start = threading.Barrier(8)
    answers: list[dict] = []

    def post() -> None:
        """Post the same receipt as the other threads, at the same moment."""
        client = app.test_client()
        start.wait()
        answers.append(client.post("/vendors/genesys/delivery-reports", data=form).get_json())

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert sorted(answer["stored"] for answer in answers) == [False] * 7 + [True]
    with app.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(RawEvent)) == 1
    assert [record["messageId"] for record in app.test_client().get(ALL_TIME).get_json()["status"]] == ["g-burst"]


@pytest.mark.parametrize("body_name", ["message_state", "Message_State", "MESSAGE_STATE"])
def test_the_body_wins_over_the_query_whatever_the_letter_case(app, client, body_name):
    client.post("/vendors/genesys/delivery-reports?message_id=g-case&message_state=5&result_code=1",
                data={"type": "receipt", body_name: "2"})

    with app.app_context():
        assert state_of("genesys", "g-case").outcome == "DELIVERED"


@pytest.mark.parametrize("query, field", [("message_id=g%00", "message_id"), ("%00=1", "(parameter name)"),
                                          ("mess%00age_id=1", "message_id")])
def test_a_nul_character_is_refused_naming_the_parameter(client, query, field):
    answer = client.post(f"/vendors/genesys/delivery-reports?type=receipt&{query}")

    assert answer.status_code == 400
    assert answer.get_json()["field"] == field


def test_a_genesys_mo_number_whose_plus_arrived_as_a_space_keeps_it(app, client):
    # A `+` left un-encoded in a query string is read as a space.
    response = client.get("/vendors/genesys/inbound-messages?type=MO&message_id=mo-plus&shortcode=12345"
                          "&phone_number=+4915112345&message=hi")
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        assert db.session.scalars(db.select(InboundMessageRecord.source)).one() == "+4915112345"


@pytest.mark.parametrize("status_name", ["SmsStatus", "MessageStatus", "DeliveryStatus"])
def test_an_expertflow_status_too_long_to_store_is_stored_as_unknown(app, client, status_name):
    # Refused with 400, the connector would resend it for ever; the status text keeps it whole.
    status = "x" * 41
    response = client.post("/vendors/expertflow/delivery-reports", data={"MessageSid": "EF-long", status_name: status})
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        state = state_of("expertflow", "EF-long")
        assert (state.outcome, state.status_code, state.status_text) == ("UNKNOWN", "x" * 40, status)


@pytest.mark.parametrize("params", [
    {"type": "receipt", "message_id": "g-long", "message_state": "9" * 41},
    # Past Python's 4,300-digit limit int() itself refuses: that was a 500.
    {"type": "receipt", "message_id": "g-long", "message_state": "1" * 5000},
    {"MessageSid": "g-long", "MessageStatus": "x" * 41},
])
def test_a_status_too_long_to_store_is_stored_as_unknown(app, client, params):
    vendor = "genesys" if "type" in params else "twilio"
    response = client.post(f"/vendors/{vendor}/delivery-reports", data=params)
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        state = state_of(vendor, "g-long")
        assert (state.outcome, len(state.status_code)) == ("UNKNOWN", 40)
