"""Vendor bodies read as README promises: multipart parts and 16-bit charsets, part limits, offsets."""
from __future__ import annotations

import io
from datetime import datetime

import pytest
from sqlalchemy import func

from models import InboundMessageRecord, MessageState, RawEvent, db

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=x"
EXPERTFLOW_MO = [(b"SmsSid", b"ef-mp", b""), (b"From", b"+4915112345", b""), (b"To", b"8080", b"")]


def multipart(parts: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """Return a multipart body of (name, value, extra part headers) with boundary x."""
    return b"".join(b'--x\r\nContent-Disposition: form-data; name="%s"\r\n%s\r\n%s\r\n' % (name, headers, value)
                    for name, value, headers in parts) + b"--x--\r\n"


def stored_body(app) -> str:
    with app.app_context():
        return db.session.scalars(db.select(InboundMessageRecord.body)).one()


@pytest.mark.parametrize("text, part_headers, expected", [
    (b"Gr\xfc\xdfe", b"", "Grüße"),  # not UTF-8 and no charset: Windows-1252
    (b"\x80 5", b"", "€ 5"),
    (b"\xa4 5", b"Content-Type: text/plain; charset=ISO-8859-15\r\n", "€ 5"),
    (b"\x00H\x00i", b"Content-Type: text/plain; charset=UCS-2\r\n", "Hi"),
])
def test_a_multipart_part_is_read_in_its_charset_else_utf8_else_windows_1252(app, client, text,
                                                                             part_headers, expected):
    body = multipart([*EXPERTFLOW_MO, (b"Body", text, part_headers)])
    response = client.post("/vendors/expertflow/inbound-messages", data=body, content_type=MULTIPART)
    assert response.status_code == 200, response.get_json()
    assert stored_body(app) == expected


def test_multipart_fields_keep_the_first_of_a_repeated_name_whatever_their_charsets(app, client):
    body = multipart([(b"Body", b"\xa4 5", b"Content-Type: text/plain; charset=ISO-8859-15\r\n"),
                      *EXPERTFLOW_MO, (b"Body", b"\x00H\x00i", b"Content-Type: text/plain; charset=UCS-2\r\n")])
    response = client.post("/vendors/expertflow/inbound-messages", data=body, content_type=MULTIPART)
    assert response.status_code == 200, response.get_json()
    assert stored_body(app) == "€ 5"


@pytest.mark.parametrize("part_headers, expected", [
    (b"Content-Type: text/plain; charset=iso-8859-1\r\n", "Grüße"),
    (b"Content-Type: application/octet-stream\r\n", "Grüße"),  # not UTF-8: Windows-1252
])
def test_a_value_sent_as_a_file_part_is_read_like_any_part(app, client, part_headers, expected):
    file_part = (b'Body"; filename="text.txt', b"Gr\xfc\xdfe", part_headers)
    body = multipart([*EXPERTFLOW_MO, file_part])
    response = client.post("/vendors/expertflow/inbound-messages", data=body, content_type=MULTIPART)
    assert response.status_code == 200, response.get_json()
    assert stored_body(app) == expected
    with app.app_context():
        assert db.session.scalars(db.select(RawEvent.params)).one()["Body"] == expected


@pytest.mark.parametrize("text", [b"%FF%FE%FC%00%DF%00", b"%FE%FF%00%FC%00%DF"])
def test_ucs2_text_follows_its_byte_order_mark(app, client, text):
    body = b"type=MO&message_id=mo-bom&shortcode=12345&phone_number=4915112345&message=" + text
    response = client.post("/vendors/genesys/inbound-messages", data=body, content_type=f"{FORM}; charset=UCS-2")
    assert response.status_code == 200, response.get_json()
    assert stored_body(app) == "üß"


@pytest.mark.parametrize("settings, parts", [({}, 1001), ({"MAX_FORM_PARTS": 5}, 6)])
def test_a_multipart_body_with_too_many_parts_is_refused_naming_the_part_limit(make_app, settings, parts):
    app = make_app(**settings)
    fields = [(b"type", b"receipt", b""), (b"message_id", b"g-parts", b""), (b"message_state", b"2", b"")]
    body = multipart(fields + [(b"p", b"x", b"")] * (parts - len(fields)))
    response = app.test_client().post("/vendors/genesys/delivery-reports", data=body, content_type=MULTIPART)
    assert len(body) < app.config["MAX_VENDOR_REQUEST_BYTES"]  # within the size limit: the count is at fault
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["field"] == "body" and f"at most {parts - 1} parts" in answer["message"], answer
    with app.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(RawEvent)) == 0


def test_a_mapping_file_offset_whose_plus_arrived_as_a_space_is_read(make_app, tmp_path):
    path = tmp_path / "vendor-mappings.yaml"
    path.write_text("vendors:\n  acme:\n    parameters: {message_id: id, status_code: s, event_time: t}\n"
                    "    time_format: '%Y-%m-%dT%H:%M:%S%z'\n    outcomes: {ok: DELIVERED}\n")
    app = make_app(VENDOR_MAPPINGS_FILE=str(path))
    response = app.test_client().get("/vendors/acme/delivery-reports?id=a1&s=ok&t=2024-01-02T03:04:05+01:00")
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        assert db.session.scalars(db.select(MessageState.event_at)).one() == datetime(2024, 1, 2, 2, 4, 5)


def test_parts_keep_the_body_order_whether_sent_as_files_or_fields(app, client):
    body = multipart([(b'Body"; filename="first.txt', b"first", b""), *EXPERTFLOW_MO, (b"Body", b"second", b"")])
    response = client.post("/vendors/expertflow/inbound-messages", data=body, content_type=MULTIPART)
    assert response.status_code == 200, response.get_json()
    assert stored_body(app) == "first"


@pytest.mark.parametrize("disposition", [b"form-data", b'form-data; filename="x.txt"'])
def test_a_multipart_part_without_a_name_is_refused_naming_body(app, client, disposition):
    body = (multipart(EXPERTFLOW_MO)[:-len(b"--x--\r\n")]
            + b"--x\r\nContent-Disposition: " + disposition + b"\r\n\r\nHello\r\n--x--\r\n")
    response = client.post("/vendors/expertflow/inbound-messages?Body=b", data=body, content_type=MULTIPART)
    assert response.status_code == 400
    assert response.get_json()["field"] == "body"


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_a_body_in_a_format_not_read_is_refused_naming_content_type(app, client, content_type):
    response = client.post("/vendors/twilio/delivery-reports", data=b'{"MessageSid": "SM1"}',
                           headers={"Content-Type": content_type} if content_type else {})
    assert response.status_code == 415
    assert response.get_json()["field"] == "Content-Type"
    assert (content_type or "without a Content-Type") in response.get_json()["message"]
    with app.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(RawEvent)) == 0


def test_a_chunked_body_in_a_format_not_read_is_refused_too(client):
    response = client.post("/vendors/twilio/delivery-reports", input_stream=io.BytesIO(b'{"MessageSid": "SM1"}'),
                           content_type="application/json", headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 415 and response.get_json()["field"] == "Content-Type"


def test_a_body_in_another_format_beside_query_parameters_is_no_fault(client):
    response = client.post("/vendors/twilio/delivery-reports?MessageSid=SM1&MessageStatus=delivered",
                           data=b"{}", content_type="application/json")
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("file_part", [
    (b'Body"; filename="Gr\xfc\xdfe.txt', b"hi", b""),  # a Latin-1 file name
    (b"N\xe4me", b"x", b""),  # a Latin-1 part name
])
def test_a_part_header_that_is_not_utf8_is_refused_naming_body(app, client, file_part):
    # werkzeug reads part headers as UTF-8 only: the fault is there, not a parameter missing.
    response = client.post("/vendors/expertflow/inbound-messages", data=multipart([*EXPERTFLOW_MO, file_part]),
                           content_type=MULTIPART)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["field"] == "body" and "UTF-8" in answer["message"], answer
