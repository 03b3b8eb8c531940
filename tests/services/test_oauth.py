"""OAuth client-credentials token provider against a real local token server."""
from __future__ import annotations

import json
import socket
import threading
from urllib.parse import unquote_plus

import jwt
import pytest
from werkzeug import Request, Response

from services.oauth import OAuthTokenProvider, TokenServiceError
from tests.trickling_server import json_answer, serve_trickling

TOKEN_PATH = "/oauth2/token"
SIGNING_KEY = "a-test-only-signing-key-of-sufficient-length"
T0 = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


class TokenServer:
    """A token endpoint that issues numbered tokens and records what it was asked."""

    def __init__(self, httpserver, lifetime: float = 3600, as_jwt: bool = True,
                 clock: FakeClock | None = None, expires_in: float | None = None):
        self.lifetime = lifetime
        self.as_jwt = as_jwt
        self.clock = clock or FakeClock()
        self.expires_in = lifetime if expires_in is None else expires_in
        self.requests: list[dict] = []
        httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(self.handle)
        self.url = httpserver.url_for(TOKEN_PATH)

    def handle(self, request: Request) -> Response:
        """Issue a token for client-credentials requests."""
        auth = request.authorization
        # RFC 6749 2.3.1: the client id and secret are form-urlencoded inside HTTP Basic.
        self.requests.append({"grant_type": request.form.get("grant_type"),
                              "client_id": unquote_plus(auth.username) if auth else None,
                              "client_secret": unquote_plus(auth.password) if auth else None})
        number = len(self.requests)
        if self.as_jwt:
            claims = {"sub": "partner", "n": number, "exp": int(self.clock() + self.lifetime)}
            access_token = jwt.encode(claims, SIGNING_KEY, algorithm="HS256")
        else:
            access_token = f"opaque-token-{number}"
        body = {"access_token": access_token, "token_type": "bearer", "expires_in": self.expires_in}
        return Response(json.dumps(body), status=200, content_type="application/json")


def make_provider(url: str, clock: FakeClock | None = None, **kwargs) -> OAuthTokenProvider:
    """Return a provider for the test client credentials."""
    return OAuthTokenProvider(url, "partner-client", "partner-secret", clock=clock or FakeClock(),
                              **kwargs)


def test_token_is_fetched_with_client_credentials(httpserver):
    server = TokenServer(httpserver, as_jwt=False)

    token = make_provider(server.url).token()

    assert token == "opaque-token-1"
    assert server.requests == [{"grant_type": "client_credentials",
                                "client_id": "partner-client", "client_secret": "partner-secret"}]


def test_a_client_secret_outside_latin_1_is_sent_as_utf_8(httpserver):
    server = TokenServer(httpserver, as_jwt=False)

    token = OAuthTokenProvider(server.url, "partner-client", "s€cret-ü", clock=FakeClock()).token()

    assert token == "opaque-token-1"
    assert server.requests[0]["client_secret"] == "s€cret-ü"


@pytest.mark.parametrize(("client_id", "client_secret"), [("id:with:colons", "a+b%41 c"), ("plain-id", "s€cret-ü")])
def test_credentials_are_form_urlencoded_inside_basic_auth(httpserver, client_id, client_secret):
    server = TokenServer(httpserver, as_jwt=False)

    OAuthTokenProvider(server.url, client_id, client_secret, clock=FakeClock()).token()

    assert (server.requests[0]["client_id"], server.requests[0]["client_secret"]) == (client_id, client_secret)


def test_plain_ascii_credentials_are_sent_unchanged(httpserver):
    seen = []
    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(
        lambda request: seen.append(request.authorization) or Response(
            json.dumps({"access_token": "t", "expires_in": 60}), content_type="application/json"))

    OAuthTokenProvider(httpserver.url_for(TOKEN_PATH), "partner-client", "Secret_1.2-3~", clock=FakeClock()).token()

    assert (seen[0].username, seen[0].password) == ("partner-client", "Secret_1.2-3~")


def test_token_is_cached_across_calls(httpserver):
    server = TokenServer(httpserver)
    provider = make_provider(server.url)

    tokens = {provider.token() for _ in range(5)}

    assert len(tokens) == 1
    assert len(server.requests) == 1
    assert provider.refresh_count == 1


@pytest.mark.parametrize("seconds_later, fetches", [
    (0, 1),
    (3600 - 61, 1),
    (3600 - 60, 2),
    (3600 + 5, 2),
])
def test_jwt_token_is_refreshed_refresh_margin_before_exp(httpserver, seconds_later, fetches):
    clock = FakeClock()
    server = TokenServer(httpserver, lifetime=3600, clock=clock)
    provider = make_provider(server.url, clock=clock, refresh_margin=60)
    first = provider.token()

    clock.now += seconds_later
    second = provider.token()

    assert len(server.requests) == fetches
    assert (second != first) is (fetches == 2)


def test_jwt_exp_claim_wins_over_expires_in(httpserver):
    clock = FakeClock()
    server = TokenServer(httpserver, lifetime=3600, clock=clock, expires_in=100)
    provider = make_provider(server.url, clock=clock, refresh_margin=60)
    provider.token()

    clock.now += 1000
    provider.token()

    assert len(server.requests) == 1


@pytest.mark.parametrize("seconds_later, fetches", [(539, 1), (540, 2)])
def test_opaque_token_is_refreshed_from_expires_in(httpserver, seconds_later, fetches):
    clock = FakeClock()
    server = TokenServer(httpserver, lifetime=600, as_jwt=False, clock=clock)
    provider = make_provider(server.url, clock=clock, refresh_margin=60)
    provider.token()

    clock.now += seconds_later
    provider.token()

    assert len(server.requests) == fetches


@pytest.mark.parametrize("seconds_later, fetches", [(14, 1), (15, 2)])
def test_short_lived_token_uses_half_its_lifetime_as_margin(httpserver, seconds_later, fetches):
    clock = FakeClock()
    server = TokenServer(httpserver, lifetime=30, as_jwt=False, clock=clock)
    provider = make_provider(server.url, clock=clock, refresh_margin=60)
    provider.token()

    clock.now += seconds_later
    provider.token()

    assert len(server.requests) == fetches


def test_invalidate_forces_a_new_token(httpserver):
    server = TokenServer(httpserver, as_jwt=False)
    provider = make_provider(server.url)
    provider.token()

    provider.invalidate()

    assert provider.token() == "opaque-token-2"
    assert provider.refresh_count == 2


def test_concurrent_callers_share_one_fetch(httpserver):
    release = threading.Event()
    server = TokenServer(httpserver, as_jwt=False)

    def slow_handle(request: Request) -> Response:
        # Hold the first fetch open so that the other threads pile up behind it.
        release.wait(0.3)
        return server.handle(request)

    httpserver.clear_all_handlers()
    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(slow_handle)
    provider = make_provider(server.url)
    start = threading.Barrier(8)
    results: list[str] = []

    def call() -> None:
        start.wait()
        results.append(provider.token())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    release.set()

    assert results == ["opaque-token-1"] * 8
    assert len(server.requests) == 1


@pytest.mark.parametrize("status, body, content_type", [
    (503, "maintenance", "text/plain"),
    (500, "{}", "application/json"),
    (401, '{"error": "invalid_client"}', "application/json"),
    (200, "<html>login</html>", "text/html"),
    (200, '{"token_type": "bearer"}', "application/json"),
    (200, '{"access_token": ""}', "application/json"),
    (200, '["not", "an", "object"]', "application/json"),
])
def test_token_service_faults_raise_token_service_error(httpserver, status, body, content_type):
    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_data(
        body, status=status, content_type=content_type)
    provider = make_provider(httpserver.url_for(TOKEN_PATH))

    with pytest.raises(TokenServiceError):
        provider.token()
    assert provider.refresh_count == 0


def test_token_service_error_carries_http_status(httpserver):
    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_data("down", status=502)

    with pytest.raises(TokenServiceError) as caught:
        make_provider(httpserver.url_for(TOKEN_PATH)).token()

    assert caught.value.http_status == 502


def test_unreachable_token_service_raises_token_service_error():
    with socket.socket() as unused:
        # Bound but not listening: connections are refused, and no one else can take the port.
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

        with pytest.raises(TokenServiceError, match="unreachable"):
            make_provider(f"http://127.0.0.1:{port}{TOKEN_PATH}").token()


def test_slow_token_service_times_out_as_token_service_error(httpserver):
    release = threading.Event()

    def stalled(request: Request) -> Response:
        release.wait(5)
        return Response("{}", status=200, content_type="application/json")

    httpserver.expect_request(TOKEN_PATH, method="POST").respond_with_handler(stalled)
    try:
        with pytest.raises(TokenServiceError, match="unreachable"):
            make_provider(httpserver.url_for(TOKEN_PATH), timeout=0.2).token()
    finally:
        release.set()


def test_token_service_recovers_after_an_outage(httpserver):
    httpserver.expect_oneshot_request(TOKEN_PATH, method="POST").respond_with_data("down", status=503)
    server = TokenServer(httpserver, as_jwt=False)
    provider = make_provider(server.url)

    with pytest.raises(TokenServiceError):
        provider.token()

    assert provider.token() == "opaque-token-1"


@pytest.mark.parametrize("trickle", ["body", "head"])
def test_trickling_token_service_ends_by_the_whole_call_deadline(trickle):
    # Each byte comes within the 0.5 s read timeout; the whole answer would take about 10 s.
    body = json.dumps({"access_token": "t" * 200, "token_type": "bearer", "expires_in": 300}).encode()
    provider = make_provider(serve_trickling([json_answer(body, trickle=trickle)], gap=0.05), timeout=(0.5, 0.5))

    with pytest.raises(TokenServiceError, match="^token service unreachable: Timeout$"):
        provider.token()
