"""POST /clients/{clientId}/messages: every 400 shape of the spec, the limits, and idempotent queueing."""
from __future__ import annotations

import json
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text, update

from models import OutboundMessage, db
from services.clock import utcnow
from tests.emarsys_spec import requires_spec, validate_schema

SPEC = "partner-service.yaml"

pytestmark = requires_spec


def message(index: int = 1, **overrides) -> dict:
    """Return one valid outbound message; None values drop the key."""
    item = {"emarsysMessageId": f"em-{index}", "source": "ACME", "destination": "+4915112345678",
            "message": f"Hello {index}", **overrides}
    return {key: value for key, value in item.items() if value is not None}


def batch(*items: dict) -> dict:
    """Return a batch body holding these messages."""
    return {"messages": list(items)}


def post(partner_client, auth, client_id, body=None, raw: bytes | None = None):
    """POST a batch as JSON, or raw bytes when given."""
    url = f"/clients/{client_id}/messages"
    if raw is not None:
        return partner_client.post(url, headers=auth, data=raw, content_type="application/json")
    return partner_client.post(url, headers=auth, json=body)


def queued(app, client_id=None) -> list[OutboundMessage]:
    """Return the stored outbound messages, optionally of one client, in insert order."""
    with app.app_context():
        query = db.select(OutboundMessage).order_by(OutboundMessage.id)
        if client_id is not None:
            query = query.where(OutboundMessage.client_id == client_id)
        rows = db.session.scalars(query).all()
        db.session.expunge_all()
        return rows


def global_error(response, error_type: str = "emarsys") -> dict:
    """Check a globalError answer against the spec branch; return its errorContext."""
    assert response.status_code == 400
    body = response.get_json()
    validate_schema(SPEC, "OutboundMessageBatchGlobalError", body)
    assert set(body) == {"globalError"}
    error = body["globalError"]
    assert (error["errorType"], error["isErrorTransient"]) == (error_type, False)
    assert error["errorContext"]
    return error["errorContext"]


def message_errors(response) -> list[dict]:
    """Check a messageSpecificErrors answer against the spec branch; return its entries."""
    assert response.status_code == 400
    body = response.get_json()
    validate_schema(SPEC, "OutboundMessageBatchMessageSpecificError", body)
    assert set(body) == {"messageSpecificErrors"} and body["messageSpecificErrors"]
    return body["messageSpecificErrors"]


def test_valid_batch_is_queued_and_answered_202(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    body = batch(message(1), message(2, destination="4915112345679", source=" ACME "))
    validate_schema(SPEC, "OutboundMessageBatch", body)
    before = utcnow()
    response = post(partner_client, auth, client_id, body)
    assert response.status_code == 202
    assert response.data == b""
    rows = queued(partner_app)
    assert [(r.emarsys_message_id, r.source, r.destination, r.body, r.state, r.attempts) for r in rows] == [
        ("em-1", "ACME", "+4915112345678", "Hello 1", "queued", 0),
        ("em-2", "ACME", "4915112345679", "Hello 2", "queued", 0),
    ]
    assert all(r.client_id == client_id and before <= r.next_attempt_at <= utcnow() for r in rows)
    assert all(len(r.public_id) == 32 and int(r.public_id, 16) >= 0 for r in rows)
    assert rows[0].public_id != rows[1].public_id


def test_a_batch_of_1000_is_accepted(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    response = post(partner_client, auth, client_id, batch(*(message(i) for i in range(1000))))
    assert response.status_code == 202
    assert len(queued(partner_app)) == 1000


def test_a_batch_of_1001_is_a_global_error(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    response = post(partner_client, auth, client_id, batch(*(message(i) for i in range(1001))))
    context = global_error(response)
    assert context["count"] == 1001
    assert queued(partner_app) == []


@pytest.mark.parametrize("raw, fault", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b"{}", "no messages"),
    (b'{"messages": {"emarsysMessageId": "x"}}', "not an array"),
    (b'{"messages": "x"}', "not an array"),
    (b'{"messages": null}', "not an array"),
    (b'{"messages": []}', "empty"),
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
])
def test_payload_faults_are_global_errors(partner_app, partner_client, auth, onboard, raw, fault):
    client_id, _ = onboard()
    context = global_error(post(partner_client, auth, client_id, raw=raw))
    assert fault in context["fault"]
    assert queued(partner_app) == []


# (the bad message, the id it is reported under, the field named in errorContext)
MESSAGE_FAULTS = [
    (message(2, source=None), "em-2", "source"),
    (message(2, source="  "), "em-2", "source"),
    (message(2, destination=None), "em-2", "destination"),
    (message(2, destination=""), "em-2", "destination"),
    (message(2, destination="+49 151 1234"), "em-2", "destination"),
    (message(2, destination="12345"), "em-2", "destination"),
    (message(2, destination="1234567890123456"), "em-2", "destination"),
    (message(2, destination="++4915112345678"), "em-2", "destination"),
    (message(2, destination="0049abc"), "em-2", "destination"),
    (message(2, message=None), "em-2", "message"),
    (message(2, message=""), "em-2", "message"),
    (message(2, message="a\x00b"), "em-2", "message"),
    (message(2, source="A\x00"), "em-2", "source"),
    (message(2, emarsysMessageId="em\x002"), "em\x002", "emarsysMessageId"),
    (message(2, emarsysMessageId="e" * 101), "e" * 101, "emarsysMessageId"),
]


@pytest.mark.parametrize("bad, reported_id, field", MESSAGE_FAULTS)
def test_a_bad_message_fails_the_whole_batch(partner_app, partner_client, auth, onboard, bad, reported_id, field):
    client_id, _ = onboard()
    errors = message_errors(post(partner_client, auth, client_id, batch(message(1), bad, message(3))))
    assert [(e["emarsysMessageId"], e["errorType"], e["isErrorTransient"]) for e in errors] == [
        (reported_id, "emarsys", False)]
    assert errors[0]["errorContext"]["field"] == field
    assert errors[0]["errorContext"]["index"] == 1
    assert queued(partner_app) == []


@pytest.mark.parametrize("bad, field", [
    (message(2, emarsysMessageId=None), "emarsysMessageId"),
    (message(2, emarsysMessageId=""), "emarsysMessageId"),
    (message(2, emarsysMessageId=7), "emarsysMessageId"),
    ("not an object", "messages[1]"),
])
def test_a_message_without_a_usable_id_fails_the_payload(partner_app, partner_client, auth, onboard, bad, field):
    client_id, _ = onboard()
    context = global_error(post(partner_client, auth, client_id, batch(message(1), bad, message(3))))
    assert (context["index"], context["field"]) == (1, field)
    assert queued(partner_app) == []


def test_every_bad_message_gets_its_own_entry(partner_client, auth, onboard):
    client_id, _ = onboard()
    body = batch(message(1, source=""), message(2), message(3, destination="x"))
    errors = message_errors(post(partner_client, auth, client_id, body))
    assert [e["emarsysMessageId"] for e in errors] == ["em-1", "em-3"]


def test_a_repeated_id_within_the_batch_queues_nothing(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    body = batch(message(1), message(2), message(3, emarsysMessageId="em-1"))
    errors = message_errors(post(partner_client, auth, client_id, body))
    assert [(e["emarsysMessageId"], e["errorContext"]["index"]) for e in errors] == [("em-1", 2)]
    assert "messages[0]" in errors[0]["errorContext"]["fault"]
    assert queued(partner_app) == []


def test_a_resent_message_is_accepted_and_not_queued_twice(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    assert post(partner_client, auth, client_id, batch(message(1), message(2))).status_code == 202
    first = {r.emarsys_message_id: r.public_id for r in queued(partner_app)}
    assert post(partner_client, auth, client_id, batch(message(2), message(3))).status_code == 202
    rows = queued(partner_app)
    assert [r.emarsys_message_id for r in rows] == ["em-1", "em-2", "em-3"]
    assert {r.emarsys_message_id: r.public_id for r in rows if r.emarsys_message_id in first} == first


def test_a_message_cancelled_by_deleting_its_client_is_queued_again_when_resent(partner_app, partner_client,
                                                                                auth, onboard):
    client_id, _ = onboard()
    assert post(partner_client, auth, client_id, batch(message(1))).status_code == 202
    [cancelled_id] = [row.public_id for row in queued(partner_app)]
    assert partner_client.delete(f"/clients/{client_id}/configuration", headers=auth).status_code == 204
    onboard(client_id=client_id)
    assert post(partner_client, auth, client_id, batch(message(1), message(2))).status_code == 202
    rows = queued(partner_app)
    assert [(row.emarsys_message_id, row.state, row.attempts) for row in rows] == [
        ("em-1", "queued", 0), ("em-2", "queued", 0)]
    assert rows[0].public_id == cancelled_id
    # Handed over once more, a queued message is still not queued twice.
    assert post(partner_client, auth, client_id, batch(message(1))).status_code == 202
    assert len(queued(partner_app)) == 2


def test_a_cancelled_message_attempted_before_is_queued_again_as_a_retry(partner_app, partner_client, auth,
                                                                          onboard):
    # Its earlier attempt may have reached the vendor: its next send must look for it first.
    client_id, _ = onboard()
    assert post(partner_client, auth, client_id, batch(message(1))).status_code == 202
    with partner_app.app_context():
        db.session.execute(update(OutboundMessage).values(attempts=3))
        db.session.commit()
    assert partner_client.delete(f"/clients/{client_id}/configuration", headers=auth).status_code == 204
    onboard(client_id=client_id)
    assert post(partner_client, auth, client_id, batch(message(1))).status_code == 202

    assert [(row.state, row.attempts) for row in queued(partner_app)] == [("queued", 1)]


def test_the_same_message_id_of_two_clients_is_two_messages(partner_app, partner_client, auth, onboard):
    first, _ = onboard()
    second, _ = onboard()
    for client_id in (first, second):
        assert post(partner_client, auth, client_id, batch(message(1))).status_code == 202
    assert len(queued(partner_app, first)) == len(queued(partner_app, second)) == 1


def test_unknown_client_is_404(partner_app, partner_client, auth):
    response = post(partner_client, auth, uuid.uuid4(), batch(message(1)))
    assert response.status_code == 404
    assert queued(partner_app) == []


def test_client_id_that_is_not_a_uuid_is_a_global_error(partner_client, auth):
    context = global_error(post(partner_client, auth, "not-a-uuid", batch(message(1))))
    assert context["field"] == "clientId"


def test_secrets_no_key_can_open_are_a_client_error(make_app, partner_app, partner_client, auth, onboard,
                                                    jwks_url):
    client_id, _ = onboard()
    rekeyed = make_app(EMARSYS_JWKS_URL=jwks_url, EMARSYS_TOKEN_ISSUER="https://ias.example.test",
                       EMARSYS_OAUTH_CLIENT_ID="emarsys-sms-client",
                       CONFIG_ENCRYPTION_KEY=Fernet.generate_key().decode())
    context = global_error(post(rekeyed.test_client(), auth, client_id, batch(message(1))), "client")
    assert "decrypted" in context["description"]
    assert queued(partner_app) == []


def test_a_rotated_key_still_opens_old_secrets(make_app, partner_app, auth, onboard, jwks_url):
    client_id, _ = onboard()
    rotated = make_app(EMARSYS_JWKS_URL=jwks_url, EMARSYS_TOKEN_ISSUER="https://ias.example.test",
                       EMARSYS_OAUTH_CLIENT_ID="emarsys-sms-client",
                       CONFIG_ENCRYPTION_KEY=Fernet.generate_key().decode() + ","
                       + partner_app.config["CONFIG_ENCRYPTION_KEY"])
    assert post(rotated.test_client(), auth, client_id, batch(message(1))).status_code == 202


@pytest.mark.parametrize("statement", [
    "UPDATE clients SET vendor = 'acme'",
    """UPDATE clients SET settings = '{"vendor": "genesys", "baseUrl": "ftp://x"}'""",
])
def test_a_stored_configuration_that_cannot_send_is_a_client_error(partner_app, partner_client, auth, onboard,
                                                                  statement):
    client_id, _ = onboard()
    with partner_app.app_context():
        db.session.execute(text(statement))
        db.session.commit()
    context = global_error(post(partner_client, auth, client_id, batch(message(1))), "client")
    assert context["description"]
    assert queued(partner_app) == []


def test_payload_is_checked_whatever_the_content_type(partner_app, partner_client, auth, onboard):
    client_id, _ = onboard()
    response = partner_client.post(f"/clients/{client_id}/messages", headers=auth,
                                   data=json.dumps(batch(message(1))), content_type="text/plain")
    assert response.status_code == 202
    assert len(queued(partner_app)) == 1
