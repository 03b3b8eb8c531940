"""Client-scoped vendor callback URLs: every report and MO is tied to its client and queued for Emarsys.

A delivery report is queued once the message's Emarsys id is known (its send was recorded).
"""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func

from models import Client, InboundMessageRecord, MessageState, OutboxItem, db
from services.clients import callback_signing_keys
from services.twilio_signature import compute_signature

PUBLIC_BASE_URL = "https://sms.example.com"
GENESYS_DR = {"type": "receipt", "message_id": "g-1", "message_state": "2", "result_code": "0"}
GENESYS_MO = {"type": "MO", "message_id": "mo-1", "phone_number": "4915112345678", "shortcode": "12345",
              "message": "STOP"}
TWILIO_DR = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+4915112345678"}
TWILIO_MO = {"MessageSid": "SM9", "From": "+4915112345678", "To": "+15550001111", "Body": "STOP"}


def path_of(url: str) -> str:
    """Return the path of an absolute callback URL, for the test client."""
    return urlsplit(url).path


def count(app, model, **filters) -> int:
    """Return how many rows of a table match the filters."""
    with app.app_context():
        query = db.select(func.count()).select_from(model).filter_by(**filters)
        return db.session.scalar(query)


def outbox(app) -> list[tuple]:
    """Return (client_id, kind, message_key) of every outbox row, in insert order."""
    with app.app_context():
        return db.session.execute(db.select(OutboxItem.client_id, OutboxItem.kind, OutboxItem.message_key)
                                  .order_by(OutboxItem.id)).all()


def signed_post(client, path: str, form: dict[str, str], auth_token: str):
    """POST a form with the X-Twilio-Signature made with this auth token."""
    signature = compute_signature(auth_token, PUBLIC_BASE_URL + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature})


@pytest.mark.parametrize("method", ["post", "get"])
def test_genesys_delivery_report_is_tied_to_the_client(partner_app, partner_client, onboard, record_sent, method):
    client_id, urls = onboard()
    record_sent(partner_app, client_id, "genesys", "g-1")
    path = path_of(urls["deliveryReports"]["url"])
    response = (partner_client.post(path, data=GENESYS_DR) if method == "post"
                else partner_client.get(path, query_string=GENESYS_DR))
    assert response.status_code == 200
    assert count(partner_app, MessageState, vendor_message_id="g-1", client_id=client_id) == 1
    assert outbox(partner_app) == [(client_id, "delivery_report", "em-1")]


def test_a_report_before_its_send_is_recorded_is_stored_but_not_forwarded_yet(partner_app, partner_client,
                                                                              onboard):
    client_id, urls = onboard()
    assert partner_client.post(path_of(urls["deliveryReports"]["url"]), data=GENESYS_DR).status_code == 200
    assert count(partner_app, MessageState, vendor_message_id="g-1", client_id=client_id) == 1
    # Emarsys could not map it without its Emarsys message id; the send result forwards it.
    assert outbox(partner_app) == []


def test_a_report_through_one_clients_url_never_changes_another_clients_message(partner_app, partner_client,
                                                                                  onboard, record_sent):
    (owner, owner_urls), (other, other_urls) = onboard(), onboard()
    record_sent(partner_app, owner, "genesys", "g-1")
    sent = {**GENESYS_DR, "message_state": "6"}
    assert partner_client.post(path_of(owner_urls["deliveryReports"]["url"]), data=sent).status_code == 200
    forged = {**GENESYS_DR, "message_state": "5", "result_code": "1"}
    assert partner_client.post(path_of(other_urls["deliveryReports"]["url"]), data=forged).status_code == 200
    with partner_app.app_context():
        [state] = db.session.scalars(db.select(MessageState)).all()
        assert (state.client_id, state.outcome) == (owner, "ACCEPTED")
    assert outbox(partner_app) == [(owner, "delivery_report", "em-1")]


def test_redelivered_report_is_forwarded_once(partner_app, partner_client, onboard, record_sent):
    client_id, urls = onboard()
    record_sent(partner_app, client_id, "genesys", "g-1")
    for _ in range(2):
        assert partner_client.post(path_of(urls["deliveryReports"]["url"]), data=GENESYS_DR).status_code == 200
    assert outbox(partner_app) == [(client_id, "delivery_report", "em-1")]


@pytest.mark.parametrize("url_kind", ["inboundMessages", "deliveryReports"])
def test_genesys_mo_is_inbound_on_either_client_url(partner_app, partner_client, onboard, url_kind):
    client_id, urls = onboard()
    assert partner_client.post(path_of(urls[url_kind]["url"]), data=GENESYS_MO).status_code == 200
    assert count(partner_app, InboundMessageRecord, vendor_message_id="mo-1", client_id=client_id) == 1
    assert count(partner_app, MessageState) == 0
    assert outbox(partner_app) == [(client_id, "inbound_message", "mo-1")]


@pytest.mark.parametrize("url_kind", ["inboundMessages", "deliveryReports"])
def test_genesys_receipt_is_a_report_on_either_client_url(partner_app, partner_client, onboard, record_sent,
                                                          url_kind):
    # Genesys has one URL per account for receipts and MOs: whichever the client registered.
    client_id, urls = onboard()
    record_sent(partner_app, client_id, "genesys", "g-1")
    assert partner_client.post(path_of(urls[url_kind]["url"]), data=GENESYS_DR).status_code == 200
    assert count(partner_app, InboundMessageRecord) == 0
    assert outbox(partner_app) == [(client_id, "delivery_report", "em-1")]


def test_genesys_receipt_on_the_unscoped_inbound_url_is_a_report(partner_app, partner_client):
    assert partner_client.post("/vendors/genesys/inbound-messages", data=GENESYS_DR).status_code == 200
    assert count(partner_app, MessageState, vendor_message_id="g-1") == 1


def test_an_mo_stored_from_the_open_url_becomes_the_clients_on_its_callback_url(partner_app, partner_client,
                                                                                 onboard):
    client_id, urls = onboard()
    assert partner_client.post("/vendors/genesys/inbound-messages", data=GENESYS_MO).status_code == 200
    assert outbox(partner_app) == []
    for _ in range(2):  # and a redelivery to the client's URL changes nothing more
        answer = partner_client.post(path_of(urls["inboundMessages"]["url"]), data=GENESYS_MO)
        assert answer.status_code == 200
    assert count(partner_app, InboundMessageRecord, vendor_message_id="mo-1", client_id=client_id) == 1
    assert outbox(partner_app) == [(client_id, "inbound_message", "mo-1")]


def test_an_mo_already_another_clients_is_not_taken_over(partner_app, partner_client, onboard):
    (owner, owner_urls), (_, other_urls) = onboard(), onboard()
    assert partner_client.post(path_of(owner_urls["inboundMessages"]["url"]), data=GENESYS_MO).status_code == 200
    assert partner_client.post(path_of(other_urls["inboundMessages"]["url"]), data=GENESYS_MO).status_code == 200
    assert count(partner_app, InboundMessageRecord, vendor_message_id="mo-1", client_id=owner) == 1
    assert outbox(partner_app) == [(owner, "inbound_message", "mo-1")]


def test_genesys_mo_on_the_unscoped_report_url_is_inbound(partner_app, partner_client):
    assert partner_client.post("/vendors/genesys/delivery-reports", data=GENESYS_MO).status_code == 200
    assert count(partner_app, InboundMessageRecord, vendor_message_id="mo-1") == 1
    assert count(partner_app, MessageState) == 0
    assert outbox(partner_app) == []  # no client, nothing to forward


@pytest.mark.parametrize("url_kind, form, model, kind, forwarded_key", [
    ("deliveryReports", TWILIO_DR, MessageState, "delivery_report", "em-1"),
    ("inboundMessages", TWILIO_MO, InboundMessageRecord, "inbound_message", TWILIO_MO["MessageSid"]),
])
def test_twilio_callback_signed_with_the_clients_token_is_stored(partner_app, partner_client, onboard, record_sent,
                                                                 twilio_fields, url_kind, form, model, kind,
                                                                 forwarded_key):
    client_id, urls = onboard(twilio_fields)
    record_sent(partner_app, client_id, "twilio", TWILIO_DR["MessageSid"])
    path = path_of(urls[url_kind]["url"])
    assert signed_post(partner_client, path, form, twilio_fields["authToken"]).status_code == 200
    assert count(partner_app, model, vendor_message_id=form["MessageSid"], client_id=client_id) == 1
    assert outbox(partner_app) == [(client_id, kind, forwarded_key)]


@pytest.mark.parametrize("signature_token", [None, "another-token"], ids=["unsigned", "wrong-token"])
@pytest.mark.parametrize("url_kind", ["deliveryReports", "inboundMessages"])
def test_twilio_callback_without_the_clients_signature_is_403(partner_app, partner_client, onboard, twilio_fields,
                                                              signature_token, url_kind):
    _, urls = onboard(twilio_fields)
    path = path_of(urls[url_kind]["url"])
    form = TWILIO_DR if url_kind == "deliveryReports" else TWILIO_MO
    response = (signed_post(partner_client, path, form, signature_token) if signature_token
                else partner_client.post(path, data=form))
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert count(partner_app, MessageState) + count(partner_app, InboundMessageRecord) == 0


def test_global_twilio_token_does_not_sign_client_callbacks(make_app, onboard, twilio_fields):
    _, urls = onboard(twilio_fields)
    app = make_app(TWILIO_AUTH_TOKEN="global-token")
    path = path_of(urls["deliveryReports"]["url"])
    assert signed_post(app.test_client(), path, TWILIO_DR, "global-token").status_code == 403


@pytest.mark.parametrize("make_path, field", [
    (lambda token: f"/vendors/genesys/clients/{'x' * 43}/delivery-reports", "token"),
    (lambda token: f"/vendors/genesys/clients/{'x' * 43}/inbound-messages", "token"),
    (lambda token: f"/vendors/twilio/clients/{token}/delivery-reports", "token"),
    (lambda token: f"/vendors/expertflow/clients/{token}/inbound-messages", "token"),
    (lambda token: f"/vendors/nosuchvendor/clients/{token}/delivery-reports", "vendor"),
    (lambda token: f"/vendors/%00/clients/{token}/delivery-reports", "vendor"),
    (lambda token: f"/vendors/%00/clients/{token}/inbound-messages", "vendor"),
    (lambda token: "/vendors/genesys/clients/%00/delivery-reports", "token"),
    (lambda token: f"/vendors/genesys/clients/{token}%00/delivery-reports", "token"),
    (lambda token: f"/vendors/genesys/clients/{'x' * 5000}/delivery-reports", "token"),
], ids=["unknown-token-dr", "unknown-token-mo", "other-vendor", "built-in-other-vendor", "unknown-vendor",
        "nul-vendor-dr", "nul-vendor-mo", "nul-token", "token-with-nul", "huge-token"])
def test_unknown_token_or_foreign_vendor_is_404_naming_the_part(partner_app, partner_client, onboard, make_path,
                                                                 field):
    _, urls = onboard()
    token = path_of(urls["deliveryReports"]["url"]).split("/")[4]
    response = partner_client.post(make_path(token), data=GENESYS_DR)
    assert response.status_code == 404
    assert (response.get_json()["error"], response.get_json()["field"]) == ("not_found", field)
    assert count(partner_app, MessageState) == 0


def test_a_client_moved_to_another_vendor_keeps_the_old_vendors_url_for_its_messages(
        partner_app, partner_client, onboard, record_sent, twilio_fields):
    client_id, genesys_urls = onboard()
    record_sent(partner_app, client_id, "genesys", "g-1")
    _, twilio_urls = onboard(twilio_fields, client_id=client_id)
    assert path_of(twilio_urls["deliveryReports"]["url"]).startswith("/vendors/twilio/")

    response = partner_client.post(path_of(genesys_urls["deliveryReports"]["url"]), data=GENESYS_DR)

    assert response.status_code == 200, response.get_json()
    assert outbox(partner_app) == [(client_id, "delivery_report", "em-1")]


@pytest.mark.parametrize("url_kind", ["deliveryReports", "inboundMessages"])
def test_a_client_moved_off_twilio_keeps_checking_its_old_urls_signature(partner_app, partner_client, onboard,
                                                                        record_sent, twilio_fields, url_kind):
    client_id, twilio_urls = onboard(twilio_fields)
    record_sent(partner_app, client_id, "twilio", TWILIO_DR["MessageSid"])
    onboard(client_id=client_id)  # moved to Genesys: the Twilio authToken is no longer in its configuration
    path = path_of(twilio_urls[url_kind]["url"])
    form = TWILIO_DR if url_kind == "deliveryReports" else TWILIO_MO

    assert partner_client.post(path, data=form).status_code == 403  # a forged report is not taken
    assert signed_post(partner_client, path, form, "another-token").status_code == 403
    assert signed_post(partner_client, path, form, twilio_fields["authToken"]).status_code == 200

    assert len(outbox(partner_app)) == 1


def test_a_client_moved_to_another_twilio_account_takes_both_accounts_signatures(partner_app, partner_client,
                                                                               onboard, record_sent, twilio_fields):
    client_id, urls = onboard(twilio_fields)
    record_sent(partner_app, client_id, "twilio", TWILIO_DR["MessageSid"])
    onboard({**twilio_fields, "accountSid": "AC" + "e" * 32, "authToken": "new-account-token"}, client_id=client_id)
    onboard({**twilio_fields, "accountSid": "AC" + "e" * 32, "authToken": "rotated-token"}, client_id=client_id)
    path = path_of(urls["deliveryReports"]["url"])

    assert signed_post(partner_client, path, TWILIO_DR, twilio_fields["authToken"]).status_code == 200  # old account
    assert signed_post(partner_client, path, TWILIO_DR, "rotated-token").status_code == 200  # current
    # A token rotated within an account is gone: whoever knows it cannot sign.
    assert signed_post(partner_client, path, TWILIO_DR, "new-account-token").status_code == 403


def test_a_client_moved_back_to_its_twilio_account_keeps_no_former_key(partner_app, onboard, twilio_fields):
    client_id, _ = onboard(twilio_fields)
    onboard(client_id=client_id)
    onboard({**twilio_fields, "authToken": "rotated-token"}, client_id=client_id)

    with partner_app.app_context():
        client = db.session.get(Client, client_id)
        assert client.former_secrets is None
        assert callback_signing_keys(client, "twilio") == ["rotated-token"]


def test_a_client_whose_secrets_cannot_be_read_can_still_be_moved(partner_app, onboard, twilio_fields):
    client_id, _ = onboard(twilio_fields)
    with partner_app.app_context():
        db.session.get(Client, client_id).secrets = Fernet(Fernet.generate_key()).encrypt(b"{}").decode()
        db.session.commit()

    onboard(client_id=client_id)  # the PUT that repairs it answers 200

    with partner_app.app_context():
        client = db.session.get(Client, client_id)
        assert (client.vendor, client.former_secrets) == ("genesys", None)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_a_deleted_clients_late_report_is_stored_but_not_forwarded(request, partner_app, record_sent, database):
    app = partner_app if database == "postgresql" else request.getfixturevalue("sqlite_app")
    record_sent(app, uuid.uuid4(), "genesys", "g-1")  # a message of a client deleted since

    assert app.test_client().post("/vendors/genesys/delivery-reports", data=GENESYS_DR).status_code == 200

    assert count(app, MessageState, vendor_message_id="g-1", outcome="DELIVERED") == 1
    assert outbox(app) == []  # Emarsys would answer 404: it would only be a dead letter


@pytest.mark.parametrize("url_kind", ["deliveryReports", "inboundMessages"])
def test_nul_characters_are_a_400_not_a_500(partner_app, partner_client, onboard, url_kind):
    _, urls = onboard()
    form = {**(GENESYS_DR if url_kind == "deliveryReports" else GENESYS_MO), "message_id": "g\x001"}
    response = partner_client.post(path_of(urls[url_kind]["url"]), data=form)
    assert response.status_code == 400
    assert response.get_json()["field"] == "message_id"
    assert count(partner_app, MessageState) + count(partner_app, InboundMessageRecord) == 0
