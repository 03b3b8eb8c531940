"""The OpenAPI 3 description of the service (`GET /openapi.json`), built with apispec.

Paths, methods and path parameters come from the app's URL map, so no registered route is
left out; bodies and query parameters come from the marshmallow schemas the routes validate
with (schemas.status, schemas.client_config, schemas.outbound) and from schemas.responses.
`OPERATIONS` adds per endpoint what the URL map cannot know: responses, auth, bodies.
A route without an entry still appears, marked `x-undocumented`, and the tests fail on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import validate
from werkzeug.routing import Rule

from schemas import responses
from schemas.client_config import GenesysFieldsSchema, TwilioFieldsSchema
from schemas.status import SapTimestamp, StatusQuerySchema

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1"
API_DESCRIPTION = ("Receives SMS delivery reports and inbound messages from vendors, serves bounces to SAP "
                   "Marketing Cloud, and implements the Emarsys SMS partner endpoints.")
UNDOCUMENTED = "x-undocumented"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

SECURITY_SCHEMES = {
    "sapBasic": {"type": "http", "scheme": "basic", "description":
                 "SAP_STATUS_USERNAME / SAP_STATUS_PASSWORD (the SAP communication user). While these are "
                 "unset, the endpoints are open outside production and answer 503 in production."},
    "adminBasic": {"type": "http", "scheme": "basic", "description":
                   "ADMIN_USERNAME / ADMIN_PASSWORD. While these are unset, /metrics is open outside "
                   "production and answers 503 in production; the dashboard answers 404."},
    "emarsysBearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description":
                      "An access token issued to EMARSYS_OAUTH_CLIENT_ID by EMARSYS_TOKEN_ISSUER, "
                      "verified against EMARSYS_JWKS_URL."},
}
OPEN: tuple[dict[str, list[str]], ...] = ()
SAP_AUTH = ({"sapBasic": []}, {})  # {} : no credentials needed while none are configured, outside production
ADMIN_AUTH_IF_SET = ({"adminBasic": []}, {})
ADMIN_AUTH = ({"adminBasic": []},)
EMARSYS_AUTH = ({"emarsysBearer": []},)

ERROR_RESPONSES = {
    "BadRequest": "A parameter is missing or malformed",
    "Unauthorized": "Credentials are missing or wrong",
    "Forbidden": "Credentials are valid but do not grant this request",
    "NotFound": "The addressed resource does not exist",
    "PayloadTooLarge": "The body is larger than this URL takes (MAX_REQUEST_BYTES, MAX_VENDOR_REQUEST_BYTES)",
    "UnsupportedMediaType": "The body is in a format this endpoint does not read",
    "Unavailable": "The database or another dependency cannot serve the request; retry later",
}

FREE_FORM = {"type": "object", "additionalProperties": {"type": "string"}}
VENDOR_QUERY = {"name": "params", "in": "query", "required": False, "style": "form", "explode": True,
                "schema": FREE_FORM, "description": "The vendor's own fields, as its documentation or "
                "the mapping file (VENDOR_MAPPINGS_FILE) names them"}
VENDOR_FORM_BODY = {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": FREE_FORM},
                                                   "multipart/form-data": {"schema": FREE_FORM}}}
TWILIO_SIGNATURE = {"name": "X-Twilio-Signature", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "Checked for the twilio vendor when an auth token is known"}
SAPDI_QUERY = tuple(
    {"name": name, "in": "query", "required": required, "schema": {"type": "string"}, "description": text}
    for name, required, text in (
        ("orderID", True, "The message id"), ("date", True, "Event date, ddMMyyyy"),
        ("time", True, "Event time, HHmmss (UTC)"), ("msisdn", True, "The recipient"),
        ("status", True, "Status code and text, e.g. 0xDBF3 absent subscriber")))

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "token": {"schema": {"type": "string"}, "description": "The client's secret callback token"},
    "client_id": {"schema": {"type": "string", "format": "uuid"}, "description": "The Emarsys client id"},
}


@dataclass(frozen=True)
class Operation:
    """What the URL map cannot tell about an endpoint: its responses, auth, parameters and body."""

    tag: str
    responses: dict[str, Any]
    security: tuple[dict[str, list[str]], ...] = OPEN
    parameters: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None
    description: str | None = None


def json_body(schema: Any, description: str) -> dict[str, Any]:
    """Return a response or request body object of JSON described by a schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def custom_fields_body(required: bool = True) -> dict[str, Any]:
    """Return the `{"customFieldValues": {...}}` request body, one shape per vendor."""
    variants = [{"allOf": [{"$ref": f"#/components/schemas/{name}"},
                           {"type": "object", "required": ["vendor"],
                            "properties": {"vendor": {"type": "string", "enum": [vendor]}}}]}
                for vendor, name in (("genesys", "GenesysFields"), ("twilio", "TwilioFields"))]
    schema = {"type": "object", "required": ["customFieldValues"],
              "properties": {"customFieldValues": {"oneOf": variants}}}
    return {"required": required, "content": {"application/json": {"schema": schema}}}


STORED = {"200": json_body(responses.IngestAnswerSchema, "Stored, or recognised as a redelivery"),
          "400": "BadRequest", "413": "PayloadTooLarge", "415": "UnsupportedMediaType", "503": "Unavailable"}
# 404: an unknown vendor or callback token (SAP Digital Interconnect's own URL names neither).
VENDOR_PUSH = Operation("vendors", {**STORED, "403": "Forbidden", "404": "NotFound"},
                        parameters=(VENDOR_QUERY, TWILIO_SIGNATURE), request_body=VENDOR_FORM_BODY)
PARTNER_ERRORS = {"401": "Unauthorized", "403": "Forbidden", "503": "Unavailable"}
# What an endpoint that reads a body may also answer: past MAX_REQUEST_BYTES, werkzeug refuses it.
BODY_ERRORS = {"413": "PayloadTooLarge"}
READ_OR_DELETE_ERRORS = {"403": "Forbidden", "503": "Unavailable"}
FIELD_ERRORS = json_body(responses.FieldErrorsSchema, "Invalid custom fields or clientId")

OPERATIONS: dict[str, Operation] = {
    "ops.health": Operation("ops", {"200": json_body(responses.HealthSchema, "The process is up")}),
    "ops.ready": Operation("ops", {
        "200": json_body(responses.ReadinessSchema, "The database answers, its schema current"),
        "503": json_body(responses.ReadinessSchema, "The database does not answer, or its schema is older")}),
    "ops.metrics": Operation(
        "ops", {"200": {"description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": "Unauthorized", "503": "Unavailable"}, security=ADMIN_AUTH_IF_SET,
        description="In production without ADMIN_USERNAME and ADMIN_PASSWORD: 503, never open."),
    "ops.openapi": Operation("ops", {"200": json_body({"type": "object"}, "This document")}),
    "vendors.sapdi_notification": Operation("vendors", STORED, parameters=SAPDI_QUERY),
    "vendors.delivery_report": VENDOR_PUSH,
    "vendors.inbound_message": VENDOR_PUSH,
    "vendors.client_delivery_report": VENDOR_PUSH,
    "vendors.client_inbound_message": VENDOR_PUSH,
    "sap.status": Operation(
        "sap", {"200": json_body(responses.StatusPageSchema, "One page of bounces"), "400": "BadRequest",
                "401": "Unauthorized", "503": "Unavailable"},
        security=SAP_AUTH, parameters=({"in": "query", "schema": StatusQuerySchema},)),
    "sap.clear": Operation(
        "sap", {"200": json_body(responses.ClearedSchema, "Every record deleted"), "401": "Unauthorized",
                "404": "NotFound", "503": "Unavailable"}, security=SAP_AUTH,
        description="Only with ENABLE_CLEAR_ENDPOINT on (test set-ups); otherwise 404."),
    "partner.put_configuration": Operation(
        "partner", {"200": json_body(responses.ConfigurationSavedSchema, "Stored; the callback URLs"),
                    "400": FIELD_ERRORS, **PARTNER_ERRORS, **BODY_ERRORS},
        security=EMARSYS_AUTH, request_body=custom_fields_body()),
    # As partner-service.yaml declares them: no 400 (a clientId that is no UUID has no configuration),
    # and a failed authentication is a 403.
    "partner.get_configuration": Operation(
        "partner", {"200": json_body(responses.ClientConfigurationSchema, "The stored configuration"),
                    "404": "NotFound", **READ_OR_DELETE_ERRORS}, security=EMARSYS_AUTH),
    "partner.delete_configuration": Operation(
        "partner", {"204": {"description": "Deleted; unsent messages cancelled"},
                    "404": "NotFound", **READ_OR_DELETE_ERRORS}, security=EMARSYS_AUTH),
    "partner.check_connection": Operation(
        "partner", {"200": json_body(responses.ConnectionTestResultSchema, "The outcome of the test"),
                    "400": FIELD_ERRORS, **PARTNER_ERRORS, **BODY_ERRORS},
        security=EMARSYS_AUTH, request_body=custom_fields_body()),
    "partner.post_messages": Operation(
        "partner", {"202": {"description": "Every message queued for sending"},
                    "400": json_body(responses.OutboundBatchErrorSchema, "Nothing queued: the batch is invalid"),
                    "404": "NotFound", **PARTNER_ERRORS, **BODY_ERRORS},
        security=EMARSYS_AUTH,
        request_body={"required": True, "content": {"application/json": {"schema": responses.OutboundBatchSchema}}}),
    "dashboard.show_dashboard": Operation(
        "dashboard", {"200": {"description": "The dashboard page", "content": {"text/html": {"schema": {
            "type": "string"}}}}, "400": "BadRequest", "401": "Unauthorized", "404": "NotFound",
                      "503": "Unavailable"},
        security=ADMIN_AUTH, parameters=tuple(
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
            for name, text in (("vendor", "Show one vendor's reports in the chart"),
                               ("message_id", "Show this message's whole history"),
                               ("replayed", "How many dead letters the last replay re-queued")))),
    "dashboard.replay": Operation(
        "dashboard", {"303": {"description": "Replayed; back to the dashboard"}, "400": "BadRequest",
                      "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
                      **BODY_ERRORS, "503": "Unavailable"},
        security=ADMIN_AUTH, request_body={"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "required": ["csrf_token", "confirm"], "properties": {
                "csrf_token": {"type": "string"}, "confirm": {"type": "string", "enum": ["yes"]},
                "vendor": {"type": "string", "description": "The chart's vendor, kept on the way back"}}}}}}),
}


def openapi_path(rule: Rule) -> str:
    """Return the OpenAPI path template of a Flask URL rule: `<vendor>` becomes `{vendor}`."""
    return RULE_ARGUMENT.sub(r"{\1}", rule.rule)


def served_rules(app: Flask) -> list[Rule]:
    """Return every URL rule of the app but static files, in a stable order."""
    return sorted((rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"),
                  key=lambda rule: (rule.rule, rule.endpoint))


def rule_methods(rule: Rule) -> list[str]:
    """Return the methods a rule serves, without the ones Flask adds by itself."""
    return sorted(set(rule.methods or ()) - IGNORED_METHODS)


def path_parameters(rule: Rule, vendors: list[str]) -> list[dict[str, Any]]:
    """Return the OpenAPI path parameters of a rule's arguments."""
    known = {**PATH_PARAMETERS, "vendor": {"schema": {"type": "string", "enum": vendors},
                                           "description": "A configured vendor"}}
    return [{"name": name, "in": "path", "required": True, **known.get(name, {"schema": {"type": "string"}})}
            for name in sorted(rule.arguments)]


def operation_object(rule: Rule, method: str, vendors: list[str], view_doc: str | None) -> dict[str, Any]:
    """Return the OpenAPI operation of one rule and method."""
    summary = (view_doc or rule.endpoint).strip().splitlines()[0]
    doc = OPERATIONS.get(rule.endpoint)
    if doc is None:
        return {"summary": summary, "parameters": path_parameters(rule, vendors), UNDOCUMENTED: True,
                "responses": {"default": {"description": "Not documented"}}}
    operation: dict[str, Any] = {"tags": [doc.tag], "summary": summary, "responses": dict(doc.responses),
                                 "parameters": [*path_parameters(rule, vendors), *doc.parameters],
                                 "security": list(doc.security)}
    if doc.description:
        operation["description"] = doc.description
    if doc.request_body is not None and method in BODY_METHODS:
        operation["requestBody"] = doc.request_body
    return operation


def new_spec() -> APISpec:
    """Return an apispec document with the shared components registered."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(title="SMS delivery-status middleware", version=API_VERSION, openapi_version=OPENAPI_VERSION,
                   plugins=[marshmallow], info={"description": API_DESCRIPTION})
    marshmallow.converter.add_attribute_function(sap_timestamp_properties)
    marshmallow.converter.add_attribute_function(ecma_pattern_properties)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    spec.components.schema("Error", schema=responses.ErrorSchema)
    for name, description in ERROR_RESPONSES.items():
        spec.components.response(name, json_body("Error", description))
    spec.components.schema("GenesysFields", schema=GenesysFieldsSchema)
    spec.components.schema("TwilioFields", schema=TwilioFieldsSchema)
    return spec


def sap_timestamp_properties(converter: Any, field_: Any, **kwargs: Any) -> dict[str, Any]:
    """Describe SAP's `yyyyMMddHHmmss` timestamps as the pattern they must match."""
    if isinstance(field_, SapTimestamp):
        return {"type": "string", "format": "yyyyMMddHHmmss", "pattern": "^[0-9]{14}$",
                "example": "20260101000000"}
    return {}


def ecma_pattern_properties(converter: Any, field_: Any, **kwargs: Any) -> dict[str, Any]:
    """Write a Regexp validator's pattern in the ECMA dialect OpenAPI uses (Python's `\\Z` is `$`)."""
    patterns = [validator.regex.pattern for validator in field_.validators
                if isinstance(validator, validate.Regexp)]
    return {"pattern": patterns[0].replace("\\Z", "$")} if patterns else {}


def build_openapi(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI document of every route the app serves."""
    spec = new_spec()
    vendors = sorted(app.extensions.get("vendor_registry", {}))
    operations_by_path: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for rule in served_rules(app):
        view_doc = getattr(app.view_functions.get(rule.endpoint), "__doc__", None)
        for method in rule_methods(rule):
            operation = operation_object(rule, method, vendors, view_doc)
            operation["operationId"] = unique_id(f"{rule.endpoint.replace('.', '_')}_{method.lower()}", used_ids)
            operations_by_path.setdefault(openapi_path(rule), {})[method.lower()] = operation
    for path, operations in operations_by_path.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def openapi_document(app: Flask) -> dict[str, Any]:
    """Return the app's OpenAPI document, built on first use: routes cannot change once it serves."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = build_openapi(app)
    return app.extensions["openapi"]


def unique_id(candidate: str, used: set[str]) -> str:
    """Return the candidate operation id, numbered when an endpoint serves several paths."""
    number, result = 1, candidate
    while result in used:
        number += 1
        result = f"{candidate}_{number}"
    used.add(result)
    return result
