"""Tests of the onboarding custom fields and their InvalidFieldErrors answers."""
from __future__ import annotations

import dataclasses

import pytest

from errors import ServiceError
from schemas.client_config import (DEFAULT_GENESYS_BASE_URL, DEFAULT_TWILIO_BASE_URL,
                                   InvalidClientConfig, load_client_config)
from tests.emarsys_spec import requires_spec, validate_schema

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2
GENESYS_FIELDS = {"vendor": "genesys", "login": "acme", "password": " s3cret "}
TWILIO_FIELDS = {"vendor": "twilio", "accountSid": ACCOUNT_SID, "authToken": "tok3n"}


def body(**fields: object) -> dict:
    """Return a configuration request body with the given custom field values."""
    return {"customFieldValues": fields}


def refusal(request_body: object) -> InvalidClientConfig:
    """Return the InvalidClientConfig a body raises, after checking it against the spec."""
    with pytest.raises(InvalidClientConfig) as caught:
        load_client_config(request_body)
    answer = caught.value.to_dict()
    assert answer["errors"], "InvalidFieldErrors requires no keys, so emptiness must be checked here"
    validate_schema("partner-service.yaml", "InvalidFieldErrors", answer)
    return caught.value


def test_genesys_config_applies_the_default_base_url():
    config = load_client_config(body(**GENESYS_FIELDS))

    assert config.vendor == "genesys"
    assert config.fields == {**GENESYS_FIELDS, "baseUrl": DEFAULT_GENESYS_BASE_URL}
    assert config.secret_field_names == frozenset({"password"})


def test_twilio_config_applies_the_default_base_url():
    config = load_client_config(body(**TWILIO_FIELDS, messagingServiceSid=SERVICE_SID))

    assert config.fields == {**TWILIO_FIELDS, "messagingServiceSid": SERVICE_SID,
                             "baseUrl": DEFAULT_TWILIO_BASE_URL}
    assert config.secret_field_names == frozenset({"authToken"})


def test_optional_genesys_fields_are_kept():
    fields = {**GENESYS_FIELDS, "sender": "ACME", "priority": "INTERACTIVE",
              "baseUrl": "http://127.0.0.1:8081/httpapi/receiver"}

    assert load_client_config(body(**fields)).fields == fields


def test_secret_keeps_its_exact_value_while_other_text_is_trimmed():
    config = load_client_config(body(**{**GENESYS_FIELDS, "login": "  acme  "}))

    assert config.fields["login"] == "acme"
    assert config.fields["password"] == " s3cret "


def test_fields_of_the_other_vendor_and_unknown_fields_are_ignored():
    config = load_client_config(body(**GENESYS_FIELDS, accountSid="", authToken="x", region="EU"))

    assert set(config.fields) == {"vendor", "login", "password", "baseUrl"}


def test_blank_optional_field_takes_its_default():
    config = load_client_config(body(**TWILIO_FIELDS, baseUrl="  ", messagingServiceSid=""))

    assert config.fields["baseUrl"] == DEFAULT_TWILIO_BASE_URL
    assert "messagingServiceSid" not in config.fields


def test_vendor_is_matched_without_regard_to_case():
    assert load_client_config(body(**{**TWILIO_FIELDS, "vendor": " Twilio "})).vendor == "twilio"


def test_redacted_masks_only_secrets():
    redacted = load_client_config(body(**GENESYS_FIELDS)).redacted()

    assert redacted["password"] == "***"
    assert redacted["login"] == "acme"


@pytest.mark.parametrize("changed, same_account", [
    ({**GENESYS_FIELDS, "password": "rotated", "sender": "ACME", "priority": "BULK"}, True),
    ({**GENESYS_FIELDS, "login": "other"}, False),
    ({**GENESYS_FIELDS, "baseUrl": "https://genesys.example.com/httpapi/receiver"}, False),
    ({**TWILIO_FIELDS, "login": "acme"}, False),  # another vendor
], ids=["genesys-secret-and-sender", "genesys-login", "genesys-server", "other-vendor"])
def test_account_names_only_what_decides_where_a_genesys_message_goes(changed, same_account):
    account = load_client_config(body(**GENESYS_FIELDS)).account()

    assert (load_client_config(body(**changed)).account() == account) is same_account
    assert len(account) == 32 and "acme" not in account


@pytest.mark.parametrize("changed, same_account", [
    ({**TWILIO_FIELDS, "authToken": "rotated", "messagingServiceSid": SERVICE_SID,
      "baseUrl": "https://api.dublin.ie1.twilio.com"}, True),
    ({**TWILIO_FIELDS, "accountSid": "AC" + "f" * 32}, False),
], ids=["twilio-token-service-and-edge", "twilio-account"])
def test_account_of_a_twilio_client_is_its_account_sid(changed, same_account):
    account = load_client_config(body(**TWILIO_FIELDS)).account()

    assert (load_client_config(body(**changed)).account() == account) is same_account


@pytest.mark.parametrize("base_url", ["https://smsc.example.com/httpapi/receiver", "http://10.0.0.5:8080/x",
                                      "https://bücher.example/api", "http://intranet-host/receiver"])
def test_a_base_url_a_request_can_be_sent_to_is_kept(base_url):
    assert load_client_config(body(**GENESYS_FIELDS, baseUrl=base_url)).fields["baseUrl"] == base_url


def test_config_is_frozen():
    config = load_client_config(body(**GENESYS_FIELDS))

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.vendor = "twilio"  # type: ignore[misc]


def test_invalid_client_config_is_a_400_service_error():
    error = InvalidClientConfig([{"fieldName": "x", "description": "x is bad", "errorType": "invalid"}])

    assert isinstance(error, ServiceError)
    assert error.status_code == 400


@requires_spec
@pytest.mark.parametrize("request_body, field_name, error_type", [
    (None, "customFieldValues", "invalid"),
    ([], "customFieldValues", "invalid"),
    ({}, "customFieldValues", "missing"),
    ({"customFieldValues": None}, "customFieldValues", "missing"),
    ({"customFieldValues": "vendor=genesys"}, "customFieldValues", "invalid"),
    ({"customFieldValues": {}}, "vendor", "missing"),
    (body(vendor=""), "vendor", "missing"),
    (body(vendor="nexmo"), "vendor", "invalid"),
    (body(vendor=7), "vendor", "invalid"),
])
def test_body_and_vendor_faults_name_one_field(request_body, field_name, error_type):
    errors = refusal(request_body).errors

    assert [(e["fieldName"], e["errorType"]) for e in errors] == [(field_name, error_type)]


@requires_spec
@pytest.mark.parametrize("fields, expected", [
    ({"vendor": "genesys"}, [("login", "missing"), ("password", "missing")]),
    ({**GENESYS_FIELDS, "login": "   "}, [("login", "missing")]),
    ({**GENESYS_FIELDS, "password": None}, [("password", "missing")]),
    ({**GENESYS_FIELDS, "login": 12}, [("login", "invalid")]),
    ({**GENESYS_FIELDS, "priority": "URGENT"}, [("priority", "invalid")]),
    ({**GENESYS_FIELDS, "baseUrl": "ftp://smsc.example.com/in"}, [("baseUrl", "invalid")]),
    ({**GENESYS_FIELDS, "baseUrl": "not a url"}, [("baseUrl", "invalid")]),
    ({**GENESYS_FIELDS, "baseUrl": "https://acme:s3cret@smsc.example.com/in"}, [("baseUrl", "invalid")]),
    ({**GENESYS_FIELDS, "baseUrl": "https://acme@smsc.example.com/in"}, [("baseUrl", "invalid")]),
    ({"vendor": "twilio"}, [("accountSid", "missing"), ("authToken", "missing")]),
    ({**TWILIO_FIELDS, "accountSid": "AC123"}, [("accountSid", "invalid")]),
    ({**TWILIO_FIELDS, "accountSid": ACCOUNT_SID + "/../x"}, [("accountSid", "invalid")]),
    ({**TWILIO_FIELDS, "messagingServiceSid": "MG1"}, [("messagingServiceSid", "invalid")]),
    ({**TWILIO_FIELDS, "baseUrl": "api.twilio.com"}, [("baseUrl", "invalid")]),
    ({**GENESYS_FIELDS, "login": "a\x00b"}, [("login", "invalid")]),
    ({**GENESYS_FIELDS, "sender": "x" * 2049}, [("sender", "invalid")]),
    ({**TWILIO_FIELDS, "authToken": "t\x00k"}, [("authToken", "invalid")]),
    ({**GENESYS_FIELDS, "baseUrl": "https://smsc.example.com/" + "a" * 100_000}, [("baseUrl", "invalid")]),
    ({"vendor": "twilio", "accountSid": "x", "baseUrl": "mailto:a@b.c"},
     [("accountSid", "invalid"), ("authToken", "missing"), ("baseUrl", "invalid")]),
])
def test_vendor_field_faults_are_each_reported(fields, expected):
    errors = refusal(body(**fields)).errors

    assert [(e["fieldName"], e["errorType"]) for e in errors] == expected
    assert all(e["fieldName"] in e["description"] for e in errors)


@requires_spec
def test_error_descriptions_never_echo_a_secret():
    error = refusal(body(vendor="twilio", accountSid="bad", authToken="tok3n-secret"))

    assert "tok3n-secret" not in str(error.to_dict())
    with_credentials = refusal(body(**GENESYS_FIELDS, baseUrl="https://a:s3cret@smsc.example.com"))
    assert "s3cret" not in str(with_credentials.to_dict())
