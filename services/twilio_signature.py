"""Compute and check the X-Twilio-Signature that Twilio-compatible gateways send.

The signature is the base64 HMAC-SHA1, keyed with the account's auth token, of the full
request URL (with its query string) followed by every POST parameter, sorted by name, as
name and value concatenated without separators. GET requests sign the URL alone.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
DEFAULT_PORTS = {"http": 80, "https": 443}

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def compute_signature(auth_token: str, url: str, params: Params = ()) -> str:
    """Return the signature Twilio sends for this URL and POST parameters.

    For a repeated parameter name pass pairs, e.g. ``request.form.items(multi=True)``.
    """
    if not auth_token:
        # An empty key would let anyone who guesses it is empty sign requests.
        raise ValueError("auth_token must not be empty")
    payload = url + "".join(name + value for name, value in _sorted_pairs(params))
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def is_valid_signature(auth_token: str, url: str, params: Params, signature: str | None) -> bool:
    """Return whether the signature matches the URL and params, compared in constant time."""
    if not signature:
        return False
    sent = signature.strip().encode("utf-8")
    pairs = _sorted_pairs(params)
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, pairs).encode("ascii"), sent)
        for candidate in _url_variants(url)
    )


def _sorted_pairs(params: Params) -> list[tuple[str, str]]:
    pairs = params.items() if isinstance(params, Mapping) else params
    # Code-point order by name, then by value for a repeated name, as Twilio signs them.
    return sorted((str(name), str(value)) for name, value in pairs)


def _url_variants(url: str) -> list[str]:
    # Twilio signs the URL as configured, which may or may not spell out the default port,
    # while the server behind a proxy may see it either way; accept both spellings.
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return [url]
    default_port = DEFAULT_PORTS.get(parts.scheme.lower())
    if default_port is None or port not in (None, default_port):
        return [url]
    if port is None:
        other_netloc = f"{parts.netloc}:{default_port}"
    else:
        other_netloc = parts.netloc.rsplit(":", 1)[0]
    return [url, urlunsplit(parts._replace(netloc=other_netloc))]
