"""X-Twilio-Signature is computed as Twilio does and any tampering is detected."""
from __future__ import annotations

import pytest

from services.twilio_signature import compute_signature, is_valid_signature

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
# Published in Twilio's webhook-security documentation for exactly these inputs.
PUBLISHED_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_signature_matches_twilios_published_example():
    assert compute_signature(TOKEN, URL, PARAMS) == PUBLISHED_SIGNATURE


def test_published_signature_is_valid():
    assert is_valid_signature(TOKEN, URL, PARAMS, PUBLISHED_SIGNATURE)


def test_parameter_order_does_not_matter():
    reversed_pairs = list(reversed(list(PARAMS.items())))

    assert is_valid_signature(TOKEN, URL, reversed_pairs, PUBLISHED_SIGNATURE)


@pytest.mark.parametrize(
    ("token", "url", "params"),
    [
        ("12346", URL, PARAMS),
        (TOKEN, "https://mycompany.com/myapp.php?foo=1&bar=3", PARAMS),
        (TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS),
        (TOKEN, "https://evil.example/myapp.php?foo=1&bar=2", PARAMS),
        (TOKEN, URL, {**PARAMS, "Digits": "1235"}),
        (TOKEN, URL, {**PARAMS, "Extra": "x"}),
        (TOKEN, URL, {key: value for key, value in PARAMS.items() if key != "To"}),
        (TOKEN, URL, {**PARAMS, "to": PARAMS["To"]}),
    ],
)
def test_tampered_token_url_or_parameter_is_rejected(token, url, params):
    assert not is_valid_signature(token, url, params, PUBLISHED_SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [None, "", "RSOYDt4T1cUTdK1PDd93/VVr8B8", "rsoydt4t1cutdk1pdd93/vvr8b8=", "ä"],
)
def test_missing_or_altered_signature_is_rejected(signature):
    assert not is_valid_signature(TOKEN, URL, PARAMS, signature)


def test_get_request_signs_the_url_alone():
    url = "https://example.com/vendors/twilio/delivery-reports?MessageSid=SM1&MessageStatus=sent"
    signature = compute_signature("secret", url)

    assert is_valid_signature("secret", url, {}, signature)
    assert not is_valid_signature("secret", url.replace("sent", "delivered"), {}, signature)
    assert signature != compute_signature("secret", url, {"MessageSid": "SM1"})


def test_parameters_are_appended_to_the_url_sorted_by_name():
    signed_with_params = compute_signature("secret", "https://example.com/h", {"b": "1", "a": "2"})

    assert signed_with_params == compute_signature("secret", "https://example.com/ha2b1")
    assert signed_with_params != compute_signature("secret", "https://example.com/hb1a2")


@pytest.mark.parametrize(
    ("signed_url", "seen_url"),
    [
        ("https://example.com/hook", "https://example.com:443/hook"),
        ("https://example.com:443/hook", "https://example.com/hook"),
        ("http://example.com/hook", "http://example.com:80/hook"),
    ],
)
def test_default_port_may_be_spelled_or_not(signed_url, seen_url):
    signature = compute_signature("secret", signed_url, {"Body": "hi"})

    assert is_valid_signature("secret", seen_url, {"Body": "hi"}, signature)


def test_other_port_is_not_interchangeable():
    signature = compute_signature("secret", "https://example.com:8443/hook", {"Body": "hi"})

    assert not is_valid_signature("secret", "https://example.com/hook", {"Body": "hi"}, signature)


def test_repeated_parameter_values_are_all_signed():
    pairs = [("MediaUrl", "b"), ("MediaUrl", "a")]
    signature = compute_signature("secret", URL, pairs)

    assert is_valid_signature("secret", URL, [("MediaUrl", "a"), ("MediaUrl", "b")], signature)
    assert not is_valid_signature("secret", URL, [("MediaUrl", "a")], signature)


def test_empty_token_is_refused():
    with pytest.raises(ValueError):
        compute_signature("", URL, PARAMS)
