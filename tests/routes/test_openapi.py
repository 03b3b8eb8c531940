"""GET /openapi.json: a valid OpenAPI document that covers every registered route."""
from __future__ import annotations

import re
from datetime import datetime

import pytest
import yaml
from flask import Flask
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_spec_validator import validate
from werkzeug.test import EnvironBuilder

from mappers.report import DeliveryReport, Outcome
from routes.dashboard import replay_token
from schemas.status import StatusQuerySchema
from services.ingest import record_delivery_report
from tests.emarsys_spec import SPEC_DIR, requires_spec

IGNORED_METHODS = {"HEAD", "OPTIONS"}
PATH_TEMPLATE_NAMES = re.compile(r"\{[^}]+\}")


def expected_operations(app: Flask) -> set[tuple[str, str]]:
    """Return (OpenAPI path, method) for every route and method the app serves, but static files."""
    return {(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
            for rule in app.url_map.iter_rules() if rule.endpoint != "static"
            for method in rule.methods - IGNORED_METHODS}


def undocumented(app: Flask, document: dict) -> list[tuple[str, str]]:
    """Return the routes and methods of the app that the document lacks or has no documentation for."""
    paths = document["paths"]
    return sorted((path, method) for path, method in expected_operations(app)
                  if method not in paths.get(path, {}) or paths[path][method].get("x-undocumented"))


@pytest.fixture
def document(client) -> dict:
    """Fetch the service's OpenAPI document."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_registered_route_and_method_is_documented(app, document):
    assert len(expected_operations(app)) >= 20
    assert undocumented(app, document) == []


def test_a_route_added_without_documentation_is_reported(make_app):
    app = make_app()
    app.add_url_rule("/extra/<int:number>", "extra", lambda number: "", methods=["GET", "POST"])
    document = app.test_client().get("/openapi.json").get_json()
    validate(document)
    assert undocumented(app, document) == [("/extra/{number}", "get"), ("/extra/{number}", "post")]


@pytest.mark.parametrize("path, method, security", [
    ("/vendors/{vendor}/delivery-reports", "post", []),
    ("/vendors/{vendor}/clients/{token}/inbound-messages", "get", []),
    ("/api/v1/notifications/set", "get", []),
    ("/status", "get", [{"sapBasic": []}, {}]),
    ("/api/v1/notifications/clear", "delete", [{"sapBasic": []}, {}]),
    ("/clients/{client_id}/configuration", "put", [{"emarsysBearer": []}]),
    ("/clients/{client_id}/messages", "post", [{"emarsysBearer": []}]),
    ("/testConnection", "post", [{"emarsysBearer": []}]),
    ("/dashboard", "get", [{"adminBasic": []}]),
    ("/metrics", "get", [{"adminBasic": []}, {}]),
    ("/health", "get", []),
])
def test_each_audience_has_its_auth(document, path, method, security):
    assert document["paths"][path][method]["security"] == security


@pytest.mark.parametrize("name, scheme", [("sapBasic", "basic"), ("adminBasic", "basic"), ("emarsysBearer", "bearer")])
def test_security_schemes_are_http_auth(document, name, scheme):
    assert document["components"]["securitySchemes"][name]["scheme"] == scheme


def test_the_status_pull_parameters_come_from_its_marshmallow_schema(document):
    parameters = {p["name"]: p for p in document["paths"]["/status"]["get"]["parameters"]}
    assert set(parameters) == set(StatusQuerySchema().fields)
    assert parameters["startTimeUTC"]["schema"]["pattern"] == "^[0-9]{14}$"


def test_partner_bodies_come_from_the_validation_schemas(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["GenesysFields"]["required"]) == {"login", "password"}
    assert set(schemas["TwilioFields"]["required"]) == {"accountSid", "authToken"}
    assert schemas["OutboundMessage"]["properties"]["destination"]["pattern"] == r"^\+?[0-9]{6,15}$"
    body = document["paths"]["/clients/{client_id}/messages"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OutboundBatch"}


def test_the_vendor_path_parameter_lists_the_configured_vendors(app, document):
    parameters = document["paths"]["/vendors/{vendor}/delivery-reports"]["post"]["parameters"]
    vendor = next(p for p in parameters if p["name"] == "vendor")
    assert vendor["schema"]["enum"] == sorted(app.extensions["vendor_registry"])


@requires_spec
def test_every_emarsys_partner_operation_is_described(document):
    official = yaml.safe_load((SPEC_DIR / "partner-service.yaml").read_text(encoding="utf-8"))
    methods = {"get", "put", "post", "delete", "patch"}

    def shape(paths: dict) -> set[tuple[str, str]]:
        return {(PATH_TEMPLATE_NAMES.sub("{}", path), method) for path, item in paths.items()
                for method in item if method in methods}

    assert shape(official["paths"]) <= shape(document["paths"])


def add_bounce() -> None:
    """Store one hard bounce, so the status pull has a record to answer."""
    record_delivery_report("genesys", DeliveryReport(
        vendor_message_id="m-1", recipient="+4915112345678", status_code="5:0", status_text="UNDELIVERABLE",
        event_at=datetime(2026, 1, 1, 12), outcome=Outcome.HARDBOUNCE), {"message_id": "m-1"})


@pytest.mark.parametrize("method, url, status", [
    ("GET", "/health", 200),
    ("GET", "/ready", 200),
    ("GET", "/status?startTimeUTC=20260101000000&endTimeUTC=20260102000000&page=0", 200),
    ("GET", "/status?page=-1", 400),
    ("GET", "/vendors/nobody/delivery-reports", 404),
    ("POST", "/vendors/genesys/delivery-reports", 400),
    ("GET", "/metrics", 200),
])
def test_real_answers_match_the_document(app, client, document, method, url, status):
    with app.app_context():
        add_bounce()
    response = client.open(url, method=method)
    assert response.status_code == status
    OpenAPI.from_dict(document).validate_response(WerkzeugOpenAPIRequest(response.request),
                                                  WerkzeugOpenAPIResponse(response))


@pytest.mark.parametrize("method, url", [("GET", "/metrics"), ("DELETE", "/api/v1/notifications/clear")])
def test_production_without_credentials_answers_the_documented_503(make_app, method, url):
    app = make_app(PRODUCTION=True, ADMIN_USERNAME=None, ADMIN_PASSWORD=None, SAP_STATUS_USERNAME=None,
                   SAP_STATUS_PASSWORD=None)
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    response = client.open(url, method=method)
    assert response.status_code == 503
    OpenAPI.from_dict(document).validate_response(WerkzeugOpenAPIRequest(response.request),
                                                  WerkzeugOpenAPIResponse(response))


@pytest.mark.parametrize("name", ["adminBasic", "sapBasic"])
def test_the_basic_schemes_say_production_answers_503_without_credentials(document, name):
    description = document["components"]["securitySchemes"][name]["description"]
    assert "open outside production" in description and "503 in production" in description


@pytest.mark.parametrize("url", ["/vendors/genesys/delivery-reports", "/vendors/twilio/inbound-messages"])
def test_a_body_too_large_answers_the_documented_413(make_app, url):
    app = make_app(MAX_VENDOR_REQUEST_BYTES=100)
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    response = client.post(url, data={"type": "receipt", "message_id": "m" * 200})
    assert response.status_code == 413
    OpenAPI.from_dict(document).validate_response(WerkzeugOpenAPIRequest(response.request),
                                                  WerkzeugOpenAPIResponse(response))


def test_every_operation_that_reads_a_body_documents_413(document):
    with_body = [(path, method) for path, item in document["paths"].items()
                 for method, operation in item.items() if "requestBody" in operation]
    assert len(with_body) >= 8
    assert [(path, method) for path, method in with_body
            if "413" not in document["paths"][path][method]["responses"]] == []


@pytest.mark.parametrize("method, url", [("GET", "/dashboard"), ("POST", "/dashboard/replay")])
def test_the_dashboard_with_the_database_down_answers_the_documented_503(make_app, method, url):
    app = make_app(ADMIN_USERNAME="admin", ADMIN_PASSWORD="pw",
                   SQLALCHEMY_DATABASE_URI="postgresql+psycopg2://nobody:none@127.0.0.1:1/none")
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    with app.test_request_context():
        form = {"csrf_token": replay_token(), "confirm": "yes"} if method == "POST" else None
    response = client.open(url, method=method, auth=("admin", "pw"), data=form)
    assert response.status_code == 503
    # The test client's request has read its body: the validator is shown the same request afresh.
    sent = EnvironBuilder(url, method=method, data=form, auth=("admin", "pw")).get_request()
    OpenAPI.from_dict(document).validate_response(WerkzeugOpenAPIRequest(sent), WerkzeugOpenAPIResponse(response))


def test_the_replay_form_fields_are_the_ones_the_route_reads(document):
    body = document["paths"]["/dashboard/replay"]["post"]["requestBody"]
    schema = body["content"]["application/x-www-form-urlencoded"]["schema"]
    assert set(schema["properties"]) == {"csrf_token", "confirm", "vendor"}


def test_the_status_page_range_is_the_one_the_pull_accepts(client, document):
    page = next(p for p in document["paths"]["/status"]["get"]["parameters"] if p["name"] == "page")
    assert (page["schema"]["minimum"], page["schema"]["maximum"]) == (0, 2**31 - 2)
    refused = client.get("/status?page=-1")
    assert refused.status_code == 400
    assert refused.get_json()["fields"] == {"page": ["must be a non-negative integer"]}


def test_the_sapdi_push_declares_only_what_it_can_answer(document):
    # Its vendor is built in and its URL has no token: it has nothing to answer 404 for.
    declared = document["paths"]["/api/v1/notifications/set"]["get"]["responses"]
    assert sorted(declared) == ["200", "400", "413", "415", "503"]
    assert "404" in document["paths"]["/vendors/{vendor}/delivery-reports"]["post"]["responses"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_vendor_push_in_either_form_encoding_is_a_request_the_document_describes(client, document, content_type):
    form = {"type": "receipt", "message_id": "m-form", "message_state": "2", "result_code": "0"}
    response = client.post("/vendors/genesys/delivery-reports", data=form, content_type=content_type)
    assert response.status_code == 200
    sent = EnvironBuilder("/vendors/genesys/delivery-reports", method="POST", data=form,
                          content_type=content_type).get_request()
    OpenAPI.from_dict(document).validate_request(WerkzeugOpenAPIRequest(sent))
