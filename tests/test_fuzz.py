"""Bounded fuzz (the `make test` version of drills/fuzz.py): no 5xx, and every 4xx with a JSON body.

Schemathesis generates positive and negative cases from the service's own /openapi.json
(every endpoint) and from the Emarsys partner-service.yaml (the partner endpoints), a few
per operation, derandomized so that a run is reproducible. Requests go to the app in-process
(WSGI) with valid credentials; the JWKS and the vendor endpoint are real local HTTP servers.
"""
from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm
from pytest_httpserver import HTTPServer

from drills.fuzzing import (Credentials, Fuzzer, FuzzTally, basic, load_own_schema,
                            load_partner_schema, point_vendor_urls_at, response_problem, spec_dir)

ISSUER = "https://ias.fuzz.test"
EMARSYS_CLIENT_ID = "emarsys-sms-fuzz"
KID = "fuzz-key-1"
SAP = ("sap-fuzz", "sap-fuzz-password")
ADMIN = ("admin-fuzz", "admin-fuzz-password")
EXAMPLES = 3  # per operation, mode and pass: about 250 requests in all
TIME_BUDGET_S = 150.0
KNOWN_CLIENT_ID = "3b1f0c5e-8d2a-4c6b-9e7f-0a1b2c3d4e5f"
SPEC_MISSING = f"Emarsys OpenAPI files not found at {spec_dir()}; set EMARSYS_SPEC_DIR"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    """Generate the RSA key that signs the Emarsys tokens."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fuzz_app(make_app, httpserver: HTTPServer, signing_key: rsa.RSAPrivateKey) -> Flask:
    """Return the service with every credential configured, its JWKS and vendor sink served locally."""
    jwk = RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    httpserver.expect_request("/jwks").respond_with_data(json.dumps({"keys": [jwk]}),
                                                         content_type="application/json")
    httpserver.expect_request(re.compile("^/vendor-sink")).respond_with_data("result_code=1")
    return make_app(EMARSYS_JWKS_URL=httpserver.url_for("/jwks"), EMARSYS_TOKEN_ISSUER=ISSUER,
                    EMARSYS_OAUTH_CLIENT_ID=EMARSYS_CLIENT_ID, SAP_STATUS_USERNAME=SAP[0],
                    SAP_STATUS_PASSWORD=SAP[1], ADMIN_USERNAME=ADMIN[0], ADMIN_PASSWORD=ADMIN[1],
                    VENDOR_TIMEOUT_SECONDS=2.0)


@pytest.fixture
def fuzzer(fuzz_app: Flask, httpserver: HTTPServer, signing_key: rsa.RSAPrivateKey) -> Fuzzer:
    """Return a derandomized fuzzer with valid credentials and a configured client to aim at."""
    def bearer() -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "azp": EMARSYS_CLIENT_ID, "sub": EMARSYS_CLIENT_ID, "iat": now, "exp": now + 600}
        return "Bearer " + jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": KID})

    sink_url = httpserver.url_for("/vendor-sink")
    client = fuzz_app.test_client()

    def configure() -> str:
        fields = {"vendor": "genesys", "login": "fuzz", "password": "fuzz-pw", "baseUrl": sink_url}
        response = client.put(f"/clients/{KNOWN_CLIENT_ID}/configuration", headers={"Authorization": bearer()},
                              json={"customFieldValues": fields})
        assert response.status_code == 200, response.get_json()
        return response.get_json()["callbackUrls"]["deliveryReports"]["url"].split("/clients/")[1].split("/")[0]

    def configure_again() -> None:
        configure()  # a fuzzed DELETE may have removed it

    known = {"client_id": KNOWN_CLIENT_ID, "clientId": KNOWN_CLIENT_ID, "token": configure(), "vendor": "genesys"}
    credentials = Credentials(basic(*SAP), basic(*ADMIN), bearer, sink_url)
    return Fuzzer(lambda case, headers: case.call(app=fuzz_app, headers=headers), credentials, known,
                  configure_again, derandomize=True)


def describe(tally: FuzzTally) -> str:
    """Return the findings of a run, one per line, for the assertion message."""
    return "\n".join(f"{f.operation} ({f.mode}): {f.problem}\n  {f.request[:400]}\n  {f.body[:200]}"
                     for f in tally.findings)


def test_own_openapi_operations_never_answer_5xx_and_every_4xx_is_json(fuzz_app: Flask, fuzzer: Fuzzer):
    document = fuzz_app.test_client().get("/openapi.json").get_json()
    tally = fuzzer.fuzz_schema(load_own_schema(document, "http://localhost"), EXAMPLES,
                               time.monotonic() + TIME_BUDGET_S)
    assert len(tally.per_operation) == len([1 for item in document["paths"].values()
                                            for method in item if method in {"get", "post", "put", "delete"}])
    assert tally.requests >= 150
    assert not tally.findings, describe(tally)


@pytest.mark.skipif(not spec_dir().exists(), reason=SPEC_MISSING)
def test_partner_spec_operations_never_answer_5xx_and_every_4xx_is_json(fuzzer: Fuzzer):
    tally = fuzzer.fuzz_schema(load_partner_schema(spec_dir(), "http://localhost"), EXAMPLES,
                               time.monotonic() + TIME_BUDGET_S)
    assert len(tally.per_operation) == 5
    assert tally.requests >= 30
    assert not tally.findings, describe(tally)


@pytest.mark.parametrize(("status", "content_type", "body", "problem"), [
    (200, "text/html", b"<html></html>", None),
    (204, None, b"", None),
    (400, "application/json", b'{"error": "invalid_parameter"}', None),
    (404, "application/problem+json", b'{"error": "not_found"}', None),
    (401, "application/json; charset=utf-8", b'{"error": "unauthorized"}', None),
    (400, "text/html", b"<html>Bad Request</html>", "400 with content type 'text/html', not JSON"),
    (405, None, b"", "405 with content type None, not JSON"),
    (422, "application/json", b"not json", "422 whose body is not valid JSON"),
    (500, "application/json", b'{"error": "internal_error"}', "server error 500"),
    (503, "application/json", b'{"error": "unavailable"}', "server error 503"),
])
def test_response_problem_allows_no_5xx_and_only_json_4xx(status, content_type, body, problem):
    assert response_problem(status, content_type, body) == problem


@pytest.mark.parametrize(("body", "expected"), [
    ({"customFieldValues": {"vendor": "genesys", "baseUrl": "https://example.com/send"}},
     {"customFieldValues": {"vendor": "genesys", "baseUrl": "http://127.0.0.1:1/sink"}}),
    ({"customFieldValues": {"vendor": "twilio"}},
     {"customFieldValues": {"vendor": "twilio", "baseUrl": "http://127.0.0.1:1/sink"}}),
    ({"customFieldValues": "not an object"}, {"customFieldValues": "not an object"}),
    ({"messages": []}, {"messages": []}),
    ([1, 2], [1, 2]),
])
def test_generated_vendor_urls_are_pointed_at_the_local_sink(body, expected):
    case = SimpleNamespace(body=body)
    point_vendor_urls_at(case, "http://127.0.0.1:1/sink")
    assert case.body == expected
