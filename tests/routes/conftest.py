"""Fixtures for the partner endpoints: an RSA-signed Emarsys token world served from a local JWKS."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm
from pytest_httpserver import HTTPServer

ISSUER = "https://ias.example.test"
EMARSYS_CLIENT_ID = "emarsys-sms-client"
JWKS_PATH = "/oauth2/certs"
KID = "route-key-1"
PUBLIC_BASE_URL = "https://sms.example.com"

GENESYS_FIELDS = {"vendor": "genesys", "login": "acme-login", "password": "g3n-S3cret-pw!",
                  "sender": "ACME", "priority": "BULK"}
TWILIO_FIELDS = {"vendor": "twilio", "accountSid": "AC" + "0123456789abcdef" * 2,
                 "authToken": "tw1l10-S3cret-token"}


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    """Generate the RSA key the local identity service signs Emarsys tokens with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_url(httpserver: HTTPServer, signing_key: rsa.RSAPrivateKey) -> str:
    """Serve a JWKS with the signing key's public half and return its URL."""
    jwk = RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    httpserver.expect_request(JWKS_PATH, method="GET").respond_with_data(
        json.dumps({"keys": [jwk]}), content_type="application/json")
    return httpserver.url_for(JWKS_PATH)


@pytest.fixture
def partner_app(make_app, jwks_url: str) -> Flask:
    """Return the service with the partner API configured against the local JWKS."""
    return make_app(EMARSYS_JWKS_URL=jwks_url, EMARSYS_TOKEN_ISSUER=ISSUER,
                    EMARSYS_OAUTH_CLIENT_ID=EMARSYS_CLIENT_ID, PUBLIC_BASE_URL=PUBLIC_BASE_URL,
                    VENDOR_TIMEOUT_SECONDS=2.0)


@pytest.fixture
def partner_client(partner_app: Flask) -> FlaskClient:
    """Return a test client of the partner-configured service."""
    return partner_app.test_client()


@pytest.fixture
def make_token(signing_key: rsa.RSAPrivateKey) -> Callable[..., str]:
    """Return a factory of signed tokens; claim overrides set to None drop the claim."""

    def factory(**overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "azp": EMARSYS_CLIENT_ID, "sub": EMARSYS_CLIENT_ID,
                  "iat": now, "exp": now + 3600, **overrides}
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": KID})

    return factory


@pytest.fixture
def auth(make_token: Callable[..., str]) -> dict[str, str]:
    """Return request headers carrying a valid Emarsys bearer token."""
    return {"Authorization": f"Bearer {make_token()}"}


@pytest.fixture
def onboard(partner_client: FlaskClient, auth: dict[str, str]) -> Callable[..., tuple[uuid.UUID, dict]]:
    """Return a function that onboards a client through PUT and returns its id and callback URLs."""

    def put(fields: dict[str, str] | None = None, client_id: uuid.UUID | None = None):
        client_id = client_id or uuid.uuid4()
        response = partner_client.put(f"/clients/{client_id}/configuration", headers=auth,
                                      json={"customFieldValues": fields or GENESYS_FIELDS})
        assert response.status_code == 200, response.get_json()
        return client_id, response.get_json()["callbackUrls"]

    return put


@pytest.fixture
def genesys_fields() -> dict[str, str]:
    """Return valid Genesys custom field values (a fresh copy)."""
    return dict(GENESYS_FIELDS)


@pytest.fixture
def twilio_fields() -> dict[str, str]:
    """Return valid Twilio custom field values (a fresh copy)."""
    return dict(TWILIO_FIELDS)
