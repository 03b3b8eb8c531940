"""Every partner endpoint demands a valid Emarsys bearer token (routes, real JWKS server)."""
from __future__ import annotations

import json
import threading
import time
import uuid

import jwt
import pytest
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import func

from models import Client, db
from services.partner_auth import EmarsysTokenVerifier, TokenPolicy
from tests.emarsys_spec import requires_spec, validate_schema
from tests.routes.conftest import EMARSYS_CLIENT_ID, ISSUER, KID
from tests.trickling_server import json_answer, serve_trickling

CLIENT_ID = "39a281c7-942f-49a9-91c2-8f0dba750f7f"
BATCH = {"messages": [{"emarsysMessageId": "m1", "source": "ACME", "destination": "+4915112345678",
                       "message": "hi"}]}
CONFIG = {"customFieldValues": {"vendor": "genesys", "login": "l", "password": "p"}}

# (method, path, JSON body) of every partner endpoint
ENDPOINTS = [
    ("put", f"/clients/{CLIENT_ID}/configuration", CONFIG),
    ("get", f"/clients/{CLIENT_ID}/configuration", None),
    ("delete", f"/clients/{CLIENT_ID}/configuration", None),
    ("post", "/testConnection", CONFIG),
    ("post", f"/clients/{CLIENT_ID}/messages", BATCH),
    ("put", "/clients/not-a-uuid/configuration", CONFIG),
]
ENDPOINT_IDS = [f"{method} {path}" for method, path, _ in ENDPOINTS]


def call(client, method: str, path: str, body, headers: dict[str, str] | None = None):
    """Send a JSON request with the given method."""
    return getattr(client, method)(path, json=body, headers=headers or {})


def clients_stored(app) -> int:
    """Return how many clients are stored."""
    with app.app_context():
        return db.session.scalar(db.select(func.count()).select_from(Client))


# partner-service.yaml: GET and DELETE of a configuration answer "403: Authentication failed.", the rest 401.
FAILED_AUTHENTICATION = {"get": (403, "forbidden"), "delete": (403, "forbidden")}


@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=ENDPOINT_IDS)
def test_missing_token_is_refused_as_the_spec_declares_with_bearer_challenge(partner_app, partner_client, method,
                                                                              path, body):
    response = call(partner_client, method, path, body)
    assert (response.status_code, response.get_json()["error"]) == FAILED_AUTHENTICATION.get(
        method, (401, "unauthorized"))
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert clients_stored(partner_app) == 0


@pytest.mark.parametrize("make_header, description", [
    (lambda make_token: "Bearer not-a-jwt", "token malformed"),
    (lambda make_token: "Bearer " + jwt.encode({"iss": "x"}, None, algorithm="none", headers={"kid": "k"}),
     "token algorithm not accepted"),
    (lambda make_token: "Bearer " + make_token(exp=int(time.time()) - 3600), "token expired"),
    (lambda make_token: "Bearer " + make_token(iss="https://elsewhere.example"), "token issuer not accepted"),
    (lambda make_token: "Bearer " + make_token(exp=None), "token lacks the exp claim"),
], ids=["garbage", "alg-none", "expired", "wrong-issuer", "no-exp"])
def test_invalid_token_is_401_invalid_token(partner_client, make_token, make_header, description):
    response = partner_client.post("/testConnection", json=CONFIG, headers={"Authorization": make_header(make_token)})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["message"] == description


@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=ENDPOINT_IDS)
def test_token_of_another_oauth_client_is_403(partner_app, partner_client, make_token, method, path, body):
    other = make_token(azp="someone-else", sub="someone-else")
    response = call(partner_client, method, path, body, {"Authorization": f"Bearer {other}"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"
    assert clients_stored(partner_app) == 0


@pytest.mark.parametrize("claim", ["azp", "client_id", "aud"])
def test_token_issued_to_emarsys_passes(partner_client, make_token, claim):
    claims = {"azp": None, "sub": "x", claim: "emarsys-sms-client"}
    token = make_token(**claims)
    response = partner_client.get(f"/clients/{uuid.uuid4()}/configuration",
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404  # past the guard: the client is simply unknown


def test_jwks_is_fetched_once_for_many_requests(partner_client, auth, httpserver):
    for _ in range(3):
        assert partner_client.get(f"/clients/{uuid.uuid4()}/configuration", headers=auth).status_code == 404
    assert sum(1 for request, _ in httpserver.log if request.path == "/oauth2/certs") == 1


@requires_spec
@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=ENDPOINT_IDS)
def test_unconfigured_partner_api_answers_503(make_app, auth, method, path, body):
    app = make_app(EMARSYS_OAUTH_CLIENT_ID=None)
    response = call(app.test_client(), method, path, body, auth)
    assert response.status_code == 503
    assert response.get_json()["message"] == "partner API not configured"
    validate_schema("common.yaml", "Error", response.get_json())


def test_trickling_jwks_answers_503_json_within_the_fetch_deadline(make_app, auth, signing_key):
    jwk = dict(RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True), kid=KID, use="sig", alg="RS256")
    url = serve_trickling([json_answer(json.dumps({"keys": [jwk]}).encode())], gap=0.05)
    app = make_app(EMARSYS_JWKS_URL=url, EMARSYS_TOKEN_ISSUER=ISSUER,
                   EMARSYS_OAUTH_CLIENT_ID=EMARSYS_CLIENT_ID)
    # The app's verifier with a 1 s fetch deadline instead of the default 5 s, to keep the test short.
    policy = TokenPolicy(issuer=ISSUER, client_id=EMARSYS_CLIENT_ID, jwks_url=url, http_timeout_seconds=1.0)
    app.extensions["emarsys_token_verifier"] = EmarsysTokenVerifier(policy)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        app.test_client().post("/testConnection", json=CONFIG, headers=auth)), daemon=True)
    thread.start()
    thread.join(5.0)  # the trickle alone would take over 20 s
    assert answers, "no answer within 5 s with a 1 s JWKS fetch deadline"
    assert answers[0].status_code == 503
    assert 1 <= int(answers[0].headers["Retry-After"]) <= 30  # until a refetch is allowed
    assert answers[0].get_json()["error"] == "unavailable"


def test_malformed_jwks_entry_is_skipped_not_a_500(make_app, auth, signing_key, httpserver):
    jwk = dict(RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True), kid=KID, use="sig", alg="RS256")
    odd = dict(jwk, kid="odd", kty=["RSA"], alg=["RS256"])
    httpserver.expect_request("/odd/certs").respond_with_json({"keys": [odd, jwk]})
    app = make_app(EMARSYS_JWKS_URL=httpserver.url_for("/odd/certs"), EMARSYS_TOKEN_ISSUER=ISSUER,
                   EMARSYS_OAUTH_CLIENT_ID=EMARSYS_CLIENT_ID)
    response = app.test_client().get(f"/clients/{uuid.uuid4()}/configuration", headers=auth)
    assert response.status_code == 404  # past the guard: the client is simply unknown
