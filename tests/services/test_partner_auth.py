"""Tests for the Emarsys bearer-token verifier, against a real local JWKS server."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from errors import Forbidden, Unauthorized, Unavailable
from services.partner_auth import (
    MAX_JWKS_BYTES,
    EmarsysTokenVerifier,
    TokenPolicy,
    usable_signing_keys,
)
from tests.trickling_server import json_answer, serve_trickling

ISSUER = "https://ias.example.test"
CLIENT_ID = "emarsys-sms-client"
JWKS_PATH = "/oauth2/certs"
MIN_REFETCH_SECONDS = 30.0
MAX_AGE_SECONDS = 3600.0


class FakeClock:
    """Stand in for time.monotonic so refetch intervals pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class JwksServer:
    """Serve a replaceable JWKS document from the local HTTP server and count fetches."""

    def __init__(self, httpserver: HTTPServer) -> None:
        self._httpserver = httpserver
        self.status = 200
        self.keys: list[dict[str, Any]] = []
        httpserver.expect_request(JWKS_PATH, method="GET").respond_with_handler(self._respond)

    @property
    def url(self) -> str:
        """Return the JWKS URL."""
        return self._httpserver.url_for(JWKS_PATH)

    @property
    def fetch_count(self) -> int:
        """Return how many JWKS requests the server received."""
        return sum(1 for request, _ in self._httpserver.log if request.path == JWKS_PATH)

    def publish(self, *keys: dict[str, Any]) -> None:
        """Serve exactly these JWKs from now on."""
        self.keys = list(keys)

    def _respond(self, request: Request) -> Response:
        body = json.dumps({"keys": self.keys})
        return Response(body, status=self.status, content_type="application/json")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """Generate the RSA key Emarsys's identity service currently signs with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rotated_rsa_key() -> rsa.RSAPrivateKey:
    """Generate the RSA key the identity service rotates to."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_rsa_key() -> rsa.RSAPrivateKey:
    """Generate an RSA key that is not published in the JWKS."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    """Return a clock that tests advance by hand."""
    return FakeClock()


@pytest.fixture
def jwks(httpserver: HTTPServer, rsa_key: rsa.RSAPrivateKey) -> JwksServer:
    """Serve a JWKS holding the current RSA key under kid "k1"."""
    server = JwksServer(httpserver)
    server.publish(rsa_jwk(rsa_key, "k1"))
    return server


@pytest.fixture
def verifier(jwks: JwksServer, clock: FakeClock) -> EmarsysTokenVerifier:
    """Return a verifier bound to the local JWKS server and the fake clock."""
    return make_verifier(jwks.url, clock)


def make_verifier(jwks_url: str, clock: FakeClock) -> EmarsysTokenVerifier:
    """Build a verifier with the test policy."""
    policy = TokenPolicy(issuer=ISSUER, client_id=CLIENT_ID, jwks_url=jwks_url,
                         min_refetch_interval_seconds=MIN_REFETCH_SECONDS,
                         jwks_max_age_seconds=MAX_AGE_SECONDS, http_timeout_seconds=2.0)
    return EmarsysTokenVerifier(policy, requests.Session(), clock=clock)


def rsa_jwk(private_key: rsa.RSAPrivateKey, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    """Return the public JWK of an RSA key, declaring alg unless it is None."""
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    """Return valid claims for the Emarsys client; None values drop the claim."""
    now = int(time.time())
    base = {"iss": ISSUER, "azp": CLIENT_ID, "sub": CLIENT_ID, "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(private_key: Any, kid: str | None = "k1", algorithm: str = "RS256", **overrides: Any) -> str:
    """Return a token signed by PyJWT with the given key and header."""
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims(**overrides), private_key, algorithm=algorithm, headers=headers)


def bearer(token: str) -> str:
    """Return the Authorization header value for a token."""
    return f"Bearer {token}"


def hs256_with_public_pem(public_key: rsa.RSAPublicKey, kid: str) -> str:
    """Forge the key-confusion token: HS256 keyed with the RSA public key's PEM."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = base64url_encode(json.dumps(claims()).encode())
    signing_input = header + b"." + payload
    signature = base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def unused_local_url() -> str:
    """Return a loopback URL on a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{JWKS_PATH}"


def rejection(verifier: EmarsysTokenVerifier, header: str | None) -> Unauthorized:
    """Return the Unauthorized raised for a header, failing if the header is accepted."""
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(header)
    return caught.value


@pytest.mark.parametrize("header", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_missing_header_gets_bare_bearer_challenge(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                                   header: str | None) -> None:
    error = rejection(verifier, header)
    assert error.status_code == 401
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="emarsys-partner"'}
    assert jwks.fetch_count == 0


def test_other_auth_scheme_counts_as_missing_bearer_token(verifier: EmarsysTokenVerifier) -> None:
    error = rejection(verifier, "Basic dXNlcjpwYXNz")
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="emarsys-partner"'


@pytest.mark.parametrize("header, description", [
    ("Bearer", "authorization header malformed"),
    ("Bearer   ", "authorization header malformed"),
    ("Bearer abc def", "authorization header malformed"),
    ("Bearer not-a-jwt", "token malformed"),
    ("Bearer a.b.c", "token malformed"),
    ("Bearer eyJhbGciOiJSUzI1NiJ9.e30", "token malformed"),
    ("Bearer " + base64url_encode(b'["RS256"]').decode() + ".e30.c2ln", "token malformed"),
    ("Bearer " + base64url_encode(b'{"alg":["RS256"],"kid":"k1"}').decode() + ".e30.c2ln",
     "token algorithm not accepted"),
])
def test_garbage_token_is_invalid_token(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                        header: str, description: str) -> None:
    error = rejection(verifier, header)
    assert error.status_code == 401
    assert error.message == description
    assert error.headers["WWW-Authenticate"] == (
        f'Bearer realm="emarsys-partner", error="invalid_token", error_description="{description}"')
    assert jwks.fetch_count == 0


def test_alg_none_is_rejected_without_fetching_keys(verifier: EmarsysTokenVerifier, jwks: JwksServer) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    error = rejection(verifier, bearer(token))
    assert error.message == "token algorithm not accepted"
    assert jwks.fetch_count == 0


def test_hs256_signed_with_public_key_pem_is_rejected(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    token = hs256_with_public_pem(rsa_key.public_key(), "k1")
    error = rejection(verifier, bearer(token))
    assert error.message == "token algorithm not accepted"
    assert jwks.fetch_count == 0


def test_valid_token_returns_claims(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    verified = verifier.verify(bearer(sign(rsa_key)))
    assert verified["iss"] == ISSUER
    assert verified["azp"] == CLIENT_ID


def test_a_netrc_entry_does_not_send_its_credentials_to_the_jwks_host(verifier: EmarsysTokenVerifier,
                                                                     rsa_key: rsa.RSAPrivateKey, httpserver,
                                                                     tmp_path, monkeypatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    assert verifier.verify(bearer(sign(rsa_key)))["azp"] == CLIENT_ID
    assert [request.headers.get("Authorization") for request, _ in httpserver.log] == [None]


def test_a_netrc_entry_does_not_ride_along_a_jwks_redirect(clock: FakeClock, rsa_key: rsa.RSAPrivateKey,
                                                           jwks: JwksServer, httpserver, tmp_path,
                                                           monkeypatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("default login ops password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    httpserver.expect_request("/moved-certs").respond_with_handler(
        lambda request: Response(status=302, headers={"Location": jwks.url}))

    verifier = make_verifier(httpserver.url_for("/moved-certs"), clock)

    assert verifier.verify(bearer(sign(rsa_key)))["azp"] == CLIENT_ID
    assert [(request.path, request.headers.get("Authorization")) for request, _ in httpserver.log] == [
        ("/moved-certs", None), (JWKS_PATH, None)]


def test_bearer_scheme_is_case_insensitive(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert verifier.verify("bearer " + sign(rsa_key))["azp"] == CLIENT_ID


@pytest.mark.parametrize("overrides, description", [
    ({"exp": int(time.time()) - 120}, "token expired"),
    ({"exp": None}, "token lacks the exp claim"),
    ({"iss": "https://evil.example.test"}, "token issuer not accepted"),
    ({"iss": None}, "token lacks the iss claim"),
    ({"iat": int(time.time()) + 600}, "token not yet valid"),
    ({"nbf": int(time.time()) + 600}, "token not yet valid"),
    ({"iat": "yesterday"}, "token iat claim invalid"),
])
def test_bad_claims_are_invalid_token(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey,
                                      overrides: dict[str, Any], description: str) -> None:
    token = sign(rsa_key, **overrides)
    error = rejection(verifier, bearer(token))
    assert error.message == description
    assert f'error_description="{description}"' in error.headers["WWW-Authenticate"]


@pytest.mark.parametrize("claim, seconds_from_now", [
    ("exp", -10),
    ("iat", +10),
    ("iat", None),
], ids=["expired-within-leeway", "issued-in-future-within-leeway", "no-iat"])
def test_clock_skew_within_leeway_is_accepted(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey,
                                              claim: str, seconds_from_now: int | None) -> None:
    # Times are taken when the test runs, not at collection: the suite may run for minutes.
    value = None if seconds_from_now is None else int(time.time()) + seconds_from_now
    assert verifier.verify(bearer(sign(rsa_key, **{claim: value})))["iss"] == ISSUER


def test_rejection_never_echoes_the_token(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = sign(rsa_key, exp=int(time.time()) - 120)
    error = rejection(verifier, bearer(token))
    signature = token.rsplit(".", 1)[1]
    rendered = [error.message, str(error), json.dumps(error.to_dict()), *error.headers.values(), caplog.text]
    assert not any(signature in text for text in rendered)


def test_signature_by_unpublished_key_is_rejected(verifier: EmarsysTokenVerifier,
                                                  attacker_rsa_key: rsa.RSAPrivateKey) -> None:
    error = rejection(verifier, bearer(sign(attacker_rsa_key, kid="k1")))
    assert error.message == "token signature invalid"


def test_token_without_kid_is_rejected(verifier: EmarsysTokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert rejection(verifier, bearer(sign(rsa_key, kid=None))).message == "token has no key id"


def test_algorithm_other_than_the_declared_one_is_rejected(verifier: EmarsysTokenVerifier,
                                                           rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, algorithm="PS256")
    assert rejection(verifier, bearer(token)).message == "token algorithm does not match its key"


def test_algorithm_that_does_not_fit_the_key_type_is_rejected(jwks: JwksServer, clock: FakeClock,
                                                              rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.publish(rsa_jwk(rsa_key, "k1", alg=None))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = sign(ec_key, algorithm="ES256")
    error = rejection(make_verifier(jwks.url, clock), bearer(token))
    assert error.message == "token algorithm does not fit its key"


@pytest.mark.parametrize("algorithm", ["ES384", "ES512"])
def test_algorithm_for_another_curve_than_the_keys_is_rejected(jwks: JwksServer, clock: FakeClock,
                                                               algorithm: str) -> None:
    jwks.publish(ec_jwk(ec.generate_private_key(ec.SECP256R1())))  # P-256, no alg declared
    attacker_key = ec.generate_private_key(ec.SECP384R1() if algorithm == "ES384" else ec.SECP521R1())
    error = rejection(make_verifier(jwks.url, clock), bearer(sign(attacker_key, algorithm=algorithm)))
    assert error.message == "token algorithm does not fit its key"


def ec_jwk(private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """Return a P-256 public JWK without a declared alg."""
    return {**ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": "k1"}


def ed25519_jwk(private_key: ed25519.Ed25519PrivateKey) -> dict[str, Any]:
    """Return an Ed25519 public JWK without a declared alg."""
    return {**OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": "k1"}


@pytest.mark.parametrize("make_key, make_jwk, algorithm", [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
     lambda key: rsa_jwk(key, "k1", alg=None), "PS256"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
     lambda key: rsa_jwk(key, "k1", alg="RS512"), "RS512"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), ec_jwk, "ES256"),
    (ed25519.Ed25519PrivateKey.generate, ed25519_jwk, "EdDSA"),
], ids=["PS256-undeclared", "RS512-declared", "ES256", "EdDSA"])
def test_other_asymmetric_algorithms_are_accepted(jwks: JwksServer, clock: FakeClock,
                                                  make_key: Callable[[], Any],
                                                  make_jwk: Callable[[Any], dict[str, Any]],
                                                  algorithm: str) -> None:
    private_key = make_key()
    jwks.publish(make_jwk(private_key))
    token = sign(private_key, algorithm=algorithm)
    assert make_verifier(jwks.url, clock).verify(bearer(token))["iss"] == ISSUER


@pytest.mark.parametrize("overrides", [
    {"azp": CLIENT_ID},
    {"azp": None, "client_id": CLIENT_ID},
    {"azp": None, "aud": ["other-api", CLIENT_ID]},
    {"azp": None, "aud": CLIENT_ID},
    {"azp": CLIENT_ID, "client_id": CLIENT_ID, "aud": ["other-api"]},
], ids=["azp", "client_id", "aud-list", "aud-string", "azp-and-client_id"])
def test_token_issued_to_emarsys_client_is_authorised(verifier: EmarsysTokenVerifier,
                                                      rsa_key: rsa.RSAPrivateKey,
                                                      overrides: dict[str, Any]) -> None:
    assert verifier.verify(bearer(sign(rsa_key, **overrides)))["iss"] == ISSUER


@pytest.mark.parametrize("overrides", [
    {"azp": "someone-else"},
    {"azp": None, "client_id": "someone-else"},
    {"azp": None, "aud": ["someone-else", "other-api"]},
    {"azp": None, "aud": "someone-else"},
    {"azp": None},
    {"azp": None, "sub": CLIENT_ID, "aud": [CLIENT_ID + "-suffix"]},
    {"azp": "someone-else", "aud": [CLIENT_ID]},
    {"azp": None, "client_id": "someone-else", "aud": CLIENT_ID},
    {"azp": CLIENT_ID, "client_id": "someone-else"},
], ids=["azp", "client_id", "aud-list", "aud-string", "no-client-claims", "near-miss",
        "other-azp-with-emarsys-aud", "other-client_id-with-emarsys-aud", "client_id-contradicts-azp"])
def test_valid_token_for_another_client_is_forbidden(verifier: EmarsysTokenVerifier,
                                                     rsa_key: rsa.RSAPrivateKey,
                                                     overrides: dict[str, Any]) -> None:
    with pytest.raises(Forbidden) as caught:
        verifier.verify(bearer(sign(rsa_key, **overrides)))
    assert caught.value.status_code == 403


def test_key_set_is_cached(verifier: EmarsysTokenVerifier, jwks: JwksServer, clock: FakeClock,
                           rsa_key: rsa.RSAPrivateKey) -> None:
    for _ in range(5):
        verifier.verify(bearer(sign(rsa_key)))
        clock.advance(MIN_REFETCH_SECONDS)
    assert jwks.fetch_count == 1


def test_unknown_kid_refetches_and_picks_up_rotated_key(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                                        clock: FakeClock, rsa_key: rsa.RSAPrivateKey,
                                                        rotated_rsa_key: rsa.RSAPrivateKey) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    jwks.publish(rsa_jwk(rotated_rsa_key, "k2"))
    clock.advance(MIN_REFETCH_SECONDS)
    assert verifier.verify(bearer(sign(rotated_rsa_key, kid="k2")))["iss"] == ISSUER
    assert jwks.fetch_count == 2


def test_key_replaced_under_the_same_kid_is_picked_up_by_a_refetch(verifier: EmarsysTokenVerifier,
                                                                   jwks: JwksServer, clock: FakeClock,
                                                                   rsa_key: rsa.RSAPrivateKey,
                                                                   rotated_rsa_key: rsa.RSAPrivateKey) -> None:
    # An identity service may keep one kid across a rotation (IAS's "default-kid-ias"): the cached
    # key is still fresh, yet the token's signature is the new key's.
    verifier.verify(bearer(sign(rsa_key)))
    jwks.publish(rsa_jwk(rotated_rsa_key, "k1"))
    clock.advance(MIN_REFETCH_SECONDS)
    assert verifier.verify(bearer(sign(rotated_rsa_key)))["iss"] == ISSUER
    assert jwks.fetch_count == 2
    assert verifier.verify(bearer(sign(rotated_rsa_key)))["iss"] == ISSUER
    assert jwks.fetch_count == 2


def test_bad_signatures_under_a_known_kid_refetch_at_most_once_per_interval(verifier: EmarsysTokenVerifier,
                                                                            jwks: JwksServer, clock: FakeClock,
                                                                            rsa_key: rsa.RSAPrivateKey,
                                                                            attacker_rsa_key: rsa.RSAPrivateKey
                                                                            ) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    clock.advance(MIN_REFETCH_SECONDS)
    for _ in range(5):
        assert rejection(verifier, bearer(sign(attacker_rsa_key))).message == "token signature invalid"
    assert jwks.fetch_count == 2
    assert verifier.verify(bearer(sign(rsa_key)))["iss"] == ISSUER


def test_unknown_kid_within_refetch_interval_is_not_refetched(verifier: EmarsysTokenVerifier,
                                                              jwks: JwksServer, clock: FakeClock,
                                                              rsa_key: rsa.RSAPrivateKey,
                                                              rotated_rsa_key: rsa.RSAPrivateKey) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    jwks.publish(rsa_jwk(rotated_rsa_key, "k2"))
    clock.advance(MIN_REFETCH_SECONDS - 10)
    # The current key set was never checked for k2 (it may be a just-rotated key): no auth
    # failure, but a retry once a refetch is allowed.
    with pytest.raises(Unavailable) as caught:
        verifier.verify(bearer(sign(rotated_rsa_key, kid="k2")))
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": "10"}
    assert jwks.fetch_count == 1


def test_unknown_kid_flood_refetches_at_most_once_per_interval(verifier: EmarsysTokenVerifier,
                                                               jwks: JwksServer, clock: FakeClock,
                                                               rsa_key: rsa.RSAPrivateKey) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    clock.advance(MIN_REFETCH_SECONDS)
    flood = [bearer(sign(rsa_key, kid=uuid.uuid4().hex)) for _ in range(60)]

    def outcome(header: str) -> str:
        try:
            verifier.verify(header)
        except (Unauthorized, Unavailable) as error:
            return error.message
        return "accepted"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(outcome, flood))
    # 401 for a token that arrived before the refetch; 503 for one that came after it, within
    # the interval, when its kid could not be checked against the current key set.
    assert set(outcomes) <= {"token signing key unknown", "token signing keys unavailable, retry later"}
    assert jwks.fetch_count == 2
    clock.advance(MIN_REFETCH_SECONDS)
    rejection(verifier, flood[0])
    assert jwks.fetch_count == 3


def test_concurrent_first_requests_share_one_fetch(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                                   rsa_key: rsa.RSAPrivateKey) -> None:
    headers = [bearer(sign(rsa_key)) for _ in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(verifier.verify, headers))
    assert all(result["azp"] == CLIENT_ID for result in results)
    assert jwks.fetch_count == 1


def test_key_withdrawn_from_jwks_stops_working_after_max_age(verifier: EmarsysTokenVerifier,
                                                             jwks: JwksServer, clock: FakeClock,
                                                             rsa_key: rsa.RSAPrivateKey,
                                                             rotated_rsa_key: rsa.RSAPrivateKey) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    jwks.publish(rsa_jwk(rotated_rsa_key, "k2"))
    clock.advance(MAX_AGE_SECONDS)
    error = rejection(verifier, bearer(sign(rsa_key)))
    assert error.message == "token signing key unknown"
    assert jwks.fetch_count == 2


@pytest.mark.parametrize("failure", ["http-500", "not-json", "no-usable-keys", "connection-refused",
                                     "nested-too-deeply", "only-malformed-keys"])
def test_unreachable_jwks_without_cached_key_is_503_and_logged(httpserver: HTTPServer, clock: FakeClock,
                                                                rsa_key: rsa.RSAPrivateKey, failure: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    if failure == "connection-refused":
        url = unused_local_url()
    else:
        responses = {"http-500": ("oops", 500), "not-json": ("<html>", 200),
                     "no-usable-keys": (json.dumps({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}), 200),
                     # json raises RecursionError, not ValueError
                     "nested-too-deeply": ("[" * 100_000 + "]" * 100_000, 200),
                     "only-malformed-keys": (json.dumps({"keys": [{"kty": ["RSA"], "kid": "k1"}]}), 200)}
        body, status = responses[failure]
        httpserver.expect_request(JWKS_PATH).respond_with_data(body, status=status)
        url = httpserver.url_for(JWKS_PATH)
    with pytest.raises(Unavailable) as caught:
        make_verifier(url, clock).verify(bearer(sign(rsa_key)))
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": "30"}
    assert "JWKS fetch from" in caplog.text


def test_unreachable_jwks_is_retried_only_after_interval(verifier: EmarsysTokenVerifier, jwks: JwksServer,
                                                         clock: FakeClock, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.status = 503
    for _ in range(5):
        with pytest.raises(Unavailable):
            verifier.verify(bearer(sign(rsa_key)))
    assert jwks.fetch_count == 1
    jwks.status = 200
    clock.advance(MIN_REFETCH_SECONDS)
    assert verifier.verify(bearer(sign(rsa_key)))["iss"] == ISSUER
    assert jwks.fetch_count == 2


def test_cached_keys_survive_jwks_outage(verifier: EmarsysTokenVerifier, jwks: JwksServer, clock: FakeClock,
                                         rsa_key: rsa.RSAPrivateKey) -> None:
    verifier.verify(bearer(sign(rsa_key)))
    jwks.status = 500
    clock.advance(MAX_AGE_SECONDS)
    assert verifier.verify(bearer(sign(rsa_key)))["iss"] == ISSUER
    assert jwks.fetch_count == 2


@pytest.mark.parametrize("entry", [
    {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
    {"kty": "RSA", "kid": "r", "use": "enc", "n": "AQAB", "e": "AQAB"},
    {"kty": "RSA", "kid": "r", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
    {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
    {"kty": "RSA", "kid": "r"},
    "not-a-key",
    # JSON arrays and objects where strings belong (unhashable: no set lookup may see them)
    {"kty": ["RSA"], "kid": "r", "n": "AQAB", "e": "AQAB"},
    {"kty": {"RSA": 1}, "kid": "r", "n": "AQAB", "e": "AQAB"},
    {"kty": "RSA", "kid": "r", "alg": ["RS256"], "n": "AQAB", "e": "AQAB"},
], ids=["symmetric", "encryption-key", "hmac-alg", "no-kid", "no-material", "not-an-object",
        "kty-list", "kty-object", "alg-list"])
def test_jwks_keeps_only_asymmetric_signing_keys(entry: Any, rsa_key: rsa.RSAPrivateKey) -> None:
    published = rsa_jwk(rsa_key, "k1")
    assert list(usable_signing_keys({"keys": [entry, published]})) == ["k1"]


def test_malformed_entry_does_not_cost_the_documents_valid_keys(httpserver: HTTPServer, clock: FakeClock,
                                                                 rsa_key: rsa.RSAPrivateKey) -> None:
    odd = dict(rsa_jwk(rsa_key, "k0"), alg=["RS256"])
    httpserver.expect_request(JWKS_PATH).respond_with_json({"keys": [odd, rsa_jwk(rsa_key, "k1")]})
    assert make_verifier(httpserver.url_for(JWKS_PATH), clock).verify(bearer(sign(rsa_key)))["iss"] == ISSUER


def outcome_within(verifier: EmarsysTokenVerifier, header: str, seconds: float) -> Any:
    """Return verify's claims or exception, or None if it is still running after the seconds."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(verifier.verify(header))
        except Exception as error:  # noqa: BLE001 - the test inspects whatever it is
            result.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def trickle_verifier(url: str, clock: FakeClock) -> EmarsysTokenVerifier:
    """Build a verifier whose JWKS fetches have a one-second deadline."""
    policy = TokenPolicy(issuer=ISSUER, client_id=CLIENT_ID, jwks_url=url, http_timeout_seconds=1.0,
                         min_refetch_interval_seconds=MIN_REFETCH_SECONDS,
                         jwks_max_age_seconds=MAX_AGE_SECONDS)
    return EmarsysTokenVerifier(policy, requests.Session(), clock=clock)


@pytest.mark.parametrize("trickle", ["body", "head"])
def test_trickling_jwks_fetch_ends_by_its_deadline_with_503(trickle: str, clock: FakeClock,
                                                            rsa_key: rsa.RSAPrivateKey,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Each byte comes well within the 1 s read timeout; the whole answer would take over 20 s.
    document = json.dumps({"keys": [rsa_jwk(rsa_key, "k1")]}).encode()
    verifier = trickle_verifier(serve_trickling([json_answer(document, trickle=trickle)], gap=0.05), clock)
    error = outcome_within(verifier, bearer(sign(rsa_key)), 5.0)
    assert isinstance(error, Unavailable), f"verify answered {error!r} within 5 s"
    assert error.headers == {"Retry-After": "30"}
    assert "JWKS fetch from" in caplog.text


def test_trickling_jwks_behind_a_redirect_ends_by_its_deadline(clock: FakeClock,
                                                              rsa_key: rsa.RSAPrivateKey) -> None:
    # The redirect's answer is read whole and its connection pooled: the deadline must still hold
    # for the request that follows it.
    redirect = [b"HTTP/1.1 302 Found\r\nLocation: /keys\r\nContent-Length: 0\r\n\r\n"]
    document = json.dumps({"keys": [rsa_jwk(rsa_key, "k1")]}).encode()
    verifier = trickle_verifier(serve_trickling([redirect, json_answer(document)], gap=0.05), clock)
    error = outcome_within(verifier, bearer(sign(rsa_key)), 5.0)
    assert isinstance(error, Unavailable), f"verify answered {error!r} within 5 s"


def test_trickling_refetch_on_a_pooled_connection_ends_by_its_deadline(clock: FakeClock,
                                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    document = json.dumps({"keys": [rsa_jwk(rsa_key, "k1")]}).encode()
    url = serve_trickling([json_answer(document, trickle="none"), json_answer(document)], gap=0.05)
    verifier = trickle_verifier(url, clock)
    verifier.verify(bearer(sign(rsa_key)))
    clock.advance(MAX_AGE_SECONDS)
    # The refetch trickles and is cut off; the cached key survives a failed fetch.
    claims_or_error = outcome_within(verifier, bearer(sign(rsa_key)), 5.0)
    assert isinstance(claims_or_error, dict), f"verify answered {claims_or_error!r} within 5 s"


def test_oversized_jwks_is_a_failed_fetch(httpserver: HTTPServer, clock: FakeClock,
                                          rsa_key: rsa.RSAPrivateKey) -> None:
    document = {"keys": [rsa_jwk(rsa_key, "k1")], "padding": "x" * MAX_JWKS_BYTES}
    httpserver.expect_request(JWKS_PATH).respond_with_json(document)
    with pytest.raises(Unavailable):
        make_verifier(httpserver.url_for(JWKS_PATH), clock).verify(bearer(sign(rsa_key)))


def test_waiting_for_another_threads_fetch_is_bounded(jwks: JwksServer, clock: FakeClock,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = trickle_verifier(jwks.url, clock)
    # Stands in for a fetch that is stuck past its deadline: the lock is private, but only a
    # holder that outlives its own deadline can show the wait being bounded.
    with verifier._fetch_lock:
        error = outcome_within(verifier, bearer(sign(rsa_key)), 5.0)
    assert isinstance(error, Unavailable), f"verify answered {error!r} within 5 s"
    assert error.headers == {"Retry-After": "1"}
    assert jwks.fetch_count == 0
