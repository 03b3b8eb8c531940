"""The onboarding custom fields a client fills in, and their validation.

Emarsys shows every custom field we define in one onboarding form, whichever
vendor the client selects, so a Genesys client's body may carry (usually empty)
Twilio fields and the other way round. Fields that do not belong to the selected
vendor, and fields we never defined, are therefore ignored and not stored, rather
than rejected. A blank value (empty or whitespace only) counts as absent: a
required field then reports `missing`, an optional one takes its default.
Secrets keep their exact value; every other text value is trimmed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from requests.exceptions import InvalidURL
from requests.models import PreparedRequest

from errors import ServiceError

GENESYS = "genesys"
TWILIO = "twilio"
VENDORS = (GENESYS, TWILIO)
GENESYS_PRIORITIES = ("BULK_LOW", "BULK", "INTERACTIVE_LOW", "INTERACTIVE")
DEFAULT_GENESYS_BASE_URL = "https://smsc-api.genesyscloud.com/httpapi/receiver"
DEFAULT_TWILIO_BASE_URL = "https://api.twilio.com"
CUSTOM_FIELD_VALUES = "customFieldValues"
VENDOR_FIELD = "vendor"
ACCOUNT_FINGERPRINT_LENGTH = 32
# The fields that name the account a message is sent through: what an earlier send created or
# counted as sent (Genesys' message_id check, Twilio's message list) is seen only in that account.
ACCOUNT_FIELD_NAMES = {GENESYS: ("baseUrl", "login"), TWILIO: ("accountSid",)}
# The secrets a vendor signs its callbacks with (Twilio's X-Twilio-Signature).
SIGNING_FIELD_NAMES = {TWILIO: ("authToken",)}

class _HttpUrl(validate.URL):
    """An absolute http(s) URL whose host and port, if it names one, a connection can use."""

    def __call__(self, value: str) -> str:
        """Return the URL, or raise ValidationError."""
        value = super().__call__(value)
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            # Stored and logged as plain text, unlike the secret fields that exist for credentials.
            raise ValidationError("must not carry credentials (user:password@)")
        try:
            port = parts.port
        except ValueError:  # beyond 65535
            port = 0
        if port == 0:
            # Accepted, it would make every send to the client and every connection test fail.
            raise ValidationError("must have a port from 1 to 65535")
        try:
            # As the vendor calls will prepare it: a host IDNA cannot encode ("☃.com") fails every call.
            PreparedRequest().prepare_url(value, None)
        except InvalidURL:
            raise ValidationError("must have a host name a request can be sent to") from None
        return value


# require_tld=False so that an intranet vendor stays configurable; whether a call may reach a
# non-public address is the operator's choice (VENDOR_ALLOW_PRIVATE_ADDRESSES), checked on connect.
_HTTP_URL = _HttpUrl(schemes={"http", "https"}, require_tld=False, error="must be an absolute http or https URL")


# Longer than any credential, sender or vendor URL; a larger value is a mistake, not a setting.
MAX_FIELD_LENGTH = 2048


class _UnicodeText(fields.String):
    """A string that can be stored and sent to a vendor: JSON's lone surrogates ("\\udc00") are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("unicode") from None
        if "\x00" in text:
            raise self.make_error("nul")  # sent in a vendor's form or header, it would end the value there
        if len(text) > MAX_FIELD_LENGTH:
            raise self.make_error("too_long")
        return text


def _text(**kwargs: Any) -> fields.String:
    """Return a string field whose error messages read after the field name."""
    return _UnicodeText(error_messages={"invalid": "must be a string",
                                        "unicode": "must be valid Unicode text (it holds a lone surrogate)",
                                        "nul": "must not contain NUL characters",
                                        "too_long": f"must be at most {MAX_FIELD_LENGTH} characters"},
                        **kwargs)


class InvalidClientConfig(ServiceError):
    """The custom field values are incomplete or malformed; carries InvalidFieldError dicts."""

    status_code = 400
    error = "invalid_client_configuration"

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("invalid client configuration")
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        """Return the spec's InvalidFieldErrors body."""
        return {"errors": self.errors}


@dataclass(frozen=True)
class ClientConfig:
    """A validated client configuration: the vendor and every stored field, defaults applied."""

    vendor: str
    fields: dict[str, str]
    secret_field_names: frozenset[str]

    def redacted(self) -> dict[str, str]:
        """Return the fields with secret values masked, safe to log."""
        return {name: "***" if name in self.secret_field_names else value
                for name, value in self.fields.items()}

    def signing_secrets(self) -> dict[str, str]:
        """Return the secrets the vendor signs this account's callbacks with (none for most vendors)."""
        return {name: self.fields[name] for name in SIGNING_FIELD_NAMES.get(self.vendor, ()) if name in self.fields}

    def account(self) -> str:
        """Return a short fingerprint of the vendor account messages are sent through."""
        names = ACCOUNT_FIELD_NAMES.get(self.vendor, ())
        named = "\0".join([self.vendor, *(self.fields.get(name, "") for name in names)])
        return hashlib.sha256(named.encode()).hexdigest()[:ACCOUNT_FINGERPRINT_LENGTH]


class _VendorFieldsSchema(Schema):
    """Base of the per-vendor field schemas."""

    secret_field_names: ClassVar[frozenset[str]] = frozenset()

    class Meta:
        unknown = EXCLUDE


class GenesysFieldsSchema(_VendorFieldsSchema):
    """Validate the Genesys SMS Aggregation custom fields."""

    secret_field_names = frozenset({"password"})

    login = _text(required=True)
    password = _text(required=True)
    sender = _text()
    priority = _text(validate=validate.OneOf(GENESYS_PRIORITIES, error="must be one of {choices}"))
    baseUrl = _text(load_default=DEFAULT_GENESYS_BASE_URL, validate=_HTTP_URL)


class TwilioFieldsSchema(_VendorFieldsSchema):
    """Validate the Twilio custom fields."""

    secret_field_names = frozenset({"authToken"})

    # The SID becomes part of request paths, so only the documented shape is allowed.
    accountSid = _text(required=True, validate=validate.Regexp(
        r"^AC[0-9a-fA-F]{32}$", error="must be 'AC' followed by 32 hexadecimal digits"))
    authToken = _text(required=True)
    messagingServiceSid = _text(validate=validate.Regexp(
        r"^MG[0-9a-fA-F]{32}$", error="must be 'MG' followed by 32 hexadecimal digits"))
    baseUrl = _text(load_default=DEFAULT_TWILIO_BASE_URL, validate=_HTTP_URL)


VENDOR_SCHEMAS: dict[str, type[_VendorFieldsSchema]] = {
    GENESYS: GenesysFieldsSchema,
    TWILIO: TwilioFieldsSchema,
}


def field_error(field_name: str, description: str, error_type: str) -> dict[str, str]:
    """Return one spec InvalidFieldError."""
    return {"fieldName": field_name, "description": description, "errorType": error_type}


def load_client_config(body: object) -> ClientConfig:
    """Validate a `{"customFieldValues": {...}}` body, or raise InvalidClientConfig."""
    values = _custom_field_values(body)
    vendor = _vendor(values)
    schema_class = VENDOR_SCHEMAS[vendor]
    present = _present_values(values, schema_class.secret_field_names)
    try:
        loaded = schema_class().load(present)
    except ValidationError as exc:
        raise InvalidClientConfig(_field_errors(schema_class(), exc.messages, present, vendor)) from None
    return ClientConfig(vendor=vendor, fields={VENDOR_FIELD: vendor, **loaded},
                        secret_field_names=schema_class.secret_field_names)


def _custom_field_values(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidClientConfig([field_error(
            CUSTOM_FIELD_VALUES, "the body must be a JSON object holding customFieldValues",
            "invalid")])
    if body.get(CUSTOM_FIELD_VALUES) is None:
        raise InvalidClientConfig([field_error(
            CUSTOM_FIELD_VALUES, "customFieldValues is required", "missing")])
    values = body[CUSTOM_FIELD_VALUES]
    if not isinstance(values, dict):
        raise InvalidClientConfig([field_error(
            CUSTOM_FIELD_VALUES, "customFieldValues must be an object", "invalid")])
    return values


def _vendor(values: dict[str, Any]) -> str:
    raw = values.get(VENDOR_FIELD)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InvalidClientConfig([field_error(
            VENDOR_FIELD, f"vendor is required: one of {', '.join(VENDORS)}", "missing")])
    vendor = raw.strip().lower() if isinstance(raw, str) else None
    if vendor not in VENDORS:
        raise InvalidClientConfig([field_error(
            VENDOR_FIELD, f"vendor must be one of {', '.join(VENDORS)}", "invalid")])
    return vendor


def _present_values(values: dict[str, Any], secret_names: frozenset[str]) -> dict[str, Any]:
    """Drop blank values so they count as absent; trim text that is not a secret."""
    present: dict[str, Any] = {}
    for name, value in values.items():
        if name == VENDOR_FIELD or value is None:
            continue
        if isinstance(value, str):
            if not value.strip():
                continue
            value = value if name in secret_names else value.strip()
        present[name] = value
    return present


def _field_errors(schema: Schema, messages: dict[str, Any], present: dict[str, Any],
                  vendor: str) -> list[dict[str, str]]:
    errors = []
    for name in schema.fields:  # declaration order keeps the answer stable
        if name not in messages:
            continue
        if name not in present:
            errors.append(field_error(name, f"{name} is required for vendor {vendor}", "missing"))
        else:
            errors.append(field_error(name, f"{name} {messages[name][0]}", "invalid"))
    return errors
