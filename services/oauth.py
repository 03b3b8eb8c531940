"""OAuth 2 client-credentials tokens for calling Emarsys, cached until shortly before they expire."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import jwt
import requests

from services.metrics import count_token_refresh
from services.vendors.transport import bind_to_deadlines, ignore_netrc, request_within, whole_call_seconds

log = logging.getLogger(__name__)

# Used when the token service states no lifetime at all; a 401 still forces a refresh.
FALLBACK_LIFETIME = 300.0


class TokenServiceError(Exception):
    """The token service could not issue a token: treat as a transient outage and retry later."""

    def __init__(self, message: str, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


def _jwt_expiry(access_token: str) -> float | None:
    """Return the exp claim of a JWT access token, or None for an opaque token."""
    try:
        # Only the issuer's resource servers verify the signature; we just read the expiry.
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    expiry = claims.get("exp")
    is_number = isinstance(expiry, (int, float)) and not isinstance(expiry, bool)
    return float(expiry) if is_number else None


def _expires_in(payload: dict[str, Any]) -> float | None:
    """Return the expires_in of a token response in seconds, or None when absent or invalid."""
    try:
        seconds = float(payload["expires_in"])
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


class OAuthTokenProvider:
    """Fetch and cache a bearer token from an OAuth 2 token endpoint (client credentials grant)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str,
                 session: requests.Session | None = None, timeout: float | tuple[float, float] = 10,
                 refresh_margin: float = 60, clock: Callable[[], float] = time.time):
        self._token_url = token_url
        # RFC 6749 2.3.1: both are form-urlencoded (UTF-8) before HTTP Basic, so a compliant token
        # service reads a secret with "+", "%" or ":" as it was issued; plain ASCII goes unchanged.
        self._credentials = (quote_plus(client_id, safe=""), quote_plus(client_secret, safe=""))
        self._session = ignore_netrc(bind_to_deadlines(session or requests.Session()))
        self._timeout = timeout
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._refresh_at = 0.0
        self.refresh_count = 0

    def token(self) -> str:
        """Return a valid access token, fetching a new one when the cached one is near expiry."""
        # One lock around check-and-fetch so concurrent callers share a single fetch.
        with self._lock:
            if self._access_token is None or self._clock() >= self._refresh_at:
                self._access_token, self._refresh_at = self._fetch()
                self.refresh_count += 1
                count_token_refresh()
            return self._access_token

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after Emarsys answered 401 to it."""
        with self._lock:
            self._access_token = None

    def _fetch(self) -> tuple[str, float]:
        """Fetch a token and return it with the time at which it should be refreshed."""
        payload = self._request_token()
        access_token = payload.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TokenServiceError("token response has no access_token")
        issued_at = self._clock()
        expires_at = _jwt_expiry(access_token)
        if expires_at is None:
            expires_at = issued_at + (_expires_in(payload) or FALLBACK_LIFETIME)
        lifetime = max(0.0, expires_at - issued_at)
        # A margin longer than a short-lived token would make every call fetch anew.
        margin = min(self._refresh_margin, lifetime / 2)
        log.info("fetched OAuth token from %s, valid for %.0f s", self._token_url, lifetime)
        return access_token, expires_at - margin

    def _request_token(self) -> dict[str, Any]:
        """Call the token endpoint and return its JSON object, or raise TokenServiceError."""
        try:
            response = request_within(
                self._session, whole_call_seconds(self._timeout), "POST", self._token_url,
                data={"grant_type": "client_credentials"}, auth=self._credentials,
                headers={"Accept": "application/json"}, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise TokenServiceError(f"token service unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            # The body is not logged or kept: it may echo credentials.
            raise TokenServiceError(f"token service answered HTTP {response.status_code}",
                                    http_status=response.status_code)
        try:
            payload = response.json()
        except ValueError as exc:
            raise TokenServiceError("token service answered with invalid JSON") from exc
        if not isinstance(payload, dict):
            raise TokenServiceError("token service answered with a non-object JSON body")
        return payload
