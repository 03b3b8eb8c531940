"""Client onboarding (PUT/GET/DELETE configuration) and POST /testConnection, against PostgreSQL."""
from __future__ import annotations

import base64
import logging
import socket
import threading
import uuid
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, text

from models import Client, OutboundMessage, OutboxItem, db
from tests.emarsys_spec import requires_spec, validate_pointer, validate_schema

SPEC = "partner-service.yaml"
TEST_CONNECTION_200 = "/paths/~1testConnection/post/responses/200/content/application~1json/schema"
GENESYS_PATH = "/httpapi/receiver"
TWILIO_ACCOUNT = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef.json"

pytestmark = requires_spec


def configuration_url(client_id) -> str:
    """Return the configuration path of a client."""
    return f"/clients/{client_id}/configuration"


def assert_callback_urls(callback_urls: dict, vendor: str) -> str:
    """Check both URLs are present and well-formed; return the token they share."""
    validate_schema(SPEC, "ClientCallbackUrls", callback_urls)
    reports, inbound = callback_urls["deliveryReports"]["url"], callback_urls["inboundMessages"]["url"]
    prefix = f"https://sms.example.com/vendors/{vendor}/clients/"
    assert reports.startswith(prefix) and reports.endswith("/delivery-reports")
    token = reports[len(prefix):-len("/delivery-reports")]
    assert inbound == f"{prefix}{token}/inbound-messages"
    return token


def count(app, model) -> int:
    """Return how many rows a table holds."""
    with app.app_context():
        return db.session.scalar(db.select(func.count()).select_from(model))


def assert_invalid_field(response, field_name: str, error_type: str) -> None:
    """Check a 400 InvalidFieldErrors answer whose first error names this field."""
    assert response.status_code == 400
    body = response.get_json()
    validate_schema(SPEC, "InvalidFieldErrors", body)
    assert body["errors"], "InvalidFieldErrors requires no keys; the errors must still be there"
    assert (body["errors"][0]["fieldName"], body["errors"][0]["errorType"]) == (field_name, error_type)


@pytest.mark.parametrize("fields_fixture, vendor", [("genesys_fields", "genesys"), ("twilio_fields", "twilio")])
def test_put_stores_the_client_and_answers_callback_urls(request, partner_app, partner_client, auth,
                                                         fields_fixture, vendor):
    fields = request.getfixturevalue(fields_fixture)
    client_id = uuid.uuid4()
    response = partner_client.put(configuration_url(client_id), headers=auth, json={"customFieldValues": fields})
    assert response.status_code == 200
    validate_schema(SPEC, "CreateOrUpdateClientConfigurationResponse", response.get_json())
    token = assert_callback_urls(response.get_json()["callbackUrls"], vendor)
    padded = token + "=" * (-len(token) % 4)
    assert len(base64.urlsafe_b64decode(padded)) * 8 >= 128
    with partner_app.app_context():
        assert db.session.get(Client, client_id).vendor == vendor


def test_update_keeps_the_callback_token(partner_client, auth, onboard, genesys_fields):
    client_id, first = onboard()
    genesys_fields["login"] = "new-login"
    second = partner_client.put(configuration_url(client_id), headers=auth,
                                json={"customFieldValues": genesys_fields}).get_json()["callbackUrls"]
    assert second == first
    stored = partner_client.get(configuration_url(client_id), headers=auth).get_json()
    assert stored["customFieldValues"]["login"] == "new-login"


def test_a_client_created_meanwhile_by_another_request_is_updated_not_a_500(partner_app, partner_client, auth,
                                                                           genesys_fields):
    client_id, token = uuid.uuid4(), "t" * 43
    with partner_app.app_context():
        other = db.engine.raw_connection()
    try:
        with other.cursor() as cursor:  # another request's insert, not yet committed
            cursor.execute("INSERT INTO clients (id, vendor, settings, secrets, callback_token, created_at, updated_at)"
                           " VALUES (%s, 'genesys', '{}', '', %s, now(), now())", (str(client_id), token))
        # The PUT cannot see that row, and its own insert waits on the key until this commits.
        threading.Timer(0.5, other.commit).start()
        response = partner_client.put(configuration_url(client_id), headers=auth,
                                      json={"customFieldValues": genesys_fields})
    finally:
        other.close()
    assert response.status_code == 200
    assert token in response.get_json()["callbackUrls"]["deliveryReports"]["url"]
    with partner_app.app_context():
        assert db.session.get(Client, client_id).settings["login"] == genesys_fields["login"]


def test_get_answers_the_fields_with_secrets_and_urls(partner_client, auth, onboard, genesys_fields):
    client_id, urls = onboard(genesys_fields)
    response = partner_client.get(configuration_url(client_id), headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    validate_schema(SPEC, "GetClientConfigurationResponse", body)
    assert body["callbackUrls"] == urls
    assert body["customFieldValues"] == {
        **genesys_fields, "baseUrl": "https://smsc-api.genesyscloud.com/httpapi/receiver"}


def test_answers_with_secrets_or_callback_tokens_are_never_cached(partner_client, auth, onboard, genesys_fields):
    client_id, _ = onboard(genesys_fields)
    put = partner_client.put(configuration_url(client_id), headers=auth, json={"customFieldValues": genesys_fields})
    get = partner_client.get(configuration_url(client_id), headers=auth)
    assert put.status_code == get.status_code == 200
    assert put.headers["Cache-Control"] == get.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("method", ["get", "delete"])
def test_unknown_client_is_404(partner_client, auth, method):
    response = getattr(partner_client, method)(configuration_url(uuid.uuid4()), headers=auth)
    assert response.status_code == 404
    assert response.is_json


NOT_UUIDS = ["not-a-uuid", "39a281c7942f49a991c28f0dba750f7f", "{39a281c7-942f-49a9-91c2-8f0dba750f7f}",
             "39a281c7-942f-49a9-91c2"]


@pytest.mark.parametrize("client_id", NOT_UUIDS)
def test_client_id_must_be_a_uuid(partner_app, partner_client, auth, genesys_fields, client_id):
    response = partner_client.put(configuration_url(client_id), headers=auth,
                                  json={"customFieldValues": genesys_fields})
    assert_invalid_field(response, "clientId", "invalid")
    assert count(partner_app, Client) == 0


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("client_id", NOT_UUIDS)
def test_a_client_id_that_is_not_a_uuid_has_no_configuration_to_read_or_delete(partner_client, auth, method,
                                                                                client_id):
    # GET and DELETE declare 404 ("does not have a configuration"), not 400.
    response = getattr(partner_client, method)(configuration_url(client_id), headers=auth)
    assert response.status_code == 404
    assert response.get_json()["field"] == "clientId"


def test_delete_removes_the_client_and_its_callback_urls(partner_client, auth, onboard):
    client_id, urls = onboard()
    response = partner_client.delete(configuration_url(client_id), headers=auth)
    assert response.status_code == 204
    assert response.data == b""
    assert partner_client.get(configuration_url(client_id), headers=auth).status_code == 404
    dr_path = urlsplit(urls["deliveryReports"]["url"]).path
    answer = partner_client.post(dr_path, data={"type": "receipt", "message_id": "g1", "message_state": "2"})
    assert answer.status_code == 404


def test_delete_cancels_only_that_clients_queued_messages(partner_app, partner_client, auth, onboard):
    gone, _ = onboard()
    kept, _ = onboard()
    batch = {"messages": [{"emarsysMessageId": "m1", "source": "ACME", "destination": "+4915112345678",
                           "message": "hi"}]}
    for client_id in (gone, kept):
        assert partner_client.post(f"/clients/{client_id}/messages", headers=auth, json=batch).status_code == 202
    assert partner_client.delete(configuration_url(gone), headers=auth).status_code == 204
    with partner_app.app_context():
        states = dict(db.session.execute(db.select(OutboundMessage.client_id, OutboundMessage.state)).all())
    assert states == {gone: "cancelled", kept: "queued"}


def test_delete_drops_only_that_clients_unforwarded_reports(partner_app, partner_client, auth, onboard,
                                                            record_sent):
    (gone, gone_urls), (kept, kept_urls) = onboard(), onboard()
    for client_id, urls in ((gone, gone_urls), (kept, kept_urls)):
        record_sent(partner_app, client_id, "genesys", f"g-{client_id}", f"em-{client_id}")
        path = urlsplit(urls["deliveryReports"]["url"]).path
        receipt = {"type": "receipt", "message_id": f"g-{client_id}", "message_state": "2", "result_code": "0"}
        assert partner_client.post(path, data=receipt).status_code == 200
    assert partner_client.delete(configuration_url(gone), headers=auth).status_code == 204
    with partner_app.app_context():
        assert list(db.session.scalars(db.select(OutboxItem.client_id))) == [kept]


# (custom field values, fieldName, errorType)
INVALID_FIELDS = [
    ({}, "vendor", "missing"),
    ({"vendor": "acme"}, "vendor", "invalid"),
    ({"vendor": "genesys", "password": "p"}, "login", "missing"),
    ({"vendor": "genesys", "login": "l"}, "password", "missing"),
    ({"vendor": "genesys", "login": "l", "password": "p", "priority": "URGENT"}, "priority", "invalid"),
    ({"vendor": "genesys", "login": "l", "password": "p", "baseUrl": "ftp://x"}, "baseUrl", "invalid"),
    ({"vendor": "genesys", "login": "l", "password": "p", "baseUrl": "https://h.example:99999/x"}, "baseUrl",
     "invalid"),
    ({"vendor": "twilio", "accountSid": "AC" + "0" * 32, "authToken": "t", "baseUrl": "http://h.example:0"},
     "baseUrl", "invalid"),
    # A host IDNA cannot encode: accepted, every send and connection test would fail as "unreachable".
    ({"vendor": "genesys", "login": "l", "password": "p", "baseUrl": "http://\u2603.com/"}, "baseUrl", "invalid"),
    ({"vendor": "twilio", "authToken": "t"}, "accountSid", "missing"),
    ({"vendor": "twilio", "accountSid": "AC" + "0" * 32}, "authToken", "missing"),
    ({"vendor": "twilio", "accountSid": "nope", "authToken": "t"}, "accountSid", "invalid"),
]


@pytest.mark.parametrize("fields, field_name, error_type", INVALID_FIELDS)
@pytest.mark.parametrize("endpoint", ["configuration", "testConnection"])
def test_invalid_fields_are_400_and_nothing_is_stored(partner_app, partner_client, auth, httpserver,
                                                      endpoint, fields, field_name, error_type):
    body = {"customFieldValues": fields}
    if endpoint == "configuration":
        response = partner_client.put(configuration_url(uuid.uuid4()), headers=auth, json=body)
    else:
        response = partner_client.post("/testConnection", headers=auth, json=body)
    assert_invalid_field(response, field_name, error_type)
    assert count(partner_app, Client) == 0
    assert [request.path for request, _ in httpserver.log] == ["/oauth2/certs"]  # no vendor was called


@pytest.mark.parametrize("raw, content_type, field_name, error_type", [
    (b"{not json", "application/json", "customFieldValues", "invalid"),
    (b"", "application/json", "customFieldValues", "invalid"),
    (b'{"customFieldValues": "x"}', "text/plain", "customFieldValues", "invalid"),
    (b'{"other": 1}', "application/json", "customFieldValues", "missing"),
    (b"[1, 2]", "application/json", "customFieldValues", "invalid"),
    (b'{"customFieldValues": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", "customFieldValues",
     "invalid"),
])
@pytest.mark.parametrize("method, path", [("put", configuration_url(uuid.uuid4())), ("post", "/testConnection")])
def test_malformed_bodies_are_400_not_500(partner_client, auth, method, path, raw, content_type, field_name,
                                          error_type):
    response = getattr(partner_client, method)(path, headers=auth, data=raw, content_type=content_type)
    assert_invalid_field(response, field_name, error_type)


def test_secrets_are_encrypted_at_rest(partner_app, onboard, genesys_fields, twilio_fields):
    onboard(genesys_fields)
    onboard(twilio_fields)
    with partner_app.app_context():
        rows = db.session.execute(text("SELECT * FROM clients")).all()
    raw = " ".join(str(value) for row in rows for value in row)
    assert genesys_fields["login"] in raw  # the row really was read
    assert genesys_fields["password"] not in raw
    assert twilio_fields["authToken"] not in raw


def test_secrets_are_never_logged(partner_client, auth, onboard, httpserver, genesys_fields, twilio_fields,
                                 caplog):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data("result_code=2")
    genesys_fields = genesys_fields_at(httpserver, genesys_fields)
    genesys_id, _ = onboard(genesys_fields)
    twilio_id, _ = onboard(twilio_fields)
    for client_id in (genesys_id, twilio_id):
        assert partner_client.get(configuration_url(client_id), headers=auth).status_code == 200
    assert run_connection_test(partner_client, auth, genesys_fields)["errorType"] == "credential"
    assert [record.name for record in caplog.records].count("services.clients") == 2  # onboarding was logged
    assert genesys_fields["password"] not in caplog.text
    assert twilio_fields["authToken"] not in caplog.text


def test_secrets_sealed_with_a_retired_key_are_a_503_not_a_500(make_app, partner_app, partner_client, auth,
                                                              onboard, jwks_url):
    client_id, _ = onboard()
    rotated = make_app(EMARSYS_JWKS_URL=jwks_url, EMARSYS_TOKEN_ISSUER="https://ias.example.test",
                       EMARSYS_OAUTH_CLIENT_ID="emarsys-sms-client",
                       CONFIG_ENCRYPTION_KEY=Fernet.generate_key().decode())
    response = rotated.test_client().get(configuration_url(client_id), headers=auth)
    assert response.status_code == 503
    validate_schema("common.yaml", "Error", response.get_json())


def genesys_fields_at(httpserver, genesys_fields) -> dict[str, str]:
    """Return Genesys fields pointing at the local fake Genesys server."""
    return {**genesys_fields, "baseUrl": httpserver.url_for(GENESYS_PATH)}


def run_connection_test(partner_client, auth, body):
    """POST /testConnection, check the 200 against the spec, and return the body."""
    response = partner_client.post("/testConnection", headers=auth, json={"customFieldValues": body})
    assert response.status_code == 200
    validate_pointer(SPEC, TEST_CONNECTION_200, response.get_json())
    return response.get_json()


@pytest.mark.parametrize("status, answer, expected", [
    (200, "result_code=1", {"state": "success"}),
    (200, "result_code=2", {"state": "error", "errorType": "credential"}),
    (503, "", {"state": "error", "errorType": "temporary"}),
    (200, "result_code=6", {"state": "error", "errorType": "temporary"}),
    (200, "<html>", {"state": "error", "errorType": "integration"}),
    (404, "", {"state": "error", "errorType": "integration"}),
])
def test_genesys_connection_test(partner_client, auth, httpserver, genesys_fields, status, answer, expected):
    httpserver.expect_request(GENESYS_PATH, method="POST").respond_with_data(answer, status=status)
    body = run_connection_test(partner_client, auth, genesys_fields_at(httpserver, genesys_fields))
    assert {key: body[key] for key in expected} == expected
    assert body["state"] == "success" or body["description"]
    sent = [request.form for request, _ in httpserver.log if request.path == GENESYS_PATH]
    assert len(sent) == 1 and "phone_number" not in sent[0]
    assert (sent[0]["login"], sent[0]["password"]) == (genesys_fields["login"], genesys_fields["password"])


@pytest.mark.parametrize("status, expected", [
    (200, {"state": "success"}),
    (401, {"state": "error", "errorType": "credential"}),
    (500, {"state": "error", "errorType": "temporary"}),
    (404, {"state": "error", "errorType": "integration"}),
])
def test_twilio_connection_test(partner_client, auth, httpserver, twilio_fields, status, expected):
    httpserver.expect_request(TWILIO_ACCOUNT, method="GET").respond_with_json({"sid": "AC"}, status=status)
    body = run_connection_test(partner_client, auth, {**twilio_fields, "baseUrl": httpserver.url_for("/")})
    assert {key: body[key] for key in expected} == expected
    request = next(request for request, _ in httpserver.log if request.path == TWILIO_ACCOUNT)
    assert request.authorization.username == twilio_fields["accountSid"]


def unused_local_url() -> str:
    """Return a loopback Genesys URL on a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{GENESYS_PATH}"


def test_unreachable_vendor_is_a_temporary_error(partner_client, auth, genesys_fields):
    unreachable = {**genesys_fields, "baseUrl": unused_local_url()}
    body = run_connection_test(partner_client, auth, unreachable)
    assert (body["state"], body["errorType"]) == ("error", "temporary")
