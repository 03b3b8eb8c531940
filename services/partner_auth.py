"""Verify the OAuth 2 bearer JWTs that Emarsys sends to the partner endpoints.

Signing keys come from the identity service's JWKS. The key set is cached; a token naming
an unknown ``kid`` triggers a refetch, at most once per ``min_refetch_interval_seconds``, so a
flood of made-up key ids cannot hammer the JWKS server. The set is also refreshed when it is
older than ``jwks_max_age_seconds`` so that a key withdrawn from the JWKS stops being trusted.

When no key for the token can be found *because the JWKS server cannot be reached* (and it was
never fetched, or its refetch just failed), ``verify`` raises ``errors.Unavailable`` (503 with
``Retry-After``) instead of 401: the caller's token may be perfectly valid, the fault is ours
and transient, and the spec's ``5XX`` answer tells Emarsys to retry rather than to distrust its
token. A kid that is absent from a key set fetched *after* the token arrived is the caller's
problem: 401. A kid that is merely absent from a recent key set, which the refetch interval keeps
us from checking again, may be a just-rotated key: 503 with ``Retry-After`` until a refetch is due.

A signature that the cached key of its ``kid`` does not verify triggers the same rate-limited
refetch before it is refused: an identity service may replace a key under the same ``kid``
(IAS tokens have carried the fixed kid ``default-kid-ias``), and the cached key would otherwise stay in use, every
genuine token refused with 401, until the key set is ``jwks_max_age_seconds`` old.

A JWKS fetch ends by a whole-call deadline (``http_timeout_seconds``) and reads at most
``MAX_JWKS_BYTES``: requests' timeout bounds each socket read, not the response, so a server
trickling bytes would otherwise hold the request thread until gunicorn kills the worker.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import jwt
import requests

from errors import Forbidden, Unauthorized, Unavailable
from services.vendors.transport import CallDeadline, bind_to_deadlines, ignore_netrc

logger = logging.getLogger(__name__)

REALM = "emarsys-partner"
DEFAULT_JWKS_URL = "https://smsemarsys.accounts.ondemand.com/oauth2/certs"

# Only signature algorithms whose verification key is public; HMAC and "none" are never
# accepted, which is what defeats the "HS256 keyed with the public key PEM" confusion attack.
ASYMMETRIC_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
# A JWKS holds a handful of keys (a few kB, x5c chains included); far more is not a key set.
MAX_JWKS_BYTES = 256 * 1024

# Most specific first: several PyJWT errors subclass DecodeError or InvalidTokenError.
# Fixed descriptions keep attacker-controlled text (and the token) out of responses and logs.
_REJECTION_DESCRIPTIONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidIssuedAtError, "token iat claim invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
    (jwt.DecodeError, "token malformed"),
    (jwt.InvalidTokenError, "token invalid"),
)


class _SignatureMismatch(Exception):
    """The token's signature does not verify with the key it was checked against."""


@dataclass(frozen=True)
class TokenPolicy:
    """Describe which bearer tokens the partner endpoints accept and where their keys live."""

    issuer: str
    client_id: str
    jwks_url: str = DEFAULT_JWKS_URL
    leeway_seconds: float = 30.0
    min_refetch_interval_seconds: float = 30.0
    jwks_max_age_seconds: float = 3600.0
    http_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("issuer", "client_id", "jwks_url"):
            if not getattr(self, name):
                raise ValueError(f"TokenPolicy.{name} must not be empty")
        for name in ("leeway_seconds", "min_refetch_interval_seconds", "jwks_max_age_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"TokenPolicy.{name} must not be negative")
        if self.http_timeout_seconds <= 0:
            raise ValueError("TokenPolicy.http_timeout_seconds must be positive")


class EmarsysTokenVerifier:
    """Check Emarsys bearer tokens against the policy and the identity service's JWKS."""

    def __init__(self, policy: TokenPolicy, session: requests.Session | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self._policy = policy
        self._session = ignore_netrc(session or requests.Session())
        # Its connections (a given session's too) are shut when a fetch's deadline passes.
        bind_to_deadlines(self._session)
        self._clock = clock
        # The cache lock is held only for dict reads/swaps; the fetch lock serialises network
        # fetches so that threads verifying known kids never wait for a slow JWKS server.
        self._cache_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._keys_fetched_at: float | None = None
        # Counts successful fetches, so a request can tell whether one happened after it arrived.
        self._keys_version = 0
        self._last_fetch_attempt_at: float | None = None
        self._last_fetch_failed = False

    def verify(self, authorization_header: str | None) -> dict[str, Any]:
        """Return the token's claims, or raise Unauthorized, Forbidden or Unavailable."""
        token = _bearer_token(authorization_header)
        header = _unverified_header(token)
        claims = self._verified_claims(token, header["kid"], header["alg"])
        self._authorise(claims)
        return claims

    def _verified_claims(self, token: str, kid: str, algorithm: str) -> dict[str, Any]:
        """Decode the token with its kid's key, refetched once (when due) if the cached one fails."""
        jwk = self._jwk_for(kid)
        try:
            return self._decode(token, self._signing_key(jwk, algorithm), algorithm)
        except _SignatureMismatch:
            # The key may have been replaced under the same kid: a current key set is checked first.
            replacement = self._replaced_jwk(kid, jwk)
        if replacement is not None:
            with suppress(_SignatureMismatch):
                return self._decode(token, self._signing_key(replacement, algorithm), algorithm)
        raise _invalid_token("token signature invalid")

    def _decode(self, token: str, signing_key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key=signing_key, algorithms=[algorithm], issuer=self._policy.issuer,
                leeway=self._policy.leeway_seconds,
                # The audience rule is wider than PyJWT's (azp / client_id / aud), see _authorise.
                options={"require": ["exp", "iss"], "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise _SignatureMismatch from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid_token(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid_token(_describe(exc)) from None
        except jwt.PyJWTError:  # e.g. an EC key without alg whose curve is not the header's
            raise _invalid_token("token algorithm does not fit its key") from None

    def _authorise(self, claims: Mapping[str, Any]) -> None:
        client_id = self._policy.client_id
        # The party the token was issued to, when it names one: a token another client of the
        # same tenant asked for with Emarsys as its audience is not Emarsys calling.
        presenters = [claims[name] for name in ("azp", "client_id") if claims.get(name) is not None]
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if (all(presenter == client_id for presenter in presenters) if presenters else client_id in audiences):
            return
        logger.info("bearer token refused: issued to another OAuth client")
        raise Forbidden("token was not issued to the Emarsys OAuth client")

    def _signing_key(self, jwk: dict[str, Any], algorithm: str) -> jwt.PyJWK:
        declared = jwk.get("alg")
        if declared and declared != algorithm:
            raise _invalid_token("token algorithm does not match its key")
        try:
            return jwt.PyJWK(jwk, algorithm)
        except jwt.PyJWTError:
            raise _invalid_token("token algorithm does not fit its key") from None

    def _jwk_for(self, kid: str) -> dict[str, Any]:
        version_seen = self._keys_version  # before the cache read, so a fetch after it counts
        jwk, fresh = self._cached_jwk(kid)
        if jwk is not None and fresh:
            return jwk
        # The holder's fetch ends by its deadline; waiting longer than that means something is
        # stuck, and a request thread must not wait on it unboundedly.
        if not self._fetch_lock.acquire(timeout=self._policy.http_timeout_seconds):
            if jwk is not None:
                return jwk  # stale, but an unreachable JWKS does not make it untrustworthy
            raise _unavailable(self._policy.http_timeout_seconds)
        try:
            jwk = self._jwk_after_refetch_if_due(kid)
            checked_since_arrival = self._keys_version != version_seen and not self._last_fetch_failed
            retry_after = self._seconds_until_refetch()
        finally:
            self._fetch_lock.release()
        if jwk is not None:
            return jwk
        if checked_since_arrival:
            raise _invalid_token("token signing key unknown")
        # Either the JWKS is failing, or the refetch interval kept us from checking the current
        # key set: a token signed with a just-rotated key may be valid, so this is no auth failure.
        raise _unavailable(retry_after)

    def _replaced_jwk(self, kid: str, tried: dict[str, Any]) -> dict[str, Any] | None:
        """Return the kid's key once a refetch (if one is due) replaced the tried one, else None."""
        if not self._fetch_lock.acquire(timeout=self._policy.http_timeout_seconds):
            return None
        try:
            if self._refetch_due():
                self._refresh_keys()
            current, _ = self._cached_jwk(kid)
        finally:
            self._fetch_lock.release()
        return current if current is not None and current != tried else None

    def _jwk_after_refetch_if_due(self, kid: str) -> dict[str, Any] | None:
        # Another thread may have refetched while this one waited for the lock.
        jwk, fresh = self._cached_jwk(kid)
        if (jwk is None or not fresh) and self._refetch_due():
            self._refresh_keys()
            jwk, _ = self._cached_jwk(kid)
        return jwk

    def _cached_jwk(self, kid: str) -> tuple[dict[str, Any] | None, bool]:
        with self._cache_lock:
            fetched_at = self._keys_fetched_at
            fresh = fetched_at is not None and (
                self._clock() - fetched_at < self._policy.jwks_max_age_seconds)
            return self._keys.get(kid), fresh

    def _refetch_due(self) -> bool:
        return self._seconds_until_refetch() <= 0

    def _seconds_until_refetch(self) -> float:
        last = self._last_fetch_attempt_at
        if last is None:
            return 0.0
        return self._policy.min_refetch_interval_seconds - (self._clock() - last)

    def _refresh_keys(self) -> None:
        self._last_fetch_attempt_at = self._clock()
        try:
            keys = self._fetch_keys()
        except Exception as exc:  # noqa: BLE001
            # Whatever goes wrong fetching or reading a document from another service is a failed
            # fetch (503), never a 500; the previous keys stay, an unreachable JWKS does not make
            # them untrustworthy.
            self._last_fetch_failed = True
            logger.warning("JWKS fetch from %s failed: %s: %s", self._policy.jwks_url,
                           type(exc).__name__, exc)
            return
        self._last_fetch_failed = False
        with self._cache_lock:
            self._keys = keys
            self._keys_fetched_at = self._last_fetch_attempt_at
            self._keys_version += 1
        logger.info("JWKS fetched from %s: %d usable keys", self._policy.jwks_url, len(keys))

    def _fetch_keys(self) -> dict[str, dict[str, Any]]:
        with CallDeadline(self._policy.http_timeout_seconds) as deadline:
            content = self._fetch_document(deadline)
        # Past the deadline the socket was shut: what was read may be cut short.
        if deadline.expired:
            raise TimeoutError(f"no whole answer within {self._policy.http_timeout_seconds:g}s")
        return usable_signing_keys(json.loads(content))

    def _fetch_document(self, deadline: CallDeadline) -> bytes:
        with self._session.get(self._policy.jwks_url, timeout=self._policy.http_timeout_seconds,
                               headers={"Accept": "application/json"}, stream=True) as response:
            try:
                response.raise_for_status()
                return _read_capped(response)
            finally:
                # Before the connection goes back to the pool, where a later fetch reuses it.
                deadline.disarm()


def _read_capped(response: requests.Response) -> bytes:
    content = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
    if len(content) > MAX_JWKS_BYTES:
        raise ValueError(f"JWKS document longer than {MAX_JWKS_BYTES} bytes")
    return content


def _unavailable(retry_after_seconds: float) -> Unavailable:
    return Unavailable("token signing keys unavailable, retry later",
                       headers={"Retry-After": str(max(1, math.ceil(retry_after_seconds)))})


def usable_signing_keys(document: Any) -> dict[str, dict[str, Any]]:
    """Return the JWKS document's asymmetric signing keys by kid; raise ValueError if none."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("JWKS document has no keys list")
    keys = {entry["kid"]: entry for entry in entries if _is_usable_signing_key(entry)}
    if not keys:
        # Replacing the cache with nothing would lock every caller out; treat it as a failure.
        raise ValueError("JWKS document has no usable signing keys")
    return keys


def _is_usable_signing_key(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        return False
    # Type checks first: a list or object where a string belongs is unhashable, so a set lookup
    # would raise instead of skipping the entry (and lose the document's valid keys with it).
    if not _is_one_of(entry.get("kty"), ASYMMETRIC_KEY_TYPES) or entry.get("use", "sig") != "sig":
        return False
    if "alg" in entry and not _is_one_of(entry["alg"], ASYMMETRIC_ALGORITHMS):
        return False
    try:
        jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return False
    return True


def _is_one_of(value: Any, accepted: frozenset[str]) -> bool:
    return isinstance(value, str) and value in accepted


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header or not authorization_header.strip():
        raise _missing_token("bearer token required")
    scheme, _, credentials = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        # RFC 6750 3.1: another auth scheme counts as no bearer credentials, so no error code.
        raise _missing_token("bearer token required")
    token = credentials.strip()
    if not token or any(char.isspace() for char in token):
        raise _invalid_token("authorization header malformed")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise _invalid_token("token malformed") from None
    # Rejected before any key lookup, so "none"/HS* tokens never cause a JWKS fetch.
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ASYMMETRIC_ALGORITHMS:
        raise _invalid_token("token algorithm not accepted")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise _invalid_token("token has no key id")
    return header


def _describe(exc: jwt.InvalidTokenError) -> str:
    return next(text for kind, text in _REJECTION_DESCRIPTIONS if isinstance(exc, kind))


def _missing_token(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})


def _invalid_token(description: str) -> Unauthorized:
    logger.info("bearer token rejected: %s", description)
    challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
    return Unauthorized(description, headers={"WWW-Authenticate": challenge})
